//! Diagnostics snapshots: every `tests/diagnostics/*.tsr` is checked and its rendered
//! diagnostics (no colour, 80 columns) compared with `tests/snapshots/`. Accept new or
//! changed snapshots with `INSTA_UPDATE=always cargo test --test diagnostics` (or cargo-insta).

use std::process::Command;

fn cases() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir("tests/diagnostics")
        .expect("tests/diagnostics exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "tsr"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_bad_program_gets_its_diagnostics() {
    let files = cases();
    assert!(files.len() >= 20, "expected at least 20 bad-input cases, found {}", files.len());
    for path in files {
        let name = path.file_stem().expect("file name").to_string_lossy().into_owned();
        let shown = path.to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(&path).expect("readable case");
        let (prog, mut diags) = tessera::lang::load(&shown, &text);
        if diags.is_empty() {
            diags = tessera::lang::check(&shown, &text);
        }
        assert!(!diags.is_empty(), "{name}: expected at least one diagnostic");
        let rendered = tessera::render(&diags, &prog.sources, false, 80);
        insta::assert_snapshot!(name, rendered);
    }
}

#[test]
fn cli_reports_a_shape_error_with_location_and_both_shapes() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_tessera")).args(["check", "tests/diagnostics/shape_mismatch_add.tsr"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tests/diagnostics/shape_mismatch_add.tsr:5:14"), "{err}");
    assert!(err.contains("[batch, seq, 12]") && err.contains("[batch, seq, 8]"), "{err}");
    assert!(err.contains("tessera::shape::mismatch"), "{err}");
}

#[test]
fn cli_exit_codes() {
    let tessera = env!("CARGO_BIN_EXE_tessera");
    let status = |args: &[&str]| Command::new(tessera).args(args).output().expect("runs").status.code();
    assert_eq!(status(&["check", "stdlib/nn.tsr", "stdlib/gpt2.tsr", "stdlib/llama.tsr", "stdlib/bert.tsr"]), Some(0));
    assert_eq!(status(&["check", "does/not/exist.tsr"]), Some(1));
    assert_eq!(status(&["ir", "stdlib/llama.tsr", "-D", "nope=3"]), Some(1));
    assert_eq!(status(&["ir", "stdlib/llama.tsr", "-D", "layers"]), Some(1), "usage errors are user errors");
    assert_eq!(
        status(&["run", "stdlib/gpt2.tsr", "-D", "layers=1", "-D", "d=16", "-D", "heads=2", "-D", "vocab=11", "--dim", "seq=x"]),
        Some(1)
    );
    assert_eq!(status(&["ir", "stdlib/llama.tsr", "--print-after", "nonsense"]), Some(1));
    assert_eq!(status(&["ir", "Cargo.toml"]), Some(1));
}
