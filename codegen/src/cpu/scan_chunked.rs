//! The CPU's chunked kernel of linear recurrences (see [`crate::scan_chunked`] for the form it
//! recognises and the maths).

use super::host::View;
use super::scan::Access;
use super::vmath::vectorized;
use crate::scan_chunked::{Chunked, CHUNK};
use tessera_ir::Scan;
use tessera_runtime::RunError;

/// Runs the chunked form, or returns `false` (nothing written) where it does not apply: a
/// sequence shorter than a chunk, or a decay that is not positive.
///
/// # Safety
/// As [`crate::scan::run`].
pub unsafe fn run(c: &Chunked, s: &Scan, y_map: &[usize], ins: &[View], outs: &[View]) -> Result<bool, RunError> {
    use rayon::prelude::*;
    let space = ins[0].shape.clone();
    let r = space.len();
    let len = ins[1].shape[s.axis];
    if len < CHUNK {
        return Ok(false);
    }
    let (nv, nk) = (space[r - 2], space[r - 1]);
    let lanes: usize = space[..r - 2].iter().product();
    let acc = |(k, map): &(usize, Vec<usize>)| Access::new(&ins[*k], map, Some(s.axis), r);
    let (pa, qa, ra) = (acc(&c.p), acc(&c.q), acc(&c.r));
    let da = c.d.as_ref().map(acc);
    let identity: Vec<usize> = (0..r).collect();
    let state_in = Access::new(&ins[0], &identity, None, r);
    let ya = Access::new(&outs[0], y_map, Some(s.axis), r);
    let state_out = Access::new(&outs[1], &identity, None, r);
    // A decay must be positive (its logarithm is taken); otherwise the sequential kernel runs.
    if let Some(d) = &da {
        let n = ins[c.d.as_ref().map_or(0, |d| d.0)].len();
        let ok = (0..n).all(|i| unsafe { *(d.ptr as *const f32).add(i) } > 0.0);
        if !ok {
            return Ok(false);
        }
    }
    let lane_st = tessera_runtime::strides(&space[..r - 2]);
    (0..lanes).into_par_iter().for_each(|lane| {
        let mut coords: Vec<usize> = lane_st.iter().zip(&space).map(|(st, sz)| (lane / st) % sz).collect();
        coords.extend([0, 0]);
        let base = |a: &Access| a.offset(&coords);
        let (pb, qb, rb, yb) = (base(&pa), base(&qa), base(&ra), base(&ya));
        let db = da.as_ref().map(base);
        let (sv, sk) = (state_in.along[r - 2], state_in.along[r - 1]);
        let mut st = vec![0f32; nv * nk];
        for v in 0..nv {
            for k in 0..nk {
                st[v * nk + k] = unsafe { *(state_in.ptr as *const f32).add(base(&state_in) + v * sv + k * sk) };
            }
        }
        let (mut p, mut q, mut rr) = (vec![0f32; CHUNK * nv], vec![0f32; CHUNK * nk], vec![0f32; CHUNK * nk]);
        let (mut cum, mut g, mut y) = (vec![0f32; CHUNK], vec![0f32; CHUNK * CHUNK], vec![0f32; CHUNK * nv]);
        let read = |a: &Access, b: usize, t: usize, along: usize, i: usize| unsafe {
            *(a.ptr as *const f32).add(b + t * a.step + i * a.along[along])
        };
        for t0 in (0..len).step_by(CHUNK) {
            let n = CHUNK.min(len - t0);
            let mut acc_log = 0f32;
            for t in 0..n {
                for v in 0..nv {
                    p[t * nv + v] = read(&pa, pb, t0 + t, r - 2, v);
                }
                for k in 0..nk {
                    q[t * nk + k] = read(&qa, qb, t0 + t, r - 1, k);
                    rr[t * nk + k] = read(&ra, rb, t0 + t, r - 1, k);
                }
                if let (Some(d), Some(b)) = (&da, db) {
                    acc_log += read(d, b, t0 + t, 0, 0).ln();
                }
                cum[t] = acc_log;
            }
            chunk(&mut st, &p, &q, &rr, &cum, &mut g, &mut y, n, nv, nk);
            for t in 0..n {
                for v in 0..nv {
                    unsafe { *(ya.ptr as *mut f32).add(yb + (t0 + t) * ya.step + v * ya.along[r - 2]) = y[t * nv + v] };
                }
            }
        }
        let (ov, ok) = (state_out.along[r - 2], state_out.along[r - 1]);
        let ob = base(&state_out);
        for v in 0..nv {
            for k in 0..nk {
                unsafe { *(state_out.ptr as *mut f32).add(ob + v * ov + k * ok) = st[v * nk + k] };
            }
        }
    });
    Ok(true)
}

/// One chunk of `n` positions: `y` [n, V] from the state `st` [V, K] and `p` [n, V], `q`
/// and `r` [n, K], `cum` the cumulative log decays; then `st` moves past the chunk.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn chunk_body<const FMA: bool>(
    st: &mut [f32],
    p: &[f32],
    q: &[f32],
    r: &[f32],
    cum: &[f32],
    g: &mut [f32],
    y: &mut [f32],
    n: usize,
    nv: usize,
    nk: usize,
) {
    let dot = |a: &[f32], b: &[f32]| super::vmath::dot(a, b);
    for t in 0..n {
        let rt = &r[t * nk..][..nk];
        // Inside the chunk: Σ_{τ≤t} e^{c_t − c_τ} (r_t · q_τ) p_τ.
        for tau in 0..=t {
            g[t * n + tau] = dot(rt, &q[tau * nk..][..nk]) * (cum[t] - cum[tau]).exp();
        }
        let yt = &mut y[t * nv..][..nv];
        let carry = cum[t].exp();
        // From before the chunk: e^{c_t} S r_t.
        for (v, out) in yt.iter_mut().enumerate() {
            *out = carry * dot(&st[v * nk..][..nk], rt);
        }
        for tau in 0..=t {
            let w = g[t * n + tau];
            for (out, &pv) in yt.iter_mut().zip(&p[tau * nv..][..nv]) {
                *out += w * pv;
            }
        }
    }
    // The state after the chunk.
    let last = cum[n - 1];
    let keep = last.exp();
    st.iter_mut().for_each(|x| *x *= keep);
    for tau in 0..n {
        let w = (last - cum[tau]).exp();
        let qt = &q[tau * nk..][..nk];
        for v in 0..nv {
            let a = w * p[tau * nv + v];
            for (s, &qk) in st[v * nk..][..nk].iter_mut().zip(qt) {
                *s += a * qk;
            }
        }
    }
}

vectorized!(
    #[allow(clippy::too_many_arguments)]
    fn chunk(st: &mut [f32], p: &[f32], q: &[f32], r: &[f32], cum: &[f32], g: &mut [f32], y: &mut [f32], n: usize, nv: usize, nk: usize) => chunk_body
);
