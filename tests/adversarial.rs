//! Regression tests for what adversarial inputs found (issue 14): each input is refused with a
//! clear diagnostic and exit status 1, or gives the right answer, never a panic, an abort, a
//! hang or a wrong number with exit 0.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output};
use tessera::runtime::Tensor;
use tessera::{Backend, Compiler};

/// Runs the `tessera` binary with `args`; returns its exit status, stdout and stderr.
fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).output().expect("runs");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Writes `text` to a fresh file under the temp dir and returns its path.
fn file(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("tessera-adversarial-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.to_string_lossy().into_owned()
}

/// Asserts a refusal: exit 1 and every `needle` in stderr.
fn refused(args: &[&str], needles: &[&str]) {
    let (code, _, err) = cli(args);
    assert_eq!(code, Some(1), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: wanted {n:?} in:\n{err}");
    }
}

/// NaN semantics are torch's on every backend: `maximum`, `minimum`, `relu`, max reductions
/// and pools propagate a NaN operand, and attention over a NaN score gives NaN (the fused CPU
/// kernel's online softmax once hid it: one NaN weight gave finite numbers), also where the
/// mask is `-inf` (-1e40 in f32) and the NaN is a row's only visible score.
#[test]
fn nan_propagates_as_in_torch_on_every_backend() {
    let src = "import nn\nmodel m(d = 8, heads = 2) {\n input x: [batch, seq, d]\n param w: [d, d]\n\
               i = arange(seq)[:, none]\n j = arange(seq)[none, :]\n\
               output att = softmax(where(j <= i, ((x @ w) @ x.T) * 0.3, -1e30), -1) @ x\n\
               output att_inf = softmax(where(j <= i, ((x @ w) @ x.T) * 0.3, -1e40), -1) @ x\n\
               output ew = maximum(x, w[0]) + minimum(x, w[0]) + relu(x * w[0])\n\
               output red = max(x * w[0], -1) + min(x * w[0], -1) + max_pool(x * w[0], 3)[:, :, 3]\n}\n";
    let mut w: Vec<f32> = (0..64).map(|i| ((i * 7 % 13) as f32 - 6.0) / 10.0).collect();
    w[3] = f32::NAN; // row 0, column 3: every token's feature 3 after x @ w, and w[0] too
    let x: Vec<f32> = (0..2 * 5 * 8).map(|i| ((i * 5 % 11) as f32 - 5.0) / 7.0).collect();
    let inputs: HashMap<String, Tensor> = [("x".to_string(), Tensor::f32(vec![2, 5, 8], x))].into();
    let mut results = Vec::new();
    for backend in common::host_backends() {
        let mut m = Compiler::new().backend(backend).compile_str("m.tsr", src).expect("compiles");
        m.random_weights(5).expect("weights");
        let mut params = m.params().clone();
        params.insert("w".to_string(), Tensor::f32(vec![8, 8], w.clone()));
        m.set_params(params);
        let out: HashMap<String, Tensor> = m.run(&inputs).expect("runs").into_iter().collect();
        // The NaN reaches every score (not the values): every attention output is NaN.
        for k in ["att", "att_inf"] {
            assert!(out[k].to_f64().iter().all(|v| v.is_nan()), "{backend:?} {k}: {:?}", out[k].to_f64());
        }
        let ew = out["ew"].to_f64();
        assert!(ew.iter().enumerate().all(|(i, v)| v.is_nan() == (i % 8 == 3)), "{backend:?}: {ew:?}");
        assert!(out["red"].to_f64().iter().all(|v| v.is_nan()), "{backend:?}: {:?}", out["red"].to_f64());
        results.push(out);
    }
    let nan_positions = |t: &Tensor| t.to_f64().iter().map(|v| v.is_nan()).collect::<Vec<_>>();
    for r in &results[1..] {
        for k in ["att", "att_inf", "ew", "red"] {
            assert_eq!(nan_positions(&results[0][k]), nan_positions(&r[k]), "{k}");
        }
    }
}

/// An output bound directly to a scalar constant is an output on the CPU backend too (it
/// vanished: the constant was folded into the code of its elementwise readers, of which it had
/// none).
#[test]
fn an_output_bound_to_a_constant_is_kept() {
    let ir = "graph m {\n  %0 = input \"x\" : f32[2]\n  %1 = const 2.5 : f32[]\n  %2 = mul %0, %1 : f32[2]\n  output \"y\" = %2\n  output \"c\" = %1\n}\n";
    let path = file("const_output.tir", ir);
    for backend in ["cpu", "interp"] {
        let (code, out, err) = cli(&["run", &path, "--backend", backend]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("c: f32[] mean=2.500000"), "{backend}: {out}");
        assert!(out.contains("y: f32[2]"), "{backend}: {out}");
    }
}

/// An `--inputs` file gives every input (a missing one was silently random), and a `--dim`
/// naming no size of the model is refused (it was ignored).
#[test]
fn run_refuses_partial_inputs_and_unknown_dims() {
    let path = file("ids_only.safetensors", "");
    tessera::runtime::write_safetensors(&path, &[("input_ids".to_string(), Tensor::i64(vec![1, 3], vec![1, 2, 3]))]).expect("write");
    refused(&["run", "stdlib/gpt2.tsr", "-D", "layers=1", "--inputs", &path], &["lacks the input `attention_mask`"]);
    refused(&["run", "stdlib/gpt2.tsr", "-D", "layers=1", "--dim", "sequ=5"], &["--dim sequ", "no size `sequ`", "batch, seq"]);
}

/// Degenerate hyper-parameters are refused at the `require` in `nn.tsr` that they break (they
/// ran silently, or hung: `heads=4294967296` on ModernBERT), with the user's call site shown.
#[test]
fn degenerate_hyper_parameters_are_refused() {
    let cases: &[(&str, &[&str], &str)] = &[
        ("gpt2", &["layers=-1"], "this loop runs from 0 to -1"),
        ("gpt2", &["eps=-1.0"], "`eps` cannot be negative"),
        ("gpt2", &["heads=5"], "the width `d` must be a multiple of `heads`"),
        ("bert", &["heads=5"], "the width `d` must be a multiple of `heads`"),
        ("t5", &["buckets=0"], "T5's relative buckets need `buckets` >= 4"),
        ("t5", &["d_kv=-1"], "`kv_heads` and `head_dim` cannot be negative"),
        ("llama", &["kv_heads=-2"], "`kv_heads` and `head_dim` cannot be negative"),
        ("llama", &["kv_heads=3"], "`heads` must be a multiple of `kv_heads`"),
        ("llama", &["heads=-1"], "`heads` must be at least 1"),
        ("llama", &["d=4", "heads=8"], "the width `d` must be a multiple of `heads`"),
        ("modernbert", &["heads=4294967296"], "the width `d` must be a multiple of `heads`"),
        ("gpt2", &["layers=100000"], "this loop would unroll to about"),
    ];
    for (model, defines, want) in cases {
        let path = format!("stdlib/{model}.tsr");
        let mut args = vec!["check", path.as_str()];
        for d in *defines {
            args.extend(["-D", d]);
        }
        let start = std::time::Instant::now();
        let (code, _, err) = cli(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: wanted {want:?} in:\n{err}");
        assert!(start.elapsed().as_secs() < 10, "{args:?} took {:?}", start.elapsed());
        // One error: the failed requirement ends its block instead of causing more.
        assert_eq!(err.matches("  × ").count(), 1, "{args:?}:\n{err}");
    }
}

/// Attention with a head size of 0 or no value columns runs (the CPU kernel panicked: "chunk
/// size must be non-zero") and equals the interpreter.
#[test]
fn attention_with_empty_heads_runs() {
    let src = "model m() {\n input q: [batch, 2, seq, 0]\n input v: [batch, 2, seq, 3]\n input q2: [batch, 2, seq, 4]\n input v2: [batch, 2, seq, 0]\n\
               output y = softmax((q @ q.T) * 0.5, -1) @ v\n output z = softmax((q2 @ q2.T) * 0.5, -1) @ v2\n}\n";
    let interp = Compiler::new().backend(Backend::Interp).compile_str("m.tsr", src).expect("compiles");
    let cpu = Compiler::new().compile_str("m.tsr", src).expect("compiles");
    for seq in [0, 5] {
        let inputs = interp.random_inputs(&[("batch", 2), ("seq", seq)], 1).expect("inputs");
        let (want, got) = (interp.run(&inputs).expect("interpreter"), cpu.run(&inputs).expect("cpu"));
        for ((n, g), (_, w)) in got.iter().zip(&want) {
            assert_eq!(g.shape, w.shape, "{n}");
            assert!(common::max_abs_diff(g, w) < 1e-6, "{n}: {:?} {:?}", g.to_f64(), w.to_f64());
        }
    }
}

/// Sizes that cannot be allocated are refused before anything is (the process aborted on an
/// allocation failure after `check` said ok), with the figure and the `--max-memory` budget;
/// element counts and integer arithmetic do not wrap.
#[test]
fn huge_sizes_are_refused_before_allocating() {
    let big_param =
        file("big_param.tsr", "model m() {\n input x: [2]\n param w: [1000000, 1000000]\n output y = x + sum(sum(w, 0), 0)\n}\n");
    refused(&["run", &big_param], &["this run needs about 3.6 TiB", "parameters 3.6 TiB", "--max-memory"]);
    let arange = file("arange.tsr", "model m() {\n input x: [2]\n output y = sum(float(arange(10**12)), 0) + x\n}\n");
    refused(&["run", &arange], &["intermediates 10.9 TiB"]);
    refused(&["run", "stdlib/llama.tsr", "--dim", "seq=100000000"], &["would hold more than", "[batch, seq, 32000]", "stdlib/llama.tsr:"]);
    refused(&["run", "stdlib/llama.tsr", "-D", "hidden=1000000000000"], &["would hold more than"]);
    refused(&["run", "stdlib/gpt2.tsr", "-D", "layers=1", "--max-memory", "10M"], &["more than the memory budget of 10.0 MiB"]);
    refused(&["run", "stdlib/gpt2.tsr", "--max-memory", "10Q"], &["the unit must be K, M, G, T or P"]);
    // A compiled backend also keeps what it derives from the parameters (Llama's merged
    // projections, weights packed for the GEMM): 2.0 GiB on the interpreter, more here.
    refused(&["run", "stdlib/llama.tsr", "-D", "layers=1", "--backend", "cpu", "--max-memory", "2100M"], &["derived from parameters"]);
    // Element counts: [2^62, 4] summed to 0 elements (wrapped), or panicked.
    let wrap = file("wrap.tsr", "model m() {\n input x: [4611686018427387904, 4]\n output y = x\n}\n");
    refused(&["run", &wrap], &["would hold more than"]);
    let lit = file("lit.tsr", "model m() {\n input x: [2]\n output y = x + float(9223372036854775807 + 1)\n}\n");
    refused(&["check", &lit], &["integer overflow", "lit.tsr:3:"]);
    // The API refuses too.
    let mut m = Compiler::new().compile_file(&big_param).expect("compiles");
    let err = m.random_weights(0).expect_err("too big").to_string();
    assert!(err.contains("parameters 3.6 TiB"), "{err}");
}

/// A bad command-line flag is a user error (exit 1), as every other; `--help` succeeds.
#[test]
fn bad_flags_exit_with_one() {
    refused(&["run", "stdlib/gpt2.tsr", "--nope"], &["unexpected argument '--nope'"]);
    refused(&["frobnicate"], &["unrecognized subcommand"]);
    assert_eq!(cli(&["--help"]).0, Some(0));
}

/// A token id outside the vocabulary names the input, where it is and the table; a sequence
/// longer than the position table names the size (both were "index out of range" at a line
/// of nn.tsr). Checked before the run, on every backend.
#[test]
fn out_of_range_ids_name_the_input_and_the_table() {
    let ids = file("ids.safetensors", "");
    let mask = |n: usize| Tensor::i64(vec![1, n], vec![1; n]);
    tessera::runtime::write_safetensors(
        &ids,
        &[("input_ids".to_string(), Tensor::i64(vec![1, 3], vec![1, 2, 50300])), ("attention_mask".to_string(), mask(3))],
    )
    .expect("write");
    let long = file("long.safetensors", "");
    tessera::runtime::write_safetensors(
        &long,
        &[("input_ids".to_string(), Tensor::i64(vec![1, 1100], vec![1; 1100])), ("attention_mask".to_string(), mask(1100))],
    )
    .expect("write");
    for backend in ["cpu", "interp"] {
        refused(
            &["run", "stdlib/gpt2.tsr", "-D", "layers=1", "--inputs", &ids, "--backend", backend],
            &["input `input_ids` holds 50300 at [0, 2]", "50257 rows of parameter `wte`"],
        );
        refused(
            &["run", "stdlib/gpt2.tsr", "-D", "layers=1", "--inputs", &long, "--backend", backend],
            &["(seq = 1100)", "1024 rows of parameter `wpe.weight`"],
        );
    }
}

/// Diagnostics stay readable and bounded: a label at a column past 65,535 (miette's formatter
/// panicked), a 1 MB literal (a 5.8 MB diagnostic), an integer beyond 64 bits given with -D
/// (called a float), a stderr closed early by its reader (a panic), and the IR reader's
/// messages (Rust debug tokens such as `Punct(':')`).
#[test]
fn diagnostics_stay_readable_and_bounded() {
    let far = file("far.tsr", &format!("model m() {{\n input x: [2]\n output y = x{}+ q\n}}\n", " ".repeat(70000)));
    refused(&["check", &far], &["unknown name `q`", "far.tsr:3:70016"]);
    let big = file("big.tsr", &format!("model m() {{\n input x: [2]\n output y = x + \"{}\"\n}}\n", "a".repeat(1 << 20)));
    let (code, _, err) = cli(&["check", &big]);
    assert_eq!(code, Some(1));
    assert!(err.len() < 2000, "{} bytes", err.len());
    refused(
        &["check", "stdlib/gpt2.tsr", "-D", "layers=99999999999999999999"],
        &["-D layers: the integer 99999999999999999999 is outside the 64-bit range"],
    );
    let tir = file("bad.tir", "graph m {\n  %0 = input \"x\" f32[2]\n}\n");
    refused(&["check", &tir], &["expected `:`, found `f32`"]);
    let nan = file("nan.tir", "graph m {\n  %0 = input \"x\" : f32[2]\n  %1 = param \"w\" init=normal(nan) : f32[2]\n  %2 = add %0, %1 : f32[2]\n  output \"y\" = %2\n}\n");
    refused(&["run", &nan], &["normal(nan) needs a finite standard deviation"]);
    // Many errors into a pipe that its reader closes at once.
    let many: String = (0..2000).map(|i| format!(" output y{i} = x + q{i}\n")).collect();
    let many = file("many.tsr", &format!("model m() {{\n input x: [2]\n{many}}}\n"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["check", &many])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("runs");
    drop(child.stderr.take());
    assert_eq!(child.wait().expect("waits").code(), Some(1));
}

/// A config.json value of the wrong kind names config.json, the key and the hyper-parameter
/// (it pointed at the loop that used the value).
#[test]
fn a_config_value_of_the_wrong_kind_names_its_key() {
    let text = std::fs::read_to_string("tests/parity/fixtures/llama-gqa/config.json").expect("fixture");
    let mut config: serde_json::Value = serde_json::from_str(&text).expect("json");
    config["num_hidden_layers"] = serde_json::json!("two");
    let path = file("config.json", &config.to_string());
    refused(
        &["check", "stdlib/llama.tsr", "--config", &path],
        &["config.json: `num_hidden_layers` is a string (\"two\"), but `layers` takes an int"],
    );
}

/// Deep or long expressions are refused by the parser with a diagnostic (they overflowed the
/// stack: SIGABRT), and what is accepted is compiled and printed in time (`--emit ast` was
/// quadratic or worse on a 1,000-term sum; the e-graph extraction took 8 s on 11,000 terms).
#[test]
fn deep_and_long_expressions_are_bounded() {
    let model = |expr: String| format!("model m() {{\n input x: [2]\n output y = {expr}\n}}\n");
    let cases = [
        ("parens.tsr", model(format!("{}x{}", "(".repeat(2600), ")".repeat(2600))), "nest deeper than"),
        ("calls.tsr", model(format!("{}x{}", "exp(".repeat(5000), ")".repeat(5000))), "nest deeper than"),
        ("neg.tsr", model(format!("{}x", "-".repeat(9850))), "more than 256 unary operators in a row"),
        ("plus.tsr", model(vec!["x"; 11000].join(" + ")), "more than 8192 operators and operands"),
        ("parens_far.tsr", model(format!("{}x{}", "(".repeat(100000), ")".repeat(100000))), "nest deeper than"),
        (
            "nested_chains.tsr",
            model((0..40).fold("x".to_string(), |e, _| format!("({e}{})", " + x".repeat(300)))),
            "more than 8192 operators and operands",
        ),
    ];
    for (name, text, want) in cases {
        let path = file(name, &text);
        refused(&["check", &path], &[want]);
    }
    // Accepted: 4,000 terms compile and run, and their syntax tree prints, each in seconds.
    let sum = file("sum.tsr", &model(vec!["x"; 4000].join(" + ")));
    for args in [vec!["run", sum.as_str()], vec!["ir", sum.as_str(), "--emit", "ast"], vec!["ir", sum.as_str(), "--emit", "opt"]] {
        let start = std::time::Instant::now();
        let (code, out, err) = cli(&args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!out.is_empty());
        assert!(start.elapsed().as_secs() < 10, "{args:?} took {:?}", start.elapsed());
    }
}

/// Every stdlib model runs with an empty batch or an empty sequence, and the interpreter and
/// the CPU backend agree (the interpreter panicked on `batch=0`: its matmul broadcast 0 with
/// 1 to 1; its fused attention over no keys gave NaN where the unfused math gives 0).
#[test]
fn empty_batches_and_sequences_run_and_agree() {
    for (name, overrides) in common::SMALL {
        let c = common::small_compiler(overrides);
        let path = format!("stdlib/{name}.tsr");
        let mut interp = c.clone().backend(Backend::Interp).compile_file(&path).expect("compiles");
        let mut cpu = c.compile_file(&path).expect("compiles");
        interp.random_weights(1).expect("weights");
        cpu.set_params(interp.params().clone());
        for dims in [[("batch", 0), ("seq", 5), ("dec_seq", 3)], [("batch", 2), ("seq", 0), ("dec_seq", 3)]] {
            let dims: Vec<(&str, i64)> = dims.into_iter().filter(|(k, _)| *k != "dec_seq" || *name == "t5").collect();
            let inputs = interp.random_inputs(&dims, 2).expect("inputs");
            let bound: tessera::runtime::Dims = dims.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            // A model that needs a token (BERT's pooler reads the first) refuses alike on both.
            let (want, got) = match (interp.run_with_dims(&bound, &inputs), cpu.run_with_dims(&bound, &inputs)) {
                (Ok(w), Ok(g)) => (w, g),
                (Err(a), Err(b)) => {
                    assert_eq!(a.to_string(), b.to_string(), "{name} {dims:?}");
                    continue;
                }
                (a, b) => panic!("{name} {dims:?}: the interpreter gives {:?}, the CPU {:?}", a.err(), b.err()),
            };
            for ((n, g), (_, w)) in got.iter().zip(&want) {
                assert_eq!(g.shape, w.shape, "{name} {dims:?} {n}");
                let (gv, wv) = (g.to_f64(), w.to_f64());
                assert!(gv.iter().zip(&wv).all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs())), "{name} {dims:?} {n}");
            }
        }
    }
}

/// A gemm whose residual would widen its product is not valid IR (the typing rule accepted
/// it, and the interpreter and the CPU then disagreed on its shape); found by the random-graph
/// tester.
#[test]
fn a_gemm_residual_never_widens_the_product() {
    let ir = "graph m {\n  %0 = input \"a\" : f32[1, 1]\n  %1 = input \"r\" : f32[2, 3]\n  %2 = gemm %0, %0, %1 bias=false act=none residual=true : f32[2, 3]\n  output \"y\" = %2\n}\n";
    refused(&["check", &file("widen.tir", ir)], &["must broadcast to its product"]);
}

/// The pre-run index check reads only i64 inputs used as indices as they are: an f32 input
/// cast to indices is checked after the cast, as it runs (-0.3 is index 0, not "outside the
/// table"); found by the random-graph tester.
#[test]
fn indices_cast_from_floats_are_checked_after_the_cast() {
    let src = "model m() {\n input x: [3]\n output y = (param t: [4, 2])[int(x)]\n}\n";
    let inputs: HashMap<String, Tensor> = [("x".to_string(), Tensor::f32(vec![3], vec![-0.3, 1.7, 3.9]))].into();
    for backend in [Backend::Interp, Backend::Cpu] {
        let mut m = Compiler::new().backend(backend).compile_str("m.tsr", src).expect("compiles");
        m.random_weights(1).expect("weights");
        let out = m.run(&inputs).unwrap_or_else(|e| panic!("{backend:?}: {e}"));
        assert_eq!(out[0].1.shape, [3, 2], "{backend:?}");
    }
}

/// Found by review: a size of 0 beside huge ones still overflows strides (refused now);
/// `normal(-0.02)` prints and reads back (the reader refused what the language accepts); an
/// input axis declared `seq/4` fixes `seq` (it bound a size named "seq/4").
#[test]
fn review_findings_on_sizes_and_ir_files() {
    let outer = file("outer.tsr", "model m() {\n input x: [batch, seq]\n output y = x[:, :, none] * x[:, none, :] + 1.0\n}\n");
    refused(&["run", &outer, "--dim", "batch=0", "--dim", "seq=4294967296"], &["would hold more than"]);
    let neg = file("neg_init.tsr", "model m() {\n input x: [2]\n param w: [2] = normal(-0.02)\n output y = x + w\n}\n");
    let (code, tir, err) = cli(&["ir", &neg]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli(&["run", &file("neg_init.tir", &tir)]);
    assert_eq!(code, Some(0), "{err}");
    let ir = "graph m {\n  %0 = input \"x\" : f32[batch, seq/4]\n  %1 = reduce_sum %0 axes=[1] keepdim=false : f32[batch]\n  output \"y\" = %1\n}\n";
    let path = file("quot.tir", ir);
    let inputs = file("quot.safetensors", "");
    tessera::runtime::write_safetensors(&inputs, &[("x".to_string(), Tensor::f32(vec![2, 5], vec![1.0; 10]))]).expect("write");
    let (code, out, err) = cli(&["run", &path, "--inputs", &inputs]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("seq=20") && out.contains("mean=5.000000"), "{out}");
}

/// New parameters give the answer of the new parameters: what the CPU backend derives from
/// parameters (merged projections, weights packed for the GEMM) is keyed by their addresses,
/// and a new set is often allocated where the freed old one was (it was kept and reused: the
/// old parameters' answer with exit 0).
#[test]
fn replaced_parameters_are_not_confused_with_the_old_ones_merged_or_packed_for_the_gemm() {
    let (name, overrides) = common::SMALL.iter().find(|(n, _)| *n == "llama").expect("llama");
    let c = common::small_compiler(overrides);
    let path = format!("stdlib/{name}.tsr");
    let mut interp = c.clone().backend(Backend::Interp).compile_file(&path).expect("compiles");
    let mut cpu = c.compile_file(&path).expect("compiles");
    let inputs = interp.random_inputs(&[("batch", 1), ("seq", 7)], 3).expect("inputs");
    for seed in 1..=4 {
        // The old parameters freed first, then the new ones allocated (often at their addresses).
        cpu.set_params(HashMap::new());
        interp.random_weights(seed).expect("weights");
        cpu.set_params(interp.params().clone());
        let (want, got) = (interp.run(&inputs).expect("runs"), cpu.run(&inputs).expect("runs"));
        for ((n, g), (_, w)) in got.iter().zip(&want) {
            let (gv, wv) = (g.to_f64(), w.to_f64());
            let worst = gv.iter().zip(&wv).fold(0f64, |m, (a, b)| m.max((a - b).abs() / (1.0 + b.abs())));
            assert!(worst <= 1e-4, "seed {seed}, {n}: max relative difference {worst}");
        }
    }
}
