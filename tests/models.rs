//! Every stdlib model: elaborates, round-trips through the IR text, runs on the interpreter
//! with random weights to finite outputs of the expected shapes, and gives the same outputs
//! after the pass pipeline.

mod common;
use common::*;

#[test]
fn ir_text_round_trips_for_every_stdlib_model() {
    for name in MODELS {
        for overrides in [&[("layers", "2")][..], &[]] {
            let g = stdlib(name, overrides);
            let text = g.to_string();
            let back = tessera::ir::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(back, g, "{name}: parse(print(g)) != g");
            assert_eq!(back.to_string(), text);
        }
    }
}

#[test]
fn every_stdlib_file_is_tested() {
    let mut files: Vec<String> = std::fs::read_dir("stdlib")
        .expect("stdlib")
        .filter_map(|e| e.ok()?.path().file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|n| n != "nn")
        .collect();
    files.sort();
    let mut listed: Vec<String> = MODELS.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed, "add new stdlib models to MODELS and SMALL");
    assert_eq!(SMALL.len(), MODELS.len());
}

#[test]
fn every_stdlib_model_runs_to_finite_outputs_of_the_right_shape() {
    for (name, ov) in SMALL {
        let g = stdlib(name, ov);
        let out = run_random(&g, DIMS, 1);
        let expect: &[(&str, &[usize])] = match *name {
            "bert" | "modernbert" | "t5" | "longformer" | "fnet" => &[],
            _ => &[("logits", &[2, 7, 97])],
        };
        let expect: &[(&str, &[usize])] = match *name {
            "bert" | "longformer" | "fnet" => &[("last_hidden_state", &[2, 7, 48]), ("pooler_output", &[2, 48])],
            "modernbert" => &[("last_hidden_state", &[2, 7, 48])],
            "t5" => &[("encoder_last_hidden_state", &[2, 7, 48]), ("logits", &[2, 5, 97])],
            _ => expect,
        };
        assert_eq!(out.len(), expect.len(), "{name}");
        for ((n, t), (en, es)) in out.iter().zip(expect) {
            assert_eq!((n.as_str(), t.shape.as_slice()), (*en, *es), "{name}");
            assert!(t.to_f64().iter().all(|x| x.is_finite()), "{name}.{n} has non-finite values");
            assert!(t.to_f64().iter().any(|x| *x != 0.0), "{name}.{n} is all zeros");
        }
    }
}

#[test]
fn the_pass_pipeline_preserves_every_model_s_outputs() {
    for (name, ov) in SMALL {
        let g = stdlib(name, ov);
        let opt = tessera::passes::run_pipeline(&g, |_, _| {}).expect("pipeline verifies");
        assert!(opt.len() < g.len(), "{name}: the pipeline removed nothing ({} nodes)", g.len());
        // FNet has no attention: its tokens are mixed by Fourier transforms. Mamba mixes them by
        // a scan and has no feed-forward block.
        match *name {
            n if common::is_recurrent(n) => assert!(count(&opt, "scan") > 0, "{name}: no scan"),
            _ => assert!((count(&opt, "attention") > 0 || *name == "fnet") && count(&opt, "ffn") > 0, "{name}: nothing fused"),
        }
        let before = run_random(&g, DIMS, 3);
        let after = run_random(&opt, DIMS, 3);
        for ((n, a), (_, b)) in before.iter().zip(&after) {
            let d = max_rel_diff(a, b);
            assert!(d <= 1e-5, "{name}.{n}: relative difference {d}");
        }
    }
}

#[test]
fn parameters_have_hierarchical_names() {
    let g = stdlib("llama", &[("layers", "2")]);
    let names: Vec<&str> = g.params().iter().map(|(n, _)| *n).collect();
    for want in [
        "embed_tokens",
        "layers.0.input_layernorm.weight",
        "layers.1.self_attn.q.weight",
        "layers.1.mlp.down.weight",
        "norm.weight",
        "lm_head",
    ] {
        assert!(names.contains(&want), "missing {want} in {names:?}");
    }
}

#[test]
fn dims_and_layers_work_the_same_on_every_model() {
    for name in MODELS {
        let path = format!("stdlib/{name}.tsr");
        // FNet and Mamba have no heads (no attention).
        let heads: &[&str] = match *name {
            // Mamba-2's heads tile the inner size (2 × 32).
            "mamba2" => &["-D", "heads=4", "-D", "head_dim=16"],
            n if n == "fnet" || common::is_recurrent(n) => &[],
            _ => &["-D", "heads=8"],
        };
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["run", &path, "-D", "layers=1", "-D", "d=32", "-D", "vocab=50", "--dim", "seq=37", "--dim", "batch=2"])
            .args(heads)
            .output()
            .expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("[2, 37, ") && stdout.contains("non-finite=0"), "{name}: {stdout}");
    }
}
