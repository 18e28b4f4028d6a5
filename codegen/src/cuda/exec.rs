//! Running a kernel program on a GPU-like [`Device`]: every buffer gets device memory (inputs
//! and parameters uploaded, views sharing their base's memory), each step runs its generated
//! CUDA kernels ([`super::lower`]) and GEMMs through the device's GEMM, and the outputs come
//! back. The device is a trait so that the same executor runs on CUDA (`cuda_device`, feature
//! `cuda`) and, in tests, on a CPU emulation of the generated kernels.
//!
//! Parameters stay on the device between runs, and so does the memory of intermediate
//! buffers ([`Resident`]): a second run allocates nothing. Buffers derived from parameters
//! only (merged weights) are computed once and kept, until a parameter changes. Intermediate
//! buffers are [`View`]s of one arena, laid out by the memory plan that the CPU executor uses
//! too ([`crate::plan`]); feed-forward blocks of the same size share their scratch. Not yet
//! here: streams and CUDA graphs.

use super::lower::{self as cuda, Arg, CudaKernel, Precision, Role};
use crate::kernel::{BufId, Kernel, Program, Storage};
use crate::GpuError;
use std::collections::HashMap;
use tessera_ir::{DType, UnaryOp};
use tessera_runtime::{broadcast_offsets, concrete, Data, Dims, RunError, Tensor};

/// A piece of device memory: `len` bytes from byte `offset` of `buf`. Intermediate buffers
/// are views of one allocation (the arena of [`crate::plan`]); others are whole allocations.
pub struct View<'a, B> {
    /// The allocation.
    pub buf: &'a B,
    /// Where the piece starts, in bytes.
    pub offset: usize,
    /// Its length in bytes.
    pub len: usize,
}

impl<B> Clone for View<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for View<'_, B> {}

impl<'a, B> View<'a, B> {
    /// The first `len` bytes of `buf`.
    pub fn whole(buf: &'a B, len: usize) -> Self {
        View { buf, offset: 0, len }
    }

    /// `len` bytes from byte `offset` of this view (which holds them).
    pub fn sub(self, offset: usize, len: usize) -> Self {
        debug_assert!(offset + len <= self.len, "a view of {len} bytes at {offset} in one of {}", self.len);
        View { buf: self.buf, offset: self.offset + offset, len }
    }

    /// The end of the view in its allocation, in bytes.
    pub fn end(&self) -> usize {
        self.offset + self.len
    }

    /// Whether the two views share a byte (an empty view shares none).
    pub fn overlaps(&self, other: &View<'_, B>) -> bool {
        std::ptr::eq(self.buf, other.buf) && self.len > 0 && other.len > 0 && self.offset < other.end() && other.offset < self.end()
    }
}

/// What the executor needs from a device. Memory is passed as [`View`]s (bytes); buffers are
/// untyped.
pub trait Device {
    /// A device allocation.
    type Buf;
    /// Zeroed memory of `bytes` bytes.
    fn alloc(&self, bytes: usize) -> Result<Self::Buf, GpuError>;
    /// A copy of `bytes` on the device.
    fn upload(&self, bytes: &[u8]) -> Result<Self::Buf, GpuError>;
    /// The bytes of `view`.
    fn download(&self, view: View<'_, Self::Buf>) -> Result<Vec<u8>, GpuError>;
    /// Waits until everything launched so far has finished.
    fn synchronize(&self) -> Result<(), GpuError>;
    /// Runs kernel `kernel` (an index into the lowered kernels) on `threads` threads with the
    /// memory `args` (as the kernel's parameters, in order: pointers to each view's start) and
    /// then `meta`. Views of one allocation may be passed together; those a kernel writes
    /// overlap no other argument.
    fn launch(&self, kernel: usize, threads: usize, args: &[View<'_, Self::Buf>], meta: &[i64]) -> Result<(), GpuError>;
    /// `c = act(a · b + bias)` for one matrix of the shape `g` (`act` is `g.act`; the bias,
    /// a vector of `g.n`, is added to every row), each view exactly its operand's size. `c`
    /// overlaps no operand, though it may share their allocation. A bias or an activation is
    /// asked for only where [`cuda::fused_in_gemm`] says so.
    fn gemm(
        &self,
        c: View<'_, Self::Buf>,
        a: View<'_, Self::Buf>,
        b: View<'_, Self::Buf>,
        bias: Option<View<'_, Self::Buf>>,
        g: GemmShape,
    ) -> Result<(), GpuError>;
}

/// A row-major GEMM as the column-major one that cuBLAS and cuBLASLt compute. Row-major
/// C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: the library's first operand is our `b` (its memory
/// read column-major is Bᵀ, n × k with leading dimension n; with `trans_b` the stored [n, k]
/// matrix, read as k × n and transposed, leading dimension k), its second our `a` (Aᵀ, k × m,
/// leading dimension k), and C is n × m with leading dimension n.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColMajor {
    /// The first operand is transposed.
    pub trans_first: bool,
    /// Rows of the column-major result (our `n`).
    pub m: usize,
    /// Its columns (our `m`).
    pub n: usize,
    /// The depth.
    pub k: usize,
    /// Leading dimensions of the first operand, the second and the result.
    pub ld: (usize, usize, usize),
}

impl GemmShape {
    /// The column-major form of this GEMM (see [`ColMajor`]).
    pub fn col_major(&self) -> ColMajor {
        ColMajor {
            trans_first: self.trans_b,
            m: self.n,
            n: self.m,
            k: self.k,
            ld: (if self.trans_b { self.k } else { self.n }, self.k, self.n),
        }
    }
}

/// An activation applied inside a GEMM, after its bias (cuBLASLt's epilogues).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmAct {
    /// `max(x, 0)`.
    Relu,
    /// GELU, tanh approximation.
    GeluTanh,
}

impl GemmAct {
    /// The GEMM activation that computes `op`, if there is one.
    pub fn of(op: UnaryOp) -> Option<GemmAct> {
        match op {
            UnaryOp::Relu => Some(GemmAct::Relu),
            UnaryOp::GeluTanh => Some(GemmAct::GeluTanh),
            _ => None,
        }
    }
}

/// One GEMM: `a` is `m × k`, `b` is `k × n` (or `n × k` stored, with `trans_b`), `c` is
/// `m × n`, all row-major, stored as `precision` says, accumulated in f32.
#[derive(Clone, Copy, Debug)]
pub struct GemmShape {
    /// Rows of `a` and `c`.
    pub m: usize,
    /// Columns of `b` and `c`.
    pub n: usize,
    /// Columns of `a`, rows of `b`.
    pub k: usize,
    /// `b` is stored transposed.
    pub trans_b: bool,
    /// How the operands are stored.
    pub precision: Precision,
    /// An activation applied to the result (after the bias, if any).
    pub act: Option<GemmAct>,
}

/// The bytes of a tensor as the kernels read them (bools as one byte each, f32 as bf16 where
/// `precision` says so, rounded to nearest even).
pub fn tensor_bytes(t: &Tensor, precision: Precision) -> Vec<u8> {
    match &t.data {
        Data::F32(v) if precision == Precision::Bf16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        _ => t.to_le_bytes(),
    }
}

/// A tensor from the bytes of a buffer.
pub fn tensor_from_bytes(raw: &[u8], shape: Vec<usize>, dtype: DType, precision: Precision) -> Tensor {
    let data = match dtype {
        DType::F32 if precision == Precision::Bf16 => {
            Data::F32(raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
        }
        DType::F32 => Data::F32(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        DType::I64 => {
            Data::I64(raw.chunks_exact(8).map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect())
        }
        DType::Bool => Data::Bool(raw.iter().map(|&b| b != 0).collect()),
    };
    Tensor { shape, data }
}

/// Device memory kept between runs: parameters by name, with the host tensor they were
/// uploaded from (its data address and length), so that a changed parameter is uploaded
/// again; and the memory of intermediate buffers and scratch, reused while its size fits.
pub struct Resident<B> {
    /// The parameters on the device, which programs of one model share (generation's
    /// prefill and decode read one copy).
    params: std::sync::Arc<std::sync::Mutex<Params<B>>>,
    memory: HashMap<Slot, (usize, B)>,
    /// The buffers derived from parameters (merged weights) hold what the resident
    /// parameters gave at this upload count: a run skips the steps that compute them.
    derived_current: Option<u64>,
    /// Names of outputs that stay on the device and of inputs read from there (generation's
    /// states): see [`Resident::carrying`].
    carry: std::collections::HashSet<String>,
}

/// Parameters on the device by name, with the fingerprint of the host tensor each came from,
/// and how many uploads there have been (a program's derived buffers are current while it
/// has not changed).
struct Params<B> {
    map: HashMap<String, ((usize, usize), B)>,
    uploads: u64,
    /// Carried tensors on the device by name: shape, bytes of memory, memory.
    carried: HashMap<String, (Vec<usize>, usize, B)>,
    /// The memory the next run writes each carried output into (the one before's).
    spare: HashMap<String, (usize, B)>,
}

impl<B> Default for Resident<B> {
    fn default() -> Self {
        Resident {
            params: std::sync::Arc::new(std::sync::Mutex::new(Params {
                map: HashMap::new(),
                uploads: 0,
                carried: HashMap::new(),
                spare: HashMap::new(),
            })),
            memory: HashMap::new(),
            derived_current: None,
            carry: Default::default(),
        }
    }
}

impl<B> Resident<B> {
    /// Drops the parameters on the device (for every program sharing them) and what was
    /// derived from them: resident copies are keyed by the host tensors' addresses, and new
    /// parameters may be allocated where old ones were.
    pub fn forget_params(&mut self) {
        if let Ok(mut p) = self.params.lock() {
            p.map.clear();
            p.uploads += 1;
        }
        self.derived_current = None;
    }

    /// Memory for another program of the same model: the same parameters on the device, its
    /// own intermediate buffers.
    pub fn sharing_params(&self) -> Resident<B> {
        Resident { params: self.params.clone(), memory: HashMap::new(), derived_current: None, carry: self.carry.clone() }
    }

    /// Keeps the outputs named `names` on the device, where the next run of this or a program
    /// sharing the parameters reads them as the inputs of those names without an upload: a
    /// run returns such an output as a tensor of its shape without data, which the caller
    /// passes back as the input. (Generation's states stay on the GPU between steps.)
    pub fn set_carry(&mut self, names: impl IntoIterator<Item = String>) {
        self.carry = names.into_iter().collect();
    }
}

/// What a piece of kept device memory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Slot {
    /// The intermediate buffers, laid out by the memory plan ([`crate::plan`]) that the CPU
    /// executor uses too: a buffer's memory is reused once its last reader has run.
    Arena,
    /// Scratch of feed-forward blocks (their gates or hidden layer) of this many bytes: one
    /// block runs at a time, so blocks of the same size share it.
    Scratch(Arg, usize),
    /// A buffer derived from parameters only, kept with them.
    Derived(BufId),
}

/// Makes sure `slot` has device memory of `bytes`: kept from an earlier run, or new (then it
/// returns true).
fn slot<D: Device>(device: &D, memory: &mut HashMap<Slot, (usize, D::Buf)>, slot: Slot, bytes: usize) -> Result<bool, GpuError> {
    if memory.get(&slot).is_none_or(|(b, _)| *b != bytes) {
        memory.insert(slot, (bytes, device.alloc(bytes.max(1))?));
        return Ok(true);
    }
    Ok(false)
}

/// Makes sure the arena holds `bytes`: kept from an earlier run where it is large enough,
/// else new, with room for runs a little larger (a decode step's buffers grow by a position
/// per call).
fn arena<D: Device>(device: &D, memory: &mut HashMap<Slot, (usize, D::Buf)>, bytes: usize) -> Result<(), GpuError> {
    if memory.get(&Slot::Arena).is_none_or(|(cap, _)| *cap < bytes) {
        let cap = bytes + bytes / 4;
        memory.insert(Slot::Arena, (cap, device.alloc(cap.max(1))?));
    }
    Ok(())
}

/// Where a tensor's data lives on the host and how long it is: the key that tells whether a
/// resident copy is still current.
fn fingerprint(t: &Tensor) -> (usize, usize) {
    match &t.data {
        Data::F32(v) => (v.as_ptr() as usize, v.len()),
        Data::I64(v) => (v.as_ptr() as usize, v.len()),
        Data::Bool(v) => (v.as_ptr() as usize, v.len()),
    }
}

/// What a run on a device took.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuStats {
    /// Seconds from the first launch to the last one's end (uploads and downloads excluded).
    pub seconds: f64,
    /// Bytes of device memory this run used for intermediate buffers (the plan's arena: the
    /// one kept may be larger, from a larger run or with room to grow, as on the CPU),
    /// scratch and buffers derived from parameters.
    pub memory_bytes: usize,
}

/// Runs `program`, lowered as `kernels` (with the decisions of lowering) for `precision`, on
/// `device`. Parameters already in `resident` (uploaded from the same host tensors) are not
/// uploaded again.
#[allow(clippy::too_many_arguments)]
pub fn run<D: Device>(
    program: &Program,
    kernels: &cuda::Lowered,
    precision: Precision,
    device: &D,
    inputs: &HashMap<String, Tensor>,
    params: &HashMap<String, Tensor>,
    resident: &mut Resident<D::Buf>,
    dims: &Dims,
) -> Result<(Vec<(String, Tensor)>, GpuStats), GpuError> {
    let shapes: Vec<Vec<usize>> = program.buffers.iter().map(|b| concrete(&b.ty.shape, dims)).collect::<Result<_, _>>()?;
    // The host tensor of an input or parameter buffer, checked against the buffer's type.
    let host = |b: BufId, t: Option<&'_ Tensor>, kind: &'static str, name: &str| -> Result<Vec<u8>, GpuError> {
        let t = t.ok_or_else(|| RunError::Missing { kind, name: name.into() })?;
        let ty = &program.buffers[b].ty;
        if t.shape != shapes[b] || t.dtype() != ty.dtype {
            return Err(RunError::BadTensor {
                kind,
                name: name.into(),
                expected: format!("{}{:?}", ty.dtype.name(), shapes[b]),
                got: format!("{}{:?}", t.dtype().name(), t.shape),
            }
            .into());
        }
        Ok(tensor_bytes(t, precision))
    };
    // Device memory: inputs uploaded; parameters uploaded unless resident from the same host
    // tensor; intermediate buffers in the arena, kept from the last run where it is large
    // enough.
    let bytes_of = |b: BufId| shapes[b].iter().product::<usize>() * precision.size(program.buffers[b].ty.dtype);
    // Carried outputs have memory of their own (see `Resident::carrying`).
    let out_carried: HashMap<BufId, String> = program
        .outputs
        .iter()
        .filter(|(name, b)| resident.carry.contains(name) && program.buffers[program.root(*b)].storage == Storage::Arena)
        .map(|(name, b)| (program.root(*b), name.clone()))
        .collect();
    let sizes: Vec<usize> = (0..program.buffers.len()).map(|b| if out_carried.contains_key(&b) { 0 } else { bytes_of(b) }).collect();
    let mem = crate::plan(program, &sizes);
    arena(device, &mut resident.memory, mem.bytes)?;
    // Buffers derived from parameters have memory of their own, kept with the parameters, and
    // are computed again only when a parameter was uploaded or their memory is new.
    let shared = resident.params.clone();
    let mut resident_params = shared.lock().map_err(|_| GpuError::Internal("a previous run panicked".into()))?;
    let mut derived_current = resident.derived_current.take() == Some(resident_params.uploads);
    for (b, buf) in program.buffers.iter().enumerate() {
        if buf.storage == Storage::Derived && slot(device, &mut resident.memory, Slot::Derived(b), bytes_of(b))? {
            derived_current = false;
        }
    }
    for (b, name) in &out_carried {
        let bytes = bytes_of(*b);
        if resident_params.spare.get(name).is_none_or(|(cap, _)| *cap < bytes) {
            // Room to grow: a state gains a position per step.
            let cap = bytes + bytes / 4 + 64;
            resident_params.spare.insert(name.clone(), (cap, device.alloc(cap)?));
        }
    }
    let mut uploaded: HashMap<BufId, D::Buf> = HashMap::new();
    let mut from_device: std::collections::HashSet<BufId> = Default::default();
    for (b, buf) in program.buffers.iter().enumerate() {
        match &buf.storage {
            Storage::Input(name)
                if resident.carry.contains(name) && resident_params.carried.get(name).is_some_and(|(sh, ..)| *sh == shapes[b]) =>
            {
                from_device.insert(b);
            }
            Storage::Input(name) => {
                if resident.carry.contains(name) && inputs.get(name).is_some_and(|t| t.is_empty() && !shapes[b].contains(&0)) {
                    return Err(RunError::NoCarriedCopy { name: name.clone(), shape: shapes[b].clone() }.into());
                }
                uploaded.insert(b, device.upload(&host(b, inputs.get(name), "input", name)?)?);
            }
            Storage::Param(name) => {
                let key = params.get(name).map(fingerprint);
                if key.is_none() || resident_params.map.get(name).map(|(k, _)| *k) != key {
                    let data = host(b, params.get(name), "parameter", name)?;
                    resident_params.map.insert(name.clone(), (key.unwrap_or_default(), device.upload(&data)?));
                    resident_params.uploads += 1;
                    derived_current = false;
                }
            }
            Storage::Alias(_) | Storage::Arena | Storage::Derived => {}
        }
    }
    // Scratch of the feed-forward blocks: the first GEMM's output and the hidden layer.
    let mut scratch_of: HashMap<(usize, Arg), Slot> = HashMap::new();
    for (s, step) in program.steps.iter().enumerate() {
        if let Some((sizes, _)) = route_sizes(&shapes, step) {
            let es = precision.f32_size();
            for (arg, elements) in [
                (Arg::RouteRows, sizes.rows * sizes.d),
                (Arg::RouteGate, sizes.rows * sizes.h),
                (Arg::RouteUp, sizes.rows * sizes.h),
                (Arg::RouteOut, sizes.rows * sizes.d_out),
            ] {
                slot(device, &mut resident.memory, Slot::Scratch(arg, elements * es), elements * es)?;
                scratch_of.insert((s, arg), Slot::Scratch(arg, elements * es));
            }
        }
        if let Kernel::Op(tessera_ir::Op::Ffn { gated, .. }) = step.kernel {
            let (rows, h_in, width) = ffn_sizes(&shapes, step, gated);
            let es = precision.f32_size();
            // Where the first GEMM applies the activation itself, it writes the hidden layer.
            let gates = !kernels.in_gemm[s];
            for (arg, bytes) in [(Arg::Gates, rows * h_in * es), (Arg::Hidden, rows * width * es)] {
                if arg == Arg::Hidden || gates {
                    slot(device, &mut resident.memory, Slot::Scratch(arg, bytes), bytes)?;
                    scratch_of.insert((s, arg), Slot::Scratch(arg, bytes));
                }
            }
        }
    }
    // Memory this run does not use (scratch of an earlier run's sizes) is freed.
    resident.memory.retain(|k, _| match k {
        Slot::Arena => true,
        Slot::Scratch(..) => scratch_of.values().any(|v| v == k),
        Slot::Derived(_) => true,
    });
    let kept = &*resident;
    // A buffer's memory: its own allocation, or its place in the arena (a view starts where
    // its base does).
    let buf = |b: BufId| -> Result<View<'_, D::Buf>, GpuError> {
        let r = program.root(b);
        fn whole<B>(m: Option<&B>) -> Option<(&B, usize)> {
            m.map(|m| (m, 0))
        }
        match &program.buffers[r].storage {
            Storage::Param(name) => whole(resident_params.map.get(name).map(|(_, m)| m)),
            Storage::Input(name) if from_device.contains(&r) => whole(resident_params.carried.get(name).map(|(.., m)| m)),
            Storage::Input(_) => whole(uploaded.get(&r)),
            Storage::Arena if out_carried.contains_key(&r) => {
                whole(out_carried.get(&r).and_then(|n| resident_params.spare.get(n)).map(|(_, m)| m))
            }
            Storage::Derived => whole(kept.memory.get(&Slot::Derived(r)).map(|(_, m)| m)),
            _ => kept.memory.get(&Slot::Arena).zip(mem.offsets[r]).map(|((_, m), at)| (m, at)),
        }
        .map(|(m, offset)| View { buf: m, offset, len: bytes_of(b) })
        .ok_or_else(|| GpuError::Internal(format!("buf{b} has no memory")))
    };
    let scratch = |s: usize, a: Arg| {
        scratch_of
            .get(&(s, a))
            .and_then(|k| kept.memory.get(k))
            .map(|(bytes, m)| View::whole(m, *bytes))
            .ok_or_else(|| GpuError::Internal(format!("no scratch {a:?} for step {s}")))
    };
    let kernels_of = |s: usize| kernels.iter().enumerate().filter(move |(_, k)| k.step == s);
    device.synchronize()?;
    let start = std::time::Instant::now();
    for (s, step) in program.steps.iter().enumerate() {
        if (derived_current && program.buffers[step.out].storage == Storage::Derived) || matches!(step.kernel, Kernel::PackB { .. }) {
            continue;
        }
        let in_shapes: Vec<&[usize]> = step.ins.iter().map(|&b| shapes[b].as_slice()).collect();
        let out_shape = &shapes[step.out];
        let launch = |n: usize, k: &CudaKernel, meta: &[i64]| -> Result<(), GpuError> {
            let args: Vec<View<'_, D::Buf>> = k
                .args
                .iter()
                .map(|a| match (a, &step.kernel) {
                    (Arg::Out, _) => buf(step.out),
                    (Arg::In(i), _) => buf(step.ins[*i]),
                    (Arg::Result(k), Kernel::Scan(sk)) => buf(sk.results[*k]),
                    (Arg::Result(k), Kernel::TopK { results, .. }) => buf(results[*k]),
                    (other, _) => scratch(s, *other),
                })
                .collect::<Result<_, _>>()?;
            device.launch(n, meta.first().copied().unwrap_or(0).max(0) as usize, &args, meta)
        };
        match &step.kernel {
            Kernel::Gemm { trans_b, residual, bias, act } => {
                // Bias and activation inside the GEMM where it can, else in the epilogue kernel.
                let epilogue = if kernels.in_gemm[s] {
                    (bias.then(|| buf(step.ins[2])).transpose()?, act.and_then(GemmAct::of))
                } else {
                    (None, None)
                };
                matmul(
                    device,
                    (buf(step.out)?, out_shape),
                    (buf(step.ins[0])?, in_shapes[0]),
                    (buf(step.ins[1])?, in_shapes[1]),
                    *trans_b,
                    precision,
                    epilogue,
                )?;
                // The epilogue reads the residual (the last operand) as an elementwise kernel would.
                let res: Vec<&[usize]> = in_shapes.last().copied().filter(|_| *residual).into_iter().collect();
                for (n, k) in kernels_of(s) {
                    launch(n, k, &cuda::epilogue_meta(out_shape, &res))?;
                }
            }
            Kernel::Op(tessera_ir::Op::Ffn { gated, bias, act }) => {
                // Operands: x, w_in, (b_in), w_out, (b_out).
                let wo = if *bias { 3 } else { 2 };
                let (rows, h_in, width) = ffn_sizes(&shapes, step, *gated);
                let (d, w_in, w_out) = (last_size(in_shapes[0]), in_shapes[1], in_shapes[wo]);
                let hidden = scratch(s, Arg::Hidden)?;
                let (x, w_in) = ((buf(step.ins[0])?, &[rows, d][..]), (buf(step.ins[1])?, w_in));
                let fused = kernels.in_gemm[s];
                if fused {
                    // The first GEMM applies the bias and the activation, writing the hidden layer.
                    let b_in = bias.then(|| buf(step.ins[2])).transpose()?;
                    matmul(device, (hidden, &[rows, h_in]), x, w_in, false, precision, (b_in, GemmAct::of(*act)))?;
                } else {
                    matmul(device, (scratch(s, Arg::Gates)?, &[rows, h_in]), x, w_in, false, precision, (None, None))?;
                    for (n, k) in kernels_of(s).filter(|(_, k)| k.role == Role::FfnAct) {
                        launch(n, k, &[(rows * width) as i64, width as i64, h_in as i64])?;
                    }
                }
                let w_out = (buf(step.ins[wo])?, w_out);
                let b_out = if fused { bias.then(|| buf(step.ins[4])).transpose()? } else { None };
                let out = (buf(step.out)?, &[rows, w_out.1[1]][..]);
                matmul(device, out, (hidden, &[rows, width]), w_out, false, precision, (b_out, None))?;
                for (n, k) in kernels_of(s).filter(|(_, k)| k.role == Role::Epilogue) {
                    launch(n, k, &cuda::epilogue_meta(out_shape, &[]))?;
                }
            }
            Kernel::Route(rk) => {
                let Some((z, f)) = route_sizes(&shapes, step) else {
                    return Err(GpuError::Internal(format!("step {s}: a route without its grouped plan (refused by `lower`)")));
                };
                if z.rows == 0 {
                    continue;
                }
                // The grouping is made on the host from the chosen experts (tokens·k integers).
                let raw = device.download(buf(step.ins[1])?)?;
                let choices: Vec<i64> = raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default())).collect();
                let at = step.span.display_in(&program.files).unwrap_or_else(|| "a route".into());
                let routing = tessera_runtime::Routing::new(&choices, rk.op.experts, &at)?;
                let mut pos = vec![0i64; z.rows];
                for (i, &c) in routing.slot.iter().enumerate() {
                    pos[c] = i as i64;
                }
                let as_bytes = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
                let (slot_bytes, pos_bytes) = (as_bytes(&routing.slot.iter().map(|&c| c as i64).collect::<Vec<_>>()), as_bytes(&pos));
                let (slot_buf, pos_buf) = (device.upload(&slot_bytes)?, device.upload(&pos_bytes)?);
                let (slot_buf, pos_buf) = (View::whole(&slot_buf, slot_bytes.len()), View::whole(&pos_buf, pos_bytes.len()));
                let kernel = |role: Role| {
                    kernels_of(s).find(|(_, k)| k.role == role).ok_or_else(|| GpuError::Internal(format!("step {s}: no {role:?} kernel")))
                };
                let (rows, gate, up, ys) =
                    (scratch(s, Arg::RouteRows)?, scratch(s, Arg::RouteGate)?, scratch(s, Arg::RouteUp)?, scratch(s, Arg::RouteOut)?);
                let (n, _) = kernel(Role::RouteGather)?;
                device.launch(n, z.rows * z.d, &[rows, buf(step.ins[0])?, slot_buf], &[(z.rows * z.d) as i64, z.d as i64, z.k as i64])?;
                // Expert `e`'s GEMM over the rows from `start`: `c` (`m × n`) = `a` (`m × k`) · `w[e]`.
                let es = precision.f32_size();
                let gemm =
                    |c: View<'_, D::Buf>, a: View<'_, D::Buf>, w: BufId, e: usize, start: usize, (m, n, k): (usize, usize, usize)| {
                        let g = GemmShape { m, n, k, trans_b: false, precision, act: None };
                        let (c, a) = (c.sub(es * start * n, es * m * n), a.sub(es * start * k, es * m * k));
                        device.gemm(c, a, buf(w)?.sub(es * e * k * n, es * k * n), None, g)
                    };
                for e in 0..rk.op.experts {
                    let r = routing.rows(e);
                    if !r.is_empty() {
                        let mnk = (r.len(), z.h, z.d);
                        gemm(gate, rows, step.ins[f.gate], e, r.start, mnk)?;
                        if let Some(u) = f.up {
                            gemm(up, rows, step.ins[u], e, r.start, mnk)?;
                        }
                    }
                }
                let (n, _) = kernel(Role::RouteAct)?;
                let act_args = if f.up.is_some() { vec![gate, up] } else { vec![gate] };
                device.launch(n, z.rows * z.h, &act_args, &[(z.rows * z.h) as i64])?;
                for e in 0..rk.op.experts {
                    let r = routing.rows(e);
                    if !r.is_empty() {
                        gemm(ys, gate, step.ins[f.down], e, r.start, (r.len(), z.d_out, z.h))?;
                    }
                }
                let (n, _) = kernel(Role::RouteScatter)?;
                let cells = z.tokens * z.d_out;
                device.launch(n, cells, &[buf(step.out)?, buf(step.ins[2])?, ys, pos_buf], &[cells as i64, z.d_out as i64, z.k as i64])?;
            }
            Kernel::Scan(sk) => {
                let outs: Vec<&[usize]> = sk.results.iter().map(|&b| shapes[b].as_slice()).collect();
                let meta = cuda::scan_meta(program, sk, &outs, &in_shapes)?;
                for (n, k) in kernels_of(s) {
                    launch(n, k, &meta)?;
                }
            }
            kernel => {
                for (n, k) in kernels_of(s) {
                    launch(n, k, &cuda::meta(kernel, k.block, out_shape, &in_shapes, dims)?)?;
                }
            }
        }
    }
    device.synchronize()?;
    let seconds = start.elapsed().as_secs_f64();
    let outputs = program
        .outputs
        .iter()
        .map(|(name, b)| {
            let dtype = program.buffers[*b].ty.dtype;
            if out_carried.contains_key(&program.root(*b)) {
                // It stays on the device: a tensor of its shape without data stands for it.
                return Ok((name.clone(), Tensor::from_f64(dtype, shapes[*b].clone(), std::iter::empty())));
            }
            let raw = device.download(buf(*b)?)?;
            Ok((name.clone(), tensor_from_bytes(&raw, shapes[*b].clone(), dtype, precision)))
        })
        .collect::<Result<_, GpuError>>()?;
    // Each carried output is now the tensor of its name (of the output's shape: its memory
    // may be a view's root); the memory it replaces takes the next run's output.
    for (name, b) in program.outputs.iter().filter(|(_, b)| out_carried.contains_key(&program.root(*b))) {
        if let Some((cap, m)) = resident_params.spare.remove(name) {
            if let Some((_, old_cap, old)) = resident_params.carried.insert(name.clone(), (shapes[*b].clone(), cap, m)) {
                resident_params.spare.insert(name.clone(), (old_cap, old));
            }
        }
    }
    let memory_bytes = mem.bytes
        + kept.memory.iter().filter(|(k, _)| matches!(k, Slot::Scratch(..) | Slot::Derived(_))).map(|(_, (b, _))| b).sum::<usize>();
    resident.derived_current = Some(resident_params.uploads);
    Ok((outputs, GpuStats { seconds, memory_bytes }))
}

/// The sizes of a grouped route step: tokens, choices per token, routed rows, widths.
struct RouteSizes {
    tokens: usize,
    k: usize,
    rows: usize,
    d: usize,
    h: usize,
    d_out: usize,
}

/// A grouped route step's sizes and plan (`None` for other steps).
fn route_sizes<'a>(shapes: &[Vec<usize>], step: &'a crate::kernel::Step) -> Option<(RouteSizes, &'a crate::route::RoutedFfn)> {
    let Kernel::Route(rk) = &step.kernel else { return None };
    let f = rk.ffn.as_ref().ok()?;
    let (x, idx) = (&shapes[step.ins[0]], &shapes[step.ins[1]]);
    let d = last_size(x);
    let k = last_size(idx);
    let tokens: usize = x.iter().rev().skip(1).product();
    let h = shapes[step.ins[f.gate]].get(2).copied().unwrap_or(0);
    let d_out = last_size(&shapes[step.out]);
    Some((RouteSizes { tokens, k, rows: tokens * k, d, h, d_out }, f))
}

/// The last size of a shape (a row's width).
fn last_size(shape: &[usize]) -> usize {
    shape.last().copied().unwrap_or(1)
}

/// A feed-forward step's rows, first-GEMM width and hidden width.
fn ffn_sizes(shapes: &[Vec<usize>], step: &crate::kernel::Step, gated: bool) -> (usize, usize, usize) {
    let (x, w_in) = (&shapes[step.ins[0]], &shapes[step.ins[1]]);
    let rows = x.iter().product::<usize>() / last_size(x).max(1);
    let h_in = w_in.get(1).copied().unwrap_or(1);
    (rows, h_in, if gated { h_in / 2 } else { h_in })
}

/// A batched matmul as one device GEMM per matrix (batch axes broadcast), with a bias and an
/// activation applied by the GEMM.
fn matmul<D: Device>(
    device: &D,
    out: (View<'_, D::Buf>, &[usize]),
    a: (View<'_, D::Buf>, &[usize]),
    b: (View<'_, D::Buf>, &[usize]),
    trans_b: bool,
    precision: Precision,
    (bias, act): (Option<View<'_, D::Buf>>, Option<GemmAct>),
) -> Result<(), GpuError> {
    let (ra, rb, r) = (a.1.len(), b.1.len(), out.1.len());
    let (m, k) = (a.1[ra - 2], a.1[ra - 1]);
    let n = if trans_b { b.1[rb - 2] } else { b.1[rb - 1] };
    let batch = &out.1[..r - 2];
    let (oa, ob) = (broadcast_offsets(batch, &a.1[..ra - 2]), broadcast_offsets(batch, &b.1[..rb - 2]));
    let es = precision.f32_size();
    for (i, (ia, ib)) in oa.iter().zip(&ob).enumerate() {
        let g = GemmShape { m, n, k, trans_b, precision, act };
        let (c, a, b) = (out.0.sub(es * i * m * n, es * m * n), a.0.sub(es * ia * m * k, es * m * k), b.0.sub(es * ib * k * n, es * k * n));
        device.gemm(c, a, b, bias.map(|b| b.sub(0, es * n)), g)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The column-major GEMM as the BLAS reference defines it: `C = op(X) · Y`, `op(X)` being
    /// `m × k` (`X` stored `k × m` when transposed), `Y` `k × n`, all column-major.
    fn blas_gemm(c: &ColMajor, x: &[f32], y: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; c.ld.2 * c.n];
        for j in 0..c.n {
            for i in 0..c.m {
                let op_x = |p: usize| if c.trans_first { x[p + i * c.ld.0] } else { x[i + p * c.ld.0] };
                out[i + j * c.ld.2] = (0..c.k).map(|p| op_x(p) * y[p + j * c.ld.1]).sum();
            }
        }
        out
    }

    #[test]
    fn views_overlap_where_they_share_a_byte() {
        let (x, y) = (0u8, 0u8);
        let at = |buf, offset, len| View { buf, offset, len };
        // Bytes 64..128 of `x`.
        let c = at(&x, 64, 64);
        assert!(!c.overlaps(&at(&x, 0, 64)) && !c.overlaps(&at(&x, 128, 8)), "neighbours");
        assert!(c.overlaps(&at(&x, 0, 65)) && c.overlaps(&at(&x, 127, 4)) && c.overlaps(&at(&x, 80, 8)), "overlapping");
        assert!(at(&x, 80, 8).overlaps(&c), "symmetric");
        assert!(!c.overlaps(&at(&y, 64, 64)), "another allocation");
        assert!(!c.overlaps(&at(&x, 80, 0)) && !at(&x, 64, 0).overlaps(&c), "empty");
    }

    #[test]
    fn the_column_major_form_computes_the_row_major_product() {
        for trans_b in [false, true] {
            let (m, n, k) = (5, 7, 3);
            let g = GemmShape { m, n, k, trans_b, precision: Precision::F32, act: None };
            let a: Vec<f32> = (0..m * k).map(|i| (i * 7 % 11) as f32 - 5.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i * 5 % 13) as f32 - 6.0).collect();
            // Row-major a (m × k) times b (k × n, or stored n × k with trans_b).
            let at = |i: usize, j: usize| (0..k).map(|p| a[i * k + p] * if trans_b { b[j * k + p] } else { b[p * n + j] }).sum::<f32>();
            let want: Vec<f32> = (0..m * n).map(|x| at(x / n, x % n)).collect();
            assert_eq!(blas_gemm(&g.col_major(), &b, &a), want, "trans_b = {trans_b}");
        }
    }
}
