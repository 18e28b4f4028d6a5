#!/usr/bin/env python3
"""The CPU backends against each other and against PyTorch, on this machine, in one run, with
2 threads: Cranelift (`--backend cpu`), LLVM (`--backend llvm`) and MLIR (`--backend mlir`,
where the binary has it).

    cargo build --release --features llvm,mlir,openblas     # or without mlir
    /path/to/venv/bin/python bench/backends.py              # a venv with torch and transformers

Workloads:
- the row kernels at GPT-2-small shapes (bench/rows.tsr, seq 512): layer norm and RMS norm
  over 768, softmax over 12 × 512 × 512 scores, a bias + tanh-GELU chain over 3072, SiLU·up
  over 3072, a bias/scale/residual chain over 768; and PyTorch eager's same ops;
- whole-model prefill, batch 1 × 512 tokens: GPT-2 small and the Llama-style model of
  bench/run.py, against PyTorch eager and torch.compile; Tessera with each backend and the
  build's default GEMM library (the packed GEMM around LLVM's micro-kernel), Cranelift with
  the std::arch micro-kernel (`TESSERA_GEMM=rust`: the default build), and LLVM with OpenBLAS
  (`TESSERA_GEMM=openblas`);
- the kernels of loops: causal attention (bench/attention.tsr, 12 heads of 64, seq 1024: score
  rows, the online softmax and the tile products compiled) and Mamba prefill 512 (stdlib/mamba.tsr at its
  defaults, 24 layers: the fused scan compiled per tile), each kernel kind's own time per
  backend;
- compile time of GPT-2 small for each backend (Tessera's `compile:` line: passes, scheduling
  and code generation).

Medians of REPEAT runs after a warm-up. Writes its section of bench/RESULTS.md.
"""
from __future__ import annotations

import os, re, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import ROOT, TESSERA, torch_run, peer, write_section  # noqa: E402

REPEAT = 5
os.environ.setdefault("RAYON_NUM_THREADS", "2")
ROWS = ["layer_norm", "rms_norm", "softmax_rows", "gelu_chain", "swiglu_chain", "residual_chain"]
LLAMA = ["-D", "vocab=32000", "-D", "d=768", "-D", "layers=12", "-D", "heads=12", "-D", "kv_heads=4", "-D", "hidden=2048"]

TORCH_ROWS = r'''
import json, sys, time, statistics
import torch
torch.set_num_threads(2)
spec = json.loads(sys.argv[1])
s = 512
x768, r768, b768 = torch.randn(s, 768), torch.randn(s, 768), torch.randn(768)
x3072, u3072, b3072 = torch.randn(s, 3072), torch.randn(s, 3072), torch.randn(3072)
scores = torch.randn(12, s, s)
ln = torch.nn.LayerNorm(768, elementwise_affine=False)
ops = {
    "layer_norm": lambda: ln(x768),
    "rms_norm": lambda: x768 * torch.rsqrt(x768.pow(2).mean(-1, keepdim=True) + 1e-5),
    "softmax_rows": lambda: torch.softmax(scores, -1),
    "gelu_chain": lambda: torch.nn.functional.gelu(x3072 + b3072, approximate="tanh"),
    "swiglu_chain": lambda: torch.nn.functional.silu(x3072) * u3072,
    "residual_chain": lambda: (x768 + b768) * 0.5 + r768,
}
res = {}
with torch.no_grad():
    for name, f in ops.items():
        f()
        ts = []
        for _ in range(spec["repeat"]):
            t = time.perf_counter(); f(); ts.append((time.perf_counter() - t) * 1e3)
        res[name] = statistics.median(ts)
print(json.dumps(res))
'''


def run(args: list[str], backend: str, gemm: str | None = None, repeat: int = REPEAT) -> dict | None:
    """A `tessera run`: its median time, compile time, and each kernel kind's median
    (TESSERA_PROFILE)."""
    env = dict(os.environ, TESSERA_PROFILE="1")
    env.pop("TESSERA_GEMM", None)
    if gemm:
        env["TESSERA_GEMM"] = gemm
    out = subprocess.run([TESSERA, "run", *args, "--backend", backend, "--repeat", str(repeat)], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    if out.returncode != 0:
        return None
    kinds = {m.group(1): float(m.group(2)) for m in re.finditer(r"^  (\w+) +([\d.]+) ms$", out.stdout, re.M)}
    return {"ms": float(re.search(r"median of \d+ runs: ([\d.]+) ms", out.stdout).group(1)),
            "compile_ms": float(re.search(r"compile: ([\d.]+) ms", out.stdout).group(1)), "kinds": kinds}


# The kernel kind each row-kernel model is made of.
KIND = {"layer_norm": "norm", "rms_norm": "norm", "softmax_rows": "softmax", "gelu_chain": "elementwise",
        "swiglu_chain": "elementwise", "residual_chain": "elementwise"}


def main() -> None:
    load = open("/proc/loadavg").read().split()[0]
    backends = [b for b in ("cpu", "llvm", "mlir") if run(["bench/rows.tsr", "--model", "residual_chain", "--dim", "seq=8"], b, repeat=2)]
    print("backends:", backends, flush=True)
    rows = {}
    for name in ROWS:
        rows[name] = {b: run(["bench/rows.tsr", "--model", name, "--dim", "seq=512"], b, repeat=20) for b in backends}
        print(name, rows[name], flush=True)
        time.sleep(0.3)
    torch_rows = peer(TORCH_ROWS, {"repeat": 20})
    models = [("GPT-2 small prefill 512", "gpt2", ["stdlib/gpt2.tsr", "--dim", "seq=512"]),
              ("Llama-style prefill 512", "llama", ["stdlib/llama.tsr", *LLAMA, "--dim", "seq=512"])]
    prefill = []
    for title, kind, args in models:
        t = {b: run(args, b) for b in backends}
        time.sleep(0.3)
        t["cpu+rust"] = run(args, "cpu", gemm="rust")
        time.sleep(0.3)
        if "llvm" in backends:
            t["llvm+openblas"] = run(args, "llvm", gemm="openblas")
            time.sleep(0.3)
        e = torch_run({"kind": kind, "seq": 512, "compile": False})
        time.sleep(0.3)
        c = torch_run({"kind": kind, "seq": 512, "compile": True})
        prefill.append((title, t, e, c))
        print(title, t, e, c, flush=True)
    loops = [("causal attention, 12 × 64, seq 1024", "attention", ["bench/attention.tsr", "--dim", "seq=1024"]),
             ("Mamba prefill 512 (24 layers)", "scan", ["stdlib/mamba.tsr", "--dim", "seq=512"])]
    looped = []
    for title, kind, args in loops:
        t = {b: run(args, b) for b in backends}
        looped.append((title, kind, t))
        print(title, t, flush=True)
        time.sleep(0.3)

    def ms(r: dict | None) -> str:
        return f"{r['ms']:.3f}" if r else "–"

    def ratio(slow: dict | None, fast: dict | None) -> str:
        return f"{slow['ms'] / fast['ms']:.2f}×" if slow and fast else "–"

    def kernel(r: dict | None, name: str) -> dict | None:
        """The row kernel's own median time (its kernel kind in the profile)."""
        k = r and r["kinds"].get(KIND[name])
        return {"ms": k} if k else None

    lines = [
        "<!-- backends: written by bench/backends.py -->",
        "## CPU backends: Cranelift, LLVM, MLIR",
        "",
        f"Measured by `bench/backends.py` ({time.strftime('%Y-%m-%d')}, load {load} at start, 2 threads). Medians of 20",
        "runs (row kernels) or 5 (prefill) after a warm-up; `speed-up` = Cranelift's time / the other's.",
        "",
        "Row kernels at GPT-2-small shapes (`bench/rows.tsr`, seq 512), ms: the kernel's own time (`TESSERA_PROFILE`,",
        "median), and in brackets the whole run's (which adds a fresh output tensor and the run's set-up):",
        "",
        "| kernel | Cranelift | LLVM | MLIR | LLVM speed-up (kernel) | MLIR / LLVM time (kernel) | PyTorch eager (whole op) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ROWS:
        r = rows[name]
        tr = f"{torch_rows[name]:.3f}" if name in torch_rows else "–"
        cell = lambda b: f"{ms(kernel(r.get(b), name))} ({ms(r.get(b))})"  # noqa: E731
        lines.append(f"| {name} | {cell('cpu')} | {cell('llvm')} | {cell('mlir')} | {ratio(kernel(r.get('cpu'), name), kernel(r.get('llvm'), name))} | "
                     f"{ratio(kernel(r.get('mlir'), name), kernel(r.get('llvm'), name))} | {tr} |")
    lines += [
        "",
        "Prefill, batch 1 × 512 tokens, ms. The first three columns use this build's default GEMM library (the packed",
        "GEMM around LLVM's micro-kernel, weights packed once); `Cranelift + std::arch` is the default build (the packed",
        "GEMM around the `std::arch` micro-kernel, no system library); `LLVM + OpenBLAS` is `TESSERA_GEMM=openblas`:",
        "",
        "| model | Cranelift | LLVM | MLIR | Cranelift + std::arch | LLVM + OpenBLAS | PyTorch eager | torch.compile | best Tessera vs torch.compile |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for title, t, e, c in prefill:
        best = min((v for v in t.values() if v), key=lambda v: v["ms"], default=None)
        lines.append(f"| {title} | {ms(t.get('cpu'))} | {ms(t.get('llvm'))} | {ms(t.get('mlir'))} | {ms(t.get('cpu+rust'))} | {ms(t.get('llvm+openblas'))} | "
                     f"{e.get('ms', 0):.1f} | {c.get('ms', 0):.1f} | {ratio(c, best)} |")
    lines += [
        "",
        "Kernels of loops: attention (the executor's loop over tiles; score rows compiled by every backend, the",
        "online-softmax step and the tile products by LLVM and MLIR, Cranelift's products by the Rust AVX-512/AVX2",
        "kernel) and Mamba's fused scan (compiled whole per tile, every",
        "position, by LLVM and MLIR; Cranelift runs the executor's Rust kernel). ms: the kernel kind's own time (and the",
        "whole run's):",
        "",
        "| workload | kernel | Cranelift | LLVM | MLIR | LLVM speed-up (kernel) | MLIR / LLVM time (kernel) |",
        "|---|---|---|---|---|---|---|",
    ]
    for title, kind, t in looped:
        k = lambda b: ({"ms": t[b]["kinds"][kind]} if t.get(b) and kind in t[b]["kinds"] else None)  # noqa: E731
        lines.append(f"| {title} | {kind} | {ms(k('cpu'))} ({ms(t.get('cpu'))}) | {ms(k('llvm'))} ({ms(t.get('llvm'))}) | "
                     f"{ms(k('mlir'))} ({ms(t.get('mlir'))}) | {ratio(k('cpu'), k('llvm'))} | {ratio(k('mlir'), k('llvm'))} |")
    gpt2 = prefill[0][1]
    lines += ["", "Compile time of GPT-2 small (passes, scheduling, code generation): " +
              ", ".join(f"{b} {gpt2[b]['compile_ms']:.0f} ms" for b in backends if gpt2.get(b)) + ".", "", "<!-- end backends -->"]
    write_section(lines)


if __name__ == "__main__":
    main()
