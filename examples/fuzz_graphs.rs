//! The long mode of the random-graph differential tester (`tests/fuzz/graphs.rs`): generates
//! graphs from consecutive seeds for a number of minutes, runs each on the interpreter and on
//! each CPU backend before and after the pass pipeline, and prints executions per second, graphs
//! per backend and every finding (minimised, as IR text with its inputs).
//!
//! `cargo run --release --example fuzz_graphs -- --minutes N [--seed S]`
//!
//! The graphs run in a child process, so that a crash (a signal in a compiled kernel) is a
//! finding too: the parent prints its graph and resumes after it. A stage (a run, a
//! compilation, the optimizer) that runs for over 30 s is reported as a hang. Built with
//! `--features llvm,mlir`, it runs the LLVM and MLIR backends too.

#[path = "../tests/fuzz/graphs.rs"]
mod graphs;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: f64| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(default);
    let (minutes, mut seed) = (arg("--minutes", 1.0), arg("--seed", 1_000_000.0) as u64);
    let end = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    if args.iter().any(|a| a == "--worker") {
        return worker(seed, end);
    }
    let mut crashes = Vec::new();
    while Instant::now() < end {
        let left = (end - Instant::now()).as_secs_f64() / 60.0;
        let exe = std::env::current_exe().expect("own path");
        let mut child = Command::new(exe)
            .args(["--worker", "--seed", &seed.to_string(), "--minutes", &left.to_string()])
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawns a worker");
        // The worker names each seed on stderr before running it.
        let mut last = None;
        for line in BufReader::new(child.stderr.take().expect("stderr")).lines().map_while(Result::ok) {
            match line.strip_prefix("at ").and_then(|s| s.parse::<u64>().ok()) {
                Some(s) => last = Some(s),
                None => eprintln!("{line}"),
            }
        }
        let status = child.wait().expect("worker exits");
        match last {
            Some(s) if !status.success() => {
                println!("FINDING seed {s}: the worker died ({status})\n{}", graphs::describe(&graphs::generate(s)));
                crashes.push(s);
                seed = s + 1;
            }
            _ => break,
        }
    }
    println!("{} crashes{}", crashes.len(), if crashes.is_empty() { String::new() } else { format!(" (seeds {crashes:?})") });
}

/// Runs graphs from `seed` until `end`; prints the findings and a summary.
fn worker(first: u64, end: Instant) {
    std::panic::set_hook(Box::new(|_| {}));
    // One stage (a run, a compilation, the optimizer) of over 30 s is a hang.
    let start_stage = || graphs::STAGE_START.store(graphs::now_ms(), Ordering::Relaxed);
    start_stage();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        if graphs::now_ms().saturating_sub(graphs::STAGE_START.load(Ordering::Relaxed)) > 30_000 {
            println!("FINDING: a stage of the last seed below ran for over 30 s (a hang)");
            std::process::exit(2);
        }
    });
    let start = Instant::now();
    let (mut ran, mut graphs, mut known, mut unknown) = (graphs::Ran::default(), 0u64, BTreeMap::<&str, usize>::new(), 0);
    let mut seed = first;
    while Instant::now() < end {
        eprintln!("at {seed}");
        let _ = std::io::stderr().flush();
        start_stage();
        let case = graphs::generate(seed);
        for f in graphs::check(&case, &mut ran) {
            match f.known {
                Some(k) => *known.entry(k).or_default() += 1,
                None => {
                    unknown += 1;
                    let small = graphs::minimize(&case, &f);
                    println!("FINDING seed {seed}: {} {} {}: {}\n{}", f.stage, f.kind, f.output, f.detail, graphs::describe(&small));
                }
            }
        }
        graphs += 1;
        seed += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{graphs} graphs in {secs:.0} s ({:.1}/s, {:.0}/min), seeds {first}..{seed}",
        graphs as f64 / secs,
        graphs as f64 * 60.0 / secs
    );
    println!("graphs per backend: {ran:?}");
    println!("{unknown} findings");
    for (k, n) in known {
        println!("{n:6} explained: {k}");
    }
}
