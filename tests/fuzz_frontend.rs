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
