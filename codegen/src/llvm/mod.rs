//! The LLVM backend (feature `llvm`): the CPU executor's kernels as one LLVM module, written
//! as IR text ([`emit`]), optimised by LLVM's O3 pipeline for the host CPU (its name and
//! features, so AVX2 or AVX-512 where present) and compiled by MCJIT. It compiles what the
//! Cranelift backend compiles (elementwise chains and attention score functions, as whole
//! vectorized row loops) and also the kernels Cranelift leaves to Rust: norms, softmax,
//! reductions, the attention kernel's online-softmax step and tile products ([`tile`]) and
//! fused scans over a tile, every position ([`scan`]). Everything else (GEMMs, attention's loop
//! over tiles, the split of a scan into tiles) is the CPU executor's.
//!
//! Identical kernels (one per layer) are emitted once ([`TextKernels`]).

mod emit;
pub mod gemm;
mod scan;
mod tile;

use crate::cpu::codegen::{tsr_binary, tsr_gather, tsr_unary, Codegen, Sym, TextKernels};
use crate::error::CodegenError;
use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{CodeModel, InitializationConfig, RelocMode, Target, TargetMachine};
use inkwell::OptimizationLevel;
use std::mem::ManuallyDrop;
use tessera_ir::{DType, NormKind, ReduceOp, ScoreFn};

/// Kernels declared, then compiled as one module.
pub struct Llvm {
    keep_ir: bool,
    /// The kernels declared (identical ones once).
    kernels: TextKernels,
    compiled: Option<Compiled>,
    /// The module before and after optimisation, when kept.
    dumps: Vec<String>,
}

/// Compiled code and what keeps it alive: the execution engine owns the module, which borrows
/// the context; both are freed together, the engine first.
struct Compiled {
    engine: ManuallyDrop<ExecutionEngine<'static>>,
    context: *mut Context,
    addresses: Vec<usize>,
}

impl Drop for Compiled {
    fn drop(&mut self) {
        // SAFETY: the engine borrows `context`, which `compile` leaked from a box; the engine
        // goes first, then the context, and nothing else refers to either.
        unsafe {
            ManuallyDrop::drop(&mut self.engine);
            drop(Box::from_raw(self.context));
        }
    }
}

// SAFETY: the engine and its context are used only by `compile`, on one thread; afterwards
// they are only kept alive (the code is called through the addresses taken then).
unsafe impl Send for Compiled {}

fn err(e: impl std::fmt::Display) -> CodegenError {
    CodegenError::Llvm(e.to_string())
}

/// An error message of LLVM's, unquoted.
fn lerr(e: inkwell::support::LLVMString) -> CodegenError {
    CodegenError::Llvm(e.to_string_lossy().into_owned())
}

/// The host CPU as LLVM names it: its name and its features.
fn host() -> (String, String) {
    (TargetMachine::get_host_cpu_name().to_string(), TargetMachine::get_host_cpu_features().to_string())
}

/// Parses the module `text`, optimises it at O3 for the host CPU `cpu` with `features` and
/// compiles it with MCJIT; the interpreter's helpers are mapped where the module calls them.
/// Returns the compiled code with the addresses of the functions `names`, in order; with
/// `dumps`, the module as emitted and after O3 is pushed there.
fn compile(text: &str, cpu: &str, features: &str, names: &[String], mut dumps: Option<&mut Vec<String>>) -> Result<Compiled, CodegenError> {
    Target::initialize_native(&InitializationConfig::default()).map_err(err)?;
    let triple = TargetMachine::get_default_triple();
    let target = Target::from_triple(&triple).map_err(err)?;
    let tm = target
        .create_target_machine(&triple, cpu, features, OptimizationLevel::Aggressive, RelocMode::Default, CodeModel::JITDefault)
        .ok_or_else(|| err(format!("no target machine for {cpu} ({})", triple)))?;
    let context: *mut Context = Box::into_raw(Box::new(Context::create()));
    // SAFETY: `context` lives until `Compiled` drops it, after the engine; on the error paths
    // below it is freed after everything made from it.
    let ctx: &'static Context = unsafe { &*context };
    let made = (|| {
        let buf = MemoryBuffer::create_from_memory_range_copy(text.as_bytes(), "tessera");
        let module = ctx.create_module_from_ir(buf).map_err(lerr)?;
        module.verify().map_err(lerr)?;
        module.set_triple(&triple);
        module.set_data_layout(&tm.get_target_data().get_data_layout());
        if let Some(d) = dumps.as_mut() {
            d.push(format!("; the module as emitted\n{}", module.print_to_string().to_string_lossy()));
        }
        module.run_passes("default<O3>", &tm, PassBuilderOptions::create()).map_err(lerr)?;
        if let Some(d) = dumps.as_mut() {
            d.push(format!("; the module after O3 for {cpu}\n{}", module.print_to_string().to_string_lossy()));
        }
        let engine = module.create_jit_execution_engine(OptimizationLevel::Aggressive).map_err(lerr)?;
        for (name, addr) in [
            ("tsr_unary", tsr_unary as *const () as usize),
            ("tsr_binary", tsr_binary as *const () as usize),
            ("tsr_gather", tsr_gather as *const () as usize),
        ] {
            if let Some(f) = module.get_function(name) {
                engine.add_global_mapping(&f, addr);
            }
        }
        let addresses = names.iter().map(|n| engine.get_function_address(n).map_err(err)).collect::<Result<Vec<_>, _>>()?;
        drop(module);
        Ok::<_, CodegenError>((engine, addresses))
    })();
    match made {
        Ok((engine, addresses)) => Ok(Compiled { engine: ManuallyDrop::new(engine), context, addresses }),
        Err(e) => {
            // SAFETY: everything made from the context has been dropped.
            drop(unsafe { Box::from_raw(context) });
            Err(e)
        }
    }
}

impl Llvm {
    /// A code generator for the host CPU; `keep_ir` keeps the module's text before and after
    /// optimisation.
    pub fn new(keep_ir: bool) -> Result<Llvm, CodegenError> {
        Target::initialize_native(&InitializationConfig::default()).map_err(err)?;
        Ok(Llvm { keep_ir, kernels: TextKernels::default(), compiled: None, dumps: Vec::new() })
    }

    /// The whole module's text.
    fn module_text(&self, cpu: &str, features: &str) -> String {
        let mut s = emit::prelude(cpu, features);
        for f in self.kernels.functions() {
            s.push('\n');
            s.push_str(f);
        }
        s
    }
}

impl Codegen for Llvm {
    fn name(&self) -> &'static str {
        "llvm"
    }

    fn rows(&mut self, f: &ScoreFn, leaf_types: &[DType], out: DType, steps: Option<&[i64]>) -> Result<(Sym, Option<Sym>), CodegenError> {
        let any = emit::row(TextKernels::NAME, f, leaf_types, out, None).map_err(CodegenError::Internal)?;
        let any = self.kernels.declare(any);
        let fixed = match steps {
            Some(st) => {
                Some(self.kernels.declare(emit::row(TextKernels::NAME, f, leaf_types, out, Some(st)).map_err(CodegenError::Internal)?))
            }
            None => None,
        };
        Ok((any, fixed))
    }

    fn norm(&mut self, kind: NormKind, eps: f64, weight: bool, bias: bool) -> Result<Option<Sym>, CodegenError> {
        Ok(Some(self.kernels.declare(emit::norm(TextKernels::NAME, kind, eps, weight, bias))))
    }

    fn softmax(&mut self) -> Result<Option<Sym>, CodegenError> {
        Ok(Some(self.kernels.declare(emit::softmax(TextKernels::NAME))))
    }

    fn reduce(&mut self, op: ReduceOp) -> Result<Option<Sym>, CodegenError> {
        Ok(Some(self.kernels.declare(emit::reduce(TextKernels::NAME, op))))
    }

    fn online_softmax(&mut self) -> Result<Option<Sym>, CodegenError> {
        Ok(Some(self.kernels.declare(emit::online_softmax(TextKernels::NAME))))
    }

    fn tile_product(&mut self) -> Result<Option<Sym>, CodegenError> {
        let (w, nv) = tile::shape(&host().1);
        Ok(Some(self.kernels.declare(tile::tile_product(TextKernels::NAME, w, nv))))
    }

    fn scan_tile(&mut self, f: &crate::scan::FusedScan, s: &tessera_ir::Scan) -> Result<Option<Sym>, CodegenError> {
        // A scan without states keeps the executor's kernel.
        let Ok(layout) = f.tile_layout(s) else { return Ok(None) };
        Ok(Some(self.kernels.declare(scan::scan_tile(TextKernels::NAME, f, &layout).map_err(CodegenError::Internal)?)))
    }

    fn finish(&mut self) -> Result<(), CodegenError> {
        let (cpu, features) = host();
        let text = self.module_text(&cpu, &features);
        let dumps = if self.keep_ir { Some(&mut self.dumps) } else { None };
        self.compiled = Some(compile(&text, &cpu, &features, self.kernels.names(), dumps)?);
        Ok(())
    }

    fn address(&self, s: Sym) -> Result<*const u8, CodegenError> {
        let c = self.compiled.as_ref().ok_or_else(|| CodegenError::Internal("llvm: a kernel asked for before finish".into()))?;
        c.addresses.get(s).map(|&a| a as *const u8).ok_or_else(|| CodegenError::Internal(format!("llvm: no kernel {s}")))
    }

    fn dumps(&self) -> Vec<String> {
        self.dumps.clone()
    }

    fn fresh(&self) -> Result<Box<dyn Codegen>, CodegenError> {
        Ok(Box::new(Llvm::new(self.keep_ir)?))
    }
}
