//! One test per rewrite rule: a minimal program where the rule applies, what the optimized
//! graph must (and must not) contain, and the interpreter's outputs before and after
//! (≤ 1e-5 relative). A rule added without a case here fails `every_rule_has_a_case`.

mod common;
use common::*;

struct Case {
    rule: &'static str,
    body: &'static str,
    has: &'static [&'static str],
    lacks: &'static [&'static str],
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    Case { rule: "softmax",             body: "output y = softmax(x, -1)",                                     has: &["softmax"],            lacks: &["exp"] },
    Case { rule: "layer_norm",          body: "c = x - mean(x, -1, keepdim = true)\n output y = c * rsqrt(mean(c * c, -1, keepdim = true) + 1e-5)", has: &["kind=layer"], lacks: &["rsqrt"] },
    Case { rule: "rms_norm",            body: "output y = x * rsqrt(mean(x * x, -1, keepdim = true) + 1e-6)", has: &["kind=rms"],           lacks: &["rsqrt"] },
    Case { rule: "norm_weight",         body: "output y = nn.rms_norm(x)",                                     has: &["norm %0, %1 kind=rms"], lacks: &["mul"] },
    Case { rule: "norm_bias",           body: "output y = nn.layer_norm(x)",                                   has: &["norm %0, %1, %2 kind=layer"], lacks: &["add"] },
    Case { rule: "mul_one",             body: "output y = exp(x * 1.0)",                                       has: &["exp"],                lacks: &["mul"] },
    Case { rule: "add_zero",            body: "output y = exp(x + 0.0)",                                       has: &["exp"],                lacks: &["add"] },
    Case { rule: "transpose_transpose", body: "output y = exp(x.T.T)",                                         has: &["exp"],                lacks: &["transpose"] },
    Case { rule: "reshape_reshape",     body: "output y = reshape(reshape(x, (24,)), (3, 8))",                 has: &["reshape"],            lacks: &["[24]"] },
    Case { rule: "transpose_identity",  body: "output y = exp(permute(x, (0, 1)))",                            has: &["exp"],                lacks: &["transpose"] },
    Case { rule: "gemm_bias",           body: "output y = x @ param w: [6, 5] + param b: [5]",                 has: &["gemm", "bias=true act=none"], lacks: &["matmul"] },
    Case { rule: "gemm_act",            body: "output y = gelu(x @ param w: [6, 5])",                          has: &["bias=false act=gelu"], lacks: &["matmul"] },
    Case { rule: "gemm_residual",       body: "output y = x + x @ param w: [6, 6]",                            has: &["residual=true"],      lacks: &["matmul", "add"] },
    Case { rule: "mlp",                 body: "output y = nn.mlp(x, 10)",                                      has: &["ffn", "gated=false act=gelu bias=true"], lacks: &["matmul"] },
    Case { rule: "glu",                 body: "output y = nn.swiglu(x, 10)",                                   has: &["ffn", "gated=true act=silu", "concat"], lacks: &["matmul"] },
    Case { rule: "attention",           body: "q = reshape(x, (1, 4, 6))\n output y = softmax(where(arange(4)[none, :] <= arange(4)[:, none], q @ q.T * 0.5, -1e30), -1) @ q", has: &["attention"], lacks: &["softmax", "matmul"] },
];

#[test]
fn every_rule_has_a_case() {
    for r in tessera::passes::rules::all() {
        assert!(CASES.iter().any(|c| c.rule == r.name), "rule `{}` has no case in tests/rules.rs", r.name);
    }
}

#[test]
fn each_rule_fires_and_keeps_the_values() {
    for c in CASES {
        let src = format!("import nn\nmodel m() {{\n input x: [4, 6]\n {}\n}}\n", c.body);
        let g = elaborate("rule.tsr", &src, &[]);
        let opt = tessera::passes::run_pipeline(&g, |_, _| {}).expect("pipeline verifies");
        let text = opt.to_string();
        for want in c.has {
            assert!(text.contains(want), "{}: expected `{want}` in\n{text}", c.rule);
        }
        for op in c.lacks {
            let found = opt.nodes().iter().any(|n| n.op.mnemonic() == *op) || (op.starts_with('[') && text.contains(op));
            assert!(!found, "{}: `{op}` should be gone from\n{text}", c.rule);
        }
        let before = run_random(&g, &[], 11);
        let after = run_random(&opt, &[], 11);
        for ((n, a), (_, b)) in before.iter().zip(&after) {
            let d = max_rel_diff(a, b);
            assert!(d <= 1e-5, "{}: output {n} differs by {d}", c.rule);
        }
    }
}

/// Sums and products the GEMM and FFN kernels cannot run stay unfused, found by
/// `tests/fuzz_graphs.rs`: a bias or residual that broadcasts the product up (`[4, 1] + [5]`;
/// the optimized graph had the shape `[4, 1]` on the interpreter and wrong values on the CPU).
#[test]
fn only_what_the_kernels_run_is_fused() {
    for body in [
        "output y = x @ param w: [6, 1] + param b: [5]",
        "output y = x[:, 0:5] + x @ param w: [6, 1]",
        "output y = gelu(x @ param w: [6, 1] + param b: [3]) @ param v: [3, 2]",
        // A batched first weight is no MLP: the FFN kernel read it as a matrix and wrote past
        // its scratch buffer (heap corruption on the CPU backend).
        "output y = sigmoid(x @ param w: [1, 6, 8]) @ param v: [8, 3]",
    ] {
        let g = elaborate("rule.tsr", &format!("import nn\nmodel m() {{\n input x: [4, 6]\n {body}\n}}\n"), &[]);
        let opt = tessera::passes::run_pipeline(&g, |_, _| {}).expect("pipeline verifies");
        let want = run_random(&g, &[], 11);
        for ((n, a), (_, b)) in want.iter().zip(&run_random(&opt, &[], 11)) {
            assert!(max_rel_diff(a, b) <= 1e-5, "{body}: output {n} differs\n{opt}");
        }
        let dims = tessera::runtime::Dims::new();
        let params = tessera::runtime::random_params(&opt, &dims, 11).expect("params");
        let inputs = tessera::runtime::random_inputs(&opt, &dims, 11, &Default::default()).expect("inputs");
        let cpu = tessera::Engine::new(&opt, tessera::Backend::Cpu, false, tessera::Precision::F32).expect("compiles");
        for ((n, a), (_, b)) in want.iter().zip(&cpu.run(&opt, &dims, &inputs, &params).expect("runs").0) {
            assert!(max_rel_diff(a, b) <= 1e-5, "{body}: output {n} differs on the CPU\n{opt}");
        }
    }
}
