//! The Cranelift lowering of scalar programs ([`ScoreFn`]): elementwise kernels (a loop over
//! one row of the output, operands read with a per-operand step so that broadcast operands
//! cost nothing), the same over one row of an attention score tile (the score function), and
//! f32x4 versions of both where every op is exact in f32.
//!
//! Values are computed in f64 and rounded to each node's element type after every node, as the
//! reference interpreter does, so results agree with it. Transcendental functions call into
//! the same Rust code the interpreter uses.

use super::codegen::{tsr_binary, tsr_gather, tsr_unary, Sym};
use crate::error::CodegenError;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, MemFlagsData, Signature, UserFuncName, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module};
use tessera_ir::{BinaryOp, DType, SNode, ScoreFn, UnaryOp, Var, BINARY_OPS, UNARY_OPS};

/// A compiled row kernel: `(out, len, operand pointers, operand steps, vars, tables, table
/// lengths)`. For elementwise kernels the last three are unused; for attention score rows
/// `out` holds the raw scores (f32) and receives the modified ones, `vars` is `[B, H, I, J0]`
/// and the key index of element `j` is `J0 + j`.
pub type RowFn = unsafe extern "C" fn(*mut u8, i64, *const *const u8, *const i64, *const f64, *const *const f32, *const i64);

/// A row kernel with its f32x4 version, if it has one, and the operand steps that version was
/// compiled for.
pub struct Rows {
    /// The scalar kernel (any row).
    pub scalar: RowFn,
    /// The f32x4 kernel and its operand steps.
    pub simd: Option<(RowFn, Vec<i64>)>,
}

impl Rows {
    /// Runs one row of `len` elements: the f32x4 kernel over the first multiple of 4 when the
    /// operand steps are the ones it was compiled for and `vector` allows it, the scalar
    /// kernel over the rest. `sizes` are the operands' element sizes; `vars` (a score row's
    /// `[B, H, I, J0]`) may be null for elementwise kernels.
    ///
    /// # Safety
    /// As for the kernels: pointers valid for `len` elements at their steps.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run(
        &self,
        out: *mut u8,
        out_size: usize,
        len: usize,
        bases: &[*const u8],
        steps: &[i64],
        sizes: &[usize],
        vars: Option<[f64; 4]>,
        tables: (*const *const f32, *const i64),
        vector: bool,
    ) {
        let vars_ptr = |v: &Option<[f64; 4]>| v.as_ref().map_or(std::ptr::null(), |v| v.as_ptr());
        let done = match &self.simd {
            // An element-wise comparison: `==` on slices calls memcmp, which showed in profiles
            // of attention, where this runs once per score row.
            Some((f, st)) if vector && len >= 4 && st.len() == steps.len() && st.iter().zip(steps).all(|(a, b)| a == b) => {
                let n = len / 4 * 4;
                unsafe { f(out, n as i64, bases.as_ptr(), steps.as_ptr(), vars_ptr(&vars), tables.0, tables.1) };
                n
            }
            _ => 0,
        };
        if done < len {
            let tail: Vec<*const u8> =
                bases.iter().zip(steps).zip(sizes).map(|((b, st), sz)| unsafe { b.add(done * *st as usize * sz) }).collect();
            let vars = vars.map(|[b, h, i, j0]| [b, h, i, j0 + done as f64]);
            unsafe {
                (self.scalar)(
                    out.add(done * out_size),
                    (len - done) as i64,
                    tail.as_ptr(),
                    steps.as_ptr(),
                    vars_ptr(&vars),
                    tables.0,
                    tables.1,
                )
            };
        }
    }
}

/// A JIT module with the kernels compiled into it.
pub struct Jit {
    module: JITModule,
    ctx: Context,
    fctx: FunctionBuilderContext,
    helpers: [FuncId; 3],
    count: usize,
    /// The target has fused multiply-add (f32x4 kernels then fuse `a·b ± c`).
    has_fma: bool,
    /// The Cranelift IR of every function compiled, when `keep_clif` is set.
    pub clif: Vec<String>,
    keep_clif: bool,
    /// The functions declared through [`super::codegen::Codegen`], by [`Sym`].
    ids: Vec<FuncId>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Jit {
    /// A JIT for the host CPU. `keep_clif` keeps the Cranelift IR text of each function.
    pub fn new(keep_clif: bool) -> Result<Jit, String> {
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").map_err(err)?;
        flags.set("use_colocated_libcalls", "false").map_err(err)?;
        flags.set("is_pic", "false").map_err(err)?;
        let isa = cranelift_native::builder().map_err(err)?.finish(settings::Flags::new(flags)).map_err(err)?;
        let has_fma = isa.isa_flags().iter().any(|f| f.name == "has_fma" && f.as_bool() == Some(true));
        let mut jb = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
        jb.symbol("tsr_unary", tsr_unary as *const u8);
        jb.symbol("tsr_binary", tsr_binary as *const u8);
        jb.symbol("tsr_gather", tsr_gather as *const u8);
        let mut module = JITModule::new(jb);
        let ptr = module.target_config().pointer_type();
        let sig = |params: &[types::Type]| {
            let mut s = module.make_signature();
            s.params.extend(params.iter().map(|t| AbiParam::new(*t)));
            s.returns.push(AbiParam::new(types::F64));
            s
        };
        let (su, sb, sg) = (
            sig(&[types::I64, types::F64]),
            sig(&[types::I64, types::F64, types::F64, types::I64]),
            sig(&[ptr, ptr, types::I64, types::F64]),
        );
        let helpers = [
            module.declare_function("tsr_unary", Linkage::Import, &su).map_err(err)?,
            module.declare_function("tsr_binary", Linkage::Import, &sb).map_err(err)?,
            module.declare_function("tsr_gather", Linkage::Import, &sg).map_err(err)?,
        ];
        Ok(Jit {
            ctx: module.make_context(),
            module,
            fctx: FunctionBuilderContext::new(),
            helpers,
            count: 0,
            has_fma,
            clif: Vec::new(),
            keep_clif,
            ids: Vec::new(),
        })
    }

    fn ptr(&self) -> types::Type {
        self.module.target_config().pointer_type()
    }

    /// The signature of row kernels ([`RowFn`]).
    fn row_signature(&self) -> Signature {
        let ptr = self.ptr();
        let mut sig = self.module.make_signature();
        sig.params.extend([AbiParam::new(ptr), AbiParam::new(types::I64), AbiParam::new(ptr), AbiParam::new(ptr)]);
        sig.params.extend([AbiParam::new(ptr), AbiParam::new(ptr), AbiParam::new(ptr)]);
        sig
    }

    /// Compiles an elementwise row kernel for `f`, whose leaf `k` has element type
    /// `leaf_types[k]`, writing `out` elements.
    pub fn row(&mut self, f: &ScoreFn, leaf_types: &[DType], out: DType) -> Result<FuncId, String> {
        let ptr = self.ptr();
        let sig = self.row_signature();
        let name = format!("row{}", self.count);
        let helpers = self.declare_helpers(&sig)?;
        let cfg = self.module.target_config();
        let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let params = enter(&mut b);
        let (out_ptr, len, ins, steps) = (params[0], params[1], params[2], params[3]);
        let (vars, tables, lens) = (params[4], params[5], params[6]);
        let flags = MemFlagsData::trusted();
        let bases: Vec<(Value, Value)> = (0..leaf_types.len())
            .map(|k| {
                let base = b.ins().load(ptr, flags, ins, (8 * k) as i32);
                let step = b.ins().load(types::I64, flags, steps, (8 * k) as i32);
                (base, step)
            })
            .collect();
        let lp = open_loop(&mut b, len);
        let iv = lp.value;
        let leaf = |b: &mut FunctionBuilder, k: u32| -> Value {
            let (base, step) = bases[k as usize];
            let ty = leaf_types[k as usize];
            let off = b.ins().imul(iv, step);
            let off = b.ins().imul_imm_s(off, ty.size() as i64);
            let addr = b.ins().iadd(base, off);
            match ty {
                DType::F32 => {
                    let x = b.ins().load(types::F32, flags, addr, 0);
                    b.ins().fpromote(types::F64, x)
                }
                DType::I64 => {
                    let x = b.ins().load(types::I64, flags, addr, 0);
                    b.ins().fcvt_from_sint(types::F64, x)
                }
                DType::Bool => {
                    let x = b.ins().uload8(types::I32, flags, addr, 0);
                    b.ins().fcvt_from_uint(types::F64, x)
                }
            }
        };
        let var = |b: &mut FunctionBuilder, k: usize| -> Value {
            match k {
                // The raw score: this element of `out` (f32).
                0 => {
                    let off = b.ins().imul_imm_s(iv, 4);
                    let addr = b.ins().iadd(out_ptr, off);
                    let x = b.ins().load(types::F32, flags, addr, 0);
                    b.ins().fpromote(types::F64, x)
                }
                // The key index: J0 + j.
                4 => {
                    let j0 = b.ins().load(types::F64, flags, vars, 24);
                    let j = b.ins().fcvt_from_sint(types::F64, iv);
                    b.ins().fadd(j0, j)
                }
                k => b.ins().load(types::F64, flags, vars, (8 * (k - 1)) as i32),
            }
        };
        let v = emit(&mut b, f, &helpers, (tables, lens), &leaf, &var)?;
        let off = b.ins().imul_imm_s(iv, out.size() as i64);
        let addr = b.ins().iadd(out_ptr, off);
        match out {
            DType::F32 => {
                let x = b.ins().fdemote(types::F32, v);
                b.ins().store(flags, x, addr, 0);
            }
            DType::I64 => {
                let x = b.ins().fcvt_to_sint_sat(types::I64, v);
                b.ins().store(flags, x, addr, 0);
            }
            DType::Bool => {
                let zero = b.ins().f64const(0.0);
                let c = b.ins().fcmp(FloatCC::NotEqual, v, zero);
                b.ins().store(flags, c, addr, 0); // fcmp gives an i8: a one-byte store
            }
        }
        close_loop(&mut b, &lp, 1);
        b.seal_all_blocks();
        b.finalize(cfg);
        self.define(&name, sig)
    }

    /// Compiles an f32x4 version of a row kernel (elementwise or attention score row), for
    /// rows whose length is a multiple of 4 and whose operand `k` advances by `steps[k]` (0:
    /// broadcast, 1: contiguous). Only programs whose every op gives in f32 exactly what the
    /// interpreter's f64-then-round gives qualify: +, −, ×, ÷, √, negation, abs, min, max,
    /// comparisons, `and`, `or` and `where` on f32, and on integers (the positions and
    /// indices, exact in f32 below 2²⁴, which the caller ensures) only +, − and comparisons;
    /// `None` otherwise. Where the target has FMA, a product read once by a sum or difference
    /// is fused into it (one rounding instead of two).
    pub fn row_simd(&mut self, f: &ScoreFn, leaf_types: &[DType], out: DType, steps: &[i64]) -> Result<Option<FuncId>, String> {
        use BinaryOp::*;
        let exact = f.nodes.iter().all(|(n, ty)| match (n, ty) {
            (SNode::Var(_), _) => true,
            (SNode::Const(c), DType::I64) => c.abs() < 16_777_216.0,
            (SNode::Binary(Add | Sub, ..), DType::I64) => true,
            (_, DType::I64) => false,
            (SNode::Leaf(_) | SNode::Const(_) | SNode::Where(..), _) => true,
            (SNode::Cast(a), _) => f.nodes.get(*a as usize).is_some_and(|(_, t)| t == ty || (*t != DType::F32 && *ty != DType::Bool)),
            (SNode::Unary(u, _), _) => matches!(u, UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sqrt),
            (SNode::Binary(b, _, _), _) => matches!(b, Add | Sub | Mul | Div | Max | Min | Eq | Ne | Lt | Le | Gt | Ge | And | Or),
            _ => false,
        });
        if !exact || out != DType::F32 || leaf_types.iter().any(|t| *t != DType::F32) || steps.iter().any(|s| !matches!(s, 0 | 1)) {
            return Ok(None);
        }
        let ptr = self.ptr();
        let sig = self.row_signature();
        let name = format!("row{}_x4", self.count);
        self.declare_helpers(&sig)?;
        let cfg = self.module.target_config();
        let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let params = enter(&mut b);
        let (out_ptr, len, ins, vars) = (params[0], params[1], params[2], params[4]);
        let flags = MemFlagsData::new().with_notrap();
        let bases: Vec<Value> = (0..leaf_types.len()).map(|k| b.ins().load(ptr, flags, ins, (8 * k) as i32)).collect();
        let v4 = types::F32X4;
        let splat = |b: &mut FunctionBuilder, c: f32| {
            let x = b.ins().f32const(c);
            b.ins().splat(v4, x)
        };
        // The scalar variables B, H, I (splat) and the key positions J0 + [0, 1, 2, 3], before
        // the loop; only a score function reads them.
        let uses = |v: Var| f.nodes.iter().any(|(n, _)| *n == SNode::Var(v));
        let mut var_vals = [None; 5];
        for (k, v) in [(1, Var::Batch), (2, Var::Head), (3, Var::Query), (4, Var::Key)] {
            if uses(v) {
                let x = b.ins().load(types::F64, flags, vars, 8 * (k as i32 - 1));
                let x = b.ins().fdemote(types::F32, x);
                let mut x = b.ins().splat(v4, x);
                if v == Var::Key {
                    let lanes = [0.0, 1.0, 2.0, 3.0].map(|c| b.ins().f32const(c));
                    let mut l = splat(&mut b, 0.0);
                    for (lane, c) in lanes.into_iter().enumerate().skip(1) {
                        l = b.ins().insertlane(l, c, lane as u8);
                    }
                    x = b.ins().fadd(x, l);
                }
                var_vals[k] = Some(x);
            }
        }
        let lp = open_loop(&mut b, len);
        let iv = lp.value;
        let off = b.ins().imul_imm_s(iv, 4);
        let as_f32 = |b: &mut FunctionBuilder, mask: Value| {
            let m = b.ins().bitcast(v4, MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little), mask);
            let (one, zero) = (splat(b, 1.0), splat(b, 0.0));
            b.ins().bitselect(m, one, zero)
        };
        // A product read once, by a sum or difference, is fused into it where the target has
        // FMA (one rounding instead of two: at least as accurate as the interpreter).
        let mut uses = vec![0usize; f.nodes.len()];
        for (n, _) in &f.nodes {
            match n {
                SNode::Unary(_, a) | SNode::Cast(a) | SNode::Gather(_, a) => uses[*a as usize] += 1,
                SNode::Binary(_, a, c) => [a, c].iter().for_each(|k| uses[**k as usize] += 1),
                SNode::Where(a, c, d) => [a, c, d].iter().for_each(|k| uses[**k as usize] += 1),
                _ => {}
            }
        }
        let mut products: Vec<Option<(Value, Value)>> = vec![None; f.nodes.len()];
        let mut vals: Vec<Value> = Vec::with_capacity(f.nodes.len());
        for (n, _) in &f.nodes {
            let get = |k: &u32| vals.get(*k as usize).copied().ok_or_else(|| "score function refers forward".to_string());
            let product = |k: &u32| products.get(*k as usize).copied().flatten().filter(|_| self.has_fma && uses[*k as usize] == 1);
            let x = match n {
                SNode::Leaf(k) => {
                    let base = bases[*k as usize];
                    if steps[*k as usize] == 0 {
                        let s = b.ins().load(types::F32, flags, base, 0);
                        b.ins().splat(v4, s)
                    } else {
                        let addr = b.ins().iadd(base, off);
                        b.ins().load(v4, flags, addr, 0)
                    }
                }
                SNode::Const(c) => splat(&mut b, *c as f32),
                SNode::Var(Var::Score) => {
                    let addr = b.ins().iadd(out_ptr, off);
                    b.ins().load(v4, flags, addr, 0)
                }
                SNode::Var(v) => {
                    let x = var_vals[*v as usize].ok_or("variable not loaded")?;
                    if *v == Var::Key {
                        // J = J0 + i + lane.
                        let i = b.ins().fcvt_from_sint(types::F32, iv);
                        let i = b.ins().splat(v4, i);
                        b.ins().fadd(x, i)
                    } else {
                        x
                    }
                }
                SNode::Cast(a) => get(a)?,
                SNode::Unary(u, a) => {
                    let a = get(a)?;
                    match u {
                        UnaryOp::Neg => b.ins().fneg(a),
                        UnaryOp::Abs => b.ins().fabs(a),
                        _ => b.ins().sqrt(a),
                    }
                }
                SNode::Binary(op, xk, yk) => {
                    let (x, y) = (get(xk)?, get(yk)?);
                    let cmp = |b: &mut FunctionBuilder, cc: FloatCC| {
                        let m = b.ins().fcmp(cc, x, y);
                        as_f32(b, m)
                    };
                    let (px, py) = (product(xk), product(yk));
                    if *op == BinaryOp::Mul {
                        products[vals.len()] = Some((x, y));
                    }
                    match (op, px, py) {
                        (BinaryOp::Add, Some((p, q)), _) => b.ins().fma(p, q, y),
                        (BinaryOp::Add, None, Some((p, q))) => b.ins().fma(p, q, x),
                        (BinaryOp::Sub, Some((p, q)), _) => {
                            let y = b.ins().fneg(y);
                            b.ins().fma(p, q, y)
                        }
                        (BinaryOp::Sub, None, Some((p, q))) => {
                            let p = b.ins().fneg(p);
                            b.ins().fma(p, q, x)
                        }
                        _ => match op {
                            BinaryOp::Add => b.ins().fadd(x, y),
                            BinaryOp::Sub => b.ins().fsub(x, y),
                            BinaryOp::Mul => b.ins().fmul(x, y),
                            BinaryOp::Div => b.ins().fdiv(x, y),
                            BinaryOp::Max => b.ins().fmax(x, y),
                            BinaryOp::Min => b.ins().fmin(x, y),
                            BinaryOp::And | BinaryOp::Or => {
                                let z = splat(&mut b, 0.0);
                                let (mx, my) = (b.ins().fcmp(FloatCC::NotEqual, x, z), b.ins().fcmp(FloatCC::NotEqual, y, z));
                                let m = if *op == BinaryOp::And { b.ins().band(mx, my) } else { b.ins().bor(mx, my) };
                                as_f32(&mut b, m)
                            }
                            BinaryOp::Eq => cmp(&mut b, FloatCC::Equal),
                            BinaryOp::Ne => cmp(&mut b, FloatCC::NotEqual),
                            BinaryOp::Lt => cmp(&mut b, FloatCC::LessThan),
                            BinaryOp::Le => cmp(&mut b, FloatCC::LessThanOrEqual),
                            BinaryOp::Gt => cmp(&mut b, FloatCC::GreaterThan),
                            _ => cmp(&mut b, FloatCC::GreaterThanOrEqual),
                        },
                    }
                }
                SNode::Where(c, x, y) => {
                    let (c, x, y) = (get(c)?, get(x)?, get(y)?);
                    let z = splat(&mut b, 0.0);
                    let m = b.ins().fcmp(FloatCC::NotEqual, c, z);
                    let m = b.ins().bitcast(v4, MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little), m);
                    b.ins().bitselect(m, x, y)
                }
                _ => return Err("not vectorizable".into()),
            };
            vals.push(x);
        }
        let v = vals.last().copied().ok_or("empty program")?;
        let addr = b.ins().iadd(out_ptr, off);
        b.ins().store(flags, v, addr, 0);
        close_loop(&mut b, &lp, 4);
        b.seal_all_blocks();
        b.finalize(cfg);
        self.define(&name, sig).map(Some)
    }

    fn declare_helpers(&mut self, sig: &Signature) -> Result<[cranelift_codegen::ir::FuncRef; 3], String> {
        self.ctx.func.signature = sig.clone();
        self.ctx.func.name = UserFuncName::user(0, self.count as u32);
        let h = self.helpers;
        Ok([
            self.module.declare_func_in_func(h[0], &mut self.ctx.func),
            self.module.declare_func_in_func(h[1], &mut self.ctx.func),
            self.module.declare_func_in_func(h[2], &mut self.ctx.func),
        ])
    }

    fn define(&mut self, name: &str, sig: Signature) -> Result<FuncId, String> {
        let id = self.module.declare_function(name, Linkage::Local, &sig).map_err(err)?;
        if self.keep_clif {
            self.clif.push(format!("; {name}\n{}", self.ctx.func.display()));
        }
        self.module.define_function(id, &mut self.ctx).map_err(|e| format!("{e:?}"))?;
        self.module.clear_context(&mut self.ctx);
        self.count += 1;
        Ok(id)
    }

    /// Makes every compiled function callable.
    pub fn finalize(&mut self) -> Result<(), String> {
        self.module.finalize_definitions().map_err(err)
    }

    /// A compiled row kernel (after [`Jit::finalize`]).
    pub fn row_fn(&self, id: FuncId) -> RowFn {
        let p = self.module.get_finalized_function(id);
        // SAFETY: `id` was defined by `row`, whose signature is `RowFn`'s.
        unsafe { std::mem::transmute::<*const u8, RowFn>(p) }
    }
}

/// Starts a function body: its entry block, with the function's parameters.
fn enter(b: &mut FunctionBuilder) -> Vec<Value> {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.block_params(entry).to_vec()
}

/// A counted loop being built: the counter, its value in the body, and the blocks around it.
struct Loop {
    var: cranelift_frontend::Variable,
    value: Value,
    header: cranelift_codegen::ir::Block,
    exit: cranelift_codegen::ir::Block,
}

/// Opens `for i in 0.. while i < len`; leaves the builder in the loop body.
fn open_loop(b: &mut FunctionBuilder, len: Value) -> Loop {
    let var = b.declare_var(types::I64);
    let zero = b.ins().iconst(types::I64, 0);
    b.def_var(var, zero);
    let (header, body, exit) = (b.create_block(), b.create_block(), b.create_block());
    b.ins().jump(header, &[]);
    b.switch_to_block(header);
    let i = b.use_var(var);
    let more = b.ins().icmp(cranelift_codegen::ir::condcodes::IntCC::SignedLessThan, i, len);
    b.ins().brif(more, body, &[], exit, &[]);
    b.switch_to_block(body);
    Loop { var, value: b.use_var(var), header, exit }
}

/// Ends the body of `lp` (the counter advances by `stride`) and returns from the function
/// after the loop.
fn close_loop(b: &mut FunctionBuilder, lp: &Loop, stride: i64) {
    let next = b.ins().iadd_imm_s(lp.value, stride);
    b.def_var(lp.var, next);
    b.ins().jump(lp.header, &[]);
    b.switch_to_block(lp.exit);
    b.ins().return_(&[]);
}

type Reader<'a> = &'a dyn Fn(&mut FunctionBuilder, u32) -> Value;

/// Emits the nodes of `f`; returns the last one's value (f64).
fn emit(
    b: &mut FunctionBuilder,
    f: &ScoreFn,
    helpers: &[cranelift_codegen::ir::FuncRef; 3],
    (tables, lens): (Value, Value),
    leaf: Reader,
    var: &dyn Fn(&mut FunctionBuilder, usize) -> Value,
) -> Result<Value, String> {
    let mut vals: Vec<Value> = Vec::with_capacity(f.nodes.len());
    for (n, ty) in &f.nodes {
        let get = |k: &u32| vals.get(*k as usize).copied().ok_or_else(|| "score function refers forward".to_string());
        let call = |b: &mut FunctionBuilder, h: usize, args: &[Value]| {
            let c = b.ins().call(helpers[h], args);
            b.inst_results(c)[0]
        };
        let x = match n {
            SNode::Var(v) => var(b, *v as usize),
            SNode::Leaf(k) => leaf(b, *k),
            SNode::Const(c) => b.ins().f64const(*c),
            SNode::Unary(u, a) => {
                let a = get(a)?;
                match u {
                    UnaryOp::Neg => b.ins().fneg(a),
                    UnaryOp::Abs => b.ins().fabs(a),
                    UnaryOp::Sqrt => b.ins().sqrt(a),
                    _ => {
                        let code = UNARY_OPS.iter().position(|(o, _)| o == u).unwrap_or(usize::MAX);
                        let code = b.ins().iconst(types::I64, code as i64);
                        call(b, 0, &[code, a])
                    }
                }
            }
            SNode::Binary(op, x, y) => {
                let (x_ty, a, c) = (f.nodes.get(*x as usize).map(|n| n.1), get(x)?, get(y)?);
                let int = x_ty == Some(DType::I64);
                let cmp = |b: &mut FunctionBuilder, cc: FloatCC| {
                    let t = b.ins().fcmp(cc, a, c);
                    let (one, zero) = (b.ins().f64const(1.0), b.ins().f64const(0.0));
                    b.ins().select(t, one, zero)
                };
                match op {
                    BinaryOp::Add => b.ins().fadd(a, c),
                    BinaryOp::Sub => b.ins().fsub(a, c),
                    BinaryOp::Mul => b.ins().fmul(a, c),
                    BinaryOp::Div if !int => b.ins().fdiv(a, c),
                    BinaryOp::Eq => cmp(b, FloatCC::Equal),
                    BinaryOp::Ne => cmp(b, FloatCC::NotEqual),
                    BinaryOp::Lt => cmp(b, FloatCC::LessThan),
                    BinaryOp::Le => cmp(b, FloatCC::LessThanOrEqual),
                    BinaryOp::Gt => cmp(b, FloatCC::GreaterThan),
                    BinaryOp::Ge => cmp(b, FloatCC::GreaterThanOrEqual),
                    _ => {
                        let code = BINARY_OPS.iter().position(|(o, _)| o == op).unwrap_or(usize::MAX);
                        let code = b.ins().iconst(types::I64, code as i64);
                        let int = b.ins().iconst(types::I64, i64::from(int));
                        call(b, 1, &[code, a, c, int])
                    }
                }
            }
            SNode::Where(c, x, y) => {
                let (c, x, y) = (get(c)?, get(x)?, get(y)?);
                let zero = b.ins().f64const(0.0);
                let t = b.ins().fcmp(FloatCC::NotEqual, c, zero);
                b.ins().select(t, x, y)
            }
            SNode::Cast(a) => get(a)?,
            SNode::Gather(t, i) => {
                let i = get(i)?;
                let t = b.ins().iconst(types::I64, i64::from(*t));
                call(b, 2, &[tables, lens, t, i])
            }
        };
        // Store semantics of the node's element type.
        let x = match ty {
            DType::F32 => {
                let s = b.ins().fdemote(types::F32, x);
                b.ins().fpromote(types::F64, s)
            }
            DType::I64 => {
                let i = b.ins().fcvt_to_sint_sat(types::I64, x);
                b.ins().fcvt_from_sint(types::F64, i)
            }
            DType::Bool => {
                let zero = b.ins().f64const(0.0);
                let t = b.ins().fcmp(FloatCC::NotEqual, x, zero);
                let one = b.ins().f64const(1.0);
                b.ins().select(t, one, zero)
            }
        };
        vals.push(x);
    }
    vals.last().copied().ok_or_else(|| "empty scalar program".to_string())
}

impl super::codegen::Codegen for Jit {
    fn name(&self) -> &'static str {
        "cranelift"
    }

    fn rows(&mut self, f: &ScoreFn, leaf_types: &[DType], out: DType, steps: Option<&[i64]>) -> Result<(Sym, Option<Sym>), CodegenError> {
        let simd = match steps {
            Some(st) => self.row_simd(f, leaf_types, out, st).map_err(CodegenError::Cranelift)?,
            None => None,
        };
        let scalar = self.row(f, leaf_types, out).map_err(CodegenError::Cranelift)?;
        self.ids.push(scalar);
        let s = self.ids.len() - 1;
        Ok((
            s,
            simd.map(|v| {
                self.ids.push(v);
                self.ids.len() - 1
            }),
        ))
    }

    fn finish(&mut self) -> Result<(), CodegenError> {
        self.finalize().map_err(CodegenError::Cranelift)
    }

    fn address(&self, s: Sym) -> Result<*const u8, CodegenError> {
        let id = self.ids.get(s).ok_or_else(|| CodegenError::Internal(format!("no kernel {s}")))?;
        Ok(self.module.get_finalized_function(*id))
    }

    fn dumps(&self) -> Vec<String> {
        self.clif.clone()
    }

    fn fresh(&self) -> Result<Box<dyn super::codegen::Codegen>, CodegenError> {
        Ok(Box::new(Jit::new(self.keep_clif).map_err(CodegenError::Cranelift)?))
    }
}
