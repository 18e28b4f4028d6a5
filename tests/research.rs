//! The research architectures of `examples/research/` (Linformer, AFT, MatFormer, Hyena,
//! PoNet, Transformer-VQ, NaLaFormer, causal linear attention, RWKV-6, Mixture-of-Depths) against
//! NumPy references written from their papers (`tests/research/gen.py`, float64): each
//! fixture holds the parameters by Tessera name, the input and the expected outputs. Run on
//! the interpreter and on the CPU backend.

use std::collections::HashMap;
use tessera::runtime::{self, Tensor};
use tessera::{Backend, Compiler};

const TOLERANCE: f64 = 1e-4;

fn check(name: &str) {
    let dir = "tests/research/fixtures";
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/{name}.json")).expect("json")).expect("valid json");
    let tensors = runtime::read_safetensors(&format!("{dir}/{name}.safetensors")).expect("fixture");
    let part = |prefix: &str| -> HashMap<String, Tensor> {
        tensors.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone()))).collect()
    };
    let (params, inputs, expected) = (part("param."), part("input."), part("output."));
    for backend in [Backend::Interp, Backend::Cpu] {
        let mut c = Compiler::new().backend(backend);
        for (k, v) in meta["defines"].as_object().expect("defines") {
            c = c.define(k, tessera::lang::Override::parse(&v.to_string()));
        }
        let mut m = c.compile_file(&format!("examples/research/{name}.tsr")).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut declared: Vec<&str> = m.graph().params().iter().map(|(n, _)| *n).collect();
        let mut given: Vec<&str> = params.keys().map(String::as_str).collect();
        declared.sort();
        given.sort();
        assert_eq!(declared, given, "{name}: the reference and the model name the same parameters");
        m.set_params(params.clone());
        let out = m.run(&inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.len(), expected.len(), "{name}");
        for (k, got) in &out {
            let want = &expected[k];
            assert_eq!(got.shape, want.shape, "{name}.{k}");
            let err = got.to_f64().iter().zip(want.to_f64()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            println!("{name:<10} {k:<10} {backend:?}: max |Δ| = {err:.2e} (tolerance {TOLERANCE:.0e})");
            assert!(err <= TOLERANCE, "{name}.{k} ({backend:?}) differs from the NumPy reference by {err:e}");
        }
    }
}

#[test]
fn mixture_of_depths_matches_its_numpy_reference() {
    check("mixture_of_depths");
}

#[test]
fn linformer_matches_its_numpy_reference() {
    check("linformer");
}

#[test]
fn aft_matches_its_numpy_reference() {
    check("aft");
}

#[test]
fn matformer_matches_its_numpy_reference() {
    check("matformer");
}

#[test]
fn transformer_vq_matches_its_numpy_reference() {
    check("transformer_vq");
}

#[test]
fn hyena_matches_its_numpy_reference() {
    check("hyena");
}

#[test]
fn ponet_matches_its_numpy_reference() {
    check("ponet");
}

#[test]
fn nalaformer_matches_its_numpy_reference() {
    check("nalaformer");
}

#[test]
fn linear_attention_matches_its_numpy_reference() {
    check("linear_attention");
}

#[test]
fn rwkv6_matches_its_numpy_reference() {
    check("rwkv6");
}
