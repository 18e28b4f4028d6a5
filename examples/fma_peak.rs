//! This CPU's f32 FMA peak in GFLOP/s, measured: independent fused multiply-adds in every
//! vector register the loop can use, on as many threads as `RAYON_NUM_THREADS` (default: all
//! cores), AVX-512 where the CPU has it, else AVX2. The GEMM benches report their rates as a
//! fraction of this figure (`bench/gemm.py`).
//!
//! ```text
//! cargo run --release --example fma_peak
//! ```

use std::time::Instant;

/// FMAs of 12 independent accumulators of `LANES` lanes, `iters` times: returns a value that
/// depends on all of them (so that nothing is optimised away).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters {
        for x in &mut acc {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    acc.iter().map(|x| _mm512_reduce_add_ps(*x)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma256(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for x in &mut acc {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut out = [0f32; 8];
    let s = acc.iter().fold(_mm256_setzero_ps(), |s, x| _mm256_add_ps(s, *x));
    // SAFETY: `out` holds 8 floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

#[cfg(target_arch = "x86_64")]
fn main() {
    let threads: usize = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let (avx512, avx2) = (is_x86_feature_detected!("avx512f"), is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"));
    if !avx512 && !avx2 {
        println!("no AVX2/FMA: no figure");
        return;
    }
    let lanes = if avx512 { 16 } else { 8 };
    let iters = 50_000_000;
    let run = move || {
        // SAFETY: the features were detected above.
        if avx512 {
            unsafe { fma512(iters) }
        } else {
            unsafe { fma256(iters) }
        }
    };
    run(); // warm-up (clocks up)
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let handles: Vec<_> = (0..threads).map(|_| std::thread::spawn(run)).collect();
        let sink: f32 = handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum();
        let secs = t.elapsed().as_secs_f64();
        let flops = (threads * iters * 12 * lanes * 2) as f64;
        best = best.max(flops / secs / 1e9);
        std::hint::black_box(sink);
    }
    println!("fma peak: {best:.1} GFLOP/s ({threads} threads, {})", if avx512 { "AVX-512" } else { "AVX2" });
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("fma_peak measures x86-64 CPUs only");
}
