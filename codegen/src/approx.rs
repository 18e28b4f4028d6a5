//! The constants of the f32 approximations that every CPU backend inlines (the Rust kernels'
//! `cpu/vmath.rs`, and the LLVM and MLIR emitters): one table, so that the backends compute
//! the same functions.
//!
//! - `e^x`: `x = n·ln 2 + r` with `n` rounded by adding and subtracting [`EXP_ROUND`]
//!   (1.5·2²³: the integer then sits in the low mantissa bits), `ln 2` split in
//!   [`EXP_LN2_HI`] + [`EXP_LN2_LO`] (subtracted), and `e^r` by the degree-6 polynomial
//!   [`EXP_POLY`] (relative error below 5e-7).
//! - `erf`: Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7):
//!   `1 - t·P(t)·e^{-x²}` with `t = 1 / (1 + ERF_P·|x|)`.
//! - `tanh` near 0: `x·(1 + x²·(-1/3 + x²·2/15))` below [`TANH_SERIES_BELOW`].
//! - tanh-GELU: `x·σ(2c(x + GELU_CUBIC·x³))`, `2c` = [`GELU_TANH_2C`] = 2·√(2/π).

/// 1.5·2²³: adding and subtracting it rounds an f32 of magnitude below 2²² to an integer.
pub const EXP_ROUND: f32 = 12_582_912.0;
/// The high part of `-ln 2` (exact in f32 times any small `n`).
pub const EXP_LN2_HI: f32 = -0.693_145_75;
/// The low part of `-ln 2`.
pub const EXP_LN2_LO: f32 = -1.428_606_8e-6;
/// `e^r` for `|r| ≤ ln 2 / 2`: coefficients of `r⁶` down to `r⁰`, for Horner's scheme.
pub const EXP_POLY: [f32; 7] = [0.001_388_889, 0.008_333_334, 0.041_666_668, 0.166_666_67, 0.5, 1.0, 1.0];
/// `p` of A&S 7.1.26.
pub const ERF_P: f32 = 0.327_591_1;
/// A&S 7.1.26's `a5` down to `a1`, for Horner's scheme in `t`.
pub const ERF_POLY: [f32; 5] = [1.061_405_4, -1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6];
/// Below this `|x|`, tanh by its series (2σ(2x) − 1 loses digits there).
pub const TANH_SERIES_BELOW: f32 = 0.01;
/// The cubic coefficient of tanh-GELU.
pub const GELU_CUBIC: f32 = 0.044715;
/// Twice √(2/π): tanh(z) = 2σ(2z) − 1.
pub const GELU_TANH_2C: f32 = 1.595_769_2;
