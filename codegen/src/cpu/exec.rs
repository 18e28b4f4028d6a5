//! Running a kernel program on the CPU: JIT compilation of its kernels, the memory plan (one
//! arena; a buffer's slot is reused once its last reader has run), and the executor.

use super::attention;
use super::codegen::{Codegen, NormFn, OnlineSoftmaxFn, ReduceFn, ScanTileFn, SoftmaxFn, Sym, TileProductFn};
use super::cranelift::{Jit, RowFn, Rows};
use super::fourier;
use super::host::{self, View};
use crate::error::CodegenError;
use crate::kernel::{BufId, Kernel, Program, Storage};
use crate::plan::plan;
use std::collections::HashMap;
use tessera_ir::DType;
use tessera_runtime::{concrete, Data, Dims, RunError, Tensor};

/// Buffers derived from parameters (merged weights) by what computes them (the step's kernel
/// and types: [`derived_key`]) and the addresses of the inputs they were computed from.
/// Programs of one model share it, so they share one copy.
type DerivedCache = HashMap<(String, Vec<usize>), Vec<u64>>;

/// What a step that derives a buffer from parameters computes, as a key of [`DerivedCache`]
/// (with its inputs' addresses, it identifies the result).
fn derived_key(p: &Program, s: usize) -> String {
    let step = &p.steps[s];
    let tys: Vec<String> = step.ins.iter().map(|&b| p.buffers[b].ty.to_string()).collect();
    format!("{:?} {tys:?} -> {}", step.kernel, p.buffers[step.out].ty)
}

/// A program with its kernels compiled.
pub struct Executable {
    /// The program.
    pub program: Program,
    derived: std::sync::Arc<std::sync::Mutex<DerivedCache>>,
    /// What each step that derives a buffer from parameters computes ([`derived_key`]; empty
    /// for other steps), made once: decode runs the program at every token.
    derived_keys: Vec<String>,
    /// The entry of the shared cache each derived step read at the last run: replaced (and
    /// freed) when its parameters change.
    derived_last: std::sync::Mutex<HashMap<usize, (String, Vec<usize>)>>,
    /// The activation arena, kept between runs.
    arena: std::sync::Mutex<Vec<u64>>,
    /// Scratch buffers of feed-forward kernels, kept between calls.
    scratch: std::sync::Mutex<(Vec<f32>, Vec<f32>)>,
    /// Scratch buffers of grouped routes, kept between calls.
    route_scratch: std::sync::Mutex<super::route::Scratch>,
    /// The compiled row kernel of each step (elementwise and attention steps).
    natives: Vec<Option<Native>>,
    /// The compiled body of each scan or route step.
    bodies: Vec<Option<Executable>>,
    /// Per step, per input: the buffer holding that weight packed for the GEMM ([`prepack`]).
    packed: Vec<Vec<Option<BufId>>>,
    _jit: Box<dyn Codegen>,
    /// Cranelift IR of the compiled kernels (when asked for).
    pub clif: Vec<String>,
}

/// What one run did.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Bytes of the activation arena (the peak of live intermediate buffers).
    pub arena_bytes: usize,
    /// Attention tiles computed and skipped.
    pub attention: attention::AttentionStats,
    /// Seconds per kernel kind, when profiling (`TESSERA_PROFILE=1`).
    pub profile: Vec<(&'static str, f64)>,
    /// On a GPU: seconds from the first launch to the end of the last (transfers excluded).
    pub device_seconds: Option<f64>,
}

/// A value moved to another thread where the compiler cannot see that this is sound: the
/// executor's step loop, whose pointers and guards the calling thread keeps alive (and does not
/// touch) until the loop returns.
struct AssertSend<T>(T);
// SAFETY: see above; only `run_reusing` makes one, and waits for it.
unsafe impl<T> Send for AssertSend<T> {}

impl<T> AssertSend<T> {
    fn into_inner(self) -> T {
        self.0
    }
}

/// A copy of a buffer as a tensor.
///
/// # Safety
/// The view's buffer holds `len` elements of its type.
unsafe fn to_tensor(v: &View) -> Tensor {
    unsafe {
        match v.dtype {
            DType::F32 => Tensor::f32(v.shape.clone(), v.f32().to_vec()),
            DType::I64 => Tensor::i64(v.shape.clone(), std::slice::from_raw_parts(v.ptr as *const i64, v.len()).to_vec()),
            DType::Bool => Tensor {
                shape: v.shape.clone(),
                data: Data::Bool(std::slice::from_raw_parts(v.ptr, v.len()).iter().map(|&x| x != 0).collect()),
            },
        }
    }
}

/// A copy of a buffer into `old`'s memory when it holds the same type (its capacity is kept:
/// no fresh pages when the size is within it), else a fresh tensor.
///
/// # Safety
/// As [`to_tensor`].
unsafe fn to_tensor_into(v: &View, old: Option<Tensor>) -> Tensor {
    unsafe {
        match (v.dtype, old.map(|t| t.data)) {
            (DType::F32, Some(Data::F32(mut d))) => {
                d.clear();
                d.extend_from_slice(v.f32());
                Tensor::f32(v.shape.clone(), d)
            }
            (DType::I64, Some(Data::I64(mut d))) => {
                d.clear();
                d.extend_from_slice(std::slice::from_raw_parts(v.ptr as *const i64, v.len()));
                Tensor::i64(v.shape.clone(), d)
            }
            _ => to_tensor(v),
        }
    }
}

/// A kernel compiled by the code generator, for one step.
enum Native {
    /// Elementwise chains.
    Rows(Rows),
    /// Attention: its score rows, and its online-softmax step and tile product where compiled.
    Attention(Rows, Option<OnlineSoftmaxFn>, Option<TileProductFn>),
    /// A norm over the last axis.
    Norm(NormFn),
    /// A softmax over the last axis.
    Softmax(SoftmaxFn),
    /// A reduction over the last axis.
    Reduce(ReduceFn),
    /// A fused scan over a tile, every position.
    ScanTile(ScanTileFn),
}

impl Executable {
    /// Compiles `program` with Cranelift, keeping its IR text where `keep_clif` says.
    pub fn new(program: Program, keep_clif: bool) -> Result<Executable, CodegenError> {
        Executable::with(program, Box::new(Jit::new(keep_clif).map_err(CodegenError::Cranelift)?))
    }

    /// Compiles the kernels of `program` that `codegen` compiles (elementwise chains, score
    /// functions, and where it has them norms and softmax); the executor runs the others.
    pub fn with(program: Program, mut jit: Box<dyn Codegen>) -> Result<Executable, CodegenError> {
        let (program, packed) = match crate::gemm_library::library() {
            crate::gemm_library::Library::Packed(micro) => prepack(program, micro),
            _ => (program, Vec::new()),
        };
        enum Declared {
            Rows(Sym, Option<(Sym, Vec<i64>)>, Option<(Option<Sym>, Option<Sym>)>),
            Norm(Sym),
            Softmax(Sym),
            Reduce(Sym),
            ScanTile(Sym),
        }
        let mut ids = Vec::new();
        for s in &program.steps {
            let last_axis = |b: BufId| program.buffers[b].ty.shape.len().saturating_sub(1);
            let (f, leaf_types, out_ty, along) = match &s.kernel {
                Kernel::Elementwise(f) => (f, &s.ins[..], program.buffers[s.out].ty.dtype, program.buffers[s.out].ty.shape.last()),
                // Score rows run along the keys.
                Kernel::Op(tessera_ir::Op::Attention(f)) => {
                    (&**f, &s.ins[3..], DType::F32, program.buffers[s.ins[1]].ty.shape.iter().rev().nth(1))
                }
                Kernel::Op(tessera_ir::Op::Norm { kind, eps }) => {
                    let (w, b) = (s.ins.len() > 1, s.ins.len() > 2);
                    ids.push(jit.norm(*kind, *eps, w, b)?.map(Declared::Norm));
                    continue;
                }
                Kernel::Op(tessera_ir::Op::Softmax { axis })
                    if *axis == last_axis(s.out) && program.buffers[s.out].ty.dtype == DType::F32 =>
                {
                    ids.push(jit.softmax()?.map(Declared::Softmax));
                    continue;
                }
                // A reduction over the last axis alone, f32 in and out.
                Kernel::Op(tessera_ir::Op::Reduce { op, axes, .. })
                    if axes[..] == [last_axis(s.ins[0])]
                        && program.buffers[s.ins[0]].ty.dtype == DType::F32
                        && program.buffers[s.out].ty.dtype == DType::F32 =>
                {
                    ids.push(jit.reduce(*op)?.map(Declared::Reduce));
                    continue;
                }
                Kernel::Scan(k) => {
                    ids.push(match &k.fused {
                        Ok(f) => jit.scan_tile(f, &k.op)?.map(Declared::ScanTile),
                        Err(_) => None,
                    });
                    continue;
                }
                _ => {
                    ids.push(None);
                    continue;
                }
            };
            let types: Vec<DType> = leaf_types.iter().map(|&b| program.buffers[b].ty.dtype).collect();
            let steps = along.and_then(|d| static_steps(&program, leaf_types, d));
            let (scalar, simd) = jit.rows(f, &types, out_ty, steps.as_deref())?;
            // An attention step's online softmax, where the code generator compiles one.
            let online = match &s.kernel {
                Kernel::Op(tessera_ir::Op::Attention(_)) => Some((jit.online_softmax()?, jit.tile_product()?)),
                _ => None,
            };
            ids.push(Some(Declared::Rows(scalar, simd.zip(steps), online)));
        }
        jit.finish()?;
        let fn_at = |s: Sym| jit.address(s);
        let mut natives = Vec::with_capacity(ids.len());
        for id in ids {
            // SAFETY: each address is of a kernel declared with the matching ABI.
            natives.push(match id {
                None => None,
                Some(Declared::Rows(scalar, simd, online)) => {
                    let rows = Rows {
                        scalar: unsafe { std::mem::transmute::<*const u8, RowFn>(fn_at(scalar)?) },
                        simd: match simd {
                            Some((v, st)) => Some((unsafe { std::mem::transmute::<*const u8, RowFn>(fn_at(v)?) }, st)),
                            None => None,
                        },
                    };
                    Some(match online {
                        None => Native::Rows(rows),
                        Some((o, p)) => Native::Attention(
                            rows,
                            match o {
                                Some(o) => Some(unsafe { std::mem::transmute::<*const u8, OnlineSoftmaxFn>(fn_at(o)?) }),
                                None => None,
                            },
                            match p {
                                Some(p) => Some(unsafe { std::mem::transmute::<*const u8, TileProductFn>(fn_at(p)?) }),
                                None => None,
                            },
                        ),
                    })
                }
                Some(Declared::Norm(n)) => Some(Native::Norm(unsafe { std::mem::transmute::<*const u8, NormFn>(fn_at(n)?) })),
                Some(Declared::Softmax(n)) => Some(Native::Softmax(unsafe { std::mem::transmute::<*const u8, SoftmaxFn>(fn_at(n)?) })),
                Some(Declared::Reduce(n)) => Some(Native::Reduce(unsafe { std::mem::transmute::<*const u8, ReduceFn>(fn_at(n)?) })),
                Some(Declared::ScanTile(n)) => Some(Native::ScanTile(unsafe { std::mem::transmute::<*const u8, ScanTileFn>(fn_at(n)?) })),
            });
        }
        let mut clif = jit.dumps();
        let mut bodies = Vec::with_capacity(program.steps.len());
        for s in &program.steps {
            bodies.push(match &s.kernel {
                Kernel::Scan(k) => {
                    let body = Executable::with(k.body.clone(), jit.fresh()?)?;
                    clif.extend(body.clif.iter().cloned());
                    Some(body)
                }
                Kernel::Route(k) if k.ffn.is_err() => {
                    let body = Executable::with(k.body.clone(), jit.fresh()?)?;
                    clif.extend(body.clif.iter().cloned());
                    Some(body)
                }
                _ => None,
            });
        }
        let derived_keys =
            (0..program.steps.len())
                .map(|s| {
                    if program.buffers[program.steps[s].out].storage == Storage::Derived {
                        derived_key(&program, s)
                    } else {
                        String::new()
                    }
                })
                .collect();
        Ok(Executable {
            bodies,
            packed,
            program,
            derived: Default::default(),
            derived_keys,
            derived_last: Default::default(),
            arena: std::sync::Mutex::new(Vec::new()),
            scratch: std::sync::Mutex::new((Vec::new(), Vec::new())),
            route_scratch: std::sync::Mutex::new(super::route::Scratch::default()),
            natives,
            _jit: jit,
            clif,
        })
    }

    /// Makes this program read the buffers that `other` derives from parameters (merged
    /// weights) and derive its own into the same store: programs of one model (generation's
    /// prefill and decode) keep one copy.
    pub fn share_derived(&mut self, other: &Executable) {
        self.derived = other.derived.clone();
    }

    /// Drops what was derived from the parameters (for every program sharing the store): the
    /// store is keyed by the parameters' addresses, and new parameters may be allocated where
    /// old ones were.
    pub fn forget_derived(&self) {
        if let Ok(mut d) = self.derived.lock() {
            d.clear();
        }
        if let Ok(mut last) = self.derived_last.lock() {
            last.clear();
        }
        for body in self.bodies.iter().flatten() {
            body.forget_derived();
        }
    }

    /// Runs with concrete `dims`, the model's `inputs` and `params`; returns the outputs by
    /// name and what the run did.
    pub fn run(
        &self,
        dims: &Dims,
        inputs: &HashMap<String, Tensor>,
        params: &HashMap<String, Tensor>,
    ) -> Result<(Vec<(String, Tensor)>, RunStats), RunError> {
        self.run_reusing(dims, inputs, params, HashMap::new())
    }

    /// As [`Self::run`], writing each output into the tensor of `reuse` with its name where
    /// the types agree (its memory is kept: a decode loop allocates nothing per step).
    pub fn run_reusing(
        &self,
        dims: &Dims,
        inputs: &HashMap<String, Tensor>,
        params: &HashMap<String, Tensor>,
        mut reuse: HashMap<String, Tensor>,
    ) -> Result<(Vec<(String, Tensor)>, RunStats), RunError> {
        let p = &self.program;
        let shapes: Vec<Vec<usize>> = p.buffers.iter().map(|b| concrete(&b.ty.shape, dims)).collect::<Result<_, _>>()?;
        let sizes: Vec<usize> = shapes.iter().zip(&p.buffers).map(|(s, b)| s.iter().product::<usize>() * b.ty.dtype.size()).collect();
        let mem = plan(p, &sizes);
        // The arena is kept between runs: no fresh pages (and page faults) at every call.
        let mut arena = self.arena.lock().map_err(|_| RunError::Internal("a previous run panicked".into()))?;
        // Room to start the arena on a cache line (the plan's offsets are multiples of 64).
        let words = mem.bytes.div_ceil(8).max(1) + 8;
        if arena.len() < words {
            // Fresh (its contents need not survive), with room for runs a little larger (a
            // decode step's state grows by one position per call).
            *arena = Vec::new();
            *arena = vec![0; words + words / 4];
        }
        let base = arena.as_mut_ptr() as *mut u8;
        // SAFETY: at most 56 bytes in, inside the 8 extra words.
        let base = unsafe { base.add(base.align_offset(64)) };
        let mut ptrs: Vec<*mut u8> = vec![std::ptr::null_mut(); p.buffers.len()];
        // Outputs computed straight into the memory of the caller's tensors of their names
        // (f32, with room enough): no copy at the end (a decode step's states).
        let mut direct: HashMap<BufId, (String, Vec<f32>)> = HashMap::new();
        for (name, b) in &p.outputs {
            let len = shapes[*b].iter().product::<usize>();
            if p.buffers[*b].storage != Storage::Arena || p.buffers[*b].ty.dtype != DType::F32 || direct.contains_key(b) {
                continue;
            }
            if let Some(Tensor { data: Data::F32(mut v), .. }) = reuse.remove(name) {
                if v.capacity() >= len {
                    v.resize(len, 0.0);
                    direct.insert(*b, (name.clone(), v));
                }
            }
        }
        for (i, b) in p.buffers.iter().enumerate() {
            let (kind, table, name) = match &b.storage {
                Storage::Input(n) => ("input", inputs, n),
                Storage::Param(n) => ("parameter", params, n),
                Storage::Arena => {
                    ptrs[i] = match direct.get_mut(&i) {
                        Some((_, v)) => v.as_mut_ptr() as *mut u8,
                        // SAFETY: the plan places every buffer inside the arena.
                        None => unsafe { base.add(mem.offsets[i].unwrap_or(0)) },
                    };
                    continue;
                }
                Storage::Alias(a) => {
                    ptrs[i] = ptrs[*a];
                    continue;
                }
                Storage::Derived => continue,
            };
            let t = table.get(name).ok_or_else(|| RunError::Missing { kind, name: name.clone() })?;
            if t.shape != shapes[i] || t.dtype() != b.ty.dtype {
                return Err(RunError::BadTensor {
                    kind,
                    name: name.clone(),
                    expected: format!("{}{:?}", b.ty.dtype, shapes[i]),
                    got: format!("{}{:?}", t.dtype(), t.shape),
                });
            }
            ptrs[i] = match &t.data {
                Data::F32(v) => v.as_ptr() as *mut u8,
                Data::I64(v) => v.as_ptr() as *mut u8,
                Data::Bool(v) => v.as_ptr() as *mut u8,
            };
        }
        let profile = std::env::var_os("TESSERA_PROFILE").is_some();
        // Taken here, on the caller's thread, before the steps move into the pool: a run of
        // the same model from another thread waits here, never on a worker that this run's
        // parallel loops might lend to it.
        let mut derived = self.derived.lock().map_err(|_| RunError::Internal("a previous run panicked".into()))?;
        // The steps run on a worker of the pool, so that each kernel's parallel loop starts on
        // the thread that is already awake instead of waking one and sleeping until it is done
        // (two wake-ups per step: most of a small kernel's time on a virtual machine).
        let steps = AssertSend(|| -> Result<RunStats, RunError> {
            let mut stats = RunStats { arena_bytes: mem.bytes, ..RunStats::default() };
            for (s, step) in p.steps.iter().enumerate() {
                // Buffers derived from parameters: reuse them while the parameters are the same.
                let mut fresh = None;
                if p.buffers[step.out].storage == Storage::Derived {
                    let key = (self.derived_keys[s].clone(), step.ins.iter().map(|&b| ptrs[b] as usize).collect::<Vec<usize>>());
                    if let Some(data) = derived.get_mut(&key) {
                        ptrs[step.out] = data.as_mut_ptr() as *mut u8;
                        alias_views(p, &mut ptrs, step.out);
                        continue;
                    }
                    // New parameters: what this step derived from the old ones goes.
                    let mut last = self.derived_last.lock().map_err(|_| RunError::Internal("a previous run panicked".into()))?;
                    if let Some(old) = last.insert(s, key.clone()) {
                        derived.remove(&old);
                    }
                    let mut data = vec![0u64; sizes[step.out].div_ceil(8).max(1)];
                    ptrs[step.out] = data.as_mut_ptr() as *mut u8;
                    alias_views(p, &mut ptrs, step.out);
                    fresh = Some((key, data));
                }
                let view = |b: BufId| View { ptr: ptrs[b], shape: shapes[b].clone(), dtype: p.buffers[b].ty.dtype };
                let t0 = profile.then(std::time::Instant::now);
                let out = view(step.out);
                let ins: Vec<View> = step.ins.iter().map(|&b| view(b)).collect();
                // SAFETY: buffers are live and sized by their types; outputs never overlap inputs
                // (the plan frees a slot only after its last reader).
                let at = || step.span.display_in(&p.files).unwrap_or_else(|| "unknown location".into());
                let done = match &step.kernel {
                    Kernel::Scan(k) => {
                        let outs: Vec<View> = k.results.iter().map(|&b| view(b)).collect();
                        unsafe { self.scan(s, k, &outs, &ins, dims) }
                    }
                    Kernel::TopK { axis, results } => unsafe { super::route::topk(&ins[0], &view(results[0]), &view(results[1]), *axis) },
                    Kernel::Route(k) => unsafe { self.route(s, k, &out, &ins, dims) },
                    _ => {
                        let packed: Vec<Option<*const f32>> =
                            self.packed.get(s).map_or(Vec::new(), |p| p.iter().map(|b| b.map(|b| ptrs[b] as *const f32)).collect());
                        unsafe { self.step(s, &out, &ins, &packed, dims, &mut stats) }
                    }
                };
                done.map_err(|e| e.located(at))?;
                if let Some((key, data)) = fresh {
                    derived.insert(key, data);
                }
                if let Some(t0) = t0 {
                    let name = step.kernel.name();
                    let dt = t0.elapsed().as_secs_f64();
                    match stats.profile.iter_mut().find(|(n, _)| *n == name) {
                        Some(e) => e.1 += dt,
                        None => stats.profile.push((name, dt)),
                    }
                }
            }
            Ok(stats)
        });
        let stats = rayon::scope(move |_| {
            // Through a method, which takes the wrapper whole (a closure capturing its field
            // alone would not be `Send`).
            let mut steps = steps.into_inner();
            steps()
        })?;
        let view = |b: BufId| View { ptr: ptrs[b], shape: shapes[b].clone(), dtype: p.buffers[b].ty.dtype };
        let outputs = p
            .outputs
            .iter()
            .map(|(name, b)| match direct.remove(b) {
                Some((n, v)) if n == *name => (n, Tensor::f32(shapes[*b].clone(), v)),
                other => {
                    if let Some(kept) = other {
                        direct.insert(*b, kept);
                    }
                    // SAFETY: the output buffer holds `len` elements of its type.
                    (name.clone(), unsafe { to_tensor_into(&view(*b), reuse.remove(name)) })
                }
            })
            .collect();
        drop(arena);
        Ok((outputs, stats))
    }

    /// Runs route step `s`: by the grouped feed-forward kernel where the body is one, else by
    /// its compiled body once per expert (the semantics are [`tessera_runtime::route_rows`],
    /// shared with the interpreter).
    ///
    /// # Safety
    /// Views as the executor makes them.
    unsafe fn route(&self, s: usize, k: &crate::kernel::RouteKernel, out: &View, ins: &[View], dims: &Dims) -> Result<(), RunError> {
        if let Ok(f) = &k.ffn {
            let mut scratch = self.route_scratch.lock().map_err(|_| RunError::Internal("a previous run panicked".into()))?;
            return unsafe { super::route::run_ffn(f, k.op.experts, out, ins, &mut scratch) };
        }
        let body = self.bodies[s].as_ref().ok_or_else(|| RunError::Internal("a route step without its body".into()))?;
        let args: Vec<Tensor> = ins.iter().map(|v| unsafe { to_tensor(v) }).collect();
        let args: Vec<&Tensor> = args.iter().collect();
        let no_params = HashMap::new();
        let y = tessera_runtime::route_rows(&k.op, &args, out.shape.clone(), dims, "a route", |bound, dims| {
            body.run(dims, bound, &no_params)?
                .0
                .pop()
                .map(|(_, t)| t)
                .ok_or_else(|| RunError::Internal("a route body without a result".into()))
        })?;
        let values: Vec<f64> = (0..y.len()).map(|i| y.get(i)).collect();
        unsafe { host::store(out, &values) };
        Ok(())
    }

    /// Runs scan step `s`, writing every result: by the fused (or chunked) kernel where its
    /// plan has one, else by its compiled body once per position (the semantics are
    /// [`tessera_runtime::scan_steps`], shared with the interpreter).
    ///
    /// # Safety
    /// Views as the executor makes them.
    unsafe fn scan(&self, s: usize, k: &crate::kernel::ScanKernel, outs: &[View], ins: &[View], dims: &Dims) -> Result<(), RunError> {
        // `TESSERA_SCAN=sequential` runs every scan the general way, `fused` keeps the fused
        // kernel where the chunked one applies (to compare them).
        let mode = std::env::var("TESSERA_SCAN").unwrap_or_default();
        if let (Ok(f), false) = (&k.fused, mode == "sequential") {
            let compiled = match self.natives[s] {
                Some(Native::ScanTile(e)) => Some(e),
                _ => None,
            };
            return unsafe { super::scan::run(f, &k.op, ins, outs, mode != "fused", compiled) };
        }
        let body = self.bodies[s].as_ref().ok_or_else(|| RunError::Internal("a scan step without its body".into()))?;
        let args: Vec<Tensor> = ins.iter().map(|v| unsafe { to_tensor(v) }).collect();
        let args: Vec<&Tensor> = args.iter().collect();
        let no_params = HashMap::new();
        let results = tessera_runtime::scan_steps(&k.op, &args, dims, |bound| {
            Ok(body.run(dims, bound, &no_params)?.0.into_iter().map(|(_, t)| t).collect())
        })?;
        for (t, out) in results.iter().zip(outs) {
            if t.shape != out.shape {
                return Err(RunError::Internal(format!("a scan result of shape {:?} for a buffer of {:?}", t.shape, out.shape)));
            }
            let values: Vec<f64> = (0..t.len()).map(|i| t.get(i)).collect();
            unsafe { host::store(out, &values) };
        }
        Ok(())
    }

    /// Runs step `s`.
    ///
    /// # Safety
    /// Views as the executor makes them.
    unsafe fn step(
        &self,
        s: usize,
        out: &View,
        ins: &[View],
        packed: &[Option<*const f32>],
        dims: &Dims,
        stats: &mut RunStats,
    ) -> Result<(), RunError> {
        let step = &self.program.steps[s];
        let packed = |i: usize| packed.get(i).copied().flatten();
        unsafe {
            match (&step.kernel, &self.natives[s]) {
                (Kernel::Elementwise(_), Some(Native::Rows(rows))) => elementwise(rows, out, ins),
                (Kernel::Gemm { trans_b, bias, act, residual }, _) => {
                    host::matmul(out, &ins[0], &ins[1], *trans_b, packed(1));
                    host::epilogue(out, bias.then(|| &ins[2]), *act, residual.then(|| &ins[ins.len() - 1]));
                }
                (Kernel::Op(tessera_ir::Op::Ffn { gated, act, bias }), _) => {
                    let mut scratch = self.scratch.lock().map_err(|_| RunError::Internal("a previous run panicked".into()))?;
                    ffn(out, ins, (packed(1), packed(ffn_out(*bias))), *gated, *act, *bias, &mut scratch)
                }
                (Kernel::PackB { trans_b }, _) => {
                    let crate::gemm_library::Library::Packed(micro) = crate::gemm_library::library() else {
                        return Err(RunError::Internal("a packed weight without the packed GEMM".into()));
                    };
                    let w = &ins[0];
                    let (n, k) = if *trans_b { (w.shape[0], w.shape[1]) } else { (w.shape[1], w.shape[0]) };
                    super::gemm::pack_b(micro, out.f32_mut(), w.ptr as *const f32, (n, k), *trans_b)
                }
                (Kernel::Op(tessera_ir::Op::Norm { .. }), Some(Native::Norm(f))) => {
                    // Addresses (not pointers) cross into the threads.
                    let (w, b) = (ins.get(1).map_or(0, |w| w.ptr as usize), ins.get(2).map_or(0, |b| b.ptr as usize));
                    host::rows_in_parallel(out, &ins[0], |y, x, rows, d| f(y, x, w as *const f32, b as *const f32, rows, d))
                }
                (Kernel::Op(tessera_ir::Op::Softmax { .. }), Some(Native::Softmax(f))) => {
                    host::rows_in_parallel(out, &ins[0], |y, x, rows, n| f(y, x, rows, n))
                }
                (Kernel::Op(tessera_ir::Op::Norm { kind, eps }), _) => host::norm(out, &ins[0], *kind, *eps, ins.get(1), ins.get(2)),
                (Kernel::Op(tessera_ir::Op::Softmax { axis }), _) => host::softmax(out, &ins[0], *axis),
                (Kernel::Op(tessera_ir::Op::Attention(f)), Some(Native::Attention(score, online, product))) => {
                    let a = attention::attention(out, &ins[0], &ins[1], &ins[2], &ins[3..], f, score, *online, *product);
                    stats.attention.tiles += a.tiles;
                    stats.attention.skipped += a.skipped;
                }
                (Kernel::Op(tessera_ir::Op::Reduce { .. }), Some(Native::Reduce(f))) => {
                    host::reduce_rows_in_parallel(out, &ins[0], |y, x, rows, n| f(y, x, rows, n))
                }
                (Kernel::Op(tessera_ir::Op::Reduce { op, axes, .. }), _) => host::reduce(out, &ins[0], *op, axes),
                (Kernel::Op(tessera_ir::Op::Gather { axis }), _) => gather(out, &ins[0], &ins[1], *axis)?,
                (Kernel::Op(tessera_ir::Op::ScatterAdd { axis }), _) => scatter_add(out, &ins[0], &ins[1], &ins[2], *axis)?,
                (Kernel::Op(tessera_ir::Op::Transpose(perm)), _) => {
                    let st = tessera_runtime::strides(&ins[0].shape);
                    let out_st: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
                    host::copy_strided(out, &ins[0], &out_st);
                }
                (Kernel::Op(tessera_ir::Op::Broadcast), _) => {
                    let st = crate::kernel::broadcast_strides(&ins[0].shape, out.shape.len());
                    host::copy_strided(out, &ins[0], &st);
                }
                (Kernel::Op(tessera_ir::Op::Slice { axis, start, step: by, .. }), _) => {
                    let start = start.eval(dims).ok_or_else(|| RunError::UnboundDim(start.to_string()))?.max(0) as usize;
                    let x = &ins[0];
                    let (size, osize) = (x.shape[*axis], out.shape[*axis]);
                    let inner: usize = x.shape[axis + 1..].iter().product();
                    let by = *by as usize;
                    if osize > 0 && start + (osize - 1) * by >= size {
                        return Err(RunError::SliceOutOfRange { start: start as i64, step: by as i64, len: osize, size });
                    }
                    if by == 1 {
                        // A contiguous range of each outer row: one run per row.
                        host::copy_runs(out, x, osize * inner, move |r| (r * size + start) * inner);
                    } else if inner > 1 {
                        host::copy_runs(out, x, inner, move |r| {
                            let (o, k) = (r / osize, r % osize);
                            (o * size + start + k * by) * inner
                        });
                    } else {
                        host::gather_elements(out, x, move |i| {
                            let (o, k) = (i / osize, i % osize);
                            o * size + start + k * by
                        });
                    }
                }
                (Kernel::Op(tessera_ir::Op::Concat { axis }), _) => {
                    let outer: usize = out.shape[..*axis].iter().product();
                    let mut at = 0;
                    let esize = out.dtype.size();
                    let total: usize = out.shape[*axis..].iter().product();
                    for x in ins {
                        let chunk: usize = x.shape[*axis..].iter().product();
                        for o in 0..outer {
                            std::ptr::copy_nonoverlapping(
                                x.ptr.add(o * chunk * esize),
                                out.ptr.add((o * total + at) * esize),
                                chunk * esize,
                            );
                        }
                        at += chunk;
                    }
                }
                (Kernel::Op(tessera_ir::Op::Cumsum { axis }), _) => {
                    host::store(out, &tessera_runtime::cumsum(&ins[0].shape, *axis, |i| ins[0].get(i)))
                }
                (Kernel::Op(tessera_ir::Op::Window { op: tessera_ir::WindowOp::Conv, axis, size, pad_left }), _)
                    if ins[0].dtype == DType::F32 && ins[1].dtype == DType::F32 =>
                {
                    depthwise_conv(out, &ins[0], &ins[1], *axis, *size, *pad_left)
                }
                (Kernel::Op(tessera_ir::Op::Window { op, axis, size, pad_left }), _) => {
                    let channels = ins[0].shape.last().copied().unwrap_or(1);
                    let w = |j: usize, c: usize| ins.get(1).map_or(0.0, |w| w.get(j * channels + c));
                    host::store(out, &tessera_runtime::window(&ins[0].shape, *op, *axis, *size, *pad_left, |i| ins[0].get(i), w))
                }
                (Kernel::Op(tessera_ir::Op::Segment { op, axis }), _) => {
                    host::store(out, &tessera_runtime::segment(&ins[0].shape, *op, *axis, |i| ins[0].get(i), |i| ins[1].get(i) as i64))
                }
                (Kernel::Fft { axis, inverse }, _) => fourier::fft(out, &ins[0], *axis, *inverse)?,
                (Kernel::Op(tessera_ir::Op::Rfft { axis }), _) => fourier::rfft(out, &ins[0], *axis)?,
                (Kernel::Op(tessera_ir::Op::Irfft { axis, .. }), _) => fourier::irfft(out, &ins[0], *axis)?,
                (Kernel::Op(tessera_ir::Op::Iota { axis }), _) => {
                    let inner: usize = out.shape[axis + 1..].iter().product();
                    let size = out.shape[*axis].max(1);
                    let vals: Vec<f64> = (0..out.len()).map(|i| ((i / inner.max(1)) % size) as f64).collect();
                    host::store(out, &vals);
                }
                (Kernel::Fill(v), _) => host::store(out, &vec![*v; out.len()]),
                _ => return Err(RunError::Internal(format!("kernel {} was not compiled", step.kernel.name()))),
            }
        }
        Ok(())
    }
}

/// Points the views of `b` (reshapes) at its memory.
fn alias_views(p: &Program, ptrs: &mut [*mut u8], b: BufId) {
    for (i, buf) in p.buffers.iter().enumerate() {
        if buf.storage == Storage::Alias(b) {
            ptrs[i] = ptrs[b];
            alias_views(p, ptrs, i);
        }
    }
}

/// The step of each operand of a row kernel along the row (`along`: the output's last axis,
/// or the keys for score rows), when the symbolic shapes decide it (1: contiguous, 0:
/// broadcast).
fn static_steps(p: &Program, ins: &[BufId], along: &tessera_ir::Dim) -> Option<Vec<i64>> {
    let one = tessera_ir::Dim::known(1);
    ins.iter()
        .map(|&b| match p.buffers[b].ty.shape.last() {
            None => Some(0),
            Some(d) if *d == one => Some(0),
            Some(d) if d == along && *along != one => Some(1),
            _ => None,
        })
        .collect()
}

/// Runs a compiled row kernel over every row of the output (rows in parallel).
///
/// # Safety
/// Views valid; `kernel` compiled for these operand types.
unsafe fn elementwise(kernel: &Rows, out: &View, ins: &[View]) {
    use rayon::prelude::*;
    let r = out.shape.len();
    let len = out.shape.last().copied().unwrap_or(1);
    let rows = out.len().checked_div(len).unwrap_or(0);
    let osize = out.dtype.size();
    let st: Vec<Vec<usize>> = ins.iter().map(|x| crate::kernel::broadcast_strides(&x.shape, r)).collect();
    let steps: Vec<i64> = st.iter().map(|s| s.last().copied().unwrap_or(0) as i64).collect();
    let outer_shape = &out.shape[..r.saturating_sub(1)];
    // Where row `row` of each operand starts (made once, not per row).
    let row_start: Vec<_> = st.iter().map(|s| host::strided(outer_shape, &s[..r.saturating_sub(1)])).collect();
    let ptrs: Vec<usize> = ins.iter().map(|x| x.ptr as usize).collect();
    let sizes: Vec<usize> = ins.iter().map(|x| x.dtype.size()).collect();
    let optr = out.ptr as usize;
    (0..rows).into_par_iter().with_min_len((4096 / len.max(1)).max(1)).for_each(|row| {
        let bases: Vec<*const u8> = (0..ins.len()).map(|k| (ptrs[k] + row_start[k](row) * sizes[k]) as *const u8).collect();
        let row_out = (optr + row * len * osize) as *mut u8;
        let none = (std::ptr::null(), std::ptr::null());
        unsafe { kernel.run(row_out, osize, len, &bases, &steps, &sizes, None, none, true) };
    });
}

/// A depthwise convolution along `axis` (the one before the channels, the last), each output
/// row from the `size` input rows that lie inside the axis: `out[t, c] = Σ_j w[j, c]·x[t -
/// pad_left + j, c]` (as [`tessera_runtime::window`], in f32; rows in parallel, channels in
/// vectorized loops).
///
/// # Safety
/// Views valid: `x` and `out` of one shape, `w` [size, channels].
unsafe fn depthwise_conv(out: &View, x: &View, w: &View, axis: usize, size: usize, pad_left: usize) {
    use rayon::prelude::*;
    let (len, channels) = (x.shape[axis], x.shape.last().copied().unwrap_or(1));
    let rows = out.len().checked_div(channels).unwrap_or(0);
    let (xs, ws) = unsafe { (x.f32(), w.f32()) };
    let o = unsafe { std::slice::from_raw_parts_mut(out.ptr as *mut f32, out.len()) };
    o.par_chunks_mut(channels.max(1)).with_min_len((4096 / channels.max(1)).max(1)).enumerate().for_each(|(row, orow)| {
        let (b, t) = (row / len.max(1), row % len.max(1));
        orow.fill(0.0);
        for j in 0..size {
            let Some(p) = (t + j).checked_sub(pad_left).filter(|&p| p < len) else { continue };
            let xrow = &xs[(b * len + p) * channels..][..channels];
            let wrow = &ws[j * channels..][..channels];
            for ((acc, &xv), &wv) in orow.iter_mut().zip(xrow).zip(wrow) {
                *acc += xv * wv;
            }
        }
    });
    debug_assert_eq!(rows * channels, out.len());
}

/// `table` indexed along `axis` by `idx` (bounds-checked).
///
/// # Safety
/// Views valid.
unsafe fn gather(out: &View, table: &View, idx: &View, axis: usize) -> Result<(), RunError> {
    let size = table.shape[axis];
    let inner: usize = table.shape[axis + 1..].iter().product();
    let ids: Vec<i64> = (0..idx.len()).map(|i| unsafe { idx.get(i) } as i64).collect();
    if let Some(&bad) = ids.iter().find(|&&k| k < 0 || k as usize >= size) {
        return Err(RunError::IndexOutOfRange { index: bad, size, at: String::new() });
    }
    let n = ids.len();
    unsafe {
        host::gather_elements(out, table, move |i| {
            let (o, rest) = (i / (n * inner), i % (n * inner));
            let (k, j) = (rest / inner, rest % inner);
            (o * size + ids[k] as usize) * inner + j
        })
    };
    Ok(())
}

/// `x` with `upd` added at `idx` along `axis` (`Op::ScatterAdd`), each outer slice on its own
/// thread, its updates in order.
///
/// # Safety
/// Views as `Op::ScatterAdd` types them (f32 `x`, `upd`, `out`; i64 `idx`).
unsafe fn scatter_add(out: &View, x: &View, idx: &View, upd: &View, axis: usize) -> Result<(), RunError> {
    use rayon::prelude::*;
    let size = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let m = idx.shape.last().copied().unwrap_or(0);
    let ids = unsafe { std::slice::from_raw_parts(idx.ptr as *const i64, idx.len()) };
    if let Some(&bad) = ids.iter().find(|&&k| k < 0 || k as usize >= size) {
        return Err(RunError::IndexOutOfRange { index: bad, size, at: String::new() });
    }
    let (dst, xs, us) = unsafe { (out.f32_mut(), x.f32(), upd.f32()) };
    dst.copy_from_slice(xs);
    let slice = (size * inner).max(1);
    dst.par_chunks_mut(slice).enumerate().for_each(|(o, row)| {
        for j in 0..m {
            let k = ids[o * m + j] as usize;
            let u = &us[(o * m + j) * inner..(o * m + j + 1) * inner];
            row[k * inner..(k + 1) * inner].iter_mut().zip(u).for_each(|(r, u)| *r += u);
        }
    });
    Ok(())
}

/// The input position of a feed-forward step's second weight (after `x`, the first weight
/// and, with biases, the first bias).
fn ffn_out(bias: bool) -> usize {
    if bias {
        3
    } else {
        2
    }
}

/// For the packed GEMM: each GEMM's `b` and each feed-forward step's two weights that are
/// parameters (or derived from them) of a fixed 2-D shape are read packed, from a `Derived`
/// buffer that a [`Kernel::PackB`] step just before the first reader writes (once, then kept
/// like merged weights). Returns the program and, per step and input, the packed buffer.
/// Products of at most `gemv::MAX_ROWS` rows still read the weight as stored.
fn prepack(mut p: Program, micro: super::gemm::MicroKernel) -> (Program, Vec<Vec<Option<BufId>>>) {
    let old = std::mem::take(&mut p.steps);
    let mut packed = Vec::with_capacity(old.len());
    let mut made: HashMap<(BufId, bool), BufId> = HashMap::new();
    for step in old {
        let weights: Vec<(usize, bool)> = match &step.kernel {
            Kernel::Gemm { trans_b, .. } => vec![(1, *trans_b)],
            Kernel::Op(tessera_ir::Op::Ffn { bias, .. }) => vec![(1, false), (ffn_out(*bias), false)],
            _ => Vec::new(),
        };
        let mut mine = vec![None; step.ins.len()];
        for (i, trans_b) in weights {
            let w = step.ins[i];
            let ty = &p.buffers[w].ty;
            let dims: Option<Vec<usize>> = ty.shape.iter().map(|d| d.as_known().and_then(|n| usize::try_from(n).ok())).collect();
            let constant = matches!(p.buffers[p.root(w)].storage, Storage::Param(_) | Storage::Derived);
            let (Some(dims), true, DType::F32) = (dims, constant, ty.dtype) else { continue };
            let [rows, cols] = dims[..] else { continue };
            let pb = *made.entry((w, trans_b)).or_insert_with(|| {
                let (n, k) = if trans_b { (rows, cols) } else { (cols, rows) };
                let len = super::gemm::packed_len(micro, (n, k)) as i64;
                let ty = tessera_ir::TensorType { dtype: DType::F32, shape: vec![tessera_ir::Dim::known(len)] };
                p.buffers.push(crate::kernel::Buffer { ty, storage: Storage::Derived });
                let out = p.buffers.len() - 1;
                p.steps.push(crate::kernel::Step { kernel: Kernel::PackB { trans_b }, out, ins: vec![w], span: step.span, ops: 0 });
                packed.push(Vec::new());
                out
            });
            mine[i] = Some(pb);
        }
        p.steps.push(step);
        packed.push(mine);
    }
    (p, packed)
}

/// A feed-forward block: two GEMMs around the activation (gated: the first GEMM's output is
/// `[gate | up]`).
///
/// # Safety
/// f32 views as `Op::Ffn` types them.
unsafe fn ffn(
    out: &View,
    ins: &[View],
    (packed_in, packed_out): (Option<*const f32>, Option<*const f32>),
    gated: bool,
    act: tessera_ir::UnaryOp,
    bias: bool,
    scratch: &mut (Vec<f32>, Vec<f32>),
) {
    let x = &ins[0];
    let (w_in, w_out) = (&ins[1], &ins[ffn_out(bias)]);
    let d = x.shape.last().copied().unwrap_or(1);
    // From the shape, not `x.len() / d`: an input of width 0 still has its rows.
    let rows: usize = x.shape.iter().rev().skip(1).product();
    let h_in = w_in.shape[1];
    // Hidden activations in buffers kept between calls (no page faults at every layer).
    let (h, hidden) = scratch;
    h.resize(rows * h_in, 0.0);
    let hv = View { ptr: h.as_mut_ptr() as *mut u8, shape: vec![rows, h_in], dtype: DType::F32 };
    let xv = View { ptr: x.ptr, shape: vec![rows, d], dtype: DType::F32 };
    unsafe { host::matmul(&hv, &xv, w_in, false, packed_in) };
    // Bias and activation in place; a gated layer then multiplies the halves into `hidden`.
    let bias_in = bias.then(|| &ins[2]);
    let width = if gated { h_in / 2 } else { h_in };
    if !gated {
        unsafe { host::epilogue(&hv, bias_in, Some(act), None) };
    } else {
        unsafe { host::epilogue(&hv, bias_in, None, None) };
        use rayon::prelude::*;
        hidden.resize(rows * width, 0.0);
        hidden.par_chunks_mut(width.max(1)).zip(h.par_chunks(h_in.max(1))).for_each(|(out, hrow)| host::gate_row(out, hrow, act, true));
    }
    let hidden = if gated { hidden } else { h };
    let hv = View { ptr: hidden.as_mut_ptr() as *mut u8, shape: vec![rows, width], dtype: DType::F32 };
    let ov = View { ptr: out.ptr, shape: vec![rows, w_out.shape[1]], dtype: DType::F32 };
    unsafe {
        host::matmul(&ov, &hv, w_out, false, packed_out);
        host::epilogue(&ov, bias.then(|| &ins[4]), None, None);
    }
}
