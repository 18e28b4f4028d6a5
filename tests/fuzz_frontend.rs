//! The front end and the IR reader never panic, hang or produce invalid IR: every finding
//! kept in `tests/fuzz/corpus/` is replayed, then a fixed-seed budget of structured mutations
//! runs (see `tests/fuzz/frontend.rs`; the long mode is `examples/fuzz_frontend.rs`).

#[path = "fuzz/frontend.rs"]
mod frontend;

/// Mutants per `cargo test` run (a few seconds in the dev profile).
const BUDGET: u64 = 8000;

#[test]
fn the_corpus_of_findings_replays_cleanly() {
    let corpus = frontend::corpus();
    for (path, text) in corpus.tsr.iter().filter(|(p, _)| p.starts_with("tests/fuzz/corpus")) {
        let (found, _) = frontend::exec_tsr(path, text);
        assert!(found.is_none(), "{path}: {found:?}");
    }
    for (path, text) in corpus.tir.iter().filter(|(p, _)| p.starts_with("tests/fuzz/corpus")) {
        assert!(frontend::exec_tir(text).is_none(), "{path}");
    }
}

#[test]
fn structured_mutations_find_nothing() {
    let corpus = frontend::corpus();
    assert!(corpus.tsr.len() > 30 && corpus.tir.len() > 10, "the corpus is read from the repository root");
    let stats = frontend::run(&corpus, 2026, BUDGET, None);
    println!("{} .tsr mutants ({} elaborated), {} .tir mutants", stats.tsr, stats.elaborated, stats.tir);
    assert!(stats.elaborated > 0, "some mutants must get through to elaboration");
    if let Some((input, finding)) = stats.findings.first() {
        panic!("{} findings; the first: {finding:?} on\n{input}", stats.findings.len());
    }
}

/// Mutated checkpoints and config.json files (bytes of the safetensors header and data,
/// truncation, JSON values of other kinds) are loaded or refused, never a panic.
#[test]
fn mutated_checkpoints_and_configs_are_refused_cleanly() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let dir = "tests/parity/fixtures/gpt2-a";
    let weights = std::fs::read(format!("{dir}/model.safetensors")).expect("fixture");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/config.json")).expect("fixture")).expect("json");
    let tmp = std::env::temp_dir().join(format!("tessera-fuzz-ck-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let mut rng = StdRng::seed_from_u64(7);
    let header = u64::from_le_bytes(weights[..8].try_into().expect("8 bytes")) as usize + 8;
    let values = [
        serde_json::json!(-1),
        serde_json::json!(0),
        serde_json::json!(1e300),
        serde_json::json!("x"),
        serde_json::json!([1, 2]),
        serde_json::json!(null),
        serde_json::json!({}),
    ];
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut refused = 0;
    for i in 0..150 {
        let mut w = weights.clone();
        match i % 3 {
            0 => {
                let at = rng.random_range(0..header.min(w.len()));
                w[at] = rng.random();
            }
            1 => w.truncate(rng.random_range(0..w.len())),
            _ => {
                let at = rng.random_range(header..w.len());
                w[at] ^= 0xff;
            }
        }
        let mut c = config.clone();
        if let Some(obj) = c.as_object_mut() {
            let keys: Vec<String> = obj.keys().cloned().collect();
            let k = &keys[rng.random_range(0..keys.len())];
            obj.insert(k.clone(), values[rng.random_range(0..values.len())].clone());
        }
        let (wp, cp) = (tmp.join("model.safetensors"), tmp.join("config.json"));
        std::fs::write(&wp, &w).expect("write");
        std::fs::write(&cp, c.to_string()).expect("write");
        let result = std::panic::catch_unwind(|| {
            let compiled = tessera::Compiler::new().config_file(&cp.to_string_lossy()).and_then(|c| c.compile_file("stdlib/gpt2.tsr"));
            compiled.and_then(|mut m| m.load_weights(&wp.to_string_lossy()).map(|_| ()))
        });
        match result {
            Ok(Ok(())) => {}
            Ok(Err(_)) => refused += 1,
            Err(e) => {
                std::panic::set_hook(hook);
                panic!("mutant {i} panicked: {:?}", e.downcast_ref::<String>());
            }
        }
    }
    std::panic::set_hook(hook);
    assert!(refused > 50, "most mutants are refused ({refused})");
}
