//! The `tessera` command line: check, dump IR, run models on the reference interpreter.
//! Exit status: 0 success, 1 user error (rendered diagnostic), 2 internal error.

use clap::{Parser, Subcommand, ValueEnum};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use tessera::ir::Graph;
use tessera::lang::{Diagnostic, Override};
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
}

#[derive(clap::Args)]
struct ModelArgs {
    /// A `.tsr` model file or a `.tir` IR file.
    file: String,
    /// Which model of the file (needed when it defines several).
    #[arg(long)]
    model: Option<String>,
    /// Override a hyper-parameter: -D layers=2.
    #[arg(short = 'D', value_name = "KEY=VALUE", value_parser = key_value)]
    define: Vec<(String, String)>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Parse and check files; elaborate every model they define.
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<String>,
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
    },
    /// Run a model on the reference interpreter.
    Run {
        #[command(flatten)]
        m: ModelArgs,
        /// Size of a symbolic dimension: --dim batch=2 --dim seq=16 (defaults: batch=1, seq=16, others 8).
        #[arg(long, value_name = "NAME=N", value_parser = key_value)]
        dim: Vec<(String, String)>,
        /// Parameters from a safetensors file (otherwise random, see --seed).
        #[arg(long)]
        weights: Option<String>,
        /// Inputs from a safetensors file (otherwise random).
        #[arg(long)]
        inputs: Option<String>,
        /// Write every output, by name, to this safetensors file.
        #[arg(long)]
        out: Option<String>,
        /// Seed of the random parameters and inputs.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
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
    let cli = Cli::parse();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("internal error: tessera panicked: {info}\nthis is a bug in Tessera; please report it with the input that caused it");
    }));
    match std::panic::catch_unwind(|| dispatch(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(Fail::User(msg))) => {
            eprint!("{msg}");
            ExitCode::from(1)
        }
        Ok(Err(Fail::Internal(msg))) => {
            eprintln!("{msg}");
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
        Cmd::Check { files } => {
            let mut failed = false;
            for f in files {
                let text = read(&f)?;
                let (prog, mut diags) = tessera::lang::load(&f, &text);
                if !diags.iter().any(Diagnostic::is_error) {
                    diags = tessera::lang::check(&f, &text);
                }
                eprint!("{}", render(&diags, &prog.sources, color(), 100));
                if diags.iter().any(Diagnostic::is_error) {
                    failed = true;
                } else {
                    println!("{f}: ok");
                }
            }
            if failed {
                Err(Fail::User(String::new()))
            } else {
                Ok(())
            }
        }
        Cmd::Ir { m, emit, print_after } => {
            if emit == Emit::Ast {
                let text = read(&m.file)?;
                return match tessera::lang::parse(0, &text) {
                    Ok(module) => {
                        println!("{module:#?}");
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
                if p != "all" && !tessera::passes::is_pass(p) {
                    let names: Vec<&str> = tessera::passes::PIPELINE.iter().map(|p| p.name).collect();
                    return Err(Fail::User(format!("error: no pass named `{p}`; passes: {}, or `all`\n", names.join(", "))));
                }
            }
            let g = front(&m)?;
            if emit == Emit::Ir && print_after.is_none() {
                print!("{g}");
                return Ok(());
            }
            let opt = tessera::passes::run_pipeline(&g, |name, g| {
                if print_after.as_deref().is_some_and(|p| p == "all" || p == name) {
                    println!("// after {name}\n{g}");
                }
            })
            .map_err(|e| Fail::Internal(e.to_string()))?;
            if emit == Emit::Opt {
                print!("{opt}");
            }
            Ok(())
        }
        Cmd::Run { m, dim, weights, inputs, out, seed } => {
            let g = front(&m)?;
            let g = tessera::passes::run_pipeline(&g, |_, _| {}).map_err(|e| Fail::Internal(e.to_string()))?;
            run(&g, &dim, weights.as_deref(), inputs.as_deref(), out.as_deref(), seed).map_err(|e| match e {
                runtime::RunError::Internal(_) => Fail::Internal(format!("internal error: {e}")),
                _ => Fail::User(format!("error: {e}\n")),
            })
        }
    }
}

/// Front end for `ir` and `run`: a verified graph from a `.tsr` or `.tir` file.
fn front(m: &ModelArgs) -> Result<Graph, Fail> {
    let text = read(&m.file)?;
    if m.file.ends_with(".tir") {
        if !m.define.is_empty() {
            return Err(Fail::User("error: -D applies to .tsr files; a .tir file has its hyper-parameters already applied\n".into()));
        }
        let g = tessera::ir::parse(&text).map_err(|e| Fail::User(format!("error: {}:{}: {}\n", m.file, e.line, e.msg)))?;
        tessera::ir::verify(&g).map_err(|errs| Fail::User(format!("error: {} is not valid IR:\n  {}\n", m.file, errs.join("\n  "))))?;
        return Ok(g);
    }
    let overrides: Vec<(String, Override)> = m.define.iter().map(|(k, v)| (k.clone(), Override::parse(v))).collect();
    let fe = Frontend::tsr(&m.file, &text, m.model.as_deref(), &overrides);
    eprint!("{}", render(&fe.diagnostics, &fe.sources, color(), 100));
    let g = fe.graph.ok_or_else(|| Fail::User(String::new()))?;
    tessera::ir::verify(&g).map_err(|errs| {
        Fail::Internal(format!("internal compiler error: elaboration produced invalid IR:\n  {}\n{g}", errs.join("\n  ")))
    })?;
    Ok(g)
}

fn run(
    g: &Graph,
    dim: &[(String, String)],
    weights: Option<&str>,
    inputs: Option<&str>,
    out: Option<&str>,
    seed: u64,
) -> Result<(), runtime::RunError> {
    let mut dims: runtime::Dims = HashMap::new();
    for (k, v) in dim {
        let n: i64 = v.parse().map_err(|_| runtime::RunError::Shape(format!("--dim {k}={v}: not an integer")))?;
        if n < 0 {
            return Err(runtime::RunError::Shape(format!("--dim {k}={v}: sizes cannot be negative")));
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
    runtime::bind_dims(g, &given, &mut dims)?;
    for (_, v) in g.inputs() {
        for d in &g.ty(v).shape {
            for s in d.symbols() {
                let default = match s {
                    "batch" => 1,
                    "seq" => 16,
                    _ => 8,
                };
                dims.entry(s.to_string()).or_insert(default);
            }
        }
    }
    let params = match weights {
        Some(p) => {
            let w = runtime::read_safetensors(p)?;
            let names: Vec<&str> = g.params().iter().map(|(n, _)| *n).collect();
            let unused: Vec<&String> = w.keys().filter(|k| !names.contains(&k.as_str())).collect();
            if !unused.is_empty() {
                eprintln!(
                    "warning: {} tensor(s) in {p} are not parameters of the model: {}",
                    unused.len(),
                    unused.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
            w
        }
        None => runtime::random_params(g, &dims, seed)?,
    };
    let mut all_inputs = runtime::random_inputs(g, &dims, seed, &given)?;
    all_inputs.extend(given);
    let mut dims_list: Vec<_> = dims.iter().collect();
    dims_list.sort();
    println!("{}: {}", g.name, dims_list.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "));
    let outputs = runtime::run(g, &dims, &all_inputs, &params)?;
    for (name, t) in &outputs {
        println!("{name}: {}", summary(t));
    }
    if let Some(p) = out {
        runtime::write_safetensors(p, &outputs)?;
        println!("wrote {} output(s) to {p}", outputs.len());
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
