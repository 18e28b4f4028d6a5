//! Math for the Rust kernels' inner loops, written so that the loops vectorize: branch-free,
//! no library calls, and compiled twice by [`vectorized!`] (for AVX2 with FMA, picked at run
//! time where the CPU has them, and for the baseline target).

/// Defines a function that runs `$body::<true>` compiled for AVX2 and FMA where the CPU has
/// them, and `$body::<false>` otherwise. `$body` is an `#[inline(always)]` function generic
/// over `const FMA: bool` with the same arguments, so that its loops are vectorized eight wide
/// in the first case.
macro_rules! vectorized {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $body::<true>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body::<false>($($arg),*)
        }
    };
}
pub(crate) use vectorized;

use tessera_ir::UnaryOp;

/// `a·b + c`, fused where `FMA` says the target has it (elsewhere `mul_add` is a library call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` for `x ≤ 0` in f32: `x = n·ln 2 + r`, with `n` rounded by the 1.5·2²³ trick (its
/// integer value then sits in the low mantissa bits), `2^n` built from exponent bits, and a
/// degree-6 polynomial for `e^r` (relative error below 5e-7). Inputs below -87 give
/// e^-87 ≈ 1.6e-38, negligible next to any visible score or any sum with 1.
#[inline(always)]
pub fn exp_neg<const FMA: bool>(x: f32) -> f32 {
    use crate::approx::{EXP_LN2_HI, EXP_LN2_LO, EXP_POLY, EXP_ROUND};
    // Not `f32::max`, which turns NaN into -87 (and costs more): NaN stays NaN.
    let x = if x < -87.0 { -87.0 } else { x };
    let t = madd::<FMA>(x, std::f32::consts::LOG2_E, EXP_ROUND);
    let n = t - EXP_ROUND;
    let bits = (t.to_bits().wrapping_sub(EXP_ROUND.to_bits()) as i32).wrapping_add(127) << 23;
    let r = madd::<FMA>(n, EXP_LN2_LO, madd::<FMA>(n, EXP_LN2_HI, x));
    let mut p = EXP_POLY[0];
    for c in EXP_POLY[1..].iter().copied() {
        p = madd::<FMA>(p, r, c);
    }
    f32::from_bits(bits as u32) * p
}

/// Folds `xs` with `f` in eight independent lanes (so that the loop vectorizes), then folds
/// the lanes.
#[inline(always)]
pub fn lanes(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = f(*a, x);
        }
    }
    chunks.remainder().iter().fold(acc.into_iter().fold(init, &f), |a, &x| f(a, x))
}

/// `Σ a_i·b_i` in eight independent lanes (so that the loop vectorizes).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// The error function, branch-free: Abramowitz and Stegun 7.1.26 (absolute error below
/// 1.5e-7, 5e-7 in f32) on `|x|`, with `e^{-x²}` from [`exp_neg`], and the sign put back.
#[inline(always)]
pub fn erf<const FMA: bool>(x: f32) -> f32 {
    use crate::approx::{ERF_P, ERF_POLY};
    let a = x.abs();
    let t = 1.0 / madd::<FMA>(ERF_P, a, 1.0);
    let mut p = ERF_POLY[0];
    for c in ERF_POLY[1..].iter().copied() {
        p = madd::<FMA>(p, t, c);
    }
    let y = 1.0 - p * t * exp_neg::<FMA>(-a * a);
    y.copysign(x)
}

/// The logistic function `1 / (1 + e^-x)`, from `e^-|x| ≤ 1` so that nothing overflows. At
/// ±inf `e^-|x|` is exactly 0 (not [`exp_neg`]'s floor `e^-87`), and a NaN stays NaN (through
/// [`exp_neg`]), as in the f64 definition: `silu(-inf)` and `gelu_tanh(-inf)` are then
/// `-inf · 0 = NaN` there too.
#[inline(always)]
pub fn sigmoid<const FMA: bool>(x: f32) -> f32 {
    let a = x.abs();
    let t = if a == f32::INFINITY { 0.0 } else { exp_neg::<FMA>(-a) };
    let s = 1.0 / (1.0 + t);
    if x >= 0.0 {
        s
    } else {
        t * s
    }
}

/// `tanh x = 2σ(2x) − 1`, and its series `x − x³/3 + 2x⁵/15` for |x| < 0.01, where that
/// difference keeps only an absolute precision (`tanh(1e-5)` was off by 1%, and a tiny
/// negative came out as 0).
#[inline(always)]
pub fn tanh<const FMA: bool>(x: f32) -> f32 {
    let x2 = x * x;
    let series = x * madd::<FMA>(x2, madd::<FMA>(x2, 2.0 / 15.0, -1.0 / 3.0), 1.0);
    if x.abs() < crate::approx::TANH_SERIES_BELOW {
        series
    } else {
        2.0 * sigmoid::<FMA>(2.0 * x) - 1.0
    }
}

/// Applies the activation `u` to each element of `xs` (in place). The common activations have
/// vectorizable forms (`tanh(u) = 2σ(2u) − 1`); the others go through the interpreter's f64
/// definition.
#[inline(always)]
pub fn activate<const FMA: bool>(u: UnaryOp, xs: &mut [f32]) {
    let each = |xs: &mut [f32], f: &dyn Fn(f32) -> f32| xs.iter_mut().for_each(|x| *x = f(*x));
    match u {
        UnaryOp::Relu => xs.iter_mut().for_each(|x| *x = if *x < 0.0 { 0.0 } else { *x }),
        UnaryOp::Sigmoid => xs.iter_mut().for_each(|x| *x = sigmoid::<FMA>(*x)),
        UnaryOp::Silu => xs.iter_mut().for_each(|x| *x *= sigmoid::<FMA>(*x)),
        UnaryOp::Tanh => xs.iter_mut().for_each(|x| *x = tanh::<FMA>(*x)),
        UnaryOp::GeluTanh => {
            xs.iter_mut().for_each(|x| *x *= sigmoid::<FMA>(crate::approx::GELU_TANH_2C * (*x + crate::approx::GELU_CUBIC * *x * *x * *x)))
        }
        UnaryOp::GeluErf => xs.iter_mut().for_each(|x| *x *= 0.5 * (1.0 + erf::<FMA>(*x * std::f32::consts::FRAC_1_SQRT_2))),
        other => each(xs, &|x| other.eval(f64::from(x)) as f32),
    }
}

#[cfg(test)]
mod tests {
    use super::{activate, erf, exp_neg};
    use tessera_ir::UnaryOp;

    #[test]
    fn exp_neg_is_accurate_over_the_softmax_range() {
        for fma in [false, true] {
            let mut worst = 0f64;
            for k in 0..=20000 {
                let x = -(k as f32) * 0.0045;
                let got = f64::from(if fma { exp_neg::<true>(x) } else { exp_neg::<false>(x) });
                let want = f64::from(x).exp();
                worst = worst.max((got - want).abs() / want.max(1e-30));
            }
            assert!(worst < 5e-7, "relative error {worst} (fma: {fma})");
        }
        assert!(exp_neg::<false>(-1e30) < 1e-37);
        assert_eq!(exp_neg::<false>(0.0), 1.0);
    }

    #[test]
    fn erf_is_accurate() {
        for k in -4000..=4000 {
            let x = k as f32 * 0.002;
            let (a, b) = (f64::from(erf::<false>(x)), f64::from(erf::<true>(x)));
            let want = libm::erf(f64::from(x));
            assert!((a - want).abs() < 5e-7 && (b - want).abs() < 5e-7, "erf({x}) = {a} / {b}, want {want}");
        }
    }

    /// The vectorized activations (GEMM epilogues, fused FFNs) give what the f64 definition
    /// gives at ±inf and NaN: `silu(-inf)` was `-inf` and `sigmoid(NaN)` was `1.6e-38`
    /// (found by `tests/fuzz_graphs.rs`).
    #[test]
    fn activations_match_the_reference_at_infinities_and_nan() {
        for u in [UnaryOp::GeluTanh, UnaryOp::GeluErf, UnaryOp::Silu, UnaryOp::Sigmoid, UnaryOp::Tanh] {
            let xs = [f32::NEG_INFINITY, f32::INFINITY, f32::NAN];
            for fma in [false, true] {
                let mut ys = xs;
                if fma {
                    activate::<true>(u, &mut ys);
                } else {
                    activate::<false>(u, &mut ys);
                }
                for (&x, &y) in xs.iter().zip(&ys) {
                    let want = u.eval(f64::from(x)) as f32;
                    assert!(want.is_nan() == y.is_nan() && (want.is_nan() || want == y), "{u:?}({x}) = {y}, want {want}");
                }
            }
        }
    }

    /// Relative precision near 0, where the GEMM epilogue's tanh had only an absolute one
    /// (found by `tests/fuzz_graphs.rs`: `sqrt(tanh(-1e-40))` was 0, not NaN).
    #[test]
    fn tanh_keeps_its_relative_precision_near_zero() {
        for x in [1e-40f32, 1e-30, 1e-10, 1e-5, 1e-3, 0.0099, 0.0101, 0.1, 1.0] {
            for x in [x, -x] {
                let (mut a, mut b) = ([x], [x]);
                activate::<false>(UnaryOp::Tanh, &mut a);
                activate::<true>(UnaryOp::Tanh, &mut b);
                let want = f64::from(x).tanh();
                for y in [a[0], b[0]] {
                    assert!((f64::from(y) - want).abs() <= 1e-6 * want.abs(), "tanh({x}) = {y}, want {want}");
                }
            }
        }
    }

    #[test]
    fn activations_match_the_reference() {
        for u in [UnaryOp::Relu, UnaryOp::GeluTanh, UnaryOp::GeluErf, UnaryOp::Silu, UnaryOp::Sigmoid, UnaryOp::Tanh, UnaryOp::Exp] {
            let xs: Vec<f32> = (-400..=400).map(|k| k as f32 * 0.025).chain([-100.0, 100.0]).collect();
            let mut ys = xs.clone();
            activate::<false>(u, &mut ys);
            for (&x, &y) in xs.iter().zip(&ys) {
                let want = u.eval(f64::from(x));
                if want.abs() > f64::from(f32::MAX) {
                    continue;
                }
                assert!((f64::from(y) - want).abs() <= 2e-6 * want.abs().max(1.0), "{u:?}({x}) = {y}, want {want}");
            }
        }
    }
}
