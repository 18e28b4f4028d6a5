//! IR filetests: each `tests/filetests/NAME.tsr` is elaborated and its IR compared with
//! `NAME.tir` beside it. Re-bless with `TESSERA_BLESS=1 cargo test --test filetests`.

mod common;

#[test]
fn elaborated_ir_matches_the_expected_dumps() {
    let bless = std::env::var_os("TESSERA_BLESS").is_some();
    let mut files: Vec<_> = std::fs::read_dir("tests/filetests").expect("dir").map(|e| e.expect("entry").path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "tsr"));
    files.sort();
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for path in files {
        let shown = path.to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(&path).expect("read");
        let got = common::elaborate(&shown, &text, &[]).to_string();
        let expect_path = path.with_extension("tir");
        if bless {
            std::fs::write(&expect_path, &got).expect("write");
            continue;
        }
        let want = std::fs::read_to_string(&expect_path).unwrap_or_default();
        if got != want {
            let diff: Vec<String> =
                want.lines().zip(got.lines()).filter(|(a, b)| a != b).take(5).map(|(a, b)| format!("- {a}\n+ {b}")).collect();
            failures.push(format!(
                "{shown}: IR differs from {} ({} vs {} lines)\n{}",
                expect_path.display(),
                want.lines().count(),
                got.lines().count(),
                diff.join("\n")
            ));
        }
        // The expected dump is itself valid IR that reads back to the same graph.
        let back = tessera::ir::parse(&got).expect("dump parses");
        assert_eq!(back.to_string(), got);
    }
    assert!(failures.is_empty(), "{}\nre-bless with TESSERA_BLESS=1 cargo test --test filetests", failures.join("\n\n"));
}
