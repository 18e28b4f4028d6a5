//! The CPU backends against the reference interpreter: every stdlib model, the Hugging Face
//! parity fixtures, and each kernel kind on random odd shapes, one set of tests per backend
//! ([`backend_tests!`]: Cranelift always, LLVM with feature `llvm`).

mod common;
use common::*;
use tessera::{Backend, Compiler};

fn max_rel(a: &tessera::runtime::Tensor, b: &tessera::runtime::Tensor) -> f64 {
    max_rel_diff(a, b)
}

/// The differential tests of one CPU backend, as a module named `$name`.
macro_rules! backend_tests {
    ($name:ident, $backend:expr) => {
        mod $name {
            #[test]
            fn every_stdlib_model_equals_the_interpreter() {
                super::every_stdlib_model_equals_the_interpreter($backend)
            }

            #[test]
            fn parity_fixtures_pass() {
                super::parity_fixtures_pass($backend)
            }

            #[test]
            fn each_kernel_kind_matches_the_interpreter_on_odd_shapes() {
                super::each_kernel_kind_matches_the_interpreter_on_odd_shapes($backend)
            }
        }
    };
}

backend_tests!(cranelift, tessera::Backend::Cpu);
#[cfg(feature = "llvm")]
backend_tests!(llvm, tessera::Backend::Llvm);
#[cfg(feature = "mlir")]
backend_tests!(mlir, tessera::Backend::Mlir);

fn every_stdlib_model_equals_the_interpreter(backend: Backend) {
    for (name, ov) in SMALL {
        let path = format!("stdlib/{name}.tsr");
        let c = common::small_compiler(ov);
        let mut cpu = c.clone().backend(backend).compile_file(&path).expect("compiles");
        let mut interp = c.backend(Backend::Interp).compile_file(&path).expect("compiles");
        cpu.random_weights(3).expect("weights");
        interp.random_weights(3).expect("weights");
        let inputs = cpu.random_inputs(DIMS, 4).expect("inputs");
        let a = cpu.run(&inputs).expect("cpu runs");
        let b = interp.run(&inputs).expect("interpreter runs");
        for ((n, x), (_, y)) in a.iter().zip(&b) {
            let d = max_rel(x, y);
            println!("{name:<11} {n:<26} max rel diff {d:.2e}");
            assert!(d <= 1e-4, "{name}.{n}: {d}");
        }
    }
}

fn parity_fixtures_pass(backend: Backend) {
    for fx in common::fixtures() {
        let m = fx.model(backend, tessera::Precision::F32);
        for (k, err) in fx.errors(&m.run(&fx.inputs).expect("runs")) {
            println!("{:<18} {k:<26} max |Δ| = {err:.2e} ({})", fx.name, backend.name());
            assert!(err <= 1e-4, "{}.{k}: {err}", fx.name);
        }
    }
}

/// Attention whose score function (a float bias, query and key positions, `and`) is exact in
/// f32, so that its rows run as f32x4 code.
const SCORE_X4: &str = "input q: [batch, 2, seq, 8]\n input k: [batch, 2, seq, 8]\n input v: [batch, 2, seq, 8]
 input bias: [batch, 1, 1, seq]
 i = arange(seq)[:, none]
 j = arange(seq)[none, :]
 output y = softmax(where(j <= i + 2 and bias > -0.5, (q @ k.T) * 0.5 + bias - float(i - j) * 0.25, -1e30), -1) @ v";

/// Small programs exercising one kernel kind each, at odd sizes (lengths not multiples of
/// the attention tiles), compared with the interpreter.
fn each_kernel_kind_matches_the_interpreter_on_odd_shapes(backend: Backend) {
    let cases: &[(&str, &str)] = &[
        ("elementwise", "input x: [batch, seq, 7]\n output y = where(x > 0.5, gelu(x) * 2.0, tanh(x)) + exp(-x)"),
        ("broadcast elementwise", "input x: [batch, seq, 7]\n input b: [7]\n output y = silu(x - b) / (1.0 + x * x)"),
        ("f32x4 elementwise", "input x: [batch, seq, 7]\n input b: [7]\n output y = where(x > b, x * 2.0 - b, -x) / (1.0 + abs(x)) + sqrt(abs(b))"),
        ("int elementwise", "input x: i64[batch, seq]\n output y = float(x % 5 - x // 3)"),
        ("gemm epilogue", "input x: [batch, seq, 13]\n output y = x + relu(x @ param w: [13, 13] + param b: [13])"),
        ("mlp", "input x: [batch, seq, 11]\n output y = nn.mlp(x, 19)"),
        ("glu", "input x: [batch, seq, 11]\n output y = nn.swiglu(x, 17)"),
        ("norms", "input x: [batch, seq, 9]\n output y = nn.layer_norm(x) + nn.rms_norm(x)"),
        ("softmax", "input x: [batch, seq, 9]\n output y = softmax(x, -1) + softmax(x, 1)"),
        ("reduce", "input x: [batch, seq, 9]\n output y = sum(x, -1) + max(x, -1) + mean(x, -1) - min(x, -1)"),
        ("gather", "input ids: i64[batch, seq]\n output y = (param e: [23, 6])[ids]"),
        ("layout", "input x: [batch, seq, 6]\n output y = concat(transpose(x, -1, -2), transpose(x, -1, -2) * 2.0, axis = 1)[:, 1:5]"),
        ("slices", "input x: [batch, seq, 11]\n output y = x[:, :, 2:7] * 2.0 + x[:, :, 0:10:2]\n output z = x[:, 1:4]"),
        ("cumsum", "input x: [batch, seq, 5]\n output y = cumsum(x, 1)"),
        ("windows", "input x: [batch, seq, 5]\n output y = conv1d(x, param w: [4, 5]) + conv1d(x, param v: [3, 5], causal = false)\n output z = max_pool(x, 3) + avg_pool(x, 2, causal = true) + max_pool(x, 3, axis = 2)"),
        ("segments", "input x: [batch, seq, 5]\n ids = int(x[:, :, 0] > 0.0) + int(x[:, :, 1] > 0.5)\n output y = segment_max(x, ids) + segment_mean(x, ids) * 2.0\n output z = segment_sum(x[:, :, 0], ids) - segment_min(x[:, :, 1], ids)"),
        // Bool tensors stored by a compiled kernel (a Cranelift verifier error once: istore8 of an i8).
        ("bool output", "input x: [batch, seq, 5]\n output y = x > 0.0\n output z = where(x[:, :, 0:1] > 0.0, x, 0.0)"),
        ("fourier", "input x: [batch, seq, 6]\n output y = nn.fourier_mix(x)\n output z = irfft(rfft(x, 2 * seq, axis = 1), 2 * seq, axis = 1)\n output w = real(ifft(fft(complex(x, x * 0.5), axes = (0, 1)), axes = 1)) + imag(fft(complex(x), axes = -1))\n output v = rfft(x, axis = -1)\n output u = irfft(rfft(x, 5), 5)"),
        ("scatter_add", "input x: [batch, seq, 5]\n input u: [batch, 3, 5]\n _, i = topk(x[:, :, 0], 3)\n output y = scatter_add(x, i, u, 1)\n output z = scatter_add(x, i * 0 + 1, u)[:, :, 0]"),
        ("topk", "input x: [batch, seq, 7]\n v, i = topk(x, 3)\n w, j = topk(x, 2, axis = 1)\n output y = v * float(i)\n output z = w + float(j)"),
        ("route grouped ffn", "input x: [batch, seq, 11]\n output y = nn.moe(x, 5, 2, 13)\n output z = nn.moe(x, 3, 3, 6, \"softmax_topk\") as other"),
        ("route per expert", "input x: [batch, seq, 7]\n output y = route(x, x @ param r: [7, 4], k = 3, gate = \"sigmoid\") |x_e, e| { return tanh(x_e @ param w: [7, 6]) * float(e + 1) }"),
        ("scan fused", "input x: [batch, seq, 7]\n ys, h = scan(x, init = x[:, 0, :] * 0.0) |h, x_t| {\n h = tanh(h * 0.9 + x_t) + where(x_t > 0.2, exp(-abs(x_t)), where(h > x_t, h, x_t) - gelu(x_t) * 0.1)\n m = h - max(h, -1)[.., none]\n return m / (1.0 + sum(exp(m), -1)[.., none] * 0.1) + mean(h, -1)[.., none], h\n }\n output y = ys\n output last = h"),
        ("scan fused ops", "input x: [batch, seq, 5]\n input w: [5]\n ys, h = scan(x, init = x[:, 0, :]) |h, x_t| {\n h = where(x_t > 0.0 and h < 1.0 or x_t < -0.5, h + sqrt(abs(x_t)) * w, silu(h) * 0.5 - min(x_t, -1)[.., none])\n return sum(rsqrt(1.0 + h * h) + float(h > x_t) + sigmoid(x_t) / (2.0 + relu(h)), -1), h\n }\n output y = ys\n output last = h"),
        ("scan along the first axis", "input x: [seq, 7]\n ys, h = scan(x, init = x[0, :] * 0.0, axis = 0) |h, x_t| {\n h = h * 0.5 + x_t\n return h * 2.0 - x_t, h\n }\n output y = ys\n output last = h"),
        ("attention causal", "input x: [batch, seq, 24]\n output y = nn.attention(x, 4, 2, mask = nn.causal)"),
        ("attention window alibi", "input x: [batch, seq, 24]\n input m: i64[batch, seq]\n output y = nn.attention(x, 4, mask = nn.window(7), score = nn.alibi(4), padding = m)"),
        ("attention f32x4 score", SCORE_X4),
        ("attention fully masked rows", "input q: [batch, 2, seq, 8]\n input k: [batch, 2, seq, 8]\n input v: [batch, 2, seq, 8]\n i = arange(seq)[:, none]\n j = arange(seq)[none, :]\n output y = softmax(where(j + 3 <= i, q @ k.T, -1e30), -1) @ v"),
        ("attention t5 bias", "input x: [batch, seq, 24]\n output y = nn.attention(x, 4, score = nn.t5_bias(param table: [8, 4], 4, 8, 20), scale = 1.0)"),
    ];
    // Seq 4: products and attention of few rows (a decode step's paths) too.
    for (seq, batch) in [(4, 2), (5, 1), (37, 2), (70, 1)] {
        for (what, body) in cases {
            let src = format!("import nn\nmodel m() {{\n {body}\n}}\n");
            let mut cpu = Compiler::new().backend(backend).compile_str("case.tsr", &src).unwrap_or_else(|e| panic!("{what}: {e}"));
            let mut interp = Compiler::new().backend(Backend::Interp).compile_str("case.tsr", &src).expect("compiles");
            cpu.random_weights(1).expect("weights");
            interp.random_weights(1).expect("weights");
            let inputs = cpu.random_inputs(&[("batch", batch), ("seq", seq)], 2).expect("inputs");
            let a = cpu.run(&inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
            let b = interp.run(&inputs).expect("interpreter");
            for ((n, x), (_, y)) in a.iter().zip(&b) {
                let d = max_rel(x, y);
                assert!(d <= 1e-4, "{what} (seq {seq}): {n} differs by {d}");
            }
        }
    }
}

/// Elementwise chains of exact f32 ops get an f32x4 kernel (and a scalar one for row tails).
#[test]
fn exact_elementwise_chains_are_vectorized() {
    let src = "model m() {\n input x: [batch, 7]\n input b: [7]\n output y = (x - b) * (x + b) / 3.0\n}\n";
    let m = Compiler::new().keep_clif(true).compile_str("v.tsr", src).expect("compiles");
    assert!(m.clif().iter().any(|f| f.contains("f32x4") && f.contains("fmul")), "{:#?}", m.clif());
    // A product read once by a sum is fused where the CPU has FMA.
    let src = "model m() {\n input x: [batch, 7]\n input b: [7]\n output y = x * b + 1.0\n}\n";
    let m = Compiler::new().keep_clif(true).compile_str("f.tsr", src).expect("compiles");
    #[cfg(target_arch = "x86_64")]
    assert_eq!(m.clif().iter().any(|f| f.contains("fma")), std::arch::is_x86_feature_detected!("fma"), "{:#?}", m.clif());
    let src = format!("model m() {{\n {SCORE_X4}\n}}\n");
    let m = Compiler::new().keep_clif(true).compile_str("a.tsr", &src).expect("compiles");
    assert!(m
        .program()
        .is_some_and(|p| p.steps.iter().any(|s| matches!(s.kernel, tessera::codegen::Kernel::Op(tessera_ir::Op::Attention(_))))));
    assert!(m.clif().iter().any(|f| f.contains("f32x4") && f.contains("fcmp")), "the score function has an f32x4 form");
    let src = "model m() {\n input x: [batch, 7]\n output y = exp(x)\n}\n";
    let m = Compiler::new().keep_clif(true).compile_str("s.tsr", src).expect("compiles");
    assert!(!m.clif().iter().any(|f| f.contains("f32x4")), "exp has no exact f32x4 form");
}

/// The memory plan reuses a slot once its last reader has run: a chain of four softmaxes
/// needs two slots, not four.
#[test]
fn the_memory_plan_reuses_dead_buffers() {
    let src = "model m() {\n input x: [4, 1000]\n output y = softmax(softmax(softmax(softmax(x, -1), -1), -1), -1)\n}\n";
    let m = Compiler::new().compile_str("chain.tsr", src).expect("compiles");
    let p = m.program().expect("cpu program");
    assert_eq!(p.steps.len(), 4, "{p}");
    let sizes: Vec<usize> =
        p.buffers.iter().map(|b| b.ty.shape.iter().map(|d| d.as_known().unwrap_or(1) as usize).product::<usize>() * 4).collect();
    assert_eq!(tessera::codegen::plan(p, &sizes).bytes, 2 * 16000);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["ir", "stdlib/gpt2.tsr", "-D", "layers=1", "--emit", "kernels"])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("// peak activation memory (arena) at batch=1 seq=16: "), "{text}");
    assert!(text.contains("= attention(") && text.contains("= ffn("), "{text}");
}

/// A fused FFN whose input has width 0 (`seq` = 0 here) still has its rows: the kernel counted
/// them as `len / width` and wrote none (found by `tests/fuzz_graphs.rs`).
#[test]
fn a_fused_ffn_over_an_empty_width_keeps_its_rows() {
    let g = tessera::ir::parse(
        "graph m {
  %0 = input \"x\" : f32[3, seq]
  %1 = param \"w\" init=normal(1.0) : f32[seq, 4]
  %2 = param \"b\" init=normal(1.0) : f32[4]
  %3 = param \"v\" init=normal(1.0) : f32[4, 2]
  %4 = param \"c\" init=normal(1.0) : f32[2]
  %5 = ffn %0, %1, %2, %3, %4 gated=false act=gelu bias=true : f32[3, 2]
  output \"y\" = %5
}",
    )
    .expect("parses");
    let want = run_random(&g, &[("seq", 0)], 5);
    let dims: tessera::runtime::Dims = [("seq".to_string(), 0)].into();
    let params = tessera::runtime::random_params(&g, &dims, 5).expect("params");
    let inputs = tessera::runtime::random_inputs(&g, &dims, 5, &Default::default()).expect("inputs");
    let cpu = tessera::Engine::new(&g, Backend::Cpu, false, tessera::Precision::F32).expect("compiles");
    let got = cpu.run(&g, &dims, &inputs, &params).expect("runs").0;
    assert!(max_rel(&want[0].1, &got[0].1) <= 1e-5, "{:?} vs {:?}", want[0].1, got[0].1);
}
