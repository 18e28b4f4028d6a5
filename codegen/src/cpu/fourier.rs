//! CPU kernels of the Fourier ops, one transform along one axis per step (the scheduler
//! splits a multi-axis `fft` into one step per axis): `rustfft` for complex lines, `realfft`
//! for real ↔ half-spectrum lines, O(n log n) for every length (mixed radix, Bluestein for
//! large prime factors), in f32 as the other kernels. Each line along the axis is gathered
//! into contiguous scratch, transformed in place and scattered, lines in parallel.
//!
//! Complex tensors are f32 pairs (real, imaginary) in a last axis of size 2.

use super::host::{Shared, View};
use rayon::prelude::*;
use rustfft::num_complex::Complex32;
use tessera_runtime::RunError;

/// `(outer, size, inner)` of `axis` in `shape`.
fn split(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

/// Lines per parallel task: enough elements to pay for a task.
fn min_lines(size: usize) -> usize {
    (4096 / size.max(1)).max(1)
}

fn internal(e: impl std::fmt::Display) -> RunError {
    RunError::Internal(format!("fft: {e}"))
}

/// `out = fft(x)` along `axis` of pairs (`axis` counts complex axes).
///
/// # Safety
/// Views valid, f32, of the same complex shape; `out` does not overlap `x`.
pub unsafe fn fft(out: &View, x: &View, axis: usize, inverse: bool) -> Result<(), RunError> {
    let shape = &x.shape[..x.shape.len() - 1];
    let (outer, size, inner) = split(shape, axis);
    if size == 0 || outer * inner == 0 {
        return Ok(());
    }
    let mut planner = rustfft::FftPlanner::<f32>::new();
    let plan = if inverse { planner.plan_fft_inverse(size) } else { planner.plan_fft_forward(size) };
    let scale = if inverse { 1.0 / size as f32 } else { 1.0 };
    let (xs, o) = (unsafe { x.f32() }, Shared(out.ptr));
    let zero = Complex32::new(0.0, 0.0);
    (0..outer * inner).into_par_iter().with_min_len(min_lines(size)).for_each_init(
        || (vec![zero; size], vec![zero; plan.get_inplace_scratch_len()]),
        |(line, scratch), l| {
            let (b, i) = (l / inner, l % inner);
            let at = |k: usize| 2 * ((b * size + k) * inner + i);
            for (k, v) in line.iter_mut().enumerate() {
                *v = Complex32::new(xs[at(k)], xs[at(k) + 1]);
            }
            plan.process_with_scratch(line, scratch);
            let op = o.ptr() as *mut f32;
            for (k, v) in line.iter().enumerate() {
                // SAFETY: line `l` writes only its own elements.
                unsafe {
                    *op.add(at(k)) = v.re * scale;
                    *op.add(at(k) + 1) = v.im * scale;
                }
            }
        },
    );
    Ok(())
}

/// `out = rfft(x)` along `axis`: real `x` of length n there, `out` its n/2+1 frequencies.
///
/// # Safety
/// Views valid, f32, shaped as `Op::Rfft` types them; no overlap.
pub unsafe fn rfft(out: &View, x: &View, axis: usize) -> Result<(), RunError> {
    let (outer, size, inner) = split(&x.shape, axis);
    if size == 0 || outer * inner == 0 {
        return Ok(());
    }
    let bins = size / 2 + 1;
    let plan = realfft::RealFftPlanner::<f32>::new().plan_fft_forward(size);
    let (xs, o) = (unsafe { x.f32() }, Shared(out.ptr));
    (0..outer * inner).into_par_iter().with_min_len(min_lines(size)).try_for_each_init(
        || (plan.make_input_vec(), plan.make_output_vec(), plan.make_scratch_vec()),
        |(line, spec, scratch), l| {
            let (b, i) = (l / inner, l % inner);
            for (k, v) in line.iter_mut().enumerate() {
                *v = xs[(b * size + k) * inner + i];
            }
            plan.process_with_scratch(line, spec, scratch).map_err(internal)?;
            let op = o.ptr() as *mut f32;
            for (k, v) in spec.iter().enumerate() {
                let at = 2 * ((b * bins + k) * inner + i);
                // SAFETY: line `l` writes only its own elements.
                unsafe {
                    *op.add(at) = v.re;
                    *op.add(at + 1) = v.im;
                }
            }
            Ok(())
        },
    )
}

/// `out = irfft(x)` along `axis`: `x` the n/2+1 frequencies, `out` the n real samples.
///
/// # Safety
/// Views valid, f32, shaped as `Op::Irfft` types them; no overlap.
pub unsafe fn irfft(out: &View, x: &View, axis: usize) -> Result<(), RunError> {
    let (outer, size, inner) = split(&out.shape, axis);
    if size == 0 || outer * inner == 0 {
        return Ok(());
    }
    let bins = size / 2 + 1;
    let plan = realfft::RealFftPlanner::<f32>::new().plan_fft_inverse(size);
    let scale = 1.0 / size as f32;
    let (xs, o) = (unsafe { x.f32() }, Shared(out.ptr));
    (0..outer * inner).into_par_iter().with_min_len(min_lines(size)).try_for_each_init(
        || (plan.make_input_vec(), plan.make_output_vec(), plan.make_scratch_vec()),
        |(spec, line, scratch), l| {
            let (b, i) = (l / inner, l % inner);
            for (k, v) in spec.iter_mut().enumerate() {
                let at = 2 * ((b * bins + k) * inner + i);
                *v = Complex32::new(xs[at], xs[at + 1]);
            }
            // The self-conjugate bins are real (NumPy ignores their imaginary parts too).
            spec[0].im = 0.0;
            if size.is_multiple_of(2) {
                spec[bins - 1].im = 0.0;
            }
            plan.process_with_scratch(spec, line, scratch).map_err(internal)?;
            let op = o.ptr() as *mut f32;
            for (k, v) in line.iter().enumerate() {
                // SAFETY: line `l` writes only its own elements.
                unsafe { *op.add((b * size + k) * inner + i) = v * scale };
            }
            Ok(())
        },
    )
}
