//! The optional backends from the command line: what `--emit llvm` shows, that `--backend llvm`
//! runs a model to the same outputs as Cranelift, and that a build without the feature says
//! how to get it (exit 1) instead of failing obscurely. The differential tests of each backend
//! are in `tests/cpu.rs`.

use std::process::{Command, Output};

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).output().expect("runs")
}

/// A model of row kernels: a chain with a SiLU, a layer norm and a softmax.
#[cfg(any(feature = "llvm", feature = "mlir"))]
const ROWS: &str = "import nn
model case() {
  input x: [batch, seq, 7]
  input b: [7]
  output y = silu(x - b) / (1.0 + x * x) + nn.layer_norm(x) + softmax(x, -1)
}
";

#[cfg(any(feature = "llvm", feature = "mlir"))]
fn rows_file(tag: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("tessera-backends-{tag}-{}.tsr", std::process::id()));
    std::fs::write(&path, ROWS).expect("writes");
    path
}

#[cfg(not(feature = "llvm"))]
#[test]
fn a_backend_missing_from_the_build_is_an_error_that_names_the_feature() {
    for args in [&["run", "stdlib/gpt2.tsr", "-D", "layers=1", "--backend", "llvm"][..], &["ir", "stdlib/gpt2.tsr", "--emit", "llvm"]] {
        let out = tessera(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("the llvm backend is not in this build: rebuild with `--features llvm`"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[cfg(not(feature = "mlir"))]
#[test]
fn a_build_without_mlir_says_so() {
    for args in [
        &["run", "stdlib/gpt2.tsr", "-D", "layers=1", "--backend", "mlir"][..],
        &["ir", "stdlib/gpt2.tsr", "--emit", "mlir", "--print-after", "all"],
    ] {
        let out = tessera(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("the mlir backend is not in this build: rebuild with `--features mlir`"), "{err}");
    }
}

#[cfg(feature = "mlir")]
#[test]
fn emit_mlir_shows_the_module_as_emitted_and_each_stage() {
    let path = rows_file("mlir");
    let file = path.to_str().unwrap_or_default();
    let out = tessera(&["ir", file, "--emit", "mlir"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("// the module as emitted"), "{text}");
    // Emitted with linalg, scf and memref; the last stage is the LLVM dialect only.
    let last = text.split("// after reconcile-unrealized-casts").nth(1).expect("the last stage");
    for op in ["linalg.generic", "scf.for", "memref."] {
        assert!(text.contains(op) && !last.contains(op), "{op}");
    }
    assert!(last.contains("llvm.func"), "{last}");
    let one = tessera(&["ir", file, "--emit", "mlir", "--print-after", "lower-affine"]);
    let one = String::from_utf8_lossy(&one.stdout);
    assert!(one.contains("// after lower-affine") && !one.contains("// after convert-scf-to-cf"), "{one}");
    let bad = tessera(&["ir", file, "--emit", "mlir", "--print-after", "bogus"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no MLIR stage named `bogus`"));
    std::fs::remove_file(path).ok();
}

#[cfg(feature = "llvm")]
#[test]
fn emit_llvm_shows_the_module_as_emitted_and_vectorized_after_o3() {
    let path = rows_file("emit");
    let out = tessera(&["ir", path.to_str().unwrap_or_default(), "--emit", "llvm"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (before, after) = text.split_once("; the module after O3").expect("both modules");
    assert!(before.starts_with("; the module as emitted"), "{before}");
    // The chain, the norm and the softmax: three kernels, scalar loops as emitted.
    for kernel in ["define void @k0(", "define void @k1(", "define void @k2("] {
        assert!(before.contains(kernel) && after.contains(kernel), "{kernel}");
    }
    assert!(!before.contains("x float>"), "emitted as scalar loops");
    // Vectorized by LLVM (8 or 16 lanes, as the host has AVX2 or AVX-512), the exponential
    // inline: no call left in the loops but the declarations.
    assert!(after.contains("<8 x float>") || after.contains("<16 x float>"), "{after}");
    assert!(!after.contains("call float @tsr_expf"), "tsr_expf inlined");
    std::fs::remove_file(path).ok();
}

#[cfg(feature = "llvm")]
#[test]
fn run_on_llvm_gives_the_outputs_of_cranelift() {
    let [a, b] = ["cpu", "llvm"].map(|backend| logits_of(&["stdlib/gpt2.tsr", "-D", "layers=2", "--backend", backend], &[], backend));
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(worst <= 1e-4 * scale.max(1.0), "max |Δ| {worst} of {scale}");
}

/// A model's `logits` through `tessera run --out`, with `env` set.
#[cfg(feature = "llvm")]
fn logits_of(args: &[&str], env: &[(&str, &str)], tag: &str) -> Vec<f32> {
    let out = std::env::temp_dir().join(format!("tessera-{tag}-{}.safetensors", std::process::id()));
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", out.to_str().unwrap_or_default()]);
    let o = Command::new(env!("CARGO_BIN_EXE_tessera")).args(&all).envs(env.iter().copied()).output().expect("runs");
    assert!(o.status.success(), "{tag}: {}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&out).expect("reads");
    std::fs::remove_file(&out).ok();
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor("logits").expect("logits");
    t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// The packed GEMM reads weights packed once (`pack_b` steps, kept between runs like merged
/// weights): GEMMs, a tied (transposed) embedding and gated and plain feed-forward layers
/// give the interpreter's logits, on the first run and on runs that reuse the packing.
#[cfg(feature = "llvm")]
#[test]
fn weights_packed_once_for_the_llvm_gemm_give_the_interpreters_logits() {
    let models: [&[&str]; 2] = [
        &["stdlib/gpt2.tsr", "-D", "layers=2", "-D", "d=96", "-D", "heads=4", "-D", "vocab=300", "--dim", "seq=40"],
        &[
            "stdlib/llama.tsr",
            "-D",
            "layers=2",
            "-D",
            "d=96",
            "-D",
            "heads=4",
            "-D",
            "kv_heads=2",
            "-D",
            "hidden=200",
            "-D",
            "vocab=300",
            "--dim",
            "seq=40",
        ],
    ];
    for args in models {
        let want = logits_of(&[args, &["--backend", "interp"]].concat(), &[], "interp");
        for repeat in ["1", "3"] {
            let env = [("TESSERA_GEMM", "llvm"), ("TESSERA_PROFILE", "1")];
            let got = logits_of(&[args, &["--repeat", repeat]].concat(), &env, "packed");
            assert_eq!(want.len(), got.len());
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let worst = want.iter().zip(&got).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(worst <= 1e-4 * scale.max(1.0), "{} repeat {repeat}: max |Δ| {worst} of {scale}", args[0]);
        }
        // The weights were read packed.
        let o = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args([&["run"], args].concat())
            .envs([("TESSERA_GEMM", "llvm"), ("TESSERA_PROFILE", "1")])
            .output()
            .expect("runs");
        assert!(String::from_utf8_lossy(&o.stdout).contains("pack_b"), "{}: no pack_b step in the profile", args[0]);
    }
}

/// `C = A·B` (or `A·Bᵀ`) in f64, the reference of the GEMM libraries' tests.
fn naive(a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize), trans_b: bool) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| f64::from(a[i * k + p]) * f64::from(if trans_b { b[j * k + p] } else { b[p * n + j] })).sum();
        }
    }
    c
}

/// Every GEMM library this build has, at sizes that leave partial tiles and blocks on every
/// side (the packed GEMM's tiles are 12 × 32 or 6 × 16, its blocks 144 rows × 256 deep).
#[test]
fn gemm_libraries_equal_a_naive_product_at_odd_sizes() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    type Gemm = Box<dyn Fn(*mut f32, *const f32, *const f32, (usize, usize, usize), bool)>;
    let mut libs: Vec<(String, Gemm)> = Vec::new();
    // The packed GEMM around each micro-kernel this build and CPU have: LLVM's, and the
    // `std::arch` one of the default build.
    let mut micros = Vec::new();
    #[cfg(feature = "llvm")]
    micros.push(("llvm", tessera::codegen::llvm::gemm::microkernel().expect("a micro-kernel for this CPU")));
    micros.extend(tessera::codegen::cpu::ukernel::available());
    for (kernel, micro) in micros {
        use tessera::codegen::cpu::gemm::{pack_b, packed, packed_len, Rhs};
        for threaded in [false, true] {
            libs.push((
                if threaded { format!("{kernel} packed, threaded") } else { format!("{kernel} packed") },
                Box::new(move |c, a, b, mnk, trans_b| unsafe { packed(micro, c, a, Rhs::Plain { b, trans_b }, mnk, threaded) }),
            ));
        }
        // B packed once (a weight), as the executor's `pack_b` steps do.
        libs.push((
            format!("{kernel}, B packed once"),
            Box::new(move |c, a, b, (m, n, k), trans_b| {
                let mut p = vec![f32::NAN; packed_len(micro, (n, k))];
                unsafe {
                    pack_b(micro, &mut p, b, (n, k), trans_b);
                    packed(micro, c, a, Rhs::Packed(p.as_ptr()), (m, n, k), true)
                }
            }),
        ));
    }
    #[cfg(feature = "openblas")]
    libs.push(("openblas".into(), Box::new(|c, a, b, mnk, t| unsafe { tessera::codegen::cpu::gemm::openblas(c, a, b, mnk, t) })));
    for (m, n, k) in [(1, 1, 1), (5, 7, 3), (13, 33, 17), (150, 70, 300), (37, 65, 513), (12, 32, 256), (300, 100, 600)] {
        for trans_b in [false, true] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let want = naive(&a, &b, (m, n, k), trans_b);
            for (name, gemm) in &libs {
                let mut c = vec![f32::NAN; m * n];
                gemm(c.as_mut_ptr(), a.as_ptr(), b.as_ptr(), (m, n, k), trans_b);
                let worst = c.iter().zip(&want).fold(0f64, |w, (x, y)| w.max((f64::from(*x) - y).abs()));
                assert!(worst <= 1e-4 * (k as f64).sqrt(), "{name} {m}×{n}×{k} trans_b={trans_b}: max |Δ| {worst}");
            }
        }
    }
}
