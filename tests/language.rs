//! Language features checked end to end on small programs: symbolic sizes as values, `as
//! shared` scopes, labels that are keywords.

mod common;

use std::collections::HashMap;
use tessera::runtime::{self, Tensor};

fn run(src: &str, dims: &[(&str, i64)], inputs: Vec<(&str, Tensor)>) -> Vec<(String, Tensor)> {
    let g = common::elaborate("t.tsr", src, &[]);
    let dims: runtime::Dims = dims.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let params = runtime::random_params(&g, &dims, 3).expect("params");
    let inputs: HashMap<String, Tensor> = inputs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    runtime::run(&g, &dims, &inputs, &params).expect("runs")
}

/// `float(seq)`, `size(x, 1)` and `seq` in float arithmetic are the sizes of this run.
#[test]
fn symbolic_sizes_are_values_when_the_program_runs() {
    let src = "model m() {\n input x: [batch, seq, 2]\n output y = x * 0.0 + float(seq) + size(x, 1) * 0.5 + seq / 10.0\n}\n";
    for seq in [1usize, 5, 9] {
        let x = Tensor::f32(vec![1, seq, 2], vec![1.0; seq * 2]);
        let out = run(src, &[("batch", 1), ("seq", seq as i64)], vec![("x", x)]);
        let want = seq as f64 * 1.6;
        assert!(out[0].1.to_f64().iter().all(|v| (v - want).abs() < 1e-5), "seq {seq}: {:?}", out[0].1.to_f64());
    }
}

/// A block called twice `as shared NAME` declares its parameters once; both calls read them.
#[test]
fn shared_scopes_reuse_parameters() {
    let src = "block lin(x: [.., d], n: int) {\n param w: [d, n]\n return x @ w\n}\n\
               model m() {\n input x: [batch, 3]\n output a = lin(x, 4) as proj\n output b = lin(x * 2.0, 4) as shared proj\n}\n";
    let g = common::elaborate("t.tsr", src, &[]);
    let names: Vec<&str> = g.params().iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["proj.w"]);
    let x = Tensor::f32(vec![2, 3], vec![0.5, -1.0, 2.0, 1.5, 0.25, -0.75]);
    let out = run(src, &[("batch", 2)], vec![("x", x)]);
    let (a, b) = (out[0].1.to_f64(), out[1].1.to_f64());
    assert!(a.iter().zip(&b).all(|(a, b)| (2.0 * a - b).abs() < 1e-6), "{a:?} {b:?}");
    // Without `shared`, the second declaration is an error naming both.
    let dup = src.replace("as shared proj", "as proj");
    let fe = tessera::Frontend::tsr("t.tsr", &dup, None, &[]);
    assert!(fe.graph.is_none() && fe.diagnostics.iter().any(|d| d.message.contains("`proj.w` is declared twice")));
}

/// Any name labels a scope, keywords included (RWKV's `output` projection).
#[test]
fn keywords_label_scopes() {
    let src = "import nn\nmodel m() {\n input x: [batch, 4]\n output y = nn.linear(x, 4) as output\n}\n";
    let g = common::elaborate("t.tsr", src, &[]);
    let names: Vec<&str> = g.params().iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["output.weight", "output.bias"]);
}

/// `argmax`/`argmin` (lowest index on ties, as torch) and `take_along_axis` (a batched gather:
/// `x[b, idx[b, j]]`), on the interpreter and the CPU backend, against values worked out here.
#[test]
fn argmax_argmin_and_take_along_axis() {
    let src = "model m() {\n input x: [2, 4]\n input t: [2, 3, 2]\n input idx: i64[2, 2]\n\
               output amax = argmax(x, -1)\n output amin = argmin(x, 1, keepdim = true)\n output col = argmax(x, 0)\n\
               output rows = take_along_axis(t, idx, 1)\n}\n";
    let x = Tensor::f32(vec![2, 4], vec![1.0, 3.0, 3.0, -2.0, 0.5, -1.0, 7.0, -1.0]);
    let t = Tensor::f32(vec![2, 3, 2], (0..12).map(|v| v as f32).collect());
    let idx = Tensor::i64(vec![2, 2], vec![2, 0, 1, 1]);
    let inputs: HashMap<String, Tensor> = [("x", x), ("t", t), ("idx", idx)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    for backend in [tessera::Backend::Interp, tessera::Backend::Cpu] {
        let m = tessera::Compiler::new().backend(backend).compile_str("m.tsr", src).expect("compiles");
        let out: HashMap<String, Tensor> = m.run(&inputs).expect("runs").into_iter().collect();
        assert_eq!(out["amax"].shape, [2]);
        assert_eq!(out["amax"].to_f64(), [1.0, 2.0], "{backend:?}: ties go to the lowest index");
        assert_eq!(out["amin"].shape, [2, 1]);
        assert_eq!(out["amin"].to_f64(), [3.0, 1.0], "{backend:?}");
        assert_eq!(out["col"].to_f64(), [0.0, 0.0, 1.0, 1.0], "{backend:?}");
        assert_eq!(out["rows"].shape, [2, 2, 2]);
        assert_eq!(out["rows"].to_f64(), [4.0, 5.0, 0.0, 1.0, 8.0, 9.0, 8.0, 9.0], "{backend:?}");
    }
    let bad = "model m() {\n input t: [2, 3, 2]\n input idx: i64[3, 2]\n output r = take_along_axis(t, idx, 1)\n}\n";
    let fe = tessera::Frontend::tsr("m.tsr", bad, None, &[]);
    let text = tessera::render(&fe.diagnostics, &fe.sources, false, 100);
    assert!(fe.graph.is_none() && text.contains("needs i64 indices of shape [2, .., k]"), "{text}");
}

/// Depthwise `conv1d` (causal and centred) and `max_pool`/`avg_pool` along the sequence, on
/// the interpreter and the CPU backend, against values worked out here.
#[test]
fn sliding_window_convolutions_and_pools() {
    let src = "model m() {\n input x: [1, 5, 1]\n input y: [1, 5, 1]\n input w: [3, 1]\n\
               output causal = conv1d(x, w)\n output centred = conv1d(x, w, causal = false)\n\
               output pmax = max_pool(y, 3)\n output pmean = avg_pool(y, 2, causal = true)\n}\n";
    let t = |v: &[f32]| Tensor::f32(vec![1, v.len(), 1], v.to_vec());
    let inputs: HashMap<String, Tensor> = [
        ("x", t(&[1.0, 2.0, 3.0, 4.0, 5.0])),
        ("y", t(&[1.0, 5.0, 2.0, 4.0, 3.0])),
        ("w", Tensor::f32(vec![3, 1], vec![1.0, 10.0, 100.0])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for backend in [tessera::Backend::Interp, tessera::Backend::Cpu] {
        let m = tessera::Compiler::new().backend(backend).compile_str("m.tsr", src).expect("compiles");
        let out: HashMap<String, Tensor> = m.run(&inputs).expect("runs").into_iter().collect();
        // y[t] = w0 x[t-2] + w1 x[t-1] + w2 x[t] (cross-correlation, zeros before the start)
        assert_eq!(out["causal"].to_f64(), [100.0, 210.0, 321.0, 432.0, 543.0], "{backend:?}");
        assert_eq!(out["centred"].to_f64(), [210.0, 321.0, 432.0, 543.0, 54.0], "{backend:?}");
        assert_eq!(out["pmax"].to_f64(), [5.0, 5.0, 5.0, 4.0, 4.0], "{backend:?}");
        assert_eq!(out["pmean"].to_f64(), [1.0, 3.0, 3.5, 3.0, 3.5], "{backend:?}");
    }
    let g = common::elaborate("m.tsr", src, &[]);
    assert_eq!(tessera::ir::parse(&g.to_string()).expect("the window ops read back"), g);
    let bad = "model m() {\n input x: [1, 5, 2]\n input w: [4, 2]\n output c = conv1d(x, w, causal = false)\n}\n";
    let fe = tessera::Frontend::tsr("m.tsr", bad, None, &[]);
    assert!(fe.diagnostics.iter().any(|d| d.message.contains("odd filter length")));
}

/// `sort` (ascending, descending; equal values keep their order) along either axis, on the
/// interpreter and the CPU backend.
#[test]
fn sort_orders_values_along_an_axis() {
    let src = "model m() {\n input x: [2, 5]\n output up = sort(x)\n output down = sort(x, -1, descending = true)\n output cols = sort(x, 0)\n}\n";
    let x = Tensor::f32(vec![2, 5], vec![3.0, -1.0, 3.0, 0.5, 2.0, 1.0, 1.0, -4.0, 9.0, 0.0]);
    let inputs: HashMap<String, Tensor> = [("x".to_string(), x)].into_iter().collect();
    for backend in [tessera::Backend::Interp, tessera::Backend::Cpu] {
        let m = tessera::Compiler::new().backend(backend).compile_str("m.tsr", src).expect("compiles");
        let out: HashMap<String, Tensor> = m.run(&inputs).expect("runs").into_iter().collect();
        assert_eq!(out["up"].to_f64(), [-1.0, 0.5, 2.0, 3.0, 3.0, -4.0, 0.0, 1.0, 1.0, 9.0], "{backend:?}");
        assert_eq!(out["down"].to_f64(), [3.0, 3.0, 2.0, 0.5, -1.0, 9.0, 1.0, 1.0, 0.0, -4.0], "{backend:?}");
        assert_eq!(out["cols"].to_f64(), [1.0, -1.0, -4.0, 0.5, 0.0, 3.0, 1.0, 3.0, 9.0, 2.0], "{backend:?}");
    }
}

/// A symbolic axis cut into blocks of a constant size: `reshape(x, (b, -1, 4, d))` gives the
/// size `seq/4`, which reads back from the IR text, computes block means on the interpreter and
/// the CPU backend, and refuses a run whose `seq` is no multiple of 4.
#[test]
fn a_symbolic_axis_splits_into_blocks() {
    let src = "model m() {\n input x: [batch, seq, 2]\n xb = reshape(x, (batch, -1, 4, 2))\n\
               output means = mean(xb, 2)\n output back = reshape(xb, (batch, seq, 2))\n output pairs = reshape(x, (batch, seq // 2, 4))\n}\n";
    let g = common::elaborate("m.tsr", src, &[]);
    assert!(g.to_string().contains("f32[batch, seq/4, 4, 2]"), "{g}");
    assert_eq!(tessera::ir::parse(&g.to_string()).expect("reads back"), g);
    let (seq, vals) = (8usize, (0..16).map(|v| (v * v % 7) as f32).collect::<Vec<_>>());
    let inputs: HashMap<String, Tensor> = [("x".to_string(), Tensor::f32(vec![1, seq, 2], vals.clone()))].into();
    // The mean of each block of 4 positions, per channel.
    let block_mean = |blk: usize, c: usize| (0..4).map(|t| vals[(blk * 4 + t) * 2 + c] as f64).sum::<f64>() / 4.0;
    let want = [block_mean(0, 0), block_mean(0, 1), block_mean(1, 0), block_mean(1, 1)];
    for backend in [tessera::Backend::Interp, tessera::Backend::Cpu] {
        let m = tessera::Compiler::new().backend(backend).compile_str("m.tsr", src).expect("compiles");
        let out: HashMap<String, Tensor> = m.run(&inputs).expect("runs").into_iter().collect();
        assert_eq!(out["means"].shape, [1, 2, 2], "{backend:?}");
        assert!(
            out["means"].to_f64().iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{backend:?}: {:?} {want:?}",
            out["means"].to_f64()
        );
        assert_eq!(out["back"].to_f64(), inputs["x"].to_f64(), "{backend:?}");
        assert_eq!(out["pairs"].shape, [1, 4, 4], "{backend:?}");
        let odd: HashMap<String, Tensor> = [("x".to_string(), Tensor::f32(vec![1, 6, 2], vec![0.0; 12]))].into();
        let err = m.run(&odd).expect_err("6 is no multiple of 4").to_string();
        assert!(err.contains("seq = 6 is not a multiple of 4"), "{backend:?}: {err}");
    }
}

/// Pooling over segments given by ids (`segment_max` .. `segment_sum`): each position gets its
/// segment's reduction, segments need not be contiguous; on the interpreter and the CPU
/// backend, against values worked out here. The IR reads back; mismatched ids are a diagnostic.
#[test]
fn segment_pooling_by_ids() {
    let src = "model m() {\n input x: [2, 5, 2]\n input ids: i64[2, 5]\n\
               output smax = segment_max(x, ids)\n output smin = segment_min(x, ids)\n\
               output smean = segment_mean(x, ids)\n output ssum = segment_sum(x, ids)\n}\n";
    // row 0: segments {0, 1} {2, 3, 4}; row 1: {0, 4} (not contiguous) {1} {2, 3}
    let xs: Vec<f32> = vec![1.0, -1.0, 4.0, -4.0, 2.0, -2.0, 6.0, -6.0, 3.0, -3.0, 5.0, 0.5, 7.0, 0.25, 1.0, 8.0, 3.0, 9.0, -5.0, 1.0];
    let inputs: HashMap<String, Tensor> = [
        ("x".to_string(), Tensor::f32(vec![2, 5, 2], xs)),
        ("ids".to_string(), Tensor::i64(vec![2, 5], vec![7, 7, 3, 3, 3, 0, 2, 1, 1, 0])),
    ]
    .into();
    for backend in [tessera::Backend::Interp, tessera::Backend::Cpu] {
        let m = tessera::Compiler::new().backend(backend).compile_str("m.tsr", src).expect("compiles");
        let out: HashMap<String, Tensor> = m.run(&inputs).expect("runs").into_iter().collect();
        #[rustfmt::skip]
        let want = [
            ("smax",  [4.0, -1.0, 4.0, -1.0, 6.0, -2.0, 6.0, -2.0, 6.0, -2.0,  5.0, 1.0, 7.0, 0.25, 3.0, 9.0, 3.0, 9.0, 5.0, 1.0]),
            ("smin",  [1.0, -4.0, 1.0, -4.0, 2.0, -6.0, 2.0, -6.0, 2.0, -6.0, -5.0, 0.5, 7.0, 0.25, 1.0, 8.0, 1.0, 8.0, -5.0, 0.5]),
            ("smean", [2.5, -2.5, 2.5, -2.5, 11.0 / 3.0, -11.0 / 3.0, 11.0 / 3.0, -11.0 / 3.0, 11.0 / 3.0, -11.0 / 3.0, 0.0, 0.75, 7.0, 0.25, 2.0, 8.5, 2.0, 8.5, 0.0, 0.75]),
            ("ssum",  [5.0, -5.0, 5.0, -5.0, 11.0, -11.0, 11.0, -11.0, 11.0, -11.0, 0.0, 1.5, 7.0, 0.25, 4.0, 17.0, 4.0, 17.0, 0.0, 1.5]),
        ];
        for (name, w) in want {
            let got = out[name].to_f64();
            assert!(got.iter().zip(w).all(|(a, b)| (a - b).abs() < 1e-6), "{backend:?} {name}: {got:?}");
        }
    }
    let g = common::elaborate("m.tsr", src, &[]);
    assert_eq!(tessera::ir::parse(&g.to_string()).expect("the segment ops read back"), g);
    let bad = "model m() {\n input x: [2, 5, 2]\n input ids: i64[2, 4]\n output y = segment_max(x, ids)\n}\n";
    let fe = tessera::Frontend::tsr("m.tsr", bad, None, &[]);
    assert!(fe.diagnostics.iter().any(|d| d.message.contains("needs i64 segment ids shaped as x's leading axes")));
}
