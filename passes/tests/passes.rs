//! Each pass on a small graph built here, checked by structure.

use tessera_ir::{verify, BinaryOp, DType, Dim, Graph, Op, Span, TensorType, UnaryOp};
use tessera_passes::{cse, dce, fold_constants, run_pipeline};

fn f32(shape: &[i64]) -> TensorType {
    TensorType::new(DType::F32, shape.iter().map(|&n| Dim::known(n)).collect())
}

fn base() -> (Graph, tessera_ir::ValueId) {
    let mut g = Graph::new("t");
    let x = g.add(Op::Input("x".into()), vec![], Some(f32(&[4])), Span::UNKNOWN).expect("input");
    (g, x)
}

#[test]
fn dce_removes_what_no_output_needs_but_keeps_inputs() {
    let (mut g, x) = base();
    let _unused_input = g.add(Op::Input("u".into()), vec![], Some(f32(&[1])), Span::UNKNOWN).expect("input");
    let dead = g.add(Op::Unary(UnaryOp::Exp), vec![x], None, Span::UNKNOWN).expect("exp");
    let _dead2 = g.add(Op::Unary(UnaryOp::Log), vec![dead], None, Span::UNKNOWN).expect("log");
    let live = g.add(Op::Unary(UnaryOp::Relu), vec![x], None, Span::UNKNOWN).expect("relu");
    g.outputs.push(("y".into(), live));
    let out = dce(&g);
    verify(&out).expect("verifies");
    let ops: Vec<String> = out.nodes().iter().map(|n| n.op.mnemonic()).collect();
    assert_eq!(ops, ["input", "input", "relu"]);
}

#[test]
fn cse_merges_identical_nodes() {
    let (mut g, x) = base();
    let a = g.add(Op::Unary(UnaryOp::Exp), vec![x], None, Span::UNKNOWN).expect("exp");
    let b = g.add(Op::Unary(UnaryOp::Exp), vec![x], None, Span::UNKNOWN).expect("exp");
    let s = g.add(Op::Binary(BinaryOp::Add), vec![a, b], None, Span::UNKNOWN).expect("add");
    g.outputs.push(("y".into(), s));
    let out = cse(&g);
    verify(&out).expect("verifies");
    assert_eq!(out.len(), 3);
    let add = out.node(out.outputs[0].1);
    assert_eq!(add.inputs[0], add.inputs[1]);
}

#[test]
fn fold_constants_evaluates_scalars_and_removes_identities() {
    let (mut g, x) = base();
    let two = g.add(Op::Const(2.0), vec![], Some(f32(&[])), Span::UNKNOWN).expect("c");
    let three = g.add(Op::Const(3.0), vec![], Some(f32(&[])), Span::UNKNOWN).expect("c");
    let five = g.add(Op::Binary(BinaryOp::Add), vec![two, three], None, Span::UNKNOWN).expect("add");
    let sq = g.add(Op::Unary(UnaryOp::Sqrt), vec![five], None, Span::UNKNOWN).expect("sqrt");
    let y = g.add(Op::Binary(BinaryOp::Mul), vec![x, sq], None, Span::UNKNOWN).expect("mul");
    let one = g.add(Op::Const(1.0), vec![], Some(f32(&[])), Span::UNKNOWN).expect("c");
    let z = g.add(Op::Binary(BinaryOp::Mul), vec![y, one], None, Span::UNKNOWN).expect("mul");
    g.outputs.push(("y".into(), z));
    let out = dce(&fold_constants(&g));
    verify(&out).expect("verifies");
    let ops: Vec<String> = out.nodes().iter().map(|n| n.op.mnemonic()).collect();
    assert_eq!(ops, ["input", "const", "mul"], "{out}");
    let Op::Const(v) = out.nodes()[1].op else { panic!("not a const") };
    assert_eq!(v, f64::from(5f32.sqrt()));
}

#[test]
fn the_pipeline_reports_its_passes_in_order() {
    let (mut g, x) = base();
    let y = g.add(Op::Unary(UnaryOp::Relu), vec![x], None, Span::UNKNOWN).expect("relu");
    g.outputs.push(("y".into(), y));
    let mut seen = Vec::new();
    run_pipeline(&g, |name, _| seen.push(name.to_string())).expect("runs");
    assert_eq!(seen, ["fold_constants", "dce", "optimize", "cse", "merge_projections", "cleanup"]);
}
