#!/usr/bin/env python3
"""GEMMs at the models' shapes: the libraries Tessera can use (`TESSERA_GEMM`: the `gemm` crate,
OpenBLAS, the packed GEMM around LLVM's micro-kernel or around the `std::arch` one of the
default build) against PyTorch's (MKL), on this machine,
in one run, with 2 threads, each as a fraction of this CPU's measured FMA peak.

    cargo build --release --features llvm,openblas
    cargo build --release --example fma_peak
    /path/to/venv/bin/python bench/gemm.py        # a venv with torch

Shapes: x [M, K] @ w [K, N] for GPT-2 small's and the Llama-style model's products (K, N in
768/2304/3072, 768/2048/...), at M = 512 (prefill) and M = 1 (decode), through `tessera run
bench/gemm.tsr` (the executor's own GEMM call, one step). Medians of REPEAT runs after a
warm-up. Writes its section of bench/RESULTS.md.
"""
from __future__ import annotations

import os, re, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import ROOT, TESSERA, peer, write_section  # noqa: E402

REPEAT = 100  # short runs leave the second core asleep between products (VM wake-up): many runs
os.environ.setdefault("RAYON_NUM_THREADS", "2")
SHAPES = [(512, 768, 2304), (512, 768, 3072), (512, 3072, 768), (512, 768, 768), (512, 768, 2048), (512, 2048, 768),
          (1, 768, 3072), (1, 3072, 768)]
LIBRARIES = ["crate", "openblas", "llvm", "rust"]

TORCH_CHILD = r'''
import json, sys, time, statistics
import torch
torch.set_num_threads(2)
spec = json.loads(sys.argv[1])
res = {}
with torch.no_grad():
    for m, k, n in spec["shapes"]:
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.mm(a, b)
        ts = []
        for _ in range(spec["repeat"]):
            t = time.perf_counter(); torch.mm(a, b); ts.append((time.perf_counter() - t) * 1e3)
        res[f"{m}x{k}x{n}"] = statistics.median(ts)
print(json.dumps(res))
'''


def tessera_gemm(lib: str, m: int, k: int, n: int) -> float | None:
    """The GEMM step's median time (TESSERA_PROFILE's `gemm` line: the product alone, not the
    run around it, which also copies the output into a fresh tensor)."""
    env = dict(os.environ, TESSERA_GEMM=lib, TESSERA_PROFILE="1")
    out = subprocess.run([TESSERA, "run", "bench/gemm.tsr", "-D", f"d={k}", "-D", f"hidden={n}", "--dim", f"seq={m}",
                          "--repeat", str(REPEAT)], capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0 or "warning: TESSERA_GEMM" in out.stderr:
        return None
    return float(re.search(r"^  gemm +([\d.]+) ms", out.stdout, re.M).group(1))


def fma_peak() -> float:
    exe = os.path.join(ROOT, "target", "release", "examples", "fma_peak")
    out = subprocess.run([exe], capture_output=True, text=True).stdout
    return float(re.search(r"fma peak: ([\d.]+)", out).group(1))


def main() -> None:
    load = open("/proc/loadavg").read().split()[0]
    peak = fma_peak()
    print(f"FMA peak {peak:.1f} GFLOP/s", flush=True)
    rows = []
    for m, k, n in SHAPES:
        times = {}
        for lib in LIBRARIES:
            times[lib] = tessera_gemm(lib, m, k, n)
            time.sleep(0.3)
        rows.append(((m, k, n), times))
        print(m, k, n, times, flush=True)
    torch = peer(TORCH_CHILD, {"shapes": SHAPES, "repeat": REPEAT})
    peak_after = fma_peak()

    def cell(ms: float | None, flops: float) -> str:
        if ms is None:
            return "–"
        g = flops / ms / 1e6
        return f"{ms:.3f} ms, {g:.0f} GFLOP/s ({100 * g / peak:.0f}%)"

    lines = [
        "<!-- gemm: written by bench/gemm.py -->",
        "## GEMM libraries",
        "",
        f"Measured by `bench/gemm.py` ({time.strftime('%Y-%m-%d')}, load {load} at start, 2 threads). This CPU's FMA peak",
        f"(`examples/fma_peak.rs`): {peak:.0f} GFLOP/s before the run, {peak_after:.0f} after; percentages are of the first.",
        "Tessera's figures are the GEMM step of `tessera run bench/gemm.tsr` (`TESSERA_PROFILE`: the executor's GEMM call), medians of "
        f"{REPEAT} after a warm-up; PyTorch's are `torch.mm` (MKL). `TESSERA_GEMM` picks the library for products",
        "of more than 4 rows; M = 1 runs Tessera's own weight-streaming kernel (`cpu/gemv.rs`) whichever is picked.",
        "",
        "| x [M, K] @ w [K, N] | gemm crate | OpenBLAS | LLVM micro-kernel, packed | std::arch micro-kernel, packed | PyTorch (MKL) |",
        "|---|---|---|---|---|---|",
    ]
    for (m, k, n), times in rows:
        flops = 2.0 * m * k * n
        t = torch.get(f"{m}x{k}x{n}") if "error" not in torch else None
        lines.append(f"| {m} × {k} × {n} | {cell(times['crate'], flops)} | {cell(times['openblas'], flops)} | "
                     f"{cell(times['llvm'], flops)} | {cell(times['rust'], flops)} | {cell(t, flops)} |")
    lines += ["", "<!-- end gemm -->"]
    write_section(lines)


if __name__ == "__main__":
    main()
