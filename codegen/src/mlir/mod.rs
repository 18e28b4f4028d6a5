//! The MLIR backend (feature `mlir`): the CPU executor's kernels as one MLIR module of `linalg`,
//! `scf`, `vector`, `arith`, `math` and `memref` ops, written as text ([`emit`]), parsed by melior, lowered
//! to the LLVM dialect by the pass pipeline [`STAGES`] and compiled by MLIR's execution engine
//! (LLVM's O3 and code generation for the host CPU). It compiles what the LLVM backend compiles:
//! elementwise chains and attention score functions (row kernels), norms, softmax, reductions
//! the attention kernel's online-softmax step and tile products ([`tile`]) and fused scans over
//! a tile ([`scan`]).
//!
//! The kernels keep the executor's raw-pointer ABIs ([`crate::cpu::cranelift::RowFn`],
//! [`crate::cpu::codegen::NormFn`], [`crate::cpu::codegen::SoftmaxFn`]): each is a `func.func`
//! of `!llvm.ptr` and `i64` arguments, which `convert-func-to-llvm` makes a plain C function,
//! and it wraps the pointers into memrefs itself (see [`emit`]). Their addresses come from the
//! engine's `lookup`; the interpreter's helpers (`tsr_unary`, `tsr_binary`, `tsr_gather`) are
//! registered with the engine by address.
//!
//! Identical kernels (one per layer) are emitted once ([`TextKernels`]).

mod emit;
mod scan;
mod tile;

use crate::cpu::codegen::{tsr_binary, tsr_gather, tsr_unary, Codegen, Sym, TextKernels};
use crate::error::CodegenError;
use melior::dialect::DialectRegistry;
use melior::ir::operation::OperationLike;
use melior::ir::Module;
use melior::pass::PassManager;
use melior::utility::{parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes};
use melior::{Context, ExecutionEngine};
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex};
use tessera_ir::{DType, NormKind, ReduceOp, ScoreFn};

/// The lowering pipeline, one pass a stage (each is a pass of `mlir-opt`, run on the module);
/// with `keep_ir` the module is kept after each (`tessera ir --emit mlir --print-after STAGE`).
pub const STAGES: &[&str] = &[
    // linalg.generic → scf.for loops of memref loads and stores.
    "convert-linalg-to-loops",
    "convert-scf-to-cf",
    // vector.load / maskedload / fma / create_mask (the tile products) → LLVM vector ops.
    "convert-vector-to-llvm",
    // memref.subview → reinterpret_cast with offsets computed by affine.apply …
    "expand-strided-metadata",
    // … which become arith.
    "lower-affine",
    "finalize-memref-to-llvm",
    "convert-math-to-llvm",
    "convert-arith-to-llvm",
    "convert-cf-to-llvm",
    "convert-func-to-llvm",
    // Cancels the casts between our descriptor structs and memrefs.
    "reconcile-unrealized-casts",
];

/// The optimisation level of the engine's LLVM pipeline and code generator.
const OPT_LEVEL: usize = 3;

/// Kernels declared, then compiled as one module.
pub struct Mlir {
    keep_ir: bool,
    /// The kernels declared (identical ones once).
    kernels: TextKernels,
    compiled: Option<Compiled>,
    /// The module as emitted and after each stage, when kept.
    dumps: Vec<String>,
}

/// Compiled code and what keeps it alive: the execution engine (which owns the LLVM module and
/// the JIT'd code) and the MLIR context the module was parsed in; the engine goes first.
struct Compiled {
    engine: ManuallyDrop<ExecutionEngine>,
    context: ManuallyDrop<Context>,
    addresses: Vec<usize>,
}

impl Drop for Compiled {
    fn drop(&mut self) {
        // SAFETY: each field is dropped once, here, and never used again: the engine (and the
        // code it owns) first, then the context its module came from.
        unsafe {
            ManuallyDrop::drop(&mut self.engine);
            ManuallyDrop::drop(&mut self.context);
        }
    }
}

// SAFETY: the engine and the context are used only by `Mlir::finish`, on one thread (the context
// has threading disabled and no diagnostic handler left attached); afterwards they are only kept
// alive, the code being called through the addresses taken then, and dropped together.
unsafe impl Send for Compiled {}

fn err(e: impl std::fmt::Display) -> CodegenError {
    CodegenError::Mlir(e.to_string())
}

/// Whether melior made an engine without one behind it: `ExecutionEngine::new` does not
/// report the C API's failure (a null handle), on which `lookup` would crash.
fn engine_is_null(e: &ExecutionEngine) -> bool {
    // melior's `ExecutionEngine` is one field, the C API's handle, itself one pointer.
    const _: () = assert!(std::mem::size_of::<ExecutionEngine>() == std::mem::size_of::<*const ()>());
    // SAFETY: a struct of one field with the size of that field has it at offset 0 (asserted
    // above), and the handle is a pointer: reading the first word reads the handle.
    unsafe { std::ptr::read(std::ptr::from_ref(e).cast::<*const ()>()) }.is_null()
}

impl Mlir {
    /// A code generator for the host CPU; `keep_ir` keeps the module's text as emitted and
    /// after each stage of the lowering.
    pub fn new(keep_ir: bool) -> Result<Mlir, CodegenError> {
        Ok(Mlir { keep_ir, kernels: TextKernels::default(), compiled: None, dumps: Vec::new() })
    }

    /// The whole module's text.
    fn module_text(&self) -> String {
        let mut s = String::from("module {\n");
        s.push_str(&emit::prelude());
        for f in self.kernels.functions() {
            s.push('\n');
            s.push_str(f);
        }
        s.push_str("}\n");
        s
    }

    /// Parses, lowers and compiles `text` in `context`: the engine and each kernel's address.
    fn compile(
        &mut self,
        context: &Context,
        text: &str,
        diags: &Mutex<Vec<String>>,
    ) -> Result<(ExecutionEngine, Vec<usize>), CodegenError> {
        let messages = || diags.lock().map(|d| d.join("\n")).unwrap_or_default();
        let mut module = Module::parse(context, text).ok_or_else(|| err(format!("the module does not parse: {}\n{text}", messages())))?;
        if self.keep_ir {
            self.dumps.push(format!("// the module as emitted\n{}", module.as_operation()));
        }
        // One pass manager a stage when the module is kept after each, else one for all.
        let groups: Vec<Vec<&str>> = if self.keep_ir { STAGES.iter().map(|s| vec![*s]).collect() } else { vec![STAGES.to_vec()] };
        for group in groups {
            let pm = PassManager::new(context);
            let pipeline = format!("builtin.module({})", group.join(","));
            parse_pass_pipeline(pm.as_operation_pass_manager(), &pipeline).map_err(|e| err(format!("{pipeline}: {e}")))?;
            pm.run(&mut module).map_err(|e| err(format!("{}: {e}: {}", group.join(","), messages())))?;
            if self.keep_ir {
                self.dumps.push(format!("// after {}\n{}", group.join(","), module.as_operation()));
            }
        }
        if !module.as_operation().verify() {
            return Err(err(format!("the lowered module does not verify: {}", messages())));
        }
        let engine = ExecutionEngine::new(&module, OPT_LEVEL, &[], false, false);
        if engine_is_null(&engine) {
            // Dropping a null engine is harmless (the C API's destroy deletes a null pointer).
            return Err(err("MLIR's execution engine could not be made for this module and host"));
        }
        for (name, addr) in [
            ("tsr_unary", tsr_unary as *const () as *mut ()),
            ("tsr_binary", tsr_binary as *const () as *mut ()),
            ("tsr_gather", tsr_gather as *const () as *mut ()),
        ] {
            // SAFETY: each is a function with the C ABI and the signature the module declares.
            unsafe { engine.register_symbol(name, addr) };
        }
        let addresses = self
            .kernels
            .names()
            .iter()
            .map(|n| {
                let a = engine.lookup(n);
                if a.is_null() {
                    Err(err(format!("the engine has no function {n}")))
                } else {
                    Ok(a as usize)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((engine, addresses))
    }
}

impl Codegen for Mlir {
    fn name(&self) -> &'static str {
        "mlir"
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

    fn online_softmax(&mut self) -> Result<Option<Sym>, CodegenError> {
        Ok(Some(self.kernels.declare(emit::online_softmax(TextKernels::NAME))))
    }

    fn reduce(&mut self, op: ReduceOp) -> Result<Option<Sym>, CodegenError> {
        Ok(Some(self.kernels.declare(emit::reduce(TextKernels::NAME, op))))
    }

    fn tile_product(&mut self) -> Result<Option<Sym>, CodegenError> {
        let (w, nv) = tile::shape();
        Ok(Some(self.kernels.declare(tile::tile_product(TextKernels::NAME, w, nv))))
    }

    fn scan_tile(&mut self, f: &crate::scan::FusedScan, s: &tessera_ir::Scan) -> Result<Option<Sym>, CodegenError> {
        // A scan without states keeps the executor's kernel.
        let Ok(layout) = f.tile_layout(s) else { return Ok(None) };
        Ok(Some(self.kernels.declare(scan::scan_tile(TextKernels::NAME, f, &layout).map_err(CodegenError::Internal)?)))
    }

    fn finish(&mut self) -> Result<(), CodegenError> {
        let text = self.module_text();
        register_all_passes();
        let registry = DialectRegistry::new();
        register_all_dialects(&registry);
        // No threading: contexts are made per program (and per scan or route body), and the
        // executor runs kernels in parallel anyway.
        let context = Context::new_with_registry(&registry, false);
        register_all_llvm_translations(&context);
        let diags = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&diags);
        let handler = context.attach_diagnostic_handler(move |d| {
            if let Ok(mut v) = sink.lock() {
                v.push(d.to_string());
            }
            true
        });
        let made = self.compile(&context, &text, &diags);
        context.detach_diagnostic_handler(handler);
        let (engine, addresses) = made?;
        self.compiled = Some(Compiled { engine: ManuallyDrop::new(engine), context: ManuallyDrop::new(context), addresses });
        Ok(())
    }

    fn address(&self, s: Sym) -> Result<*const u8, CodegenError> {
        let c = self.compiled.as_ref().ok_or_else(|| CodegenError::Internal("mlir: a kernel asked for before finish".into()))?;
        c.addresses.get(s).map(|&a| a as *const u8).ok_or_else(|| CodegenError::Internal(format!("mlir: no kernel {s}")))
    }

    fn dumps(&self) -> Vec<String> {
        self.dumps.clone()
    }

    fn fresh(&self) -> Result<Box<dyn Codegen>, CodegenError> {
        Ok(Box::new(Mlir::new(self.keep_ir)?))
    }
}
