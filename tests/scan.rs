//! `scan`: the region's invariants in the verifier and the parser, and its semantics on the
//! interpreter and the CPU backend against a recurrence computed here in plain Rust.

mod common;

use std::collections::HashMap;
use tessera::runtime::Tensor;
use tessera::Backend;

/// A forward scan with two states and a captured parameter, and a reverse scan over two
/// sliced tensors (the filetest's program).
const DECAY: &str = "tests/filetests/scan_decay.tsr";

fn decay_ir() -> String {
    std::fs::read_to_string("tests/filetests/scan_decay.tir").expect("the filetest's dump")
}

/// Verifies the IR text after replacing `from` by `to`; returns the verifier's messages.
fn verify_edited(from: &str, to: &str) -> Vec<String> {
    let text = decay_ir();
    assert!(text.contains(from), "the dump has no `{from}`");
    let g = tessera::ir::parse(&text.replacen(from, to, 1)).expect("parses");
    tessera::ir::verify(&g).err().unwrap_or_default()
}

#[test]
fn the_verifier_checks_regions_and_projections() {
    assert!(tessera::ir::verify(&tessera::ir::parse(&decay_ir()).expect("parses")).is_ok());
    let cases = [
        // A multi-result value used directly.
        ("output \"last\" = %8", "output \"last\" = %6", "multi-result"),
        // A projection of a single-result node.
        ("%8 = proj %6 index=1", "%8 = proj %5 index=1", "single result"),
        // A projection past the results, and one of the wrong type.
        ("%9 = proj %6 index=2", "%9 = proj %6 index=3", "fewer results"),
        ("%8 = proj %6 index=1 : f32[batch, 4]", "%8 = proj %6 index=1 : f32[batch, 5]", "the result is"),
        // A body argument whose type does not match its operand.
        ("%1 = input \"n\" : f32[batch, 4]", "%1 = input \"n\" : f32[batch, 2]", "argument \"n\""),
        // A state that changes type in the body.
        ("output \"n\" = %8", "output \"n\" = %3", "leaves it as"),
        // A parameter inside a region.
        ("%3 = input \"capture.0\" : f32[4]", "%3 = param \"rate2\" init=fill(1.0) : f32[4]", "inside a region"),
        // Too few sliced operands for the attribute.
        ("state=2 sliced=1", "state=2 sliced=0", "at least one sliced"),
    ];
    for (from, to, want) in cases {
        let errs = verify_edited(from, to);
        assert!(errs.iter().any(|e| e.contains(want)), "`{to}`: expected an error containing `{want}`, got {errs:?}");
    }
}

#[test]
fn the_parser_reads_only_closed_regions() {
    let text = decay_ir();
    let end = text.find("    output \"n\" = %8\n").expect("the body's last line") + "    output \"n\" = %8\n".len();
    let e = tessera::ir::parse(&text[..end]);
    assert!(e.is_err_and(|e| e.msg.contains("not closed")));
    let e =
        tessera::ir::parse(&text.replacen("sliced=1 : f32[batch, seq, 4] loc(0:7:14) {", "sliced=1 : f32[batch, seq, 4] loc(0:7:14)", 1));
    assert!(e.is_err_and(|e| e.msg.contains("opens with `{`")));
    let e =
        tessera::ir::parse(&text.replacen("%5 = mul %3, %4 : f32[batch, 4] loc(0:6:8)", "%5 = mul %3, %4 : f32[batch, 4] loc(0:6:8) {", 1));
    assert!(e.is_err_and(|e| e.msg.contains("has no region")));
}

/// The program's outputs for `x` [2, s, 4] and `rate` [4], on a backend.
fn run_decay(backend: Backend, x: &Tensor, rate: &Tensor) -> HashMap<String, Tensor> {
    let mut m = tessera::Compiler::new().backend(backend).compile_file(DECAY).expect("compiles");
    m.set_params(HashMap::from([("rate".to_string(), rate.clone())]));
    m.run(&HashMap::from([("x".to_string(), x.clone())])).expect("runs").into_iter().collect()
}

#[test]
fn scans_compute_the_recurrence_on_every_backend() {
    let (b, s, d) = (2usize, 6usize, 4usize);
    let xs: Vec<f32> = (0..b * s * d).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
    let rates = [0.3f32, -1.2, 2.0, 0.0];
    let x = Tensor::f32(vec![b, s, d], xs.clone());
    let rate = Tensor::f32(vec![d], rates.to_vec());
    // The recurrence written out: h_t = σ(rate)·h_{t-1} + x_t, n_t = n_{t-1} + 1, y_t = h_t / n_t;
    // then backwards g_t = g_{t+1}/2 + x_t·y_t, starting from zero.
    let at = |bi: usize, t: usize, c: usize| (bi * s + t) * d + c;
    let (mut y, mut g, mut last) = (vec![0f64; b * s * d], vec![0f64; b * s * d], vec![0f64; b * d]);
    for bi in 0..b {
        for c in 0..d {
            let a = 1.0 / (1.0 + (-f64::from(rates[c])).exp());
            let (mut h, mut n) = (0f64, 0f64);
            for t in 0..s {
                h = a * h + f64::from(xs[at(bi, t, c)]);
                n += 1.0;
                y[at(bi, t, c)] = h / n;
            }
            last[bi * d + c] = h;
            let mut acc = 0f64;
            for t in (0..s).rev() {
                acc = 0.5 * acc + f64::from(xs[at(bi, t, c)]) * y[at(bi, t, c)];
                g[at(bi, t, c)] = acc;
            }
        }
    }
    for backend in common::host_backends() {
        let out = run_decay(backend, &x, &rate);
        for (name, want) in [("y", &g), ("last", &last)] {
            let got = &out[name];
            let err = want.iter().enumerate().map(|(i, w)| (got.get(i) - w).abs()).fold(0f64, f64::max);
            assert!(err < 1e-5, "{backend:?} {name}: max |Δ| = {err}");
        }
    }
}

#[test]
fn a_scan_over_an_empty_sequence_returns_its_initial_state() {
    let src = "model m(d = 3) {\n  input x: f32[batch, seq, d]\n  input h0: f32[batch, d]\n  ys, h = scan(x, init = h0) |h, x_t| {\n    h = h * 0.5 + x_t\n    return h, h\n  }\n  output y = ys\n  output last = h\n}\n";
    let h0 = Tensor::f32(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    for backend in [Backend::Interp, Backend::Cpu] {
        let m = tessera::Compiler::new().backend(backend).compile_str("empty.tsr", src).expect("compiles");
        let inputs = HashMap::from([("x".to_string(), Tensor::f32(vec![2, 0, 3], vec![])), ("h0".to_string(), h0.clone())]);
        let out: HashMap<String, Tensor> = m.run(&inputs).expect("runs").into_iter().collect();
        assert_eq!(out["y"].shape, [2, 0, 3], "{backend:?}");
        assert_eq!(out["last"], h0, "{backend:?}");
    }
}

/// Hyper-parameters to define.
type Defines<'a> = &'a [(&'a str, i64)];

/// How the CPU backend lowers each scan of a model.
fn lowerings(path: &str, defines: Defines) -> Vec<String> {
    let c = defines.iter().fold(tessera::Compiler::new(), |c, (k, v)| c.define(k, *v));
    let m = c.compile_file(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let p = m.program().expect("a CPU program");
    p.steps
        .iter()
        .filter_map(|s| match &s.kernel {
            tessera::codegen::Kernel::Scan(k) => Some(k.lowering()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_compiler_picks_each_scan_s_lowering() {
    let small = [("layers", 1)];
    let cases: [(&str, Defines, &str); 7] = [
        ("stdlib/mamba.tsr", &small, "fused scan kernel"),
        ("stdlib/falcon_mamba.tsr", &small, "fused scan kernel"),
        ("stdlib/rwkv.tsr", &small, "fused scan kernel"),
        ("stdlib/mamba2.tsr", &small, "chunked"),
        ("examples/research/linear_attention.tsr", &small, "chunked"),
        ("examples/research/rwkv6.tsr", &small, "fused scan kernel"),
        ("tests/filetests/scan_decay.tsr", &[], "fused scan kernel"),
    ];
    for (path, defines, want) in cases {
        let got = lowerings(path, defines);
        assert!(!got.is_empty() && got.iter().all(|l| l.starts_with(want)), "{path}: {got:?}");
    }
    // Mamba's decay varies along the state's last axis: no chunked (SSD) form.
    assert!(lowerings("stdlib/mamba.tsr", &small).iter().all(|l| !l.contains("chunked")));
    // A body with a product in it runs its own program once per position.
    let src = "model m(d = 4) {\n  input x: f32[batch, seq, d]\n  param w: [d, d]\n  h0 = x[:, 0, :]\n  ys, h = scan(x, init = h0) |h, x_t| {\n    h = tanh(h @ w + x_t)\n    return h, h\n  }\n  output y = ys\n}\n";
    let m = tessera::Compiler::new().compile_str("rnn.tsr", src).expect("compiles");
    let k = m.program().expect("program").steps.iter().find_map(|s| match &s.kernel {
        tessera::codegen::Kernel::Scan(k) => Some(k.lowering()),
        _ => None,
    });
    assert!(k.is_some_and(|l| l.starts_with("sequential") && l.contains("matmul")));
}

/// Linear attention past one chunk (150 positions: two chunks of 64 and a ragged one), with
/// the research fixture's parameters: the chunked CPU kernel against the interpreter.
#[test]
fn chunked_linear_attention_equals_the_recurrence() {
    let tensors = tessera::runtime::read_safetensors("tests/research/fixtures/linear_attention.safetensors").expect("fixture");
    let params: HashMap<String, Tensor> =
        tensors.iter().filter_map(|(k, v)| k.strip_prefix("param.").map(|n| (n.to_string(), v.clone()))).collect();
    let (b, s, d) = (2usize, 150usize, 24usize);
    let x = Tensor::f32(vec![b, s, d], (0..b * s * d).map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 3.0).collect());
    let inputs = HashMap::from([("x".to_string(), x)]);
    let mut outs = Vec::new();
    for backend in [Backend::Interp, Backend::Cpu] {
        let mut m = tessera::Compiler::new()
            .backend(backend)
            .define("d", 24)
            .define("heads", 3)
            .define("hidden", 40)
            .compile_file("examples/research/linear_attention.tsr")
            .expect("compiles");
        m.set_params(params.clone());
        outs.push(m.run(&inputs).expect("runs").remove(0).1);
    }
    let scale = outs[0].to_f64().iter().fold(0f64, |a, v| a.max(v.abs()));
    let err = outs[0].to_f64().iter().zip(outs[1].to_f64()).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    assert!(err <= 1e-4 * scale.max(1.0), "max |Δ| = {err} (outputs up to {scale})");
}

/// A scan inside a scan body (`tests/filetests/scan_nested.tsr`): the outer state seeds an
/// inner scan over the step's second axis; against the loops written out.
#[test]
fn nested_scans_compute_their_loops() {
    let (b, s, n, d) = (2usize, 5usize, 4usize, 3usize);
    let xs: Vec<f32> = (0..b * s * n * d).map(|i| ((i * 53 % 29) as f32 - 14.0) / 9.0).collect();
    let at = |bi: usize, t: usize, i: usize, c: usize| xs[((bi * s + t) * n + i) * d + c] as f64;
    let (mut y, mut last) = (vec![0f64; b * s * d], vec![0f64; b * d]);
    for bi in 0..b {
        for c in 0..d {
            let mut h = 0f64;
            for t in 0..s {
                let (mut g, mut total) = (h, 0f64);
                for i in 0..n {
                    g = 0.5 * g + at(bi, t, i, c);
                    total += 2.0 * g;
                }
                y[(bi * s + t) * d + c] = total;
                h = g;
            }
            last[bi * d + c] = h;
        }
    }
    let inputs = HashMap::from([("x".to_string(), Tensor::f32(vec![b, s, n, d], xs.clone()))]);
    for backend in [Backend::Interp, Backend::Cpu] {
        let m = tessera::Compiler::new().backend(backend).compile_file("tests/filetests/scan_nested.tsr").expect("compiles");
        let out: HashMap<String, Tensor> = m.run(&inputs).expect("runs").into_iter().collect();
        for (name, want) in [("y", &y), ("last", &last)] {
            let err = want.iter().enumerate().map(|(i, w)| (out[name].get(i) - w).abs()).fold(0f64, f64::max);
            assert!(err < 1e-4, "{backend:?} {name}: max |Δ| = {err}");
        }
    }
}
