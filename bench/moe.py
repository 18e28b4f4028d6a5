#!/usr/bin/env python3
"""Routing: a Mixtral-style sparse MoE block (hidden 1024, 8 experts, top-2, FFN 3584) at 512
tokens, Tessera's grouped kernel (bench/moe.tsr, `nn.moe`) against Hugging Face's
`MixtralSparseMoeBlock` (eager), and against Tessera's dense SwiGLU block of the same active
size (two experts' worth: FFN 7168), which bounds the routing overhead. One run, this machine,
2 threads; medians of REPEAT runs after a warm-up, random weights (near-uniform routing).

    cargo build --release
    /path/to/venv/bin/python bench/moe.py      # a venv with torch and transformers

Writes its section of bench/RESULTS.md between the markers below, keeping the rest.
"""
from __future__ import annotations

import os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import TESSERA, gemm_rate, peer, tessera, write_section  # noqa: E402  (same child-process timing as run.py)

REPEAT = 5
SEQ = 512
os.environ.setdefault("RAYON_NUM_THREADS", "2")

HF_CHILD = r'''
import json, sys, time, statistics, resource
import torch, transformers
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
torch.set_num_threads(2)
spec = json.loads(sys.argv[1])
torch.manual_seed(0)
cfg = transformers.MixtralConfig(hidden_size=1024, intermediate_size=3584, num_local_experts=8, num_experts_per_tok=2)
block = MixtralSparseMoeBlock(cfg).eval()
with torch.no_grad():
    for p in block.parameters():
        p.normal_(0.0, 0.02)
x = torch.randn(1, spec["seq"], 1024)
with torch.no_grad():
    f = lambda: block(x)
    f()
    ts = []
    for _ in range(spec["repeat"]):
        t = time.perf_counter(); f(); ts.append((time.perf_counter() - t) * 1e3)
    # PyTorch's GEMM rate at the experts' shape, for the ratio's context.
    a, b = torch.randn(256, 1024), torch.randn(1024, 3584)
    for _ in range(3): a @ b
    t = time.perf_counter()
    for _ in range(10): a @ b
    mm = 2 * 256 * 1024 * 3584 / ((time.perf_counter() - t) / 10) / 1e9
print(json.dumps({"ms": statistics.median(ts), "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "gemm_gflops": mm}))
'''


def main() -> None:
    if not os.path.exists(TESSERA):
        sys.exit("build first: cargo build --release")
    load = open("/proc/loadavg").read().split()[0]
    import run
    run.REPEAT = REPEAT
    moe = tessera(["bench/moe.tsr", "--model", "moe", "--backend", "cpu", "--dim", f"seq={SEQ}"])
    print("tessera moe", moe, flush=True)
    dense = tessera(["bench/moe.tsr", "--model", "dense", "--backend", "cpu", "--dim", f"seq={SEQ}"])
    print("tessera dense", dense, flush=True)
    hf = peer(HF_CHILD, {"seq": SEQ, "repeat": REPEAT}, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    print("hf", hf, flush=True)
    g, gflops = gemm_rate()
    active = SEQ * 2 * 3 * 2 * 1024 * 3584  # 2 experts per token, 3 GEMMs of 1024 × 3584
    moe_gflops = active / (moe["ms"] * 1e6)
    hf_ms = f"{hf['ms']:.0f}" if "ms" in hf else hf.get("error", "–")
    vs_hf = f"**{hf['ms'] / moe['ms']:.2f}×**" if "ms" in hf else "–"

    begin, end = "<!-- moe: written by bench/moe.py -->", "<!-- end moe -->"
    section = [
        begin,
        "## Routing (mixture of experts)",
        "",
        f"Measured by `bench/moe.py` (2 threads, load {load} at start), {time.strftime('%Y-%m-%d')}; medians of {REPEAT} runs after a warm-up.",
        f"This host's GEMM rate in the same run: {gflops:.0f} GFLOP/s (Tessera, [512, 768] @ [768, 3072], {g['ms']:.1f} ms).",
        "",
        "| workload, 512 tokens | Tessera ms | peer ms | Tessera vs peer |",
        "|---|---|---|---|",
        f"| sparse MoE block (1024, 8 experts, top-2, FFN 3584) vs HF `MixtralSparseMoeBlock` eager | {moe['ms']:.0f} | {hf_ms} | {vs_hf} |",
        f"| the same block vs Tessera's dense SwiGLU of the same active size (FFN 7168) | {moe['ms']:.0f} | {dense['ms']:.0f} | routing costs {100 * (moe['ms'] / dense['ms'] - 1):.0f}% |",
        "",
        f"The grouped kernel's rate: {moe_gflops:.0f} GFLOP/s of expert GEMMs; PyTorch's GEMM (MKL) at [256, 1024] @ [1024, 3584] in the same run: {hf.get('gemm_gflops', 0):.0f} GFLOP/s.",
        f"Peak RSS Tessera {moe['rss_mib']:.0f} MiB, HF {hf.get('rss_mib', 0):.0f} MiB.",
        end,
    ]
    write_section(section)


if __name__ == "__main__":
    main()
