//! The e-graph optimizer on whole models: one fused attention per attention layer and one
//! fused feed-forward per FFN in every stdlib model (with golden dumps in
//! `tests/filetests/opt/`, re-blessed by `TESSERA_BLESS=1`), a user-invented attention variant
//! fusing too, and the mask analysis skipping exactly the tiles a mask rules out.

mod common;
use common::*;
use tessera::ir::{Graph, Op, ScoreFn, TileClass};

fn optimized(g: &Graph) -> (Graph, tessera::passes::Report) {
    tessera::passes::run_pipeline_with_report(g, |_, _| {}).expect("pipeline verifies")
}

fn layers(ov: &[(&str, &str)]) -> usize {
    ov.iter().find(|(k, _)| *k == "layers").and_then(|(_, v)| v.parse().ok()).expect("layers")
}

#[test]
fn every_stdlib_model_fuses_one_attention_and_one_ffn_per_layer() {
    for (name, ov) in SMALL {
        let (opt, report) = optimized(&stdlib(name, ov));
        let l = layers(ov);
        // T5: self-attention in both stacks plus cross-attention in the decoder; DiffLlama: two
        // attention maps per layer; Longformer: local and global attention per layer; FNet: no
        // attention (Fourier mixing).
        let (attn, ffn) = match *name {
            "t5" => (3 * l, 2 * l),
            "diffllama" | "longformer" => (2 * l, l),
            "fnet" => (0, l),
            // Recurrent families: a scan per layer instead of attention, no feed-forward block.
            n if is_recurrent(n) => {
                assert_eq!(count(&opt, "scan"), l, "{name}: scans\n{opt}");
                (0, 0)
            }
            // A route's expert is a fused feed-forward inside its body; Qwen2-MoE's sparse
            // layers have a shared expert beside it.
            "qwen2_moe" => (l, l + count(&opt, "route")),
            // Jamba (SMALL: attention at layers 1 and 3, Mamba at 0 and 2): a feed-forward per
            // layer, two of them routed.
            "jamba" => {
                assert_eq!(count(&opt, "scan"), l / 2, "{name}: scans\n{opt}");
                (l / 2, l)
            }
            _ => (l, l),
        };
        assert!(!is_moe(name) || count(&opt, "route") > 0, "{name}: no route\n{opt}");
        assert_eq!(count(&opt, "attention"), attn, "{name}: fused attentions\n{opt}");
        assert_eq!(count(&opt, "ffn"), ffn, "{name}: fused FFNs\n{opt}");
        // The one softmax left is each router's gate (over the experts, not attention scores).
        let gates = count(&opt, "route");
        assert_eq!(count(&opt, "softmax") + count(&opt, "reduce_max"), gates, "{name}: a softmax was left unfused\n{opt}");
        assert!(report.stop == "saturated", "{name}: {}", report.header());
        let explained = report.fusions.iter().filter(|f| f.what.starts_with("attention(")).count();
        assert_eq!(explained, attn, "{name}: --explain lists every attention");
    }
}

/// How many `softmax(..) @ v` products a graph holds as elaborated: matmuls whose left
/// operand is a normalised exponential (`exp(..) / sum`).
fn attentions_written(g: &Graph) -> usize {
    let nodes = g.nodes();
    let is = |v: tessera::ir::ValueId, m: &str| nodes[v.index()].op.mnemonic() == m;
    nodes.iter().filter(|n| n.op == Op::MatMul && is(n.inputs[0], "div") && is(nodes[n.inputs[0].index()].inputs[0], "exp")).count()
}

/// With each parity fixture's config.json (real layer patterns: Qwen2's full and sliding
/// layers, Gemma-2's alternation, Cohere-2's NoPE layers), every attention fuses.
#[test]
fn every_attention_of_every_parity_fixture_fuses() {
    for fx in fixtures() {
        let (path, dir) = (format!("stdlib/{}.tsr", fx.family), format!("tests/parity/fixtures/{}", fx.name));
        let text = std::fs::read_to_string(&path).expect("stdlib file");
        let config = tessera::hf::read_config(&format!("{dir}/config.json")).expect("config");
        let g = tessera::Frontend::tsr_with_config(&path, &text, None, &[], Some(&config)).graph.expect("elaborates");
        let (opt, report) = optimized(&g);
        let written = attentions_written(&g);
        assert!(written > 0 || fx.family == "fnet" || is_recurrent(&fx.family), "{}: no attention", fx.name);
        assert_eq!(
            count(&opt, "attention"),
            written,
            "{}: {} of {written} attentions fused\n{}",
            fx.name,
            count(&opt, "attention"),
            report.header()
        );
    }
}

#[test]
fn optimized_dumps_match_the_golden_files_and_read_back() {
    let bless = std::env::var_os("TESSERA_BLESS").is_some();
    let mut failures = Vec::new();
    for (name, ov) in SMALL {
        let one: Vec<(&str, &str)> = ov.iter().map(|&(k, v)| if k == "layers" { (k, "1") } else { (k, v) }).collect();
        let (opt, _) = optimized(&stdlib(name, &one));
        let text = opt.to_string();
        let back = tessera::ir::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back, opt, "{name}: the optimized dump does not read back to the same graph");
        let path = format!("tests/filetests/opt/{name}.tir");
        if bless {
            std::fs::create_dir_all("tests/filetests/opt").expect("dir");
            std::fs::write(&path, &text).expect("write");
        } else if std::fs::read_to_string(&path).unwrap_or_default() != text {
            failures.push(path);
        }
    }
    assert!(failures.is_empty(), "{failures:?} differ; re-bless with TESSERA_BLESS=1 cargo test --test optimize");
}

/// The score function of the `nth` fused attention of a model.
fn score_fn(name: &str, ov: &[(&str, &str)], nth: usize) -> ScoreFn {
    let (opt, _) = optimized(&stdlib(name, ov));
    opt.nodes()
        .iter()
        .filter_map(|n| match &n.op {
            Op::Attention(f) => Some((**f).clone()),
            _ => None,
        })
        .nth(nth)
        .expect("an attention")
}

/// Dead tiles found by the interval analysis, and those a brute-force scan of the mask finds.
fn dead_tiles(f: &ScoreFn, seq: i64, tile: i64, visible: impl Fn(i64, i64) -> bool) -> (usize, usize, usize) {
    let (mut found, mut truth, mut total) = (0, 0, 0);
    for i0 in (0..seq).step_by(tile as usize) {
        for j0 in (0..seq).step_by(tile as usize) {
            total += 1;
            let class = f.tile_class((i0, i0 + tile - 1), (j0, j0 + tile - 1));
            let none_visible = (i0..i0 + tile).all(|i| (j0..j0 + tile).all(|j| !visible(i, j)));
            assert!(class != TileClass::Dead || none_visible, "tile ({i0}, {j0}) is called dead but has visible scores");
            found += usize::from(class == TileClass::Dead);
            truth += usize::from(none_visible);
        }
    }
    (found, truth, total)
}

#[test]
fn the_mask_analysis_skips_exactly_the_dead_tiles() {
    let causal = score_fn("llama", SMALL[1].1, 0);
    let (found, truth, total) = dead_tiles(&causal, 128, 16, |i, j| j <= i);
    println!("causal: {found}/{total} tiles skipped");
    assert_eq!((found, truth, total), (28, 28, 64));

    let mut ov: Vec<(&str, &str)> = SMALL[3].1.to_vec();
    ov.retain(|(k, _)| *k != "window");
    ov.push(("window", "40"));
    let window = score_fn("mistral", &ov, 0);
    let (found, truth, total) = dead_tiles(&window, 256, 16, |i, j| j <= i && i - j < 40);
    println!("window 40: {found}/{total} tiles skipped");
    assert_eq!(found, truth);
    assert!(found > total / 2);

    // Layer 0 of ModernBERT is global; layer 1 is local (|i - j| <= 4 // 2).
    let local = score_fn("modernbert", SMALL[4].1, 1);
    let (found, truth, _) = dead_tiles(&local, 64, 8, |i, j| (i - j).abs() <= 2);
    assert_eq!(found, truth);
}

/// A variant nobody wrote a kernel for: a document mask from segment ids with a soft-capped,
/// ALiBi-biased score (`examples/custom_attention.tsr`).
#[test]
fn a_user_defined_attention_variant_fuses_and_computes_the_same() {
    let path = "examples/custom_attention.tsr";
    let text = std::fs::read_to_string(path).expect("example");
    let g = elaborate(path, &text, &[("layers", "2")]);
    let (opt, report) = optimized(&g);
    assert_eq!(count(&opt, "attention"), 2, "{opt}");
    let attn = report.fusions.iter().find(|f| f.what.starts_with("attention(")).expect("explained");
    assert!(attn.what.contains("tanh"), "{}", attn.what);
    let before = run_random(&g, &[("batch", 2), ("seq", 9)], 5);
    let after = run_random(&opt, &[("batch", 2), ("seq", 9)], 5);
    for ((n, a), (_, b)) in before.iter().zip(&after) {
        let d = max_rel_diff(a, b);
        assert!(d <= 1e-5, "{n}: {d}");
    }
}

/// Q, K and V projections of one input become one GEMM over concatenated weights. In T5 the
/// K and V projections of every decoder layer's cross-attention read the same encoder output,
/// so they all become one GEMM.
#[test]
fn projections_sharing_an_input_are_merged() {
    for (name, ov) in SMALL {
        let (opt, report) = optimized(&stdlib(name, ov));
        let merged: Vec<&str> =
            report.fusions.iter().filter(|f| f.what.starts_with("merged projection")).map(|f| f.what.as_str()).collect();
        let l = layers(ov);
        // FNet and the recurrent families have no projections that share an input.
        let want = match *name {
            "t5" => 2 * l + 1,
            n if n == "fnet" || is_recurrent(n) => 0,
            // Jamba: the attention layers only (its Mamba layers' projections share no input).
            "jamba" => l / 2,
            _ => l,
        };
        assert_eq!(merged.len(), want, "{name}: {merged:#?}");
        assert!(want == 0 || merged.iter().any(|m| m.contains("q.weight") && m.contains("k.weight") && m.contains("v.weight")), "{name}");
        let products_of_concat = opt
            .nodes()
            .iter()
            .filter(|n| matches!(n.op, Op::MatMul | Op::Gemm { .. }) && matches!(opt.node(n.inputs[1]).op, Op::Concat { .. }))
            .count();
        assert_eq!(products_of_concat, want, "{name}");
    }
}

/// Identical layers are saturated once: the e-graph is the same size for 4 layers as for 16,
/// and every layer is still fused.
#[test]
fn identical_layers_are_saturated_once_and_reused() {
    // DiffLlama's layers differ in a constant (lambda_init depends on the layer index), and so
    // do RWKV's (its inference rescaling), so no two are identical and nothing is reused.
    for (name, ov) in SMALL.iter().filter(|(name, _)| !matches!(*name, "diffllama" | "rwkv")) {
        let with = |l: &'static str| {
            // (a per-layer list is as long as the layers it describes: dropped here)
            let ov: Vec<(&str, &str)> = ov
                .iter()
                .filter(|(k, _)| *k != "layer_types" && *k != "windows")
                .map(|&(k, v)| if k == "layers" { (k, l) } else { (k, v) })
                .collect();
            optimized(&stdlib(name, &ov))
        };
        // Cohere-2's default layers repeat every four (three sliding, one full).
        let (few, many) = if *name == "cohere2" { ("8", "20") } else { ("6", "18") };
        let (g4, r4) = with(few);
        let (g16, r16) = with(many);
        assert!(r4.reused_layers >= 2 && r16.reused_layers > r4.reused_layers, "{name}: {} / {}", r4.header(), r16.header());
        assert_eq!(r4.enodes, r16.enodes, "{name}: saturation grew with depth: {} / {}", r4.header(), r16.header());
        let (a, b): (usize, usize) = (few.parse().expect("int"), many.parse().expect("int"));
        assert_eq!(count(&g16, "attention") * a, count(&g4, "attention") * b, "{name}");
    }
}

/// `tessera ir --explain` lists each kind of fusion once with its source span and count.
#[test]
fn explain_lists_fusions_with_spans_and_counts() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["ir", "stdlib/llama.tsr", "-D", "layers=4", "--explain"])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.starts_with("// optimize: saturated"), "{text}");
    let attn: Vec<&str> = text.lines().filter(|l| l.contains(" attention(")).collect();
    assert_eq!(attn.len(), 1, "{text}");
    assert!(attn[0].starts_with("stdlib/nn.tsr:") && attn[0].contains("gqa 32:8") && attn[0].ends_with("(×4)"), "{text}");
    assert!(text.lines().any(|l| l.contains("ffn(gated, silu)") && l.ends_with("(×4)")), "{text}");
    assert!(text.lines().any(|l| l.contains("merged projection(layers.#.self_attn")), "{text}");
}

/// A softmax over an axis other than the last fuses like the last-axis one.
#[test]
fn softmax_over_any_axis_fuses() {
    for axis in ["0", "1", "-1"] {
        let src = format!("model m() {{\n input x: [batch, seq, 9]\n output y = softmax(x, {axis})\n}}\n");
        let (opt, _) = optimized(&elaborate("m.tsr", &src, &[]));
        assert_eq!(count(&opt, "softmax"), 1, "axis {axis}\n{opt}");
        assert_eq!(count(&opt, "reduce_max") + count(&opt, "exp"), 0, "axis {axis}\n{opt}");
    }
}
