//! Random mutations of the stdlib sources never panic the front end.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera::lang::Override;

const PIECES: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "=",
    "..",
    "@",
    "*",
    "-",
    "0",
    "-1",
    "999999999999",
    "none",
    "x",
    "for",
    "if",
    "as",
    "\"",
    "#",
    "\n",
    "1e400",
    "//",
    "%",
];

fn mutate(src: &str, rng: &mut StdRng) -> String {
    let mut chars: Vec<char> = src.chars().collect();
    for _ in 0..rng.random_range(1..4) {
        if chars.is_empty() {
            break;
        }
        let at = rng.random_range(0..chars.len());
        match rng.random_range(0..4) {
            0 => {
                let end = (at + rng.random_range(1..12)).min(chars.len());
                chars.drain(at..end);
            }
            1 => {
                let p = PIECES[rng.random_range(0..PIECES.len())];
                chars.splice(at..at, p.chars());
            }
            2 => {
                let other = rng.random_range(0..chars.len());
                chars.swap(at, other);
            }
            _ => {
                let end = (at + rng.random_range(1..40)).min(chars.len());
                let copy: Vec<char> = chars[at..end].to_vec();
                let to = rng.random_range(0..chars.len());
                chars.splice(to..to, copy);
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn mutated_stdlib_sources_never_panic_the_front_end() {
    let mut rng = StdRng::seed_from_u64(2026);
    let small: Vec<(String, Override)> = [("layers", 1i64), ("d", 32), ("vocab", 50), ("heads", 4), ("kv_heads", 2), ("hidden", 40)]
        .iter()
        .map(|(k, v)| (k.to_string(), Override::Int(*v)))
        .collect();
    for name in ["gpt2", "llama", "bert", "nn"] {
        let src = std::fs::read_to_string(format!("stdlib/{name}.tsr")).expect("stdlib");
        for _ in 0..150 {
            let m = mutate(&src, &mut rng);
            let (prog, diags) = tessera::lang::load("mutant.tsr", &m);
            let _ = tessera::render(&diags, &prog.sources, false, 80);
            if !diags.iter().any(|d| d.is_error()) {
                let ov: Vec<(String, Override)> = small.iter().filter(|(k, _)| m.contains(k.as_str())).cloned().collect();
                let (g, d) = tessera::lang::elaborate(&prog, None, &ov);
                let _ = tessera::render(&d, &prog.sources, false, 80);
                if let Some(g) = g {
                    assert!(tessera::ir::verify(&g).is_ok(), "elaboration produced invalid IR for:\n{m}");
                }
            }
        }
    }
}
