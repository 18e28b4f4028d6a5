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

/// The largest difference relative to `a`'s largest magnitude; infinite where one side is NaN
/// and the other not (a NaN difference would be skipped by `f64::max`).
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape, b.shape);
    let scale = a.to_f64().iter().filter(|x| x.is_finite()).fold(1e-6f64, |m, x| m.max(x.abs()));
    a.to_f64()
        .iter()
        .zip(b.to_f64())
        .map(|(x, y)| match (x.is_nan(), y.is_nan()) {
            (true, true) => 0.0,
            (false, false) if x == &y => 0.0,
            (false, false) => (x - y).abs() / scale,
            _ => f64::INFINITY,
        })
        .fold(0.0, f64::max)
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
    (
        "qwen2",
        &[
            ("layers", "2"),
            ("d", "48"),
            ("heads", "6"),
            ("kv_heads", "2"),
            ("hidden", "80"),
            ("vocab", "97"),
            ("window", "3"),
            ("layer_types", "[full_attention, sliding_attention]"),
        ],
    ),
    ("phi3", &[("layers", "2"), ("d", "48"), ("heads", "6"), ("kv_heads", "2"), ("hidden", "80"), ("vocab", "97"), ("rotary", "0.5")]),
    (
        "gemma2",
        &[
            ("layers", "2"),
            ("d", "48"),
            ("heads", "4"),
            ("kv_heads", "2"),
            ("head_dim", "16"),
            ("hidden", "80"),
            ("vocab", "97"),
            ("window", "3"),
            ("attn_cap", "5.0"),
            ("final_cap", "10.0"),
            ("query_scalar", "20.0"),
        ],
    ),
    ("gpt_neox", &[("layers", "2"), ("d", "48"), ("heads", "4"), ("hidden", "80"), ("vocab", "97"), ("rotary", "0.25")]),
    ("gptj", &[("layers", "2"), ("d", "48"), ("heads", "4"), ("rotary_dim", "8"), ("vocab", "97")]),
    ("gpt_bigcode", &[("layers", "2"), ("d", "48"), ("heads", "4"), ("vocab", "97"), ("max_pos", "64")]),
    ("bloom", &[("layers", "2"), ("d", "48"), ("heads", "6"), ("vocab", "97")]),
    (
        "falcon",
        &[("layers", "2"), ("d", "48"), ("heads", "6"), ("kv_heads", "2"), ("new_arch", "true"), ("two_norms", "true"), ("vocab", "97")],
    ),
    (
        "cohere2",
        &[
            ("layers", "2"),
            ("d", "48"),
            ("heads", "4"),
            ("kv_heads", "2"),
            ("hidden", "80"),
            ("vocab", "97"),
            ("window", "3"),
            ("layer_types", "[sliding_attention, full_attention]"),
        ],
    ),
    ("diffllama", &[("layers", "2"), ("d", "48"), ("heads", "4"), ("kv_heads", "2"), ("hidden", "80"), ("vocab", "97")]),
    (
        "longformer",
        &[("layers", "2"), ("d", "48"), ("heads", "3"), ("hidden", "80"), ("vocab", "97"), ("max_pos", "64"), ("windows", "[4, 6]")],
    ),
    ("fnet", &[("layers", "2"), ("d", "48"), ("hidden", "80"), ("vocab", "97"), ("max_pos", "64")]),
    ("mamba", &[("layers", "2"), ("d", "24"), ("state", "5"), ("dt_rank", "3"), ("vocab", "97")]),
    ("falcon_mamba", &[("layers", "2"), ("d", "24"), ("state", "5"), ("dt_rank", "3"), ("vocab", "97")]),
    ("rwkv", &[("layers", "2"), ("d", "24"), ("a", "16"), ("hidden", "40"), ("vocab", "97"), ("rescale", "1")]),
    ("mamba2", &[("layers", "2"), ("d", "24"), ("state", "5"), ("heads", "6"), ("head_dim", "8"), ("groups", "2"), ("vocab", "97")]),
    (
        "mixtral",
        &[("layers", "2"), ("d", "48"), ("heads", "6"), ("kv_heads", "2"), ("hidden", "40"), ("experts", "5"), ("k", "2"), ("vocab", "97")],
    ),
    (
        "qwen2_moe",
        &[
            ("layers", "3"),
            ("d", "40"),
            ("heads", "4"),
            ("kv_heads", "2"),
            ("hidden", "56"),
            ("experts", "6"),
            ("k", "3"),
            ("moe_hidden", "20"),
            ("shared_hidden", "28"),
            ("sparse_step", "2"),
            ("vocab", "97"),
        ],
    ),
    (
        "jamba",
        &[
            ("layers", "4"),
            ("d", "32"),
            ("heads", "4"),
            ("kv_heads", "2"),
            ("hidden", "40"),
            ("experts", "4"),
            ("k", "2"),
            ("attn_period", "2"),
            ("attn_offset", "1"),
            ("state", "6"),
            ("dt_rank", "4"),
            ("vocab", "97"),
        ],
    ),
];

/// Every model of the standard library.
/// Whether a stdlib family mixes tokens by a recurrence (`scan`) instead of attention: it
/// has no heads, no attention and no feed-forward block to fuse, and no CUDA lowering yet.
pub fn is_recurrent(family: &str) -> bool {
    matches!(family, "mamba" | "falcon_mamba" | "mamba2" | "rwkv")
}

/// Whether a family routes tokens to experts (its feed-forward blocks are routes).
pub fn is_moe(family: &str) -> bool {
    matches!(family, "mixtral" | "qwen2_moe" | "jamba")
}

pub const MODELS: &[&str] = &[
    "gpt2",
    "llama",
    "mistral",
    "bert",
    "modernbert",
    "t5",
    "qwen2",
    "phi3",
    "gemma2",
    "gpt_neox",
    "gptj",
    "gpt_bigcode",
    "bloom",
    "falcon",
    "cohere2",
    "diffllama",
    "longformer",
    "fnet",
    "mamba",
    "falcon_mamba",
    "rwkv",
    "mamba2",
    "mixtral",
    "qwen2_moe",
    "jamba",
];

/// Sizes of the symbolic dimensions used with [`SMALL`].
/// A compiler with a model's small hyper-parameters (an entry of [`SMALL`]) defined.
pub fn small_compiler(overrides: &[(&str, &str)]) -> tessera::Compiler {
    overrides.iter().fold(tessera::Compiler::new(), |c, (k, v)| c.define(k, Override::parse(v)))
}

pub const DIMS: &[(&str, i64)] = &[("batch", 2), ("seq", 7), ("dec_seq", 5)];

/// How many ops of the graph have this mnemonic.
/// How many nodes of `g` and of its regions (scan and route bodies) are `mnemonic` ops.
pub fn count(g: &Graph, mnemonic: &str) -> usize {
    g.nodes().iter().map(|n| usize::from(n.op.mnemonic() == mnemonic) + n.op.region().map_or(0, |b| count(b, mnemonic))).sum()
}

/// Max |a − b| over the positions the attention mask marks real (for outputs laid out
/// [batch, seq, ...] with the mask's seq), else over everything.
pub fn masked_max_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    assert_eq!(a.shape, b.shape);
    let (bsz, seq) = (mask.shape[0], mask.shape[1]);
    let per_pos = if a.shape.len() >= 2 && a.shape[0] == bsz && a.shape[1] == seq { a.len() / (bsz * seq) } else { 0 };
    let (av, bv) = (a.to_f64(), b.to_f64());
    (0..a.len()).filter(|&i| per_pos == 0 || mask.get(i / per_pos) != 0.0).map(|i| (av[i] - bv[i]).abs()).fold(0.0, f64::max)
}

/// Max |a − b| over every element.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape, b.shape);
    a.to_f64().iter().zip(b.to_f64()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// One parity fixture of `tests/parity/fixtures` (made by `tests/parity/gen.py`).
pub struct Fixture {
    /// The folder name (`gpt2-a`, ...).
    pub name: String,
    /// The stdlib model family.
    pub family: String,
    pub inputs: HashMap<String, Tensor>,
    /// What `transformers` computed.
    pub expected: HashMap<String, Tensor>,
}

impl Fixture {
    /// The model compiled with the fixture's config for `backend` and `precision`, its
    /// weights loaded (every checkpoint tensor used).
    pub fn model(&self, backend: tessera::Backend, precision: tessera::Precision) -> tessera::Model {
        let d = format!("tests/parity/fixtures/{}", self.name);
        let mut m = tessera::Compiler::new()
            .backend(backend)
            .precision(precision)
            .config_file(&format!("{d}/config.json"))
            .expect("config")
            .compile_file(&format!("stdlib/{}.tsr", self.family))
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        assert!(m.load_weights(&format!("{d}/model.safetensors")).expect("weights").is_empty());
        m
    }

    /// The largest difference from `transformers` over the real positions of each expected
    /// output (every position for a model without an attention mask, such as FNet), by name.
    pub fn errors(&self, out: &[(String, Tensor)]) -> Vec<(String, f64)> {
        let mask = self.inputs.get("attention_mask");
        let mut names: Vec<&String> = self.expected.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|k| {
                let got = &out.iter().find(|(n, _)| n == k).unwrap_or_else(|| panic!("{}: no output `{k}`", self.name)).1;
                assert!(got.to_f64().iter().all(|x| x.is_finite()), "{}: `{k}` has non-finite values", self.name);
                let want = &self.expected[k];
                (k.clone(), mask.map_or_else(|| max_abs_diff(got, want), |m| masked_max_diff(got, want, m)))
            })
            .collect()
    }
}

/// The parity fixtures of the stdlib models, in name order.
pub fn fixtures() -> Vec<Fixture> {
    let mut names: Vec<String> = std::fs::read_dir("tests/parity/fixtures")
        .expect("fixtures folder")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.split('-').next().is_some_and(|f| MODELS.contains(&f)))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let d = format!("tests/parity/fixtures/{name}");
            Fixture {
                family: name.split('-').next().unwrap_or_default().to_string(),
                inputs: runtime::read_safetensors(&format!("{d}/inputs.safetensors")).expect("inputs"),
                expected: runtime::read_safetensors(&format!("{d}/expected.safetensors")).expect("expected"),
                name,
            }
        })
        .collect()
}

/// The elements of an i64 tensor.
pub fn i64s(t: &Tensor) -> Vec<i64> {
    match &t.data {
        runtime::Data::I64(v) => v.clone(),
        _ => panic!("not i64"),
    }
}

/// The rows of a padded `[batch, S]` prompt without their padding (the positions `mask`
/// marks real): a `generate.safetensors` fixture's prompts.
pub fn prompt_rows(ids: &Tensor, mask: &Tensor) -> Vec<Vec<i64>> {
    let (ids, mask, s) = (i64s(ids), i64s(mask), ids.shape[1]);
    (0..ids.len() / s).map(|r| (0..s).filter(|&j| mask[r * s + j] != 0).map(|j| ids[r * s + j]).collect()).collect()
}

/// The interpreter and every backend of this build that runs on this machine's CPU
/// (Cranelift always; LLVM and MLIR with their features).
pub fn host_backends() -> Vec<tessera::Backend> {
    use tessera::Backend;
    let mut backends = vec![Backend::Interp, Backend::Cpu];
    if cfg!(feature = "llvm") {
        backends.push(Backend::Llvm);
    }
    if cfg!(feature = "mlir") {
        backends.push(Backend::Mlir);
    }
    backends
}
