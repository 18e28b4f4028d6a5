//! Each IR op on the interpreter against values worked out by hand in the test.
#![allow(clippy::cloned_ref_to_slice_refs)] // `&[x.clone()]` reads best in these one-line cases

use std::collections::HashMap;
use tessera_ir::{BinaryOp, DType, Dim, Graph, Op, ReduceOp, Span, TensorType, UnaryOp, ValueId};
use tessera_runtime::{run, Tensor};

fn ty(dtype: DType, shape: &[i64]) -> TensorType {
    TensorType::new(dtype, shape.iter().map(|&n| Dim::known(n)).collect())
}

/// Builds `inputs`, applies `op` to them and returns the single output.
fn apply(op: Op, ins: &[Tensor], declared: Option<TensorType>) -> Tensor {
    let mut g = Graph::new("t");
    let mut ids: Vec<ValueId> = Vec::new();
    let mut feed = HashMap::new();
    for (i, t) in ins.iter().enumerate() {
        let name = format!("x{i}");
        let shape: Vec<i64> = t.shape.iter().map(|&n| n as i64).collect();
        ids.push(g.add(Op::Input(name.clone()), vec![], Some(ty(t.dtype(), &shape)), Span::UNKNOWN).expect("input"));
        feed.insert(name, t.clone());
    }
    let y = g.add(op, ids, declared, Span::UNKNOWN).expect("op types");
    g.outputs.push(("y".into(), y));
    run(&g, &HashMap::new(), &feed, &HashMap::new()).expect("runs").remove(0).1
}

fn f(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::f32(shape.to_vec(), v.to_vec())
}

fn close(t: &Tensor, want: &[f64]) {
    let got = t.to_f64();
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{got:?} vs {want:?}");
    }
}

#[test]
fn unary_ops() {
    let x = f(&[3], &[-1.0, 0.0, 2.0]);
    close(&apply(Op::Unary(UnaryOp::Relu), &[x.clone()], None), &[0.0, 0.0, 2.0]);
    close(&apply(Op::Unary(UnaryOp::Neg), &[x.clone()], None), &[1.0, 0.0, -2.0]);
    close(&apply(Op::Unary(UnaryOp::Sigmoid), &[x.clone()], None), &[0.268_941_421_4, 0.5, 0.880_797_077_9]);
    close(&apply(Op::Unary(UnaryOp::Silu), &[x.clone()], None), &[-0.268_941_421_4, 0.0, 1.761_594_155_9]);
    close(&apply(Op::Unary(UnaryOp::Softplus), &[x.clone()], None), &[0.313_261_687_5, std::f64::consts::LN_2, 2.126_928_011_0]);
    // GELU(x) = x Φ(x): Φ(-1) = 0.158655254, Φ(2) = 0.977249868.
    close(&apply(Op::Unary(UnaryOp::GeluErf), &[x.clone()], None), &[-0.158_655_253_9, 0.0, 1.954_499_736_1]);
    close(&apply(Op::Unary(UnaryOp::GeluTanh), &[x.clone()], None), &[-0.158_808_009_5, 0.0, 1.954_597_694_1]);
    close(&apply(Op::Unary(UnaryOp::Rsqrt), &[f(&[2], &[4.0, 0.25])], None), &[0.5, 2.0]);
    close(&apply(Op::Unary(UnaryOp::Exp), &[f(&[1], &[1.0])], None), &[std::f64::consts::E]);
}

#[test]
fn binary_ops_broadcast() {
    let a = f(&[2, 1], &[1.0, 2.0]);
    let b = f(&[3], &[10.0, 20.0, 30.0]);
    close(&apply(Op::Binary(BinaryOp::Add), &[a.clone(), b.clone()], None), &[11.0, 21.0, 31.0, 12.0, 22.0, 32.0]);
    close(&apply(Op::Binary(BinaryOp::Sub), &[a.clone(), b.clone()], None), &[-9.0, -19.0, -29.0, -8.0, -18.0, -28.0]);
    close(&apply(Op::Binary(BinaryOp::Lt), &[a, f(&[1], &[1.5])], None), &[1.0, 0.0]);
    let i = Tensor::i64(vec![3], vec![-7, 7, 6]);
    close(&apply(Op::Binary(BinaryOp::Div), &[i.clone(), Tensor::i64(vec![1], vec![2])], None), &[-4.0, 3.0, 3.0]);
    close(&apply(Op::Binary(BinaryOp::Rem), &[i, Tensor::i64(vec![1], vec![3])], None), &[2.0, 1.0, 0.0]);
}

#[test]
fn where_cast_iota_const() {
    let c = Tensor { shape: vec![2], data: tessera_runtime::Data::Bool(vec![true, false]) };
    close(&apply(Op::Where, &[c, f(&[2], &[1.0, 2.0]), f(&[], &[9.0])], None), &[1.0, 9.0]);
    close(&apply(Op::Cast, &[f(&[2], &[2.7, -2.7])], Some(ty(DType::I64, &[2]))), &[2.0, -2.0]);
    close(&apply(Op::Iota { axis: 1 }, &[], Some(ty(DType::I64, &[2, 3]))), &[0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
    close(&apply(Op::Const(0.5), &[], Some(ty(DType::F32, &[2]))), &[0.5, 0.5]);
}

#[test]
fn matmul_batched_and_broadcast() {
    // [[1,2],[3,4]] @ [[5,6],[7,8]] = [[19,22],[43,50]], batch of the left only.
    let a = f(&[2, 2, 2], &[1.0, 2.0, 3.0, 4.0, 1.0, 0.0, 0.0, 1.0]);
    let b = f(&[2, 2], &[5.0, 6.0, 7.0, 8.0]);
    close(&apply(Op::MatMul, &[a, b], None), &[19.0, 22.0, 43.0, 50.0, 5.0, 6.0, 7.0, 8.0]);
}

#[test]
fn layout_ops() {
    let x = f(&[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    close(&apply(Op::Transpose(vec![1, 0]), &[x.clone()], None), &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    close(&apply(Op::Reshape, &[x.clone()], Some(ty(DType::F32, &[3, 2]))), &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    close(&apply(Op::Broadcast, &[f(&[3], &[1.0, 2.0, 3.0])], Some(ty(DType::F32, &[2, 3]))), &[1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    close(&apply(Op::Slice { axis: 1, start: Dim::known(1), end: Dim::known(3), step: 1 }, &[x.clone()], None), &[1.0, 2.0, 4.0, 5.0]);
    close(&apply(Op::Slice { axis: 1, start: Dim::known(0), end: Dim::known(3), step: 2 }, &[x.clone()], None), &[0.0, 2.0, 3.0, 5.0]);
    close(&apply(Op::Concat { axis: 1 }, &[x.clone(), f(&[2, 1], &[9.0, 8.0])], None), &[0.0, 1.0, 2.0, 9.0, 3.0, 4.0, 5.0, 8.0]);
    close(&apply(Op::Cumsum { axis: 1 }, &[x.clone()], None), &[0.0, 1.0, 3.0, 3.0, 7.0, 12.0]);
    let table = f(&[3, 2], &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0]);
    close(&apply(Op::Gather { axis: 0 }, &[table, Tensor::i64(vec![2, 1], vec![2, 0])], None), &[20.0, 21.0, 0.0, 1.0]);
}

#[test]
fn reductions() {
    let x = f(&[2, 3], &[1.0, 5.0, 3.0, -4.0, 2.0, 8.0]);
    let red = |op, axes: Vec<usize>, keepdim| apply(Op::Reduce { op, axes, keepdim }, &[x.clone()], None);
    close(&red(ReduceOp::Sum, vec![1], false), &[9.0, 6.0]);
    close(&red(ReduceOp::Mean, vec![0], true), &[-1.5, 3.5, 5.5]);
    close(&red(ReduceOp::Max, vec![0, 1], false), &[8.0]);
    close(&red(ReduceOp::Min, vec![1], true), &[1.0, -4.0]);
    assert_eq!(red(ReduceOp::Min, vec![1], true).shape, vec![2, 1]);
}

#[test]
fn gather_out_of_range_is_an_error_not_a_panic() {
    let mut g = Graph::new("t");
    let t = g.add(Op::Input("t".into()), vec![], Some(ty(DType::F32, &[2, 2])), Span::UNKNOWN).expect("input");
    let i = g.add(Op::Input("i".into()), vec![], Some(ty(DType::I64, &[1])), Span::UNKNOWN).expect("input");
    let y = g.add(Op::Gather { axis: 0 }, vec![t, i], None, Span::UNKNOWN).expect("gather");
    g.outputs.push(("y".into(), y));
    let feed = HashMap::from([("t".to_string(), f(&[2, 2], &[0.0; 4])), ("i".to_string(), Tensor::i64(vec![1], vec![5]))]);
    let err = run(&g, &HashMap::new(), &feed, &HashMap::new()).expect_err("out of range");
    assert!(err.to_string().contains("index 5 is out of range"), "{err}");
}

#[test]
fn fourier_transforms_of_worked_examples() {
    let s3 = 3f64.sqrt() / 2.0;
    // DFT [1, 2, 3, 4] = [10, -2+2i, -2, -2-2i]; of [1, 2, 3]: [6, -1.5 ± (√3/2)i].
    let z4 = f(&[4, 2], &[1.0, 0.0, 2.0, 0.0, 3.0, 0.0, 4.0, 0.0]);
    close(&apply(Op::Fft { axes: vec![0], inverse: false }, &[z4.clone()], None), &[10.0, 0.0, -2.0, 2.0, -2.0, 0.0, -2.0, -2.0]);
    let spectrum = f(&[4, 2], &[10.0, 0.0, -2.0, 2.0, -2.0, 0.0, -2.0, -2.0]);
    close(&apply(Op::Fft { axes: vec![0], inverse: true }, &[spectrum], None), &[1.0, 0.0, 2.0, 0.0, 3.0, 0.0, 4.0, 0.0]);
    close(&apply(Op::Rfft { axis: 0 }, &[f(&[3], &[1.0, 2.0, 3.0])], None), &[6.0, 0.0, -1.5, s3]);
    close(&apply(Op::Rfft { axis: 1 }, &[f(&[1, 4], &[1.0, 2.0, 3.0, 4.0])], None), &[10.0, 0.0, -2.0, 2.0, -2.0, 0.0]);
    // irfft ignores the imaginary parts of bin 0 and of the Nyquist bin (n even).
    let half = f(&[3, 2], &[10.0, 5.0, -2.0, 2.0, -2.0, 7.0]);
    close(&apply(Op::Irfft { axis: 0, n: Dim::known(4) }, &[half], None), &[1.0, 2.0, 3.0, 4.0]);
    close(&apply(Op::Irfft { axis: 0, n: Dim::known(3) }, &[f(&[2, 2], &[6.0, 0.0, -1.5, s3 as f32])], None), &[1.0, 2.0, 3.0]);
    // Over two axes of [2, 2]: [[1, 2], [3, 4]] → [[10, -2], [-4, 0]], the 2-D DFT.
    let z = f(&[2, 2, 2], &[1.0, 0.0, 2.0, 0.0, 3.0, 0.0, 4.0, 0.0]);
    close(&apply(Op::Fft { axes: vec![0, 1], inverse: false }, &[z], None), &[10.0, 0.0, -2.0, 0.0, -4.0, 0.0, 0.0, 0.0]);
}

#[test]
fn fourier_ops_reject_bad_operands() {
    let t = |shape: &[i64]| ty(DType::F32, shape);
    let bad = [
        (Op::Fft { axes: vec![0], inverse: false }, t(&[4, 3])), // no pair axis
        (Op::Fft { axes: vec![1], inverse: false }, t(&[4, 2])), // the pair axis itself
        (Op::Fft { axes: vec![], inverse: false }, t(&[4, 2])),  // no axis
        (Op::Rfft { axis: 1 }, t(&[4])),                         // axis out of range
        (Op::Irfft { axis: 0, n: Dim::known(4) }, t(&[2, 2])),   // 2 bins for length 4
        (Op::Rfft { axis: 0 }, TensorType::new(DType::F32, vec![Dim::sym("seq")])), // odd symbolic length
    ];
    for (op, ty) in bad {
        assert!(tessera_ir::infer_type(&op, &[&ty], None).is_err(), "{op:?} on {ty}");
    }
    let even = TensorType::new(DType::F32, vec![Dim::sym("seq").scale(2)]);
    let half = tessera_ir::infer_type(&Op::Rfft { axis: 0 }, &[&even], None).expect("an even symbolic length");
    assert_eq!(half.to_string(), "f32[seq + 1, 2]");
}
