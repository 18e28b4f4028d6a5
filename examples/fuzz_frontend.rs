//! The long mode of the front-end and IR-reader fuzzer (`tests/fuzz/frontend.rs`):
//!
//! ```text
//! cargo run --release --example fuzz_frontend -- --minutes 10 [--seed S]
//! ```
//!
//! Prints executions per second and every finding; writes each finding to
//! `target/fuzz-findings/` (move it into `tests/fuzz/corpus/` once fixed, so that the test
//! replays it). Run from the repository root.

#[path = "../tests/fuzz/frontend.rs"]
mod frontend;

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse::<u64>().ok());
    let minutes = arg("--minutes").unwrap_or(1);
    let mut seed = arg("--seed").unwrap_or(1);
    let corpus = frontend::corpus();
    println!("corpus: {} .tsr, {} .tir files", corpus.tsr.len(), corpus.tir.len());
    let start = Instant::now();
    let deadline = start + Duration::from_secs(minutes * 60);
    let (mut tsr, mut elaborated, mut tir, mut findings) = (0u64, 0u64, 0u64, 0usize);
    let _ = std::fs::create_dir_all("target/fuzz-findings");
    while Instant::now() < deadline {
        let s = frontend::run(&corpus, seed, 20_000, Some(deadline));
        tsr += s.tsr;
        elaborated += s.elaborated;
        tir += s.tir;
        for (input, f) in &s.findings {
            findings += 1;
            println!("FINDING {findings} (seed {seed}): {f:?}");
            let _ = std::fs::write(format!("target/fuzz-findings/{seed}-{findings}.txt"), input);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{:.0} s: {tsr} .tsr ({elaborated} elaborated) + {tir} .tir = {} executions, {:.0}/s, {findings} findings",
            secs,
            tsr + tir,
            (tsr + tir) as f64 / secs
        );
        seed += 1;
    }
    // The process's peak memory over all executions (each one far less).
    let peak =
        std::fs::read_to_string("/proc/self/status").ok().and_then(|s| s.lines().find(|l| l.starts_with("VmHWM")).map(str::to_string));
    println!("done: {} executions, {findings} findings, peak {}", tsr + tir, peak.unwrap_or_default());
}
