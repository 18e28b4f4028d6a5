//! Checkpoints that do not fit: each problem a user can bring (a missing or misshapen tensor,
//! a wrong dtype, a truncated, corrupt or ambiguous file, extra tensors, a config.json that
//! lacks a key or asks for an unimplemented variant) gets a clear error or warning naming the
//! parameter and the checkpoint tensor. Also: f16/bf16 on disk, and each weight transform.

use safetensors::Dtype;
use std::collections::HashMap;
use tessera::ir::{Graph, NameMap, Parts, WeightExpr, WeightRule};
use tessera::lang::{codes, CheckpointMap, Diagnostic};
use tessera::runtime::{self, Bound, RunError, Tensor};

const FIXTURE: &str = "tests/parity/fixtures/gpt2-a";

fn scratch(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("tessera-ck-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.to_string_lossy().into_owned()
}

/// GPT-2 elaborated with the fixture's config, and its checkpoint map.
fn gpt2_with(config: &serde_json::Value) -> (Option<Graph>, Option<CheckpointMap>, Vec<Diagnostic>) {
    let text = std::fs::read_to_string("stdlib/gpt2.tsr").expect("gpt2.tsr");
    let fe = tessera::Frontend::tsr_with_config("stdlib/gpt2.tsr", &text, None, &[], Some(config));
    (fe.graph, fe.checkpoint, fe.diagnostics)
}

fn config() -> serde_json::Value {
    tessera::hf::read_config(&format!("{FIXTURE}/config.json")).expect("config")
}

fn checkpoint() -> HashMap<String, Tensor> {
    runtime::read_safetensors(&format!("{FIXTURE}/model.safetensors")).expect("fixture weights")
}

/// Binds `ck` (written to a scratch file) to GPT-2 built from the fixture's config.
fn bind(name: &str, ck: &HashMap<String, Tensor>) -> Result<Bound, RunError> {
    let (g, map, diags) = gpt2_with(&config());
    let g = g.unwrap_or_else(|| panic!("{diags:?}"));
    let path = format!("{}/model.safetensors", scratch(name));
    let mut list: Vec<(String, Tensor)> = ck.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    list.sort_by(|a, b| a.0.cmp(&b.0));
    runtime::write_safetensors(&path, &list).expect("write");
    tessera::hf::load_weights(&g, &HashMap::from([("batch".into(), 2), ("seq".into(), 11)]), map.as_ref(), &path)
}

fn errors(r: Result<Bound, RunError>) -> String {
    match r {
        Ok(_) => panic!("expected the checkpoint to be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_fixture_binds_completely() {
    let b = bind("ok", &checkpoint()).expect("binds");
    assert!(b.unused.is_empty());
    assert_eq!(b.params.len(), 4 + 2 * 16, "wte, wpe, ln_f (2) and 16 per layer");
    // The fused c_attn is split into q | k | v along its columns: k's first column is c_attn's column 48.
    let c_attn = &checkpoint()["transformer.h.0.attn.c_attn.weight"];
    let k = &b.params["layers.0.attn.k.weight"];
    assert_eq!(k.shape, vec![48, 48]);
    assert_eq!(k.get(48), c_attn.get(144 + 48), "row 1, column 0 of k is c_attn[1, 48]");
}

#[test]
fn a_missing_tensor_names_the_parameter_and_the_checkpoint_name() {
    let mut ck = checkpoint();
    ck.remove("transformer.h.1.ln_2.bias");
    let msg = errors(bind("missing", &ck));
    assert!(msg.contains("parameter `layers.1.ln_2.bias`"), "{msg}");
    assert!(msg.contains("expected checkpoint tensor `h.1.ln_2.bias`"), "{msg}");
    assert!(msg.contains("stdlib/gpt2.tsr:"), "points at the map line: {msg}");
}

#[test]
fn a_wrong_shape_shows_both_shapes() {
    let mut ck = checkpoint();
    ck.insert("transformer.wpe.weight".into(), Tensor::f32(vec![16, 48], vec![0.0; 16 * 48]));
    let msg = errors(bind("shape", &ck));
    assert!(msg.contains("parameter `wpe.weight` has shape [32, 48]"), "{msg}");
    assert!(msg.contains("gives [16, 48]"), "{msg}");
}

#[test]
fn a_wrong_dtype_is_refused() {
    let mut ck = checkpoint();
    ck.insert("transformer.ln_f.weight".into(), Tensor::i64(vec![48], vec![1; 48]));
    let msg = errors(bind("dtype", &ck));
    assert!(msg.contains("parameter `ln_f.weight` is f32 but checkpoint tensor \"ln_f.weight\" is i64"), "{msg}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut ck = checkpoint();
    ck.remove("transformer.h.0.ln_1.weight");
    ck.remove("transformer.h.1.mlp.c_fc.bias");
    let msg = errors(bind("several", &ck));
    assert!(msg.contains("layers.0.ln_1.weight") && msg.contains("layers.1.mlp.fc_in.bias"), "{msg}");
}

#[test]
fn unused_tensors_are_listed() {
    let mut ck = checkpoint();
    ck.insert("transformer.h.0.attn.masked_bias".into(), Tensor::f32(vec![1], vec![0.0]));
    ck.insert("extra.head.weight".into(), Tensor::f32(vec![2], vec![0.0, 1.0]));
    let b = bind("unused", &ck).expect("binds");
    assert_eq!(b.unused, vec!["extra.head.weight".to_string(), "transformer.h.0.attn.masked_bias".to_string()]);
}

#[test]
fn truncated_and_corrupt_files_are_clear_errors() {
    let bytes = std::fs::read(format!("{FIXTURE}/model.safetensors")).expect("read");
    let dir = scratch("corrupt");
    let truncated = format!("{dir}/truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).expect("write");
    let msg = runtime::read_safetensors(&truncated).expect_err("truncated").to_string();
    assert!(msg.starts_with(&truncated) && msg.contains("not a valid safetensors file"), "{msg}");

    let mut garbled = bytes.clone();
    garbled[8..24].copy_from_slice(b"this is not json");
    let corrupt = format!("{dir}/corrupt.safetensors");
    std::fs::write(&corrupt, &garbled).expect("write");
    let msg = runtime::read_safetensors(&corrupt).expect_err("corrupt").to_string();
    assert!(msg.contains("not a valid safetensors file"), "{msg}");

    let tiny = format!("{dir}/tiny.safetensors");
    std::fs::write(&tiny, b"abc").expect("write");
    assert!(runtime::read_safetensors(&tiny).is_err());
    assert!(runtime::read_safetensors(&format!("{dir}/absent.safetensors")).is_err());
}

#[test]
fn a_name_given_twice_is_refused() {
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&1.0f32.to_le_bytes());
    bytes.extend_from_slice(&2.0f32.to_le_bytes());
    let path = format!("{}/dup.safetensors", scratch("dup"));
    std::fs::write(&path, bytes).expect("write");
    let msg = runtime::read_safetensors(&path).expect_err("duplicate").to_string();
    assert!(msg.contains("names tensor `a` more than once"), "{msg}");
}

/// f16 and bf16 checkpoints are widened to f32: each value is exactly its half-precision
/// rounding (computed here with the `half` crate).
#[test]
fn half_precision_checkpoints_load_as_f32() {
    let ck = checkpoint();
    let dir = scratch("half");
    type Round = fn(f32) -> (Vec<u8>, f32);
    let f16: Round = |x| (half::f16::from_f32(x).to_le_bytes().to_vec(), half::f16::from_f32(x).to_f32());
    let bf16: Round = |x| (half::bf16::from_f32(x).to_le_bytes().to_vec(), half::bf16::from_f32(x).to_f32());
    for (dtype, round) in [(Dtype::F16, f16), (Dtype::BF16, bf16)] {
        let mut expected = HashMap::new();
        let mut raw = Vec::new();
        for (name, t) in &ck {
            let (bytes, vals): (Vec<Vec<u8>>, Vec<f32>) = t.to_f64().iter().map(|&x| round(x as f32)).unzip();
            expected.insert(name.clone(), vals);
            raw.push((name.clone(), t.shape.clone(), bytes.concat()));
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> =
            raw.iter().map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(dtype, s.clone(), b).expect("view"))).collect();
        let path = format!("{dir}/{dtype:?}.safetensors");
        safetensors::serialize_to_file(views, None, std::path::Path::new(&path)).expect("write");
        let back = runtime::read_safetensors(&path).expect("reads");
        for (name, vals) in &expected {
            let got: Vec<f32> = back[name].to_f64().iter().map(|&x| x as f32).collect();
            assert_eq!(&got, vals, "{dtype:?} {name}");
        }
        // And the model runs from it.
        let (g, map, _) = gpt2_with(&config());
        let dims = HashMap::from([("batch".into(), 2), ("seq".into(), 11)]);
        let b = tessera::hf::load_weights(&g.expect("graph"), &dims, map.as_ref(), &path).expect("binds");
        assert_eq!(b.params.len(), 36);
    }
}

#[test]
fn a_config_without_a_required_key_is_an_error() {
    let mut c = config();
    c.as_object_mut().expect("object").remove("n_layer");
    let (g, _, diags) = gpt2_with(&c);
    assert!(g.is_none());
    let d = diags.iter().find(|d| d.code == codes::CONFIG_MISSING).expect("config::missing");
    assert!(d.message.contains("`n_layer`"), "{}", d.message);
}

#[test]
fn an_unsupported_config_value_is_an_error() {
    let mut c = config();
    c["activation_function"] = serde_json::json!("relu");
    let (g, _, diags) = gpt2_with(&c);
    assert!(g.is_none());
    assert!(diags.iter().any(|d| d.code == codes::CONFIG_UNSUPPORTED && d.message.contains("activation_function")), "{diags:?}");

    let text = std::fs::read_to_string("stdlib/llama.tsr").expect("llama.tsr");
    let mut c = tessera::hf::read_config("tests/parity/fixtures/llama-gqa/config.json").expect("config");
    c["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 2.0});
    let fe = tessera::Frontend::tsr_with_config("stdlib/llama.tsr", &text, None, &[], Some(&c));
    assert!(fe.graph.is_none());
    assert!(fe.diagnostics.iter().any(|d| d.code == codes::CONFIG_UNSUPPORTED && d.message.contains("rope_scaling")));
}

#[test]
fn config_values_become_hyper_parameters_and_overrides_win() {
    let (g, _, _) = gpt2_with(&config());
    let g = g.expect("graph");
    assert_eq!(g.params().iter().filter(|(n, _)| n.ends_with("ln_1.weight")).count(), 2, "n_layer = 2");
    let text = std::fs::read_to_string("stdlib/gpt2.tsr").expect("gpt2.tsr");
    let ov = vec![("layers".to_string(), tessera::lang::Override::Int(1))];
    let fe = tessera::Frontend::tsr_with_config("stdlib/gpt2.tsr", &text, None, &ov, Some(&config()));
    let g = fe.graph.expect("graph");
    assert_eq!(g.params().iter().filter(|(n, _)| n.ends_with("ln_1.weight")).count(), 1, "-D layers=1 wins");
}

/// Each transform on a small tensor, against values worked out here.
#[test]
fn weight_transforms() {
    let w = Tensor::f32(vec![4, 3], (0..12).map(|x| x as f32).collect());
    let ck = HashMap::from([("w".to_string(), w)]);
    let bind_one = |expr: WeightExpr, shape: &str| {
        let src = format!("model m() {{ param p: {shape}\n output y = p }}");
        let fe = tessera::Frontend::tsr("m.tsr", &src, None, &[]);
        let g = fe.graph.expect("graph");
        let names = NameMap { rules: vec![WeightRule { pattern: "p".into(), expr, origin: "test".into() }], ..NameMap::default() };
        runtime::bind_checkpoint(&g, &HashMap::new(), &names, &ck, "ck").map(|b| b.params["p"].to_f64())
    };
    let load = || Box::new(WeightExpr::Load("w".into()));
    assert_eq!(bind_one(WeightExpr::Transpose(load()), "[3, 4]").expect("t"), [0., 3., 6., 9., 1., 4., 7., 10., 2., 5., 8., 11.]);
    let split = |index, axis| WeightExpr::Split { of: load(), parts: tessera::ir::Parts::Equal(2), index, axis, groups: 1 };
    assert_eq!(bind_one(split(1, 0), "[2, 3]").expect("rows"), [6., 7., 8., 9., 10., 11.]);
    assert_eq!(bind_one(WeightExpr::Reshape(load(), vec![2, -1]), "[2, 6]").expect("reshape").len(), 12);
    // Interleaved rotary rows (pairs 0,1 | 2,3 within one head of 4) to halves: 0, 2, 1, 3.
    assert_eq!(bind_one(WeightExpr::RopeHalves(load(), 1), "[4, 3]").expect("rope"), [0., 1., 2., 6., 7., 8., 3., 4., 5., 9., 10., 11.]);
    let or = WeightExpr::Or(Box::new(WeightExpr::Load("absent".into())), load());
    assert_eq!(bind_one(or, "[4, 3]").expect("fallback")[11], 11.0);
    let msg = bind_one(split(0, 1), "[4, 1]").expect_err("odd split").to_string();
    assert!(msg.contains("cannot split") && msg.contains("[4, 3]"), "{msg}");
    // Unequal parts (Phi-3's qkv_proj under GQA): rows 0 | 1, 2 | 3.
    let sizes = |index| WeightExpr::Split { of: load(), parts: Parts::Sizes(vec![1, 2, 1]), index, axis: 0, groups: 1 };
    assert_eq!(bind_one(sizes(1), "[2, 3]").expect("middle"), [3., 4., 5., 6., 7., 8.]);
    assert_eq!(bind_one(sizes(2), "[1, 3]").expect("last"), [9., 10., 11.]);
    // Per-group parts (GPT-NeoX's [heads, 3, hd], here 2 groups of columns a b | c): part 1 of
    // each group of the 4 rows viewed as 2 groups of 2 -> rows 1 and 3.
    let grouped = |index| WeightExpr::Split { of: load(), parts: Parts::Equal(2), index, axis: 0, groups: 2 };
    assert_eq!(bind_one(grouped(1), "[2, 3]").expect("grouped"), [3., 4., 5., 9., 10., 11.]);
    // Falcon's [kv, heads/kv + 2, hd]: 1 group, queries (2 rows) then k, v.
    let falcon = WeightExpr::Split { of: load(), parts: Parts::Sizes(vec![2, 1, 1]), index: 0, axis: 0, groups: 1 };
    assert_eq!(bind_one(falcon, "[2, 3]").expect("falcon q"), [0., 1., 2., 3., 4., 5.]);
    let msg = bind_one(sizes(0), "[2, 3]").expect_err("shape").to_string();
    assert!(msg.contains("parameter `p`"), "{msg}");
    let bad = WeightExpr::Split { of: load(), parts: Parts::Sizes(vec![1, 2]), index: 0, axis: 0, groups: 1 };
    let msg = bind_one(bad, "[1, 3]").expect_err("sizes do not add up").to_string();
    assert!(msg.contains("parts of sizes (1, 2) (adding up to 3)") && msg.contains("[4, 3]"), "{msg}");
}

/// `split` in a checkpoint map: unequal sizes, groups, and a clear message for bad arguments.
#[test]
fn split_takes_sizes_and_groups_and_explains_bad_arguments() {
    let map = |line: &str| {
        let src = format!("model m(h = 2) {{ param p: [2, 3]\n output y = p }}\ncheckpoint m {{\n  n = 2\n  \"p\" <- {line}\n}}");
        let fe = tessera::Frontend::tsr("m.tsr", &src, None, &[]);
        (fe.checkpoint.map(|c| c.names.rules[0].expr.to_string()), tessera::render(&fe.diagnostics, &fe.sources, false, 100))
    };
    assert_eq!(map("split(\"w\", (72, 24, 24))[0]").0.as_deref(), Some("split(\"w\", (72, 24, 24), axis = 0)[0]"));
    assert_eq!(map("split(\"w\", 3, groups = n * 2)[2]").0.as_deref(), Some("split(\"w\", 3, axis = 0, groups = 4)[2]"));
    let (none, msg) = map("split(\"w\", (72, 0))[0]");
    assert!(none.is_none() && msg.contains("a part size must be a positive int, not 0"), "{msg}");
    let (_, msg) = map("split(\"w\", \"3\")[0]");
    assert!(msg.contains("a positive count or a tuple of sizes"), "{msg}");
    let (_, msg) = map("split(\"w\", (1, 2))[2]");
    assert!(msg.contains("index a split by a part number below its count"), "{msg}");
}

/// JSON arrays and Python's `Infinity`/`NaN` in config.json; list hyper-parameters from the
/// configuration and from `-D`.
#[test]
fn config_lists_and_python_constants() {
    let dir = scratch("config-lists");
    let path = format!("{dir}/config.json");
    let text =
        r#"{"a": [1, 2, 3], "kinds": ["x", "y"], "inf": Infinity, "neg": -Infinity, "nan": NaN, "s": "NaN", "o": {"k": [Infinity]}}"#;
    std::fs::write(&path, text).expect("write");
    let c = tessera::hf::read_config(&path).expect("reads Python's JSON");
    use tessera::lang::ConfigValue as V;
    assert_eq!(tessera::hf::config_value(&c, "a"), Some(V::List(vec![V::Int(1), V::Int(2), V::Int(3)])));
    assert_eq!(tessera::hf::config_value(&c, "inf"), Some(V::Float(f64::INFINITY)));
    assert_eq!(tessera::hf::config_value(&c, "neg"), Some(V::Float(f64::NEG_INFINITY)));
    assert!(matches!(tessera::hf::config_value(&c, "nan"), Some(V::Float(f)) if f.is_nan()));
    assert_eq!(tessera::hf::config_value(&c, "s"), Some(V::Str("NaN".into())), "a string stays a string");
    assert_eq!(tessera::hf::config_value(&c, "o.k"), Some(V::List(vec![V::Float(f64::INFINITY)])));

    let src = "model m(kinds = none, sizes = [1, 2]) {\n input x: [4]\n y = x\n for l in 0..2 {\n if kinds[l] == \"y\" { y = y * float(sizes[l]) }\n }\n output out = y\n}\ncheckpoint m {\n kinds = config(\"kinds\")\n sizes = [config(\"a\")[2], config(\"a\")[-3]]\n}";
    let fe = tessera::Frontend::tsr_with_config("m.tsr", src, None, &[], Some(&c));
    let g = fe.graph.unwrap_or_else(|| panic!("{}", tessera::render(&fe.diagnostics, &fe.sources, false, 100)));
    let consts: Vec<f64> = g.nodes().iter().filter_map(|n| if let tessera::ir::Op::Const(v) = n.op { Some(v) } else { None }).collect();
    assert_eq!(consts, [1.0], "kinds[1] == \"y\" scales by sizes[1] = a[-3] = 1: {consts:?}");
    let ov = vec![
        ("sizes".to_string(), tessera::lang::Override::parse("[5, 7]")),
        ("kinds".to_string(), tessera::lang::Override::parse("[\"y\", x]")),
    ];
    let fe = tessera::Frontend::tsr("m.tsr", src, None, &ov);
    let g = fe.graph.expect("graph");
    let consts: Vec<f64> = g.nodes().iter().filter_map(|n| if let tessera::ir::Op::Const(v) = n.op { Some(v) } else { None }).collect();
    assert_eq!(consts, [5.0], "-D kinds=[\"y\", x] -D sizes=[5, 7]: {consts:?}");
}

#[test]
fn cli_runs_a_hugging_face_folder_and_refuses_unknown_inputs() {
    let bin = env!("CARGO_BIN_EXE_tessera");
    let out = std::process::Command::new(bin)
        .args(["run", "stdlib/gpt2.tsr", "--hf", FIXTURE, "--inputs", &format!("{FIXTURE}/inputs.safetensors")])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("logits: f32[2, 11, 97]") && stdout.contains("non-finite=0"), "{stdout}");

    let dir = scratch("cli");
    let inputs = format!("{dir}/inputs.safetensors");
    let ids = Tensor::i64(vec![1, 3], vec![1, 2, 3]);
    runtime::write_safetensors(&inputs, &[("input_ids".into(), ids.clone()), ("position_ids".into(), ids)]).expect("write");
    let out =
        std::process::Command::new(bin).args(["run", "stdlib/gpt2.tsr", "--hf", FIXTURE, "--inputs", &inputs]).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no input named `position_ids`"));
}

/// Without a config.json, a checkpoint map's defaults (`config("rms_norm_eps", 1e-6)`) must
/// not replace the model's own (`eps = 1e-5`).
#[test]
fn without_a_config_the_model_defaults_apply() {
    let text = std::fs::read_to_string("stdlib/llama.tsr").expect("llama.tsr");
    let fe = tessera::Frontend::tsr("stdlib/llama.tsr", &text, None, &[("layers".into(), tessera::lang::Override::Int(1))]);
    let g = fe.graph.expect("graph");
    let eps: Vec<f64> = g.nodes().iter().filter_map(|n| if let tessera::ir::Op::Const(v) = n.op { Some(v) } else { None }).collect();
    assert!(eps.contains(&1e-5) && !eps.contains(&1e-6), "{eps:?}");
    assert!(fe.checkpoint.expect("map").hparams.is_empty());
}
