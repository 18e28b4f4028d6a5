//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::collections::HashMap;
use tessera::ir::Graph;
use tessera::lang::Override;
use tessera::runtime::{self, Dims, Tensor};

/// Elaborates a `.tsr` source (panicking with the rendered diagnostics on error).
pub fn elaborate(path: &str, text: &str, overrides: &[(&str, &str)]) -> Graph {
    let ov: Vec<(String, Override)> = overrides.iter().map(|(k, v)| (k.to_string(), Override::parse(v))).collect();
    let fe = tessera::Frontend::tsr(path, text, None, &ov);
    match fe.graph {
        Some(g) => {
            tessera::ir::verify(&g).expect("elaborated IR verifies");
            g
        }
        None => panic!("{}", tessera::render(&fe.diagnostics, &fe.sources, false, 100)),
    }
}

pub fn stdlib(name: &str, overrides: &[(&str, &str)]) -> Graph {
    let path = format!("stdlib/{name}.tsr");
    let text = std::fs::read_to_string(&path).expect("stdlib file");
    elaborate(&path, &text, overrides)
}

/// Runs a graph on the interpreter with seeded random parameters and inputs.
pub fn run_random(g: &Graph, dims: &[(&str, i64)], seed: u64) -> Vec<(String, Tensor)> {
    let dims: Dims = dims.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let params = runtime::random_params(g, &dims, seed).expect("params");
    let inputs = runtime::random_inputs(g, &dims, seed, &HashMap::new()).expect("inputs");
    runtime::run(g, &dims, &inputs, &params).expect("runs")
}

pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape, b.shape);
    let scale = a.to_f64().iter().fold(1e-6f64, |m, x| m.max(x.abs()));
    a.to_f64().iter().zip(b.to_f64()).map(|(x, y)| (x - y).abs() / scale).fold(0.0, f64::max)
}

/// Every stdlib model at a small size (odd widths, 2–3 layers).
pub const SMALL: &[(&str, &[(&str, &str)])] = &[
    ("gpt2", &[("layers", "2"), ("d", "32"), ("heads", "4"), ("vocab", "97"), ("max_pos", "64")]),
    ("llama", &[("layers", "2"), ("d", "48"), ("heads", "6"), ("kv_heads", "2"), ("hidden", "80"), ("vocab", "97")]),
    ("bert", &[("layers", "2"), ("d", "48"), ("heads", "3"), ("hidden", "64"), ("vocab", "97"), ("max_pos", "64")]),
    ("mistral", &[("layers", "2"), ("d", "48"), ("heads", "6"), ("kv_heads", "2"), ("hidden", "80"), ("vocab", "97"), ("window", "3")]),
    (
        "modernbert",
        &[("layers", "3"), ("d", "48"), ("heads", "3"), ("hidden", "80"), ("vocab", "97"), ("local", "4"), ("global_every", "2")],
    ),
    ("t5", &[("layers", "2"), ("d", "48"), ("heads", "3"), ("d_kv", "20"), ("d_ff", "80"), ("vocab", "97"), ("gated", "true")]),
];

/// Every model of the standard library.
pub const MODELS: &[&str] = &["gpt2", "llama", "mistral", "bert", "modernbert", "t5"];

/// Sizes of the symbolic dimensions used with [`SMALL`].
pub const DIMS: &[(&str, i64)] = &[("batch", 2), ("seq", 7), ("dec_seq", 5)];

/// How many ops of the graph have this mnemonic.
pub fn count(g: &Graph, mnemonic: &str) -> usize {
    g.nodes().iter().filter(|n| n.op.mnemonic() == mnemonic).count()
}
