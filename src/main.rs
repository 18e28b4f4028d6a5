//! The `tessera` command line: check, dump IR, run models on the reference interpreter.
//! Exit status: 0 success, 1 user error (rendered diagnostic), 2 internal error.

use clap::{Parser, Subcommand, ValueEnum};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use tessera::ir::Graph;
use tessera::lang::{CheckpointMap, Diagnostic, Override};
use tessera::runtime::{self, Tensor};
use tessera::{render, Frontend};

#[derive(Parser)]
#[command(name = "tessera", version, about = "A compiler for transformer architectures")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Emit {
    /// The syntax tree.
    Ast,
    /// The IR as elaborated.
    Ir,
    /// The IR after the pass pipeline.
    Opt,
    /// The kernel program of the CPU backend.
    Kernels,
    /// The Cranelift IR of the compiled kernels.
    Clif,
    /// The LLVM module of the compiled kernels, as emitted and after O3 (feature `llvm`).
    Llvm,
    /// The MLIR module of the compiled kernels, as emitted and lowered to the LLVM dialect;
    /// `--print-after STAGE` (or `all`) shows it after stages of the lowering (feature `mlir`).
    Mlir,
    /// The CUDA C of the generated GPU kernels.
    Cuda,
    /// The state generation keeps between steps (KV caches, recurrent states), with sizes.
    State,
    /// The decode program of generation (one step over the state).
    Decode,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum BackendArg {
    /// The reference interpreter.
    Interp,
    /// Compiled CPU kernels (Cranelift).
    Cpu,
    /// Compiled CPU kernels (LLVM at O3 for this CPU; needs the `llvm` feature).
    Llvm,
    /// Compiled CPU kernels (MLIR lowered to LLVM, O3 for this CPU; needs the `mlir` feature).
    Mlir,
    /// Generated CUDA kernels and cuBLAS on a GPU (`--gpu N`; needs the `cuda` feature).
    Cuda,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum DtypeArg {
    /// 32-bit floats.
    F32,
    /// bfloat16 storage, f32 arithmetic (CUDA backend).
    Bf16,
}

impl DtypeArg {
    fn precision(self) -> tessera::codegen::cuda::Precision {
        match self {
            DtypeArg::F32 => tessera::codegen::cuda::Precision::F32,
            DtypeArg::Bf16 => tessera::codegen::cuda::Precision::Bf16,
        }
    }
}

#[derive(clap::Args)]
struct ModelArgs {
    /// A `.tsr` model file or a `.tir` IR file (`run --hf DIR` without one: the standard
    /// library's file for the folder's `model_type`).
    #[arg(default_value = "")]
    file: String,
    /// Which model of the file (needed when it defines several).
    #[arg(long)]
    model: Option<String>,
    /// Override a hyper-parameter: -D layers=2 (wins over --config).
    #[arg(short = 'D', value_name = "KEY=VALUE", value_parser = key_value)]
    define: Vec<(String, String)>,
    /// Hyper-parameters from a Hugging Face config.json, through the file's checkpoint map.
    #[arg(long, value_name = "CONFIG.JSON")]
    config: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Parse and check files; elaborate every model they define.
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<String>,
        /// Which model of each file (default: every model).
        #[arg(long)]
        model: Option<String>,
        /// Override a hyper-parameter: -D layers=2 (wins over --config).
        #[arg(short = 'D', value_name = "KEY=VALUE", value_parser = key_value)]
        define: Vec<(String, String)>,
        /// Check against a Hugging Face config.json, through each file's checkpoint map, as
        /// `run --config` would.
        #[arg(long, value_name = "CONFIG.JSON")]
        config: Option<String>,
        /// A Hugging Face model folder: check against its config.json.
        #[arg(long, value_name = "DIR", conflicts_with = "config")]
        hf: Option<String>,
    },
    /// Print a stage of the compilation.
    Ir {
        #[command(flatten)]
        m: ModelArgs,
        /// Which stage to print.
        #[arg(long, value_enum, default_value = "ir")]
        emit: Emit,
        /// Print the IR after this pass (or `all`).
        #[arg(long, value_name = "PASS")]
        print_after: Option<String>,
        /// List every fusion the optimizer made, with the source it came from.
        #[arg(long)]
        explain: bool,
        /// The storage of f32 tensors that `--emit cuda` generates for (bf16 gets the
        /// tensor-core attention kernel).
        #[arg(long, value_enum, default_value = "f32")]
        dtype: DtypeArg,
    },
    /// Run a model on the reference interpreter.
    Run {
        #[command(flatten)]
        m: ModelArgs,
        /// Size of a symbolic dimension: --dim batch=2 --dim seq=16 (defaults: batch=1, seq=16, others 8).
        #[arg(long, value_name = "NAME=N", value_parser = key_value)]
        dim: Vec<(String, String)>,
        /// Parameters from a safetensors file, by the model's checkpoint map (otherwise random, see --seed).
        #[arg(long)]
        weights: Option<String>,
        /// A Hugging Face model folder: its config.json and model.safetensors.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["weights", "config"])]
        hf: Option<String>,
        /// Inputs from a safetensors file (otherwise random).
        #[arg(long)]
        inputs: Option<String>,
        /// Write every output, by name, to this safetensors file.
        #[arg(long)]
        out: Option<String>,
        /// Seed of the random parameters and inputs.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// What runs the model.
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        /// The GPU to run on (`--backend cuda`), by ordinal.
        #[arg(long, default_value_t = 0)]
        gpu: usize,
        /// How f32 tensors are stored: `bf16` (computed in f32) is for `--backend cuda`.
        #[arg(long, value_enum, default_value = "f32")]
        dtype: DtypeArg,
        /// Run this many times and report the median time (benchmarking).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Refuse a run estimated to need more memory than this (e.g. 8G, 512M; default: this
        /// machine's memory).
        #[arg(long, value_name = "BYTES", value_parser = tessera::parse_bytes)]
        max_memory: Option<u128>,
    },
    /// Generate tokens with a causal language model (or T5): from text through a Hugging
    /// Face folder's tokenizer.json (printed as produced), or from ids (`--inputs`).
    Generate {
        /// The model file (optional with --hf: the standard library's file for the folder's
        /// `model_type`), then the prompts (one row each; with --hf).
        args: Vec<String>,
        /// Which model of the file.
        #[arg(long)]
        model: Option<String>,
        /// Override a hyper-parameter: -D layers=2.
        #[arg(short = 'D', value_name = "KEY=VALUE", value_parser = key_value)]
        define: Vec<(String, String)>,
        /// A Hugging Face model folder: config.json, model.safetensors, tokenizer.json.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["weights", "config"])]
        hf: Option<String>,
        /// Hyper-parameters from a config.json (with --weights and --inputs).
        #[arg(long, value_name = "CONFIG.JSON")]
        config: Option<String>,
        /// Parameters from a safetensors file (otherwise random, see --seed).
        #[arg(long)]
        weights: Option<String>,
        /// Prompt ids: a safetensors file with `input_ids` [batch, S] (i64) and optionally
        /// `attention_mask` (rows padded on either side); for T5, the encoder's input.
        #[arg(long)]
        inputs: Option<String>,
        /// Write `tokens` [batch, N] (i64) and `logits` [batch, N, vocab] to this file.
        #[arg(long)]
        out: Option<String>,
        /// How many tokens to generate per row.
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// Positions the state holds per row (default: the longest prompt plus the new tokens).
        #[arg(long)]
        max_len: Option<usize>,
        /// Sampling temperature (0: greedy, the default).
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Sample among the k most likely tokens (0: all).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Sample among the most likely tokens whose probabilities sum to p.
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// Seed of the sampler (and of random parameters).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Keep generating after the end-of-sequence token.
        #[arg(long)]
        ignore_eos: bool,
        /// What runs the model.
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        /// The GPU to run on (`--backend cuda`), by ordinal.
        #[arg(long, default_value_t = 0)]
        gpu: usize,
        /// Generate this many times and report the median timings (benchmarking; the first
        /// run also derives merged weights and touches fresh memory).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// Sentence embeddings: tokenize, run an encoder, mean-pool over real tokens, normalise.
    Embed {
        /// The encoder's `.tsr` file (e.g. stdlib/bert.tsr).
        file: String,
        /// A Hugging Face model folder with config.json, model.safetensors and tokenizer.json.
        #[arg(long, value_name = "DIR")]
        hf: String,
        /// Which model of the file.
        #[arg(long)]
        model: Option<String>,
        /// Write the embeddings ([texts, d], `embeddings`) to this safetensors file.
        #[arg(long)]
        out: Option<String>,
        /// The texts to embed.
        #[arg(required = true)]
        texts: Vec<String>,
    },
}

/// Writes to stderr, ignoring a reader that has gone (`tessera check big.tsr 2>&1 | head -1`):
/// `eprint!` would panic on the closed pipe.
macro_rules! err {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = write!(std::io::stderr(), $($t)*);
    }};
}

macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// Writes to stdout, ending quietly when the reader has gone (`tessera ir ... | head`).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write;
        if write!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// [`out!`] with a newline.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// A failure: a user error (exit 1) or a compiler bug (exit 2), already rendered.
enum Fail {
    User(String),
    Internal(String),
}

fn main() -> ExitCode {
    // A bad flag is a user error (exit 1), as every other; help and version print and succeed.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    std::panic::set_hook(Box::new(|info| {
        errln!("internal error: tessera panicked: {info}\nthis is a bug in Tessera; please report it with the input that caused it");
    }));
    // The compiler runs on a thread with a large stack (reserved, not committed): the parser
    // bounds nesting, and this is the margin for every recursive walk after it.
    let worker = std::thread::Builder::new().stack_size(256 << 20).spawn(move || std::panic::catch_unwind(|| dispatch(cli)));
    let result = match worker {
        Ok(h) => h.join().unwrap_or_else(Err),
        // No large stack to be had (a tight `ulimit -v`): run here, within the parser's bounds.
        Err(_) => match Cli::try_parse() {
            Ok(cli) => std::panic::catch_unwind(|| dispatch(cli)),
            Err(e) => Err(Box::new(e.to_string()) as Box<dyn std::any::Any + Send>),
        },
    };
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(Fail::User(msg))) => {
            err!("{msg}");
            ExitCode::from(1)
        }
        Ok(Err(Fail::Internal(msg))) => {
            errln!("{msg}");
            ExitCode::from(2)
        }
        Err(_) => ExitCode::from(2),
    }
}

fn color() -> bool {
    std::io::stderr().is_terminal()
}

fn read(path: &str) -> Result<String, Fail> {
    std::fs::read_to_string(path).map_err(|e| Fail::User(format!("error: cannot read {path}: {e}\n")))
}

fn dispatch(cli: Cli) -> Result<(), Fail> {
    match cli.cmd {
        Cmd::Check { files, model, define, config, hf } => {
            let config = config.or(hf.map(|d| format!("{d}/config.json")));
            let with = config.is_some() || !define.is_empty() || model.is_some();
            let mut failed = false;
            for f in files {
                let text = read(&f)?;
                if with || f.ends_with(".tir") {
                    // As `run` elaborates: the model with this configuration and these overrides.
                    let m = ModelArgs { file: f.clone(), model: model.clone(), define: define.clone(), config: config.clone() };
                    match front(&m) {
                        Ok(_) => outln!("{f}: ok"),
                        Err(Fail::User(msg)) => {
                            err!("{msg}");
                            failed = true;
                        }
                        Err(e) => return Err(e),
                    }
                    continue;
                }
                let (prog, mut diags) = tessera::lang::load(&f, &text);
                if !diags.iter().any(Diagnostic::is_error) {
                    diags = tessera::lang::check(&f, &text);
                }
                err!("{}", render(&diags, &prog.sources, color(), 100));
                if diags.iter().any(Diagnostic::is_error) {
                    failed = true;
                } else {
                    outln!("{f}: ok");
                }
            }
            if failed {
                Err(Fail::User(String::new()))
            } else {
                Ok(())
            }
        }
        Cmd::Ir { m, emit, print_after, explain, dtype } => {
            if m.file.is_empty() {
                return Err(Fail::User("error: name a model file: tessera ir FILE.tsr\n".into()));
            }
            if emit == Emit::Ast {
                let text = read(&m.file)?;
                return match tessera::lang::parse(0, &text) {
                    Ok(module) => {
                        outln!("{}", indent_debug(&format!("{module:?}")));
                        Ok(())
                    }
                    Err(d) => {
                        let mut sources = tessera::lang::SourceMap::new();
                        sources.add(&m.file, &text);
                        Err(Fail::User(render(&[d], &sources, color(), 100)))
                    }
                };
            }
            if let Some(p) = &print_after {
                #[cfg(feature = "mlir")]
                let stages: &[&str] = tessera::codegen::mlir::STAGES;
                #[cfg(not(feature = "mlir"))]
                let stages: &[&str] = &[];
                if emit == Emit::Mlir {
                    // (A build without MLIR says so below.)
                    if p != "all" && !stages.is_empty() && !stages.contains(&p.as_str()) {
                        return Err(Fail::User(format!("error: no MLIR stage named `{p}`; stages: {}, or `all`\n", stages.join(", "))));
                    }
                } else if p != "all" && !tessera::passes::is_pass(p) {
                    let names: Vec<&str> = tessera::passes::PIPELINE.iter().map(|p| p.name).collect();
                    return Err(Fail::User(format!("error: no pass named `{p}`; passes: {}, or `all`\n", names.join(", "))));
                }
            }
            let (g, _) = front(&m)?;
            if emit == Emit::Ir && print_after.is_none() && !explain {
                out!("{g}");
                return Ok(());
            }
            let (opt, report) = tessera::passes::run_pipeline_with_report(&g, |name, g| {
                if emit != Emit::Mlir && print_after.as_deref().is_some_and(|p| p == "all" || p == name) {
                    outln!("// after {name}\n{g}");
                }
            })
            .map_err(|e| Fail::Internal(e.to_string()))?;
            if matches!(emit, Emit::State | Emit::Decode) {
                let derived = tessera::passes::generation::derive(&opt).map_err(|e| {
                    let at = e.span.display_in(&opt.files).map(|s| format!(" at {s}")).unwrap_or_default();
                    Fail::User(format!("error{at}: {}\n", e.message))
                })?;
                if emit == Emit::State {
                    out!("{}", tessera::describe_state(&derived, &opt.files));
                } else {
                    out!("{}", derived.decode);
                }
                return Ok(());
            }
            if matches!(emit, Emit::Kernels | Emit::Clif | Emit::Llvm | Emit::Mlir | Emit::Cuda) {
                let program = tessera::codegen::schedule(&opt);
                if emit == Emit::Cuda {
                    let source = tessera::codegen::cuda::dump(&program, dtype.precision()).map_err(|e| match e {
                        // A construct this backend does not lower is the user's to run elsewhere.
                        e @ tessera::codegen::GpuError::Unsupported { .. } => Fail::User(e.to_string()),
                        e => Fail::Internal(e.to_string()),
                    })?;
                    out!("{source}");
                } else if emit == Emit::Kernels {
                    // The memory plan at the sizes `run` uses by default.
                    let mut dims = HashMap::new();
                    for b in &program.buffers {
                        for d in &b.ty.shape {
                            for s in d.symbols() {
                                dims.entry(s.to_string()).or_insert(default_dim(s));
                            }
                        }
                    }
                    let sizes: Option<Vec<usize>> = program
                        .buffers
                        .iter()
                        .map(|b| runtime::concrete(&b.ty.shape, &dims).ok().map(|s| s.iter().product::<usize>() * b.ty.dtype.size()))
                        .collect();
                    if let Some(sizes) = sizes {
                        let plan = tessera::codegen::plan(&program, &sizes);
                        let mut d: Vec<_> = dims.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        d.sort();
                        outln!("// peak activation memory (arena) at {}: {} bytes", d.join(" "), plan.bytes);
                    }
                    out!("{program}");
                } else {
                    let backend = match emit {
                        Emit::Llvm => tessera::Backend::Llvm,
                        Emit::Mlir => tessera::Backend::Mlir,
                        _ => tessera::Backend::Cpu,
                    };
                    let codegen = tessera::codegen::engine::cpu_codegen(backend, true).map_err(codegen_fail)?;
                    let exe = tessera::codegen::Executable::with(program, codegen).map_err(codegen_fail)?;
                    #[cfg(feature = "mlir")]
                    let last_stage = tessera::codegen::mlir::STAGES.last().copied();
                    #[cfg(not(feature = "mlir"))]
                    let last_stage: Option<&str> = None;
                    for f in &exe.clif {
                        // MLIR: the module as emitted, then after the stage asked for (each,
                        // with `all`), else the last (the LLVM dialect).
                        let after = f.lines().next().and_then(|l| l.strip_prefix("// after "));
                        let shown = match (emit, after, print_after.as_deref()) {
                            (Emit::Mlir, Some(_), Some("all")) | (Emit::Mlir, None, _) => true,
                            (Emit::Mlir, Some(s), Some(p)) => s == p,
                            (Emit::Mlir, Some(s), None) => last_stage == Some(s),
                            _ => true,
                        };
                        if shown {
                            outln!("{f}");
                        }
                    }
                }
                return Ok(());
            }
            if explain {
                outln!("// {}", report.header());
                // Identical fusions (one per layer) are listed once, with their count.
                let mut lines: Vec<(String, usize)> = Vec::new();
                for f in &report.fusions {
                    // Parameter names up to their layer numbers (`layers.#.self_attn.q.weight`).
                    let what = if f.what.starts_with("merged projection") {
                        f.what.split(", ").map(tessera::passes::layers::generic_name).collect::<Vec<_>>().join(", ")
                    } else {
                        f.what.clone()
                    };
                    let line = format!("{} {} ← {} ops", f.span.display_in(&opt.files).unwrap_or_else(|| "?".into()), what, f.replaced);
                    match lines.iter_mut().find(|(l, _)| *l == line) {
                        Some((_, n)) => *n += 1,
                        None => lines.push((line, 1)),
                    }
                }
                // How the CPU backend runs each scan and route (the body is its own program).
                let program = tessera::codegen::schedule(&opt);
                for step in &program.steps {
                    let lowering = match &step.kernel {
                        tessera::codegen::Kernel::Scan(k) => Some(k.lowering()),
                        tessera::codegen::Kernel::Route(k) => Some(k.lowering()),
                        _ => None,
                    };
                    if let Some(lowering) = lowering {
                        let at = step.span.display_in(&opt.files).unwrap_or_else(|| "?".into());
                        let line = format!("{at} {} (cpu) ← {lowering}", step.kernel.name());
                        match lines.iter_mut().find(|(l, _)| *l == line) {
                            Some((_, n)) => *n += 1,
                            None => lines.push((line, 1)),
                        }
                    }
                }
                for (line, n) in lines {
                    if n > 1 {
                        outln!("{line} (×{n})");
                    } else {
                        outln!("{line}");
                    }
                }
            } else if emit == Emit::Opt {
                outln!("// {}", report.header());
                out!("{opt}");
            }
            Ok(())
        }
        Cmd::Run { mut m, dim, mut weights, inputs, out, seed, hf, backend, gpu, dtype, repeat, max_memory } => {
            if let Some(dir) = &hf {
                m.config = Some(format!("{dir}/config.json"));
                weights = Some(format!("{dir}/model.safetensors"));
                if m.file.is_empty() {
                    m.file = hf_model_file(dir)?;
                }
            }
            if m.file.is_empty() {
                return Err(Fail::User("error: name a model file (or give --hf DIR with a config.json)\n".into()));
            }
            let compile_start = std::time::Instant::now();
            let (g, map) = front(&m)?;
            let g = tessera::passes::run_pipeline(&g, |_, _| {}).map_err(|e| Fail::Internal(e.to_string()))?;
            let backend = match backend {
                BackendArg::Cpu => tessera::Backend::Cpu,
                BackendArg::Llvm => tessera::Backend::Llvm,
                BackendArg::Mlir => tessera::Backend::Mlir,
                BackendArg::Interp => tessera::Backend::Interp,
                BackendArg::Cuda => tessera::Backend::Cuda(gpu),
            };
            let engine = tessera::Engine::new(&g, backend, false, dtype.precision()).map_err(run_fail)?;
            outln!("compile: {:.1} ms", compile_start.elapsed().as_secs_f64() * 1e3);
            let budget = max_memory.unwrap_or_else(tessera::default_memory_budget);
            let files = RunFiles { weights: weights.as_deref(), inputs: inputs.as_deref(), out: out.as_deref(), budget };
            run(&g, &engine, map.as_ref(), &dim, files, seed, repeat).map_err(run_fail)
        }
        Cmd::Generate {
            args,
            model,
            define,
            hf,
            config,
            weights,
            inputs,
            out,
            max_new_tokens,
            max_len,
            temperature,
            top_k,
            top_p,
            seed,
            ignore_eos,
            backend,
            gpu,
            repeat,
        } => {
            let backend = match backend {
                BackendArg::Cpu => tessera::Backend::Cpu,
                BackendArg::Llvm => tessera::Backend::Llvm,
                BackendArg::Mlir => tessera::Backend::Mlir,
                BackendArg::Interp => tessera::Backend::Interp,
                BackendArg::Cuda => tessera::Backend::Cuda(gpu),
            };
            let g = GenerateArgs { model, define, config, weights, inputs, out, max_len, backend, repeat };
            let sampling =
                tessera::GenerateOptions { max_new_tokens, temperature, top_k, top_p, seed, ..tessera::GenerateOptions::greedy(0) };
            generate(args, hf, g, sampling, ignore_eos)
        }
        Cmd::Embed { file, hf, model, out, texts } => {
            let m = ModelArgs { file, model, define: Vec::new(), config: Some(format!("{hf}/config.json")) };
            let (g, map) = front(&m)?;
            let g = tessera::passes::run_pipeline(&g, |_, _| {}).map_err(|e| Fail::Internal(e.to_string()))?;
            let tokens = tessera::hf::tokenize(&format!("{hf}/tokenizer.json"), &texts).map_err(|e| Fail::User(format!("error: {e}\n")))?;
            let mask = tokens.iter().find(|(n, _)| n == "attention_mask").map(|(_, t)| t.clone());
            let inputs = tessera::hf::declared_inputs(&g, tokens);
            let mut dims = HashMap::new();
            runtime::bind_dims(&g, &inputs, &mut dims).map_err(run_fail)?;
            let bound = tessera::hf::load_weights(&g, &dims, map.as_ref(), &format!("{hf}/model.safetensors")).map_err(run_fail)?;
            warn_unused(&bound.unused, &hf);
            let outputs = runtime::run(&g, &dims, &inputs, &bound.params).map_err(run_fail)?;
            let hidden = outputs.iter().find(|(n, _)| n == "last_hidden_state").map(|(_, t)| t);
            let (Some(hidden), Some(mask)) = (hidden, mask) else {
                return Err(Fail::User("error: embed needs a model with a `last_hidden_state` output\n".into()));
            };
            let emb = tessera::hf::mean_pool_normalize(hidden, &mask).map_err(|e| Fail::User(format!("error: {e}\n")))?;
            let d = emb.shape[1];
            for (i, text) in texts.iter().enumerate() {
                let head: Vec<String> = (0..d.min(6)).map(|k| format!("{:+.5}", emb.get(i * d + k))).collect();
                outln!("{i}: [{}, ...] ({d} dims)  {text:?}", head.join(", "));
            }
            if texts.len() > 1 {
                outln!("cosine similarity:");
                for i in 0..texts.len() {
                    let row: Vec<String> = (0..texts.len())
                        .map(|j| format!("{:.4}", (0..d).map(|k| emb.get(i * d + k) * emb.get(j * d + k)).sum::<f64>()))
                        .collect();
                    outln!("  {i}: {}", row.join(" "));
                }
            }
            if let Some(p) = out {
                runtime::write_safetensors(&p, &[("embeddings".to_string(), emb)]).map_err(run_fail)?;
                outln!("wrote embeddings to {p}");
            }
            Ok(())
        }
    }
}

/// The model file of a Hugging Face folder: its `model_type` in the standard library.
fn hf_model_file(dir: &str) -> Result<String, Fail> {
    let path = format!("{dir}/config.json");
    let config = tessera::hf::read_config(&path).map_err(|e| Fail::User(format!("error: {e}\n")))?;
    let file = tessera::hf::stdlib_model(&config, &path).map_err(|e| Fail::User(format!("error: {e}\n")))?;
    errln!("model: {file} (from `model_type` in {path})");
    Ok(file)
}

/// `generate`'s options besides the prompts and the sampler.
struct GenerateArgs {
    model: Option<String>,
    define: Vec<(String, String)>,
    config: Option<String>,
    weights: Option<String>,
    inputs: Option<String>,
    out: Option<String>,
    max_len: Option<usize>,
    backend: tessera::Backend,
    repeat: usize,
}

fn api_fail(e: tessera::Error) -> Fail {
    match e {
        tessera::Error::Internal(_) => Fail::Internal(format!("{e}")),
        tessera::Error::Diagnostics(d) => Fail::User(d),
        _ => Fail::User(format!("error: {e}\n")),
    }
}

fn generate(
    args: Vec<String>,
    hf: Option<String>,
    a: GenerateArgs,
    mut opts: tessera::GenerateOptions,
    ignore_eos: bool,
) -> Result<(), Fail> {
    let user = |m: String| Fail::User(format!("error: {m}\n"));
    let (mut file, mut texts) = (None, args.as_slice());
    if let Some(first) = args.first().filter(|f| f.ends_with(".tsr") || f.ends_with(".tir")) {
        file = Some(first.clone());
        texts = &args[1..];
    }
    let (config, weights) = match &hf {
        Some(dir) => (Some(format!("{dir}/config.json")), Some(format!("{dir}/model.safetensors"))),
        None => (a.config.clone(), a.weights.clone()),
    };
    let file = match (file, &hf) {
        (Some(f), _) => f,
        (None, Some(dir)) => hf_model_file(dir)?,
        (None, None) => return Err(user("name a model file (or give --hf DIR with a config.json)".into())),
    };
    let tokenizer = match (&hf, texts.is_empty(), &a.inputs) {
        (_, false, Some(_)) => return Err(user("give prompts as text or as --inputs, not both".into())),
        (Some(dir), false, None) => Some(tessera::hf::TextTokenizer::load(&format!("{dir}/tokenizer.json")).map_err(user)?),
        (None, false, None) => return Err(user("text prompts need --hf DIR (its tokenizer.json); give ids with --inputs".into())),
        (_, true, None) => return Err(user("give a prompt: text (with --hf) or ids (--inputs P.safetensors)".into())),
        (_, true, Some(_)) => None,
    };
    let mut compiler = tessera::Compiler::new().backend(a.backend);
    if let Some(m) = &a.model {
        compiler = compiler.model(m);
    }
    for (k, v) in &a.define {
        compiler = compiler.define(k, tessera::lang::Override::parse(v));
    }
    let cfg_json = match &config {
        Some(p) => {
            compiler = compiler.config_file(p).map_err(api_fail)?;
            Some(tessera::hf::read_config(p).map_err(user)?)
        }
        None => None,
    };
    let mut model = compiler.compile_file(&file).map_err(api_fail)?;
    match &weights {
        Some(w) => {
            let unused = model.load_weights(w).map_err(api_fail)?;
            warn_unused(&unused, w);
        }
        None => model.random_weights(opts.seed).map_err(api_fail)?,
    }
    if let Some(c) = &cfg_json {
        if !ignore_eos {
            opts.eos = tessera::hf::config_ids(c, "eos_token_id");
        }
        opts.pad = tessera::hf::config_ids(c, "pad_token_id").first().copied().or(opts.eos.first().copied()).unwrap_or(0);
        opts.decoder_start = tessera::hf::config_ids(c, "decoder_start_token_id").first().copied().unwrap_or(opts.pad);
    }
    let prompts: Vec<Vec<i64>> = match &tokenizer {
        Some(t) => texts.iter().map(|x| t.encode(x)).collect::<Result<_, _>>().map_err(user)?,
        None => {
            let path = a.inputs.as_deref().unwrap_or_default();
            let mut tensors = runtime::read_safetensors(path).map_err(run_fail)?;
            let ids = tensors.remove("input_ids").ok_or_else(|| user(format!("{path} has no `input_ids`")))?;
            prompt_rows(&ids, tensors.get("attention_mask")).map_err(|m| user(format!("{path}: {m}")))?
        }
    };
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let max_len = a.max_len.unwrap_or(longest + opts.max_new_tokens);
    // Timing runs (`--repeat`): the same generation again, after which the last run's
    // figures are the median ones.
    let (mut firsts, mut per_token) = (Vec::new(), Vec::new());
    for _ in 1..a.repeat.max(1) {
        let r = model.session(max_len).map_err(api_fail)?.generate(&prompts, &opts, |_, _| {}).map_err(api_fail)?;
        firsts.push(r.first_token_seconds);
        per_token.push(r.decode_seconds / r.decode_steps.max(1) as f64);
    }
    let mut session = model.session(max_len).map_err(api_fail)?;
    let streaming = tokenizer.is_some() && prompts.len() == 1;
    let mut shown = String::new();
    let mut so_far = Vec::new();
    let result = session.generate(&prompts, &opts, |_, tok| {
        if let (true, Some(t)) = (streaming, &tokenizer) {
            so_far.push(tok);
            if let Ok(text) = t.decode(&so_far) {
                if let Some(new) = text.strip_prefix(shown.as_str()) {
                    out!("{new}");
                    shown = text;
                }
            }
        }
    });
    let result = result.map_err(api_fail)?;
    if streaming {
        outln!();
    } else if let Some(t) = &tokenizer {
        for (r, row) in result.tokens.iter().enumerate() {
            let ended: Vec<i64> = row.iter().copied().take_while(|x| !opts.eos.contains(x)).collect();
            outln!("{r}: {}{}", texts[r], t.decode(&ended).map_err(user)?);
        }
    } else {
        for (r, row) in result.tokens.iter().enumerate() {
            outln!("{r}: {row:?}");
        }
    }
    firsts.push(result.first_token_seconds);
    per_token.push(result.decode_seconds / result.decode_steps.max(1) as f64);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let runs = if firsts.len() > 1 { format!(", median of {} runs", firsts.len()) } else { String::new() };
    errln!(
        "state: {:.1} MiB for {} row(s) x {max_len} positions; first token {:.1} ms, then {:.2} ms/token ({} steps{runs})",
        session.state_bytes() as f64 / (1 << 20) as f64,
        prompts.len(),
        median(&mut firsts) * 1e3,
        median(&mut per_token) * 1e3,
        result.decode_steps
    );
    if !session.profile.is_empty() {
        let steps = result.decode_steps.max(1) as f64;
        let total: f64 = session.profile.iter().map(|(_, t)| t).sum();
        errln!("decode profile, ms per step (TESSERA_PROFILE):");
        for (kind, t) in &session.profile {
            errln!("  {kind:<12} {:8.3}  {:5.1}%", t * 1e3 / steps, 100.0 * t / total);
        }
    }
    if let Some(p) = &a.out {
        let rows = result.tokens.len();
        let steps = opts.max_new_tokens;
        let vocab = result.logits.iter().flatten().map(Vec::len).max().unwrap_or(0);
        let mut logits = vec![0.0f32; rows * steps * vocab];
        for (r, row) in result.logits.iter().enumerate() {
            for (t, l) in row.iter().enumerate() {
                logits[(r * steps + t) * vocab..(r * steps + t) * vocab + l.len()].copy_from_slice(l);
            }
        }
        let tokens = runtime::Tensor::i64(vec![rows, steps], result.tokens.concat());
        let logits = runtime::Tensor::f32(vec![rows, steps, vocab], logits);
        runtime::write_safetensors(p, &[("tokens".to_string(), tokens), ("logits".to_string(), logits)]).map_err(run_fail)?;
        errln!("wrote tokens and logits to {p}");
    }
    Ok(())
}

/// The prompt of each row of `ids` [batch, S]: the positions `mask` marks real (on either side).
fn prompt_rows(ids: &runtime::Tensor, mask: Option<&runtime::Tensor>) -> Result<Vec<Vec<i64>>, String> {
    let [b, s] = ids.shape[..] else { return Err(format!("`input_ids` must be [batch, positions]; it is {:?}", ids.shape)) };
    let runtime::Data::I64(v) = &ids.data else { return Err(format!("`input_ids` must be i64; it is {}", ids.dtype())) };
    if let Some(m) = mask {
        if m.shape != ids.shape {
            return Err(format!("`attention_mask` is {:?} but `input_ids` is {:?}", m.shape, ids.shape));
        }
    }
    let rows: Vec<Vec<i64>> =
        (0..b).map(|r| (0..s).filter(|&j| mask.is_none_or(|m| m.get(r * s + j) != 0.0)).map(|j| v[r * s + j]).collect()).collect();
    if let Some(r) = rows.iter().position(Vec::is_empty) {
        return Err(format!("row {r} has no tokens"));
    }
    Ok(rows)
}

/// The time of one run: on a GPU the device's (transfers excluded), elsewhere the wall time.
fn measured_ms(stats: Option<&tessera::codegen::RunStats>, wall_ms: f64) -> f64 {
    stats.and_then(|s| s.device_seconds).map_or(wall_ms, |d| d * 1e3)
}

fn run_fail(e: runtime::RunError) -> Fail {
    match e {
        runtime::RunError::Internal(_) => Fail::Internal(format!("internal error: {e}")),
        _ => Fail::User(format!("error: {e}\n")),
    }
}

/// A backend missing from this build is the user's to fix (a feature); anything else is ours.
fn codegen_fail(e: tessera::codegen::CodegenError) -> Fail {
    match e {
        tessera::codegen::CodegenError::NotBuilt { .. } => Fail::User(format!("error: {e}\n")),
        _ => Fail::Internal(format!("internal error: {e}")),
    }
}

fn warn_unused(unused: &[String], path: &str) {
    if !unused.is_empty() {
        errln!("warning: {} tensor(s) in {path} are not used by the model: {}", unused.len(), unused.join(", "));
    }
}

/// Front end for `ir` and `run`: a verified graph from a `.tsr` or `.tir` file, and the
/// model's checkpoint map if it has one.
fn front(m: &ModelArgs) -> Result<(Graph, Option<CheckpointMap>), Fail> {
    let text = read(&m.file)?;
    if m.file.ends_with(".tir") {
        if !m.define.is_empty() {
            return Err(Fail::User("error: -D applies to .tsr files; a .tir file has its hyper-parameters already applied\n".into()));
        }
        let g = tessera::ir::parse(&text).map_err(|e| Fail::User(format!("error: {}:{}: {}\n", m.file, e.line, e.msg)))?;
        tessera::ir::verify(&g).map_err(|errs| Fail::User(format!("error: {} is not valid IR:\n  {}\n", m.file, errs.join("\n  "))))?;
        if m.config.is_some() {
            return Err(Fail::User("error: --config applies to .tsr files; a .tir file has its hyper-parameters already applied\n".into()));
        }
        return Ok((g, None));
    }
    let config = match &m.config {
        Some(p) => Some(tessera::hf::read_config(p).map_err(|e| Fail::User(format!("error: {e}\n")))?),
        None => None,
    };
    let overrides: Vec<(String, Override)> = m.define.iter().map(|(k, v)| (k.clone(), Override::parse(v))).collect();
    let fe = Frontend::tsr_with_config(&m.file, &text, m.model.as_deref(), &overrides, config.as_ref());
    err!("{}", render(&fe.diagnostics, &fe.sources, color(), 100));
    let g = fe.graph.ok_or_else(|| Fail::User(String::new()))?;
    tessera::ir::verify(&g).map_err(|errs| {
        Fail::Internal(format!("internal compiler error: elaboration produced invalid IR:\n  {}\n{g}", errs.join("\n  ")))
    })?;
    Ok((g, fe.checkpoint))
}

/// The size of a symbolic dimension that neither `--dim` nor an input fixes.
fn default_dim(name: &str) -> i64 {
    match name {
        "batch" => 1,
        "seq" => 16,
        _ => 8,
    }
}

/// Files `run` reads and writes.
struct RunFiles<'a> {
    weights: Option<&'a str>,
    inputs: Option<&'a str>,
    out: Option<&'a str>,
    /// The memory budget in bytes.
    budget: u128,
}

fn run(
    g: &Graph,
    engine: &tessera::Engine,
    map: Option<&CheckpointMap>,
    dim: &[(String, String)],
    files: RunFiles,
    seed: u64,
    repeat: usize,
) -> Result<(), runtime::RunError> {
    let RunFiles { weights, inputs, out, budget } = files;
    let mut dims: runtime::Dims = HashMap::new();
    for (k, v) in dim {
        let flag = |why| runtime::RunError::DimFlag { key: k.clone(), value: v.clone(), why };
        let n: i64 = v.parse().map_err(|_| flag("not an integer"))?;
        if n < 0 {
            return Err(flag("sizes cannot be negative"));
        }
        dims.insert(k.clone(), n);
    }
    let given = match inputs {
        Some(p) => runtime::read_safetensors(p)?,
        None => HashMap::new(),
    };
    let declared: Vec<&str> = g.inputs().iter().map(|(n, _)| *n).collect();
    if let Some(extra) = given.keys().find(|k| !declared.contains(&k.as_str())) {
        return Err(runtime::RunError::Unknown { kind: "input", name: extra.clone() });
    }
    // A file of inputs gives them all: a missing one would silently be random.
    if let Some(p) = inputs {
        let missing: Vec<&str> = declared.iter().copied().filter(|n| !given.contains_key(*n)).collect();
        if !missing.is_empty() {
            return Err(runtime::RunError::MissingInputs { file: p.to_string(), names: missing.iter().map(|n| n.to_string()).collect() });
        }
    }
    // A size the model never mentions is a typo, not a no-op.
    let known: std::collections::BTreeSet<&str> = g.nodes().iter().flat_map(|n| n.ty.shape.iter().flat_map(|d| d.symbols())).collect();
    if let Some((k, _)) = dim.iter().find(|(k, _)| !known.contains(k.as_str())) {
        let list = if known.is_empty() { "none".to_string() } else { known.iter().copied().collect::<Vec<_>>().join(", ") };
        return Err(runtime::RunError::UnknownDim { key: k.clone(), known: list });
    }
    runtime::bind_dims(g, &given, &mut dims)?;
    for (_, v) in g.inputs() {
        for d in &g.ty(v).shape {
            for s in d.symbols() {
                dims.entry(s.to_string()).or_insert(default_dim(s));
            }
        }
    }
    // Before anything is allocated: every size bound, and the memory of the run estimated.
    engine.memory_estimate(g, &dims)?.check(budget)?;
    let params = match weights {
        Some(p) => {
            let bound = tessera::hf::load_weights(g, &dims, map, p)?;
            warn_unused(&bound.unused, p);
            bound.params
        }
        None => runtime::random_params(g, &dims, seed)?,
    };
    let mut all_inputs = runtime::random_inputs(g, &dims, seed, &given)?;
    all_inputs.extend(given);
    let mut dims_list: Vec<_> = dims.iter().collect();
    dims_list.sort();
    outln!("{}: {}", g.name, dims_list.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "));
    let mut times = Vec::new();
    // Each kernel kind's seconds in every run (TESSERA_PROFILE), for their medians.
    let mut kinds: Vec<(&'static str, Vec<f64>)> = Vec::new();
    let mut note = |stats: Option<&tessera::codegen::RunStats>| {
        for (kind, secs) in stats.map_or(&[][..], |s| &s.profile[..]) {
            match kinds.iter_mut().find(|(k, _)| k == kind) {
                Some((_, v)) => v.push(*secs),
                None => kinds.push((kind, vec![*secs])),
            }
        }
    };
    for _ in 1..repeat {
        let t = std::time::Instant::now();
        let (_, stats) = engine.run(g, &dims, &all_inputs, &params)?;
        times.push(measured_ms(stats.as_ref(), t.elapsed().as_secs_f64() * 1e3));
        note(stats.as_ref());
    }
    let start = std::time::Instant::now();
    let (outputs, mut stats) = engine.run(g, &dims, &all_inputs, &params)?;
    note(stats.as_ref());
    // With --repeat, the profile shows each kind's median over the runs.
    if let Some(s) = stats.as_mut() {
        for (kind, secs) in &mut s.profile {
            if let Some((_, v)) = kinds.iter_mut().find(|(k, _)| k == kind) {
                v.sort_by(f64::total_cmp);
                *secs = v[v.len() / 2];
            }
        }
    }
    let wall = start.elapsed().as_secs_f64() * 1e3;
    let stats_ms = measured_ms(stats.as_ref(), wall);
    if let Some((device, bytes)) = stats.as_ref().and_then(|s| Some((s.device_seconds?, s.arena_bytes))) {
        let mib = bytes as f64 / (1 << 20) as f64;
        outln!("cuda: {:.2} ms on the device, {wall:.1} ms with uploads and downloads, intermediates {mib:.2} MiB", device * 1e3);
    } else if let Some(stats) = stats {
        let a = stats.attention;
        outln!(
            "cpu: {wall:.1} ms, activation arena {:.2} MiB, attention tiles {} computed / {} skipped",
            stats.arena_bytes as f64 / (1 << 20) as f64,
            a.tiles,
            a.skipped
        );
        for (kind, secs) in &stats.profile {
            outln!("  {kind:<12} {:9.3} ms", secs * 1e3);
        }
    }
    if repeat > 1 {
        times.push(stats_ms);
        times.sort_by(f64::total_cmp);
        outln!("median of {repeat} runs: {:.3} ms", times[times.len() / 2]);
    }
    for (name, t) in &outputs {
        outln!("{name}: {}", summary(t));
    }
    if let Some(p) = out {
        runtime::write_safetensors(p, &outputs)?;
        outln!("wrote {} output(s) to {p}", outputs.len());
    }
    Ok(())
}

fn summary(t: &Tensor) -> String {
    let v = t.to_f64();
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let nonfinite = v.iter().filter(|x| !x.is_finite()).count();
    format!("{}{:?} mean={mean:.6} std={std:.6} min={min:.6} max={max:.6} non-finite={nonfinite}", t.dtype(), t.shape)
}

/// Lays out `Debug` text one field per line, indented by nesting (capped, so the output stays
/// linear in the input: `{:#?}` nests a writer per level and took quadratic time and more on
/// a 1,000-term sum).
fn indent_debug(s: &str) -> String {
    const MAX_INDENT: usize = 32;
    let mut out = String::with_capacity(s.len() * 2);
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth.min(MAX_INDENT)));
    };
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if in_str {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push(c);
            }
            '{' | '(' | '[' => {
                out.push(c);
                if matches!(chars.peek(), Some('}' | ')' | ']')) {
                    continue;
                }
                depth += 1;
                newline(&mut out, depth);
                if chars.peek() == Some(&' ') {
                    chars.next();
                }
            }
            '}' | ')' | ']' => {
                while out.ends_with(' ') {
                    out.pop();
                }
                if !matches!(out.chars().last(), Some('{' | '(' | '[')) {
                    depth = depth.saturating_sub(1);
                    newline(&mut out, depth);
                }
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
                if chars.peek() == Some(&' ') {
                    chars.next();
                }
            }
            ' ' if out.ends_with('\n') => {}
            _ => out.push(c),
        }
    }
    out
}
