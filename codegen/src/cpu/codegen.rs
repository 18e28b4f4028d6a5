//! What the CPU executor asks of a code generator: the kernels it runs as native code. Each
//! backend that targets the host CPU (Cranelift in [`super::cranelift`], LLVM in
//! `crate::llvm`) implements [`Codegen`]; the executor runs every other kernel itself.
//!
//! Compilation is two-phase: kernels are declared (each returns a [`Sym`]), then [`Codegen::finish`]
//! compiles them all at once (one LLVM module, optimised as a whole), then [`Codegen::address`]
//! gives each one's entry point. The code lives as long as the code generator.

use crate::error::CodegenError;
use std::collections::HashMap;
use tessera_ir::{DType, NormKind, ReduceOp, ScoreFn, BINARY_OPS, UNARY_OPS};

/// A kernel declared to a [`Codegen`].
pub type Sym = usize;

/// A row kernel of a norm: `(out, x, weight, bias, rows, d)`, f32, rows of `d` contiguous
/// elements; `weight` and `bias` (`d` elements) are read only when the kernel was declared
/// with them.
pub type NormFn = unsafe extern "C" fn(*mut f32, *const f32, *const f32, *const f32, i64, i64);

/// A softmax over rows: `(out, x, rows, n)`, f32, rows of `n` contiguous elements.
pub type SoftmaxFn = unsafe extern "C" fn(*mut f32, *const f32, i64, i64);

/// A fused scan over one tile of state elements, every position ([`crate::scan::FusedScan`]):
/// `(slots, n, inner, len, reverse, nseg, segs, ptrs, offs, steps, lasts)`. `slots` holds a slot
/// of `n` f32 per body node (`slots + k·n`), those of constants, invariants and states filled;
/// reductions run over rows of `inner`; `len` positions, walked backwards where `reverse` is not
/// 0; `segs` the tile's `nseg` runs along the last axis (`(first element, length, last
/// coordinate)` each). Node `k` that reads a sliced operand, and per-step result `k` as entry
/// `nodes + k`, lie at `ptrs[k]` (of their element type): element `j` of segment `s` at
/// position `t` is at `t·steps[k] + offs[k·nseg + s] + j·lasts[k]`. After the call, each
/// state's slot holds the final state.
pub type ScanTileFn =
    unsafe extern "C" fn(*mut f32, i64, i64, i64, i64, i64, *const i64, *const *mut u8, *const i64, *const i64, *const i64);

/// One online-softmax step of the attention kernel over a tile of scores: `(scores, rows, n,
/// m, l, acc, ev)`: `rows × n` f32 scores (row stride `n`) become probabilities relative to the
/// rows' new running maxima `m` (f32), the running sums `l` (f64) grow, and the output
/// accumulators `acc` (`rows × ev` f32) are rescaled where a maximum grew.
pub type OnlineSoftmaxFn = unsafe extern "C" fn(*mut f32, i64, i64, *mut f32, *mut f64, *mut f32, i64);

/// The attention kernel's tile product (see [`super::tile_gemm::TileProduct`]): `(m, n, k, α,
/// accumulate, a, lda, b, ldb, c, ldc)`, `C[m×n] = α·A·B` or, where `accumulate` is not 0,
/// `C += A·B`; leading dimensions in elements.
pub type TileProductFn = unsafe extern "C" fn(i64, i64, i64, f32, i32, *const f32, i64, *const f32, i64, *mut f32, i64);

/// A reduction of rows: `(out, x, rows, n)`, f32, `out[r]` from the `n` contiguous elements of
/// row `r`.
pub type ReduceFn = unsafe extern "C" fn(*mut f32, *const f32, i64, i64);

/// The kernels of a backend that compiles them as one module of text (LLVM, MLIR): each
/// distinct kernel once, named `k0`, `k1`, ..; identical kernels (one per layer) share one.
#[derive(Default)]
pub struct TextKernels {
    /// Each distinct kernel's text, named.
    functions: Vec<String>,
    /// The function name of each [`Sym`].
    names: Vec<String>,
    /// Kernels by their text with the placeholder name.
    seen: HashMap<String, Sym>,
}

impl TextKernels {
    /// The placeholder for the kernel's name in the text given to [`TextKernels::declare`].
    pub const NAME: &'static str = "__kernel__";

    /// A placeholder that starts the kernel's metadata ids: `!__md__0003` becomes `!N0003`,
    /// `N` unique to the kernel (LLVM numbers metadata per module). Ids of four digits.
    pub const MD: &'static str = "__md__";

    /// Declares the kernel whose text (named [`TextKernels::NAME`]) is `text`, or finds its twin.
    pub fn declare(&mut self, text: String) -> Sym {
        if let Some(&s) = self.seen.get(&text) {
            return s;
        }
        let name = format!("k{}", self.functions.len());
        let md = (self.functions.len() + 1).to_string();
        self.functions.push(text.replace(Self::NAME, &name).replace(Self::MD, &md));
        self.names.push(name);
        let s = self.names.len() - 1;
        self.seen.insert(text, s);
        s
    }

    /// The distinct kernels' texts, in declaration order.
    pub fn functions(&self) -> &[String] {
        &self.functions
    }

    /// The function name of each declared [`Sym`].
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// A code generator for the CPU executor.
pub trait Codegen: Send {
    /// The backend's name (`cranelift`, `llvm`).
    fn name(&self) -> &'static str;

    /// Declares the row kernel of a scalar program ([`super::cranelift::RowFn`]'s ABI): one for
    /// operands at any steps and, where the backend has a faster one, one for operands that
    /// advance by `steps` (0 or 1 each), with the steps it assumes.
    fn rows(&mut self, f: &ScoreFn, leaf_types: &[DType], out: DType, steps: Option<&[i64]>) -> Result<(Sym, Option<Sym>), CodegenError>;

    /// Declares a norm kernel ([`NormFn`]) where the backend compiles one; `None` leaves the
    /// norm to the executor's own kernel.
    fn norm(&mut self, _kind: NormKind, _eps: f64, _weight: bool, _bias: bool) -> Result<Option<Sym>, CodegenError> {
        Ok(None)
    }

    /// Declares a softmax kernel ([`SoftmaxFn`]) where the backend compiles one.
    fn softmax(&mut self) -> Result<Option<Sym>, CodegenError> {
        Ok(None)
    }

    /// Declares a reduction of rows ([`ReduceFn`]) where the backend compiles one.
    fn reduce(&mut self, _op: ReduceOp) -> Result<Option<Sym>, CodegenError> {
        Ok(None)
    }

    /// Declares the attention kernel's online-softmax step ([`OnlineSoftmaxFn`]) where the
    /// backend compiles one.
    fn online_softmax(&mut self) -> Result<Option<Sym>, CodegenError> {
        Ok(None)
    }

    /// Declares the attention kernel's tile product ([`TileProductFn`]) where the backend
    /// compiles one.
    fn tile_product(&mut self) -> Result<Option<Sym>, CodegenError> {
        Ok(None)
    }

    /// Declares the kernel of fused scan `f` of `s` over a tile ([`ScanTileFn`]) where the
    /// backend compiles one.
    fn scan_tile(&mut self, _f: &crate::scan::FusedScan, _s: &tessera_ir::Scan) -> Result<Option<Sym>, CodegenError> {
        Ok(None)
    }

    /// Compiles everything declared.
    fn finish(&mut self) -> Result<(), CodegenError>;

    /// The entry point of a declared kernel, after [`Codegen::finish`].
    fn address(&self, s: Sym) -> Result<*const u8, CodegenError>;

    /// The backend's IR of what it compiled, where it was asked to keep it.
    fn dumps(&self) -> Vec<String>;

    /// A new code generator of the same kind and options (for scan and route bodies).
    fn fresh(&self) -> Result<Box<dyn Codegen>, CodegenError>;
}

/// The interpreter's definition of unary op number `code` (of [`UNARY_OPS`]), for compiled
/// code that has no inline form of it.
pub extern "C" fn tsr_unary(code: i64, x: f64) -> f64 {
    UNARY_OPS.get(code as usize).map_or(f64::NAN, |(u, _)| u.eval(x))
}

/// The interpreter's definition of binary op number `code` (of [`BINARY_OPS`]).
pub extern "C" fn tsr_binary(code: i64, a: f64, b: f64, int: i64) -> f64 {
    BINARY_OPS.get(code as usize).map_or(f64::NAN, |(o, _)| o.eval(a, b, int != 0))
}

/// Element `idx` of table `t`, or NaN out of range.
///
/// # Safety
/// `tables` and `lens` hold at least `t + 1` entries, each table at least its length.
pub unsafe extern "C" fn tsr_gather(tables: *const *const f32, lens: *const i64, t: i64, idx: f64) -> f64 {
    let (table, len) = unsafe { (*tables.add(t as usize), *lens.add(t as usize)) };
    let i = idx as i64;
    if i < 0 || i >= len {
        return f64::NAN;
    }
    f64::from(unsafe { *table.add(i as usize) })
}
