//! Generation: greedy tokens and step logits against Hugging Face `generate()` (fixtures
//! from `tests/parity/gen.py`), and cached decoding against recomputing the whole sequence on
//! every causal model of the standard library.

mod common;

use std::collections::HashMap;
use tessera::runtime::Tensor;
use tessera::{Backend, GenerateOptions, Precision};

const TOLERANCE: f64 = 1e-4;

use common::{i64s, prompt_rows};

#[test]
fn greedy_generation_matches_transformers() {
    let mut checked = Vec::new();
    for fx in common::fixtures() {
        let path = format!("tests/parity/fixtures/{}/generate.safetensors", fx.name);
        let Ok(want) = tessera::runtime::read_safetensors(&path) else { continue };
        let model = fx.model(Backend::Cpu, Precision::F32);
        let prompts = prompt_rows(&want["prompt_ids"], &want["prompt_mask"]);
        let tokens = i64s(&want["tokens"]);
        let n = want["tokens"].shape[1];
        let vocab = want["logits"].shape[2];
        let expected = want["logits"].to_f64();
        let mut session = model.session(256).unwrap_or_else(|e| panic!("{}: {e}", fx.name));
        let out = session.generate(&prompts, &GenerateOptions::greedy(n), |_, _| {}).unwrap_or_else(|e| panic!("{}: {e}", fx.name));
        let mut worst = 0.0f64;
        for (r, got) in out.tokens.iter().enumerate() {
            assert_eq!(got[..], tokens[r * n..(r + 1) * n], "{}: row {r}: tokens differ from transformers' generate()", fx.name);
            for (t, logits) in out.logits[r].iter().enumerate() {
                let at = (r * n + t) * vocab;
                for (j, &x) in logits.iter().enumerate() {
                    worst = worst.max((x as f64 - expected[at + j]).abs());
                }
            }
        }
        println!("{:<22} tokens equal, step logits max |Δ| = {worst:.2e}", fx.name);
        assert!(worst <= TOLERANCE, "{}: step logits differ from transformers by {worst:e}", fx.name);
        checked.push(fx.family.clone());
    }
    // Every causal family of the standard library and T5 has a reference.
    for family in ["gpt2", "llama", "mistral", "qwen2", "phi3", "gemma2", "gpt_neox", "gptj", "gpt_bigcode", "bloom", "falcon", "cohere2"] {
        assert!(checked.iter().any(|f| f == family), "no generation fixture for {family}");
    }
    for family in ["diffllama", "mamba", "falcon_mamba", "rwkv", "mamba2", "mixtral", "qwen2_moe", "jamba", "t5"] {
        assert!(checked.iter().any(|f| f == family), "no generation fixture for {family}");
    }
}

/// Families whose state cannot be derived: they see the whole sequence at once.
const BIDIRECTIONAL: &[&str] = &["bert", "modernbert", "longformer", "fnet"];

/// Cached decoding against running the whole sequence again, on `backend`: prompts of 9
/// tokens (longer than the small models' windows of 3: the window's state wraps) and of 1
/// (shorter: its first steps see slots before position 0, which must stay masked), 6 new
/// tokens each.
fn cached_equals_recomputed(backend: Backend) {
    for (family, overrides) in common::SMALL {
        if BIDIRECTIONAL.contains(family) {
            continue;
        }
        let mut model = common::small_compiler(overrides)
            .backend(backend)
            .compile_file(&format!("stdlib/{family}.tsr"))
            .unwrap_or_else(|e| panic!("{family}: {e}"));
        model.random_weights(7).expect("weights");
        let vocab = model.graph().ty(model.graph().output("logits").expect("logits")).shape[2].as_known().expect("vocab") as i64;
        let prompts: Vec<Vec<i64>> =
            [9usize, 1].iter().enumerate().map(|(r, &n)| (0..n).map(|i| (i as i64 * 7 + r as i64 * 3 + 1) % vocab).collect()).collect();
        let n = 6;
        let mut session = model.session(32).unwrap_or_else(|e| panic!("{family}: {e}"));
        let encoder_decoder = *family == "t5";
        let out = session.generate(&prompts, &GenerateOptions::greedy(n), |_, _| {}).unwrap_or_else(|e| panic!("{family}: {e}"));
        assert!(session.state_bytes() > 0, "{family}: no state");
        let mut worst = 0.0f64;
        for (r, prompt) in prompts.iter().enumerate() {
            // The whole sequence at once: the prompt (the decoder's start for T5) and the
            // tokens fed back (all but the last).
            let mut inputs = HashMap::new();
            let fed: Vec<i64> = if encoder_decoder { vec![0] } else { prompt.clone() };
            let seq: Vec<i64> = fed.iter().chain(&out.tokens[r][..n - 1]).copied().collect();
            let name = if encoder_decoder { "decoder_input_ids" } else { "input_ids" };
            inputs.insert(name.to_string(), Tensor::i64(vec![1, seq.len()], seq.clone()));
            if encoder_decoder {
                inputs.insert("input_ids".into(), Tensor::i64(vec![1, prompt.len()], prompt.clone()));
                inputs.insert("attention_mask".into(), Tensor::i64(vec![1, prompt.len()], vec![1; prompt.len()]));
            }
            for (name, v) in model.graph().inputs() {
                if !inputs.contains_key(name) {
                    let ty = model.graph().ty(v);
                    assert_eq!(ty.rank(), 2, "{family}: input {name}");
                    let data = vec![1; seq.len()];
                    inputs.insert(name.to_string(), Tensor::i64(vec![1, seq.len()], data));
                }
            }
            let full = model.run(&inputs).unwrap_or_else(|e| panic!("{family}: {e}"));
            let logits = &full.iter().find(|(k, _)| k == "logits").expect("logits").1;
            let all = logits.to_f64();
            let v = logits.shape[2];
            let scale = all.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            for t in 0..n {
                let at = (fed.len() - 1 + t) * v;
                let step = &out.logits[r][t];
                let d = step.iter().enumerate().map(|(j, &x)| (x as f64 - all[at + j]).abs()).fold(0.0, f64::max) / scale;
                worst = worst.max(d);
            }
        }
        println!("{family:<14} cached vs recomputed: max relative |Δ| = {worst:.2e}");
        assert!(worst <= TOLERANCE, "{family}: cached decoding differs from recomputation by {worst:e} (relative)");
    }
}

/// A sliding window keeps only its own positions: Mistral's window of 3 keeps 2 per layer.
#[test]
fn a_window_keeps_a_bounded_state() {
    let overrides = common::SMALL.iter().find(|(f, _)| *f == "mistral").expect("small").1;
    let model = common::small_compiler(overrides).compile_file("stdlib/mistral.tsr").expect("compiles");
    let session = model.session(64).expect("session");
    let states = &session.generation().states;
    assert_eq!(states.len(), 4);
    for s in states {
        assert_eq!(s.ty.shape[3], tessera::ir::Dim::known(2), "{}: {}", s.name, s.ty);
    }
}

#[test]
fn cached_decoding_equals_recomputation_on_the_cpu() {
    cached_equals_recomputed(Backend::Cpu);
}

#[test]
fn cached_decoding_equals_recomputation_on_the_interpreter() {
    cached_equals_recomputed(Backend::Interp);
}

#[test]
fn encoders_cannot_generate() {
    for family in BIDIRECTIONAL {
        let overrides = common::SMALL.iter().find(|(f, _)| f == family).expect("small").1;
        let model = common::small_compiler(overrides).compile_file(&format!("stdlib/{family}.tsr")).expect("compiles");
        let err = model.session(16).err().unwrap_or_else(|| panic!("{family}: a session for an encoder")).to_string();
        assert_eq!(err, "generation needs an output called `logits`", "{family}");
    }
}

/// A language model whose state cannot be derived gets an error naming the op and its line.
#[test]
fn underivable_state_is_an_error_naming_the_op() {
    let cases = [
        ("x = x + nn.attention(x, 2) as attn", "m.tsr:8:11", "lets a position see later ones"),
        ("x = x + cumsum(x, 1)", "m.tsr:8:11", "`cumsum` mixes positions along `seq`"),
        ("x = x + mean(x, 1, keepdim = true)", "m.tsr:8:11", "mixes positions along `seq`"),
        ("x = x + (param tt: [2, d])[token_types]", "m.tsr:5:9", "the input `token_types` varies along `seq`"),
    ];
    for (line, at, what) in cases {
        let src = format!(
            "import nn\n\nmodel m(vocab = 11, d = 8) {{\n  input input_ids: i64[batch, seq]\n  input token_types: i64[batch, seq]\n  param embed: [vocab, d]\n  x = embed[input_ids]\n  {line}\n  output logits = x @ embed.T\n}}\n"
        );
        let dir = std::env::temp_dir().join(format!("tessera-gen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("m.tsr");
        std::fs::write(&path, src).expect("write");
        std::fs::copy("stdlib/nn.tsr", dir.join("nn.tsr")).expect("nn");
        let model = tessera::Compiler::new().compile_file(path.to_str().expect("path")).unwrap_or_else(|e| panic!("{line}: {e}"));
        let err = model.session(16).err().unwrap_or_else(|| panic!("{line}: derived")).to_string();
        println!("{err}");
        assert!(err.contains(what), "{line}: {err}");
        assert!(err.contains(at) || what.contains("later"), "{line}: {err}");
        if !line.contains("token_types") {
            // An unused per-position input is no obstacle.
            assert!(!err.contains("token_types"), "{err}");
        }
    }
}

fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).output().expect("runs");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `tessera generate --hf DIR "text"`: a folder with a word-level tokenizer.json the test
/// writes (words `w0` .. `w96`) over the llama-gqa fixture's weights; the text printed is the
/// greedy continuation the API computes from the same ids.
#[test]
fn cli_generates_text_through_a_tokenizer() {
    let fx = "tests/parity/fixtures/llama-gqa";
    let dir = std::env::temp_dir().join(format!("tessera-gen-text-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(format!("{fx}/{f}"), dir.join(f)).expect("copy");
    }
    let vocab: Vec<String> = (0..97).map(|i| format!("\"w{i}\": {i}")).collect();
    let tokenizer = format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {{"type": "Whitespace"}}, "post_processor": null, "decoder": null,
            "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "w0"}}}}"#,
        vocab.join(", ")
    );
    std::fs::write(dir.join("tokenizer.json"), tokenizer).expect("tokenizer");
    let d = dir.to_str().expect("path");
    let (code, out, err) = cli(&["generate", "--hf", d, "--max-new-tokens", "5", "w5 w17 w42 w8"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("model: stdlib/llama.tsr"), "{err}");
    let mut model = tessera::Compiler::new()
        .config_file(&format!("{fx}/config.json"))
        .expect("config")
        .compile_file("stdlib/llama.tsr")
        .expect("model");
    model.load_weights(&format!("{fx}/model.safetensors")).expect("weights");
    let want =
        model.session(16).expect("session").generate(&[vec![5, 17, 42, 8]], &GenerateOptions::greedy(5), |_, _| {}).expect("generates");
    let words: Vec<String> = want.tokens[0].iter().map(|t| format!("w{t}")).collect();
    assert_eq!(out.trim(), words.join(" "), "stderr: {err}");
    // Two prompts: one line each, the prompt then its continuation.
    let (code, out, err) = cli(&["generate", "--hf", d, "--max-new-tokens", "2", "w5 w17 w42 w8", "w3"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with(&format!("0: w5 w17 w42 w8{} {}", words[0], words[1])), "{out}");
    // Mistakes are errors, exit 1, with a message.
    for (args, msg) in [
        (vec!["generate", "--hf", d], "give a prompt"),
        (vec!["generate", "--hf", d, "w1", "--inputs", "x.safetensors"], "not both"),
        (vec!["generate", "stdlib/llama.tsr", "-D", "layers=1", "hello"], "need --hf"),
        (
            vec!["generate", "stdlib/bert.tsr", "-D", "layers=1", "--inputs", "tests/parity/fixtures/bert-a/inputs.safetensors"],
            "needs an output called `logits`",
        ),
        (vec!["generate", "--hf", d, "--max-len", "3", "w5 w17 w42 w8"], "the state holds 3"),
    ] {
        let (code, _, err) = cli(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
    }
}

/// `tessera generate` with ids in and tokens and logits out equals the fixture's `generate()`.
#[test]
fn cli_generates_ids_to_a_file() {
    let fx = "tests/parity/fixtures/mistral-w4";
    let out = std::env::temp_dir().join(format!("tessera-gen-ids-{}.safetensors", std::process::id()));
    let o = out.to_str().expect("path");
    let (code, _, err) = cli(&[
        "generate",
        "stdlib/mistral.tsr",
        "--config",
        &format!("{fx}/config.json"),
        "--weights",
        &format!("{fx}/model.safetensors"),
        "--inputs",
        &format!("{fx}/inputs.safetensors"),
        "--max-new-tokens",
        "6",
        "--out",
        o,
    ]);
    assert_eq!(code, Some(0), "{err}");
    let got = tessera::runtime::read_safetensors(o).expect("out");
    let want = tessera::runtime::read_safetensors(&format!("{fx}/generate.safetensors")).expect("reference");
    assert_eq!(i64s(&got["tokens"]), i64s(&want["tokens"]));
    assert_eq!(got["logits"].shape, want["logits"].shape);
    let d = common::max_abs_diff(&got["logits"], &want["logits"]);
    assert!(d <= TOLERANCE, "logits differ by {d}");
    // `run --hf DIR` and `generate --hf DIR` without a model file take the config's model type.
    let (code, _, err) = cli(&["run", "--hf", fx, "--inputs", &format!("{fx}/inputs.safetensors")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("model: stdlib/mistral.tsr (from `model_type`"), "{err}");
    let (code, _, err) =
        cli(&["generate", "--hf", fx, "--inputs", &format!("{fx}/inputs.safetensors"), "--max-new-tokens", "2", "--repeat", "2"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("median of 2 runs"), "{err}");
}

fn small(family: &str) -> tessera::Model {
    let overrides = common::SMALL.iter().find(|(f, _)| *f == family).expect("small").1;
    let mut m = common::small_compiler(overrides).compile_file(&format!("stdlib/{family}.tsr")).expect("compiles");
    m.random_weights(3).expect("weights");
    m
}

/// Sampling: seeded (the same seed, the same tokens), `top_k = 1` and a tiny `top_p` are
/// greedy, and an end token stops its row (the rest is `pad`) while the other row goes on.
#[test]
fn sampling_and_stopping() {
    let model = small("llama");
    let prompts = vec![vec![1i64, 2, 3], vec![4, 5, 6, 7]];
    let run = |opts: &GenerateOptions| model.session(32).expect("session").generate(&prompts, opts, |_, _| {}).expect("generates");
    let greedy = run(&GenerateOptions::greedy(8));
    let hot = GenerateOptions { temperature: 5.0, seed: 11, ..GenerateOptions::greedy(8) };
    let (a, b) = (run(&hot), run(&hot));
    assert_eq!(a.tokens, b.tokens, "the same seed samples the same tokens");
    let other = run(&GenerateOptions { seed: 12, ..hot.clone() });
    assert_ne!(a.tokens, other.tokens, "another seed samples other tokens (97 choices, temperature 5)");
    assert_ne!(a.tokens, greedy.tokens, "sampling at temperature 5 is not greedy");
    assert_eq!(run(&GenerateOptions { top_k: 1, ..hot.clone() }).tokens, greedy.tokens, "top_k = 1 is greedy");
    assert_eq!(run(&GenerateOptions { top_p: 1e-6, ..hot.clone() }).tokens, greedy.tokens, "a tiny top_p is greedy");
    // Row 0 stops at its third token; row 1 does not meet it (or meets it later).
    let stop = greedy.tokens[0][2];
    let out = run(&GenerateOptions { eos: vec![stop], pad: -1, ..GenerateOptions::greedy(8) });
    assert_eq!(out.tokens[0][..3], greedy.tokens[0][..3]);
    assert!(out.tokens[0][3..].iter().all(|&t| t == -1), "{:?}", out.tokens[0]);
    assert_eq!(out.logits[0].len(), 3);
    let first_stop = greedy.tokens[1].iter().position(|&t| t == stop).map_or(8, |i| i + 1);
    assert_eq!(out.tokens[1][..first_stop], greedy.tokens[1][..first_stop]);
}

/// Misuse of a session is an error, never a panic.
#[test]
fn session_misuse_is_an_error() {
    let model = small("gpt2");
    let mut s = model.session(8).expect("session");
    assert!(s.step(&[1]).expect_err("step first").to_string().contains("before `prefill`"));
    let mut inputs = HashMap::new();
    inputs.insert("input_ids".to_string(), Tensor::i64(vec![2, 9], vec![1; 18]));
    assert!(s.prefill(&inputs).expect_err("too long").to_string().contains("state holds 8"));
    inputs.insert("input_ids".to_string(), Tensor::i64(vec![2, 8], vec![1; 16]));
    s.prefill(&inputs).expect("prefill");
    assert!(s.step(&[1]).expect_err("one token for two rows").to_string().contains("1 tokens for 2 rows"));
    assert!(s.step(&[1, 2]).expect_err("full").to_string().contains("the state is full"));
    // A token outside the vocabulary: an error naming the input, and the session still works.
    let mut s = model.session(8).expect("session");
    inputs.insert("input_ids".to_string(), Tensor::i64(vec![2, 3], vec![1; 6]));
    s.prefill(&inputs).expect("prefill");
    let e = s.step(&[1, 100_000]).expect_err("out of range").to_string();
    assert!(e.contains("input_ids") || e.contains("out of range") || e.contains("outside"), "{e}");
    s.step(&[1, 2]).expect("the state is intact after a refused step");
    assert!(model.session(8).expect("s").generate(&[vec![]], &GenerateOptions::greedy(2), |_, _| {}).is_err());
}

/// `tessera ir --emit state` for the four families the issue names: attention caches (GQA:
/// KV heads only), a window's bounded state, T5's cache and cross-attention states, Mamba's
/// convolution tail and recurrent state.
#[test]
fn emit_state_lists_the_derived_state() {
    let cases: [(&str, &[&str], &[&str]); 4] = [
        (
            "stdlib/llama.tsr",
            &["-D", "layers=1", "-D", "kv_heads=2"],
            &["state.layers.0.k  keys of causal attention", "f32[batch, 2, 1, past, 128]", "1.0 KiB per position"],
        ),
        (
            "stdlib/mistral.tsr",
            &["-D", "layers=1", "-D", "window=16"],
            &["f32[batch, 8, 1, 15, 128]", "60.0 KiB per row", "0 B per position + 120.0 KiB"],
        ),
        (
            "stdlib/t5.tsr",
            &["-D", "layers=1", "-D", "decoder_layers=1"],
            &["keys of causal attention", "cross-attention keys (once)", "per `seq` position"],
        ),
        (
            "stdlib/mamba.tsr",
            &["-D", "layers=1"],
            &[
                "causal convolution inputs      f32[batch, 3, 1536]",
                "recurrent state                f32[batch, 1536, 16]",
                "0 B per position + 114.0 KiB",
            ],
        ),
    ];
    for (file, defines, wants) in cases {
        let mut args = vec!["ir", file, "--emit", "state"];
        args.extend(defines);
        let (code, out, err) = cli(&args);
        assert_eq!(code, Some(0), "{file}: {err}");
        for want in wants {
            assert!(out.contains(want), "{file}: no `{want}` in\n{out}");
        }
    }
    let (code, _, err) = cli(&["ir", "stdlib/bert.tsr", "-D", "layers=1", "--emit", "state"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("needs an output called `logits`"), "{err}");
}
