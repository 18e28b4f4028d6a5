//! The interpreter's discrete Fourier transforms: direct sums in f64 over a table of exact
//! twiddles (indexed by `j·k mod n`), one line at a time. O(n²) per line and plainly correct:
//! the oracle for the backends, which use fast transforms.
//!
//! Complex tensors are stored as pairs: a last axis of size 2 (real, imaginary).

use crate::tensor::Tensor;
use std::f64::consts::PI;

/// `(outer, size, inner)` of `axis` in `shape`.
fn split(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

/// The DFT of one line of complex values: `sign = -1` forward, `+1` inverse (unscaled).
fn dft(line: &[(f64, f64)], sign: f64) -> Vec<(f64, f64)> {
    let n = line.len();
    // Twiddles at quarter turns are exact (sin π is 0, not 1.2e-16), as an FFT's are.
    let turn = |m: usize| match (4 * m % n, 4 * m / n) {
        (0, 0) => (0.0, 1.0),
        (0, 1) => (1.0, 0.0),
        (0, 2) => (0.0, -1.0),
        (0, _) => (-1.0, 0.0),
        _ => (2.0 * PI * m as f64 / n as f64).sin_cos(),
    };
    let w: Vec<(f64, f64)> = (0..n).map(turn).map(|(s, c)| (c, sign * s)).collect();
    (0..n)
        .map(|k| {
            line.iter().enumerate().fold((0.0, 0.0), |(re, im), (j, &(a, b))| {
                let (c, s) = w[(j * k) % n];
                (re + a * c - b * s, im + a * s + b * c)
            })
        })
        .collect()
}

/// Applies `f` to every line along `axis` of complex values `z` of `shape` (pairs excluded),
/// writing lines of `out_size` into a new array.
fn along(z: &[(f64, f64)], shape: &[usize], axis: usize, out_size: usize, f: impl Fn(&[(f64, f64)]) -> Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    let (outer, size, inner) = split(shape, axis);
    let mut out = vec![(0.0, 0.0); outer * out_size * inner];
    let mut line = vec![(0.0, 0.0); size];
    for o in 0..outer {
        for i in 0..inner {
            for (k, v) in line.iter_mut().enumerate() {
                *v = z[(o * size + k) * inner + i];
            }
            for (k, v) in f(&line).into_iter().enumerate().take(out_size) {
                out[(o * out_size + k) * inner + i] = v;
            }
        }
    }
    out
}

fn pairs(t: &Tensor) -> Vec<(f64, f64)> {
    (0..t.len() / 2).map(|i| (t.get(2 * i), t.get(2 * i + 1))).collect()
}

fn from_pairs(shape: Vec<usize>, z: &[(f64, f64)]) -> Tensor {
    Tensor::f32(shape, z.iter().flat_map(|&(a, b)| [a as f32, b as f32]).collect())
}

/// `Op::Fft`: the DFT of pairs `x` over `axes` (inverse: conjugate twiddles, divided by n).
pub fn fft(x: &Tensor, axes: &[usize], inverse: bool) -> Tensor {
    let shape = &x.shape[..x.shape.len() - 1];
    let mut z = pairs(x);
    for &a in axes {
        let n = shape[a];
        let scale = if inverse { 1.0 / n as f64 } else { 1.0 };
        z = along(&z, shape, a, n, |l| dft(l, if inverse { 1.0 } else { -1.0 }).into_iter().map(|(p, q)| (p * scale, q * scale)).collect());
    }
    from_pairs(x.shape.clone(), &z)
}

/// `Op::Rfft`: the non-negative frequencies of the DFT of real `x` along `axis`.
pub fn rfft(x: &Tensor, axis: usize) -> Tensor {
    let z: Vec<(f64, f64)> = (0..x.len()).map(|i| (x.get(i), 0.0)).collect();
    let bins = x.shape[axis] / 2 + 1;
    let out = along(&z, &x.shape, axis, bins, |l| dft(l, -1.0));
    let mut shape = x.shape.clone();
    shape[axis] = bins;
    shape.push(2);
    from_pairs(shape, &out)
}

/// `Op::Irfft`: the real signal of length `n` whose half spectrum along `axis` is `x`.
pub fn irfft(x: &Tensor, axis: usize, n: usize) -> Tensor {
    let shape = &x.shape[..x.shape.len() - 1];
    let z = pairs(x);
    let full = |half: &[(f64, f64)]| -> Vec<(f64, f64)> {
        if n == 0 || half.is_empty() {
            return vec![(0.0, 0.0); n]; // nothing to transform (a symbolic length of 0)
        }
        // The Hermitian extension: X[n-k] = conj(X[k]); the self-conjugate bins are real.
        let mut spec: Vec<(f64, f64)> = (0..n).map(|k| if k < half.len() { half[k] } else { (half[n - k].0, -half[n - k].1) }).collect();
        spec[0].1 = 0.0;
        if n.is_multiple_of(2) {
            spec[n / 2].1 = 0.0;
        }
        dft(&spec, 1.0).into_iter().map(|(re, _)| (re / n as f64, 0.0)).collect()
    };
    let out = along(&z, shape, axis, n, full);
    let mut out_shape = shape.to_vec();
    out_shape[axis] = n;
    Tensor::f32(out_shape, out.iter().map(|&(re, _)| re as f32).collect())
}
