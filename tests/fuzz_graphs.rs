//! Random IR graphs on the interpreter (the oracle), on the interpreter after the pass
//! pipeline, and on the CPU backend before and after it: a fixed-seed budget of graphs (see
//! `tests/fuzz/graphs.rs` for what is generated and compared). Findings that `graphs::KNOWN_BUGS`
//! (fixed elsewhere), `graphs::FOUND` (found here, not fixed yet) or `graphs::NUMERICS` explain are
//! counted, not failed; every op must be generated. With the `llvm` and `mlir` features, every
//! fourth graph also runs on LLVM and every sixteenth on MLIR (they compile for about 0.3 and
//! 2 s per graph). The long
//! mode runs for minutes with fresh seeds, every graph on every backend of the build:
//! `cargo run --release --example fuzz_graphs -- --minutes N [--seed S]`.

#[path = "fuzz/graphs.rs"]
mod graphs;

/// Graphs per run of the test.
const BUDGET: u64 = 600;

#[test]
fn random_graphs_agree_on_every_backend() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let (mut ran, mut known, mut failures) = (graphs::Ran::default(), std::collections::BTreeMap::new(), Vec::new());
    let mut asked = 0; // runs asked of LLVM and MLIR
    let (mut ops, mut nodes) = (std::collections::BTreeSet::new(), 0);
    for seed in 0..BUDGET {
        let case = graphs::generate(seed);
        nodes += case.graph.len();
        ops.extend(case.graph.nodes().iter().map(|n| match &n.op {
            tessera::ir::Op::Window { op, .. } => format!("window_{}", op.name()),
            op => op.mnemonic(),
        }));
        let every = |b: &graphs::Compiled| match b.plain {
            "cpu" => 1,
            "llvm" => 4,
            _ => 16,
        };
        let backends: Vec<graphs::Compiled> = graphs::COMPILED.iter().filter(|b| seed % every(b) == 0).copied().collect();
        asked += backends.len() - 1;
        for f in graphs::check_on(&case, &mut ran, &backends) {
            match f.known {
                Some(k) => *known.entry(k).or_insert(0) += 1,
                None => failures.push(format!(
                    "seed {seed}: {} {} {}: {}\n{}",
                    f.stage,
                    f.kind,
                    f.output,
                    f.detail,
                    graphs::describe(&graphs::minimize(&case, &f))
                )),
            }
        }
    }
    std::panic::set_hook(hook);
    println!("{} nodes per graph on average; {ran:?}\nexplained findings: {known:#?}", nodes as u64 / BUDGET);
    let every = "input param const iota neg abs exp log sqrt rsqrt relu gelu gelu_tanh silu sigmoid tanh softplus sin cos not \
        add sub mul div pow max min rem eq ne lt le gt ge and or where cast matmul transpose reshape broadcast reduce_sum \
        reduce_mean reduce_max reduce_min gather slice concat cumsum window_conv window_max window_mean segment fft rfft irfft \
        softmax norm gemm scan proj topk route scatter_add";
    let missing: Vec<&str> = every.split_whitespace().filter(|op| !ops.contains(*op)).collect();
    assert!(missing.is_empty(), "never generated: {missing:?}");
    assert!(ran.cpu_opt as u64 > BUDGET / 2, "too few graphs reached the optimized CPU backend: {ran:?}");
    assert!(ran.others_opt * 2 >= asked, "too few graphs reached the optimized LLVM and MLIR backends: {ran:?}");
    assert!(failures.is_empty(), "{} findings:\n{}", failures.len(), failures.join("\n"));
}
