//! The CPU's fused scan kernel: runs a [`FusedScan`] plan as one loop over the sequence per
//! tile of state elements (see [`crate::scan`] for the plan).

use super::codegen::ScanTileFn;
use super::host::View;
use super::vmath::{self, vectorized};
use crate::scan::{access_strides, FusedScan, Node, Source};
use tessera_ir::{BinaryOp, DType, ReduceOp, Scan, UnaryOp};
use tessera_runtime::RunError;

/// A tensor as read at one position: its pointer, its element type, its strides along the
/// axes of `I` (0 where broadcast) and the stride of the scanned axis (0 when not sliced).
#[derive(Clone)]
pub(super) struct Access {
    pub(crate) ptr: usize,
    dtype: DType,
    /// Strides along the axes of `I`.
    pub(crate) along: Vec<usize>,
    /// The stride of the scanned axis.
    pub(crate) step: usize,
}

impl Access {
    /// `view` read per position with `map` (for each per-position axis, its axis of `I`);
    /// `axis` is the scanned axis of a sliced or stacked tensor.
    pub(crate) fn new(view: &View, map: &[usize], axis: Option<usize>, r: usize) -> Access {
        let (along, step) = access_strides(&view.shape, map, axis, r);
        Access { ptr: view.ptr as usize, dtype: view.dtype, along, step }
    }

    pub(crate) fn offset(&self, coords: &[usize]) -> usize {
        coords.iter().zip(&self.along).map(|(c, s)| c * s).sum()
    }
}

/// Runs the fused kernel (or, with `chunked` and where it applies, the chunked one): `ins`
/// are the scan's operands, `outs` its results (stacked per-step results, then final states).
/// Each tile runs as `compiled` where the code generator compiled the scan, else position by
/// position here ([`eval`]).
///
/// # Safety
/// Views valid and sized by the scan's types; `outs` disjoint from `ins`; `compiled` made from
/// `f`.
pub unsafe fn run(
    f: &FusedScan,
    s: &Scan,
    ins: &[View],
    outs: &[View],
    chunked: bool,
    compiled: Option<ScanTileFn>,
) -> Result<(), RunError> {
    use rayon::prelude::*;
    if let (Some(c), true) = (&f.chunked, chunked) {
        if unsafe { super::scan_chunked::run(c, s, &f.output_maps[0], ins, outs)? } {
            return Ok(());
        }
    }
    let (ns, nx) = (s.state, s.sliced);
    let space = ins[0].shape.clone();
    let r = space.len();
    let total: usize = space.iter().product();
    let len = ins[ns].shape[s.axis];
    let inner = space.last().copied().unwrap_or(1).max(1);
    let ny = outs.len() - ns;
    let sources: Vec<Option<Access>> = f
        .nodes
        .iter()
        .map(|n| match n {
            Node::Leaf(Source::Operand(k), map) => {
                let sliced = (ns..ns + nx).contains(k);
                Some(Access::new(&ins[*k], map, sliced.then_some(s.axis), r))
            }
            _ => None,
        })
        .collect();
    let identity: Vec<usize> = (0..r).collect();
    let results: Vec<Access> = (0..ny)
        .map(|k| Access::new(&outs[k], &f.output_maps[k], Some(s.axis), r))
        .chain((0..ns).map(|k| Access::new(&outs[ny + k], &identity, None, r)))
        .collect();
    // The state leaves: the slot each state is read from.
    let state_slot: Vec<usize> = (0..ns)
        .map(|k| f.nodes.iter().position(|n| matches!(n, Node::Leaf(Source::Operand(j), _) if *j == k)).unwrap_or(usize::MAX))
        .collect();
    // Tiles: ranges of elements of I (whole rows when a reduction runs along them).
    let unit = if f.reduces { inner } else { 1 };
    let tile = (256 / unit).max(1) * unit;
    let tiles: Vec<(usize, usize)> = (0..total).step_by(tile.max(1)).map(|a| (a, (a + tile).min(total))).collect();
    let st_space = tessera_runtime::strides(&space);
    let n_slots = f.nodes.len();
    tiles.par_iter().try_for_each(|&(a, b)| -> Result<(), RunError> {
        let n = b - a;
        // The tile as segments along the last axis of `I` (`(first element, length, its
        // last coordinate)`), and each source's and result's offset at each segment's start:
        // inside a segment an access moves by its last stride. (Per element, this setup was
        // most of a decode step's work.)
        let mut c: Vec<usize> = st_space.iter().zip(&space).map(|(st, sz)| (a / st) % sz).collect();
        let accs: Vec<&Access> = sources.iter().flatten().chain(&results).collect();
        let mut segs: Vec<(usize, usize, usize)> = Vec::new();
        let mut bases: Vec<Vec<usize>> = accs.iter().map(|_| Vec::new()).collect();
        let mut e = 0;
        while e < n {
            let len = if r == 0 { 1 } else { (space[r - 1] - c[r - 1]).min(n - e) };
            segs.push((e, len, c.last().copied().unwrap_or(0)));
            for (bs, acc) in bases.iter_mut().zip(&accs) {
                bs.push(acc.offset(&c));
            }
            e += len;
            if r > 0 {
                c[r - 1] += len;
                let mut k = r - 1;
                while c[k] >= space[k] && k > 0 {
                    c[k] = 0;
                    k -= 1;
                    c[k] += 1;
                }
            }
        }
        let last_stride = |acc: &Access| acc.along.last().copied().unwrap_or(0);
        let mut bases = bases.into_iter();
        let offsets: Vec<Option<Vec<usize>>> = sources.iter().map(|s| s.as_ref().and_then(|_| bases.next())).collect();
        let out_bases: Vec<Vec<usize>> = bases.collect();
        // A reduced result is written once per row (where its reduced coordinate is 0).
        let whole: Vec<bool> = (0..ny).map(|k| r == 0 || f.output_maps[k].last() == Some(&(r - 1))).collect();
        let mut slots = vec![0f32; n_slots * n];
        // Constants, invariants and initial states once; sliced operands at every position.
        for (i, node) in f.nodes.iter().enumerate() {
            match (node, &sources[i], &offsets[i]) {
                (Node::Leaf(Source::Const(c), _), ..) => slots[i * n..(i + 1) * n].fill(*c),
                (Node::Leaf(Source::Operand(k), _), Some(acc), Some(off)) if !(ns..ns + nx).contains(k) => unsafe {
                    gather(&mut slots[i * n..(i + 1) * n], acc, 0, &segs, off, last_stride(acc))
                },
                _ => {}
            }
        }
        if let Some(kernel) = compiled {
            // The tables of the compiled kernel: sliced operands by node, then per-step results.
            let nacc = n_slots + ny;
            let nseg = segs.len();
            let mut ptrs = vec![std::ptr::null_mut::<u8>(); nacc];
            let (mut offs, mut steps, mut lasts) = (vec![0i64; nacc * nseg], vec![0i64; nacc], vec![0i64; nacc]);
            let entries = sources.iter().zip(&offsets).enumerate().filter_map(|(i, (a, o))| Some((i, a.as_ref()?, o.as_ref()?)));
            let results = results.iter().zip(&out_bases).take(ny).enumerate().map(|(k, (a, o))| (n_slots + k, a, o));
            for (i, acc, off) in entries.chain(results) {
                ptrs[i] = acc.ptr as *mut u8;
                steps[i] = acc.step as i64;
                lasts[i] = last_stride(acc) as i64;
                for (sg, &o) in off.iter().enumerate() {
                    offs[i * nseg + sg] = o as i64;
                }
            }
            let seg_table: Vec<i64> = segs.iter().flat_map(|&(e0, l, c0)| [e0 as i64, l as i64, c0 as i64]).collect();
            // SAFETY: the tables describe the views as the loop below reads and writes them.
            unsafe {
                kernel(
                    slots.as_mut_ptr(),
                    n as i64,
                    inner as i64,
                    len as i64,
                    i64::from(s.reverse),
                    nseg as i64,
                    seg_table.as_ptr(),
                    ptrs.as_ptr(),
                    offs.as_ptr(),
                    steps.as_ptr(),
                    lasts.as_ptr(),
                )
            };
        } else {
            for step in 0..len {
                let t = if s.reverse { len - 1 - step } else { step };
                for (i, node) in f.nodes.iter().enumerate() {
                    if let (Node::Leaf(Source::Operand(k), _), Some(acc), Some(off)) = (node, &sources[i], &offsets[i]) {
                        if (ns..ns + nx).contains(k) {
                            unsafe { gather(&mut slots[i * n..(i + 1) * n], acc, t * acc.step, &segs, off, last_stride(acc)) }
                        }
                    }
                }
                eval(&f.nodes, &mut slots, n, inner);
                for k in 0..ny {
                    let (acc, src) = (&results[k], f.outputs[k]);
                    let stride = last_stride(acc);
                    for (&(e0, len, c0), &o) in segs.iter().zip(&out_bases[k]) {
                        let base = t * acc.step + o;
                        if whole[k] {
                            for j in 0..len {
                                unsafe { store(acc, base + j * stride, slots[src * n + e0 + j]) };
                            }
                        } else if c0 == 0 {
                            unsafe { store(acc, base, slots[src * n + e0]) };
                        }
                    }
                }
                for (k, &to) in state_slot.iter().enumerate() {
                    let from = f.outputs[ny + k];
                    if to != usize::MAX && to != from {
                        slots.copy_within(from * n..(from + 1) * n, to * n);
                    }
                }
            }
        }
        for k in 0..ns {
            // After the last position the state slot holds the final state (or, with no
            // position at all, the initial one).
            let from = if state_slot[k] != usize::MAX { state_slot[k] } else { f.outputs[ny + k] };
            let acc = &results[ny + k];
            let stride = last_stride(acc);
            for (&(e0, len, _), &o) in segs.iter().zip(&out_bases[ny + k]) {
                for j in 0..len {
                    unsafe { store(acc, o + j * stride, slots[from * n + e0 + j]) };
                }
            }
        }
        Ok(())
    })
}

/// Reads the tile's elements of `acc` into `dst` (bools as 0/1): segment `s` of `segs`
/// (`(first element, length, _)`) starts at `base + off[s]` and moves by `stride`.
///
/// # Safety
/// Offsets inside the tensor.
unsafe fn gather(dst: &mut [f32], acc: &Access, base: usize, segs: &[(usize, usize, usize)], off: &[usize], stride: usize) {
    unsafe {
        for (&(e0, len, _), &o) in segs.iter().zip(off) {
            let (dst, at) = (&mut dst[e0..e0 + len], base + o);
            match acc.dtype {
                DType::F32 if stride == 1 => dst.copy_from_slice(std::slice::from_raw_parts((acc.ptr as *const f32).add(at), len)),
                DType::F32 if stride == 0 => dst.fill(*(acc.ptr as *const f32).add(at)),
                DType::F32 => {
                    let p = acc.ptr as *const f32;
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = *p.add(at + j * stride);
                    }
                }
                DType::Bool => {
                    let p = acc.ptr as *const u8;
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = f32::from(*p.add(at + j * stride));
                    }
                }
                DType::I64 => {
                    let p = acc.ptr as *const i64;
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = *p.add(at + j * stride) as f32;
                    }
                }
            }
        }
    }
}

/// Writes `v` at element `at` of `acc`.
///
/// # Safety
/// `at` inside the tensor, which no other thread writes there.
unsafe fn store(acc: &Access, at: usize, v: f32) {
    unsafe {
        match acc.dtype {
            DType::F32 => *(acc.ptr as *mut f32).add(at) = v,
            DType::Bool => *(acc.ptr as *mut u8).add(at) = u8::from(v != 0.0),
            DType::I64 => *(acc.ptr as *mut i64).add(at) = v as i64,
        }
    }
}

/// `e^x` in f32 for any `x`: [`vmath::exp_neg`]'s reduction also holds up to `x` = 88.7
/// (2^128 is +inf); above, +inf; below -87, 0.
#[inline(always)]
fn exp<const FMA: bool>(x: f32) -> f32 {
    if x > 88.7 {
        f32::INFINITY
    } else if x < -87.0 {
        0.0
    } else {
        vmath::exp_neg::<FMA>(x)
    }
}

#[inline(always)]
fn eval_nodes<const FMA: bool>(nodes: &[Node], slots: &mut [f32], n: usize, inner: usize) {
    for (i, node) in nodes.iter().enumerate() {
        let (done, rest) = slots.split_at_mut(i * n);
        let out = &mut rest[..n];
        let at = |k: usize| &done[k * n..(k + 1) * n];
        match *node {
            Node::Leaf(..) | Node::Alias => {}
            Node::Unary(u, a) => {
                out.copy_from_slice(at(a));
                match u {
                    UnaryOp::Exp => out.iter_mut().for_each(|x| *x = exp::<FMA>(*x)),
                    UnaryOp::Neg => out.iter_mut().for_each(|x| *x = -*x),
                    UnaryOp::Abs => out.iter_mut().for_each(|x| *x = x.abs()),
                    UnaryOp::Sqrt => out.iter_mut().for_each(|x| *x = x.sqrt()),
                    UnaryOp::Rsqrt => out.iter_mut().for_each(|x| *x = 1.0 / x.sqrt()),
                    UnaryOp::Not => out.iter_mut().for_each(|x| *x = f32::from(*x == 0.0)),
                    UnaryOp::Relu | UnaryOp::Sigmoid | UnaryOp::Silu | UnaryOp::Tanh | UnaryOp::GeluTanh | UnaryOp::GeluErf => {
                        vmath::activate::<FMA>(u, out)
                    }
                    other => out.iter_mut().for_each(|x| *x = other.eval(f64::from(*x)) as f32),
                }
            }
            Node::Binary(b, x, y) => {
                let (x, y) = (at(x), at(y));
                let zip = |out: &mut [f32], f: &dyn Fn(f32, f32) -> f32| {
                    out.iter_mut().zip(x.iter().zip(y)).for_each(|(o, (a, b))| *o = f(*a, *b))
                };
                match b {
                    BinaryOp::Add => out.iter_mut().zip(x.iter().zip(y)).for_each(|(o, (a, b))| *o = a + b),
                    BinaryOp::Sub => out.iter_mut().zip(x.iter().zip(y)).for_each(|(o, (a, b))| *o = a - b),
                    BinaryOp::Mul => out.iter_mut().zip(x.iter().zip(y)).for_each(|(o, (a, b))| *o = a * b),
                    BinaryOp::Div => out.iter_mut().zip(x.iter().zip(y)).for_each(|(o, (a, b))| *o = a / b),
                    BinaryOp::Max => zip(out, &|a, b| tessera_ir::nan_max(f64::from(a), f64::from(b)) as f32),
                    BinaryOp::Min => zip(out, &|a, b| tessera_ir::nan_min(f64::from(a), f64::from(b)) as f32),
                    other => zip(out, &|a, b| other.eval(f64::from(a), f64::from(b), false) as f32),
                }
            }
            Node::Where(c, x, y) => {
                let (c, x, y) = (at(c), at(x), at(y));
                for e in 0..n {
                    out[e] = if c[e] != 0.0 { x[e] } else { y[e] };
                }
            }
            Node::Reduce(op, a) => {
                let x = at(a);
                for (row, o) in x.chunks(inner).zip(out.chunks_mut(inner)) {
                    let v = match op {
                        ReduceOp::Sum => vmath::lanes(row, 0.0, |p, q| p + q),
                        ReduceOp::Mean => vmath::lanes(row, 0.0, |p, q| p + q) / inner as f32,
                        ReduceOp::Max => row.iter().fold(f32::NEG_INFINITY, |p, &q| tessera_ir::nan_max(f64::from(p), f64::from(q)) as f32),
                        _ => row.iter().fold(f32::INFINITY, |p, &q| tessera_ir::nan_min(f64::from(p), f64::from(q)) as f32),
                    };
                    o.fill(v);
                }
            }
        }
    }
}

vectorized!(fn eval(nodes: &[Node], slots: &mut [f32], n: usize, inner: usize) => eval_nodes);
