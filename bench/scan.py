#!/usr/bin/env python3
"""State-space layers: Tessera's Mamba against Hugging Face's `MambaForCausalLM` (eager, its
CPU path: the sequential token loop), on this machine, in one run, with 2 threads.

    cargo build --release
    /path/to/venv/bin/python bench/scan.py      # a venv with torch and transformers

Workloads: a Mamba model (hidden 768, 24 layers, state 16, expand 2, vocabulary 50280, random
weights) and a Mamba-2 model (hidden 768, 24 layers, 24 heads of 64, state 128, one group; HF
computes its SSD in chunks of 256 on the CPU) prefill at batch 1 × 512 tokens, logits for every
token on both sides; and causal
linear attention (bench/linear_attention.tsr) against causal softmax attention
(bench/attention.tsr), both Tessera's, 12 heads of 64 at 4096 tokens. Medians of
REPEAT runs after a warm-up. Tessera's activation arena is also read at 256, 512 and 1024
tokens (memory linear in the sequence). Writes its section of bench/RESULTS.md, between the
markers below, keeping the rest of the file.
"""
from __future__ import annotations

import os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import TESSERA, gemm_rate, peer, tessera, write_section  # noqa: E402  (same child-process timing as run.py)

REPEAT = 3
os.environ.setdefault("RAYON_NUM_THREADS", "2")

HF_CHILD = r'''
import json, sys, time, statistics, resource
import torch, transformers
torch.set_num_threads(2)
spec = json.loads(sys.argv[1])
torch.manual_seed(0)
if spec["kind"] == "mamba":
    cfg = transformers.MambaConfig(hidden_size=768, num_hidden_layers=24, state_size=16, expand=2, vocab_size=50280)
    model = transformers.MambaForCausalLM(cfg).eval()
else:
    cfg = transformers.Mamba2Config(hidden_size=768, num_hidden_layers=24, state_size=128, expand=2, num_heads=24,
                                    head_dim=64, n_groups=1, vocab_size=50280, chunk_size=256)
    model = transformers.Mamba2ForCausalLM(cfg).eval()
ids = torch.randint(0, cfg.vocab_size, (1, spec["seq"]))
with torch.no_grad():
    f = lambda: model(ids, use_cache=False)
    f()
    ts = []
    for _ in range(spec["repeat"]):
        t = time.perf_counter(); f(); ts.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"ms": statistics.median(ts), "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def main() -> None:
    if not os.path.exists(TESSERA):
        sys.exit("build first: cargo build --release")
    load = open("/proc/loadavg").read().split()[0]
    args = ["stdlib/mamba.tsr", "--backend", "cpu"]
    import run
    run.REPEAT = REPEAT
    t = tessera(args + ["--dim", "seq=512"])
    print("tessera", t, flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")

    def hf_run(kind: str) -> dict:
        return peer(HF_CHILD, {"kind": kind, "seq": 512, "repeat": REPEAT}, env=env)

    hf = hf_run("mamba")
    print("hf", hf, flush=True)
    t2 = tessera(["stdlib/mamba2.tsr", "--backend", "cpu", "--dim", "seq=512"])
    hf2 = hf_run("mamba2")
    print("mamba2", t2, hf2, flush=True)
    # Linear attention against causal softmax attention, both Tessera's, at 4096 tokens.
    lin = tessera(["bench/linear_attention.tsr", "--backend", "cpu", "--dim", "seq=4096"])
    soft = tessera(["bench/attention.tsr", "--backend", "cpu", "--dim", "seq=4096"])
    print("linear", lin, "softmax", soft, flush=True)
    g, gflops = gemm_rate()
    print("gemm", g, f"{gflops:.0f} GFLOP/s", flush=True)
    run.REPEAT = 2  # the arena only: `--repeat 1` prints no median
    arenas = {seq: tessera(args + ["--dim", f"seq={seq}"])["arena_mib"] for seq in (256, 1024)}
    arenas[512] = t["arena_mib"]
    def row(title: str, t: dict, hf: dict) -> str:
        ratio = f"{hf['ms'] / t['ms']:.2f}×" if "ms" in hf else "–"
        hf_ms = f"{hf['ms']:.0f}" if "ms" in hf else hf.get("error", "–")
        return f"| {title} | {t['ms']:.0f} | {hf_ms} | {ratio} | {t['rss_mib']:.0f} / {hf.get('rss_mib', 0):.0f} |"

    begin, end = "<!-- scan: written by bench/scan.py -->", "<!-- end scan -->"
    section = [
        begin,
        "## State-space layers",
        "",
        f"Measured by `bench/scan.py` (2 threads, load {load} at start), {time.strftime('%Y-%m-%d')}; medians of {REPEAT} runs after a warm-up.",
        f"This host's GEMM rate in the same run: {gflops:.0f} GFLOP/s (Tessera, [512, 768] @ [768, 3072], {g['ms']:.1f} ms).",
        "",
        "| workload | Tessera ms | HF transformers ms | vs HF | peak RSS Tessera / HF MiB |",
        "|---|---|---|---|---|",
        row("Mamba (768, 24 layers, state 16) prefill 512, vs `MambaForCausalLM`", t, hf),
        row("Mamba-2 (768, 24 layers, 24 heads × 64, state 128) prefill 512, vs `Mamba2ForCausalLM`", t2, hf2),
        "",
        "| Tessera, 12 heads of 64, 4096 tokens | linear attention (scan) ms | causal softmax attention (flash kernel) ms | softmax / linear |",
        "|---|---|---|---|",
        f"| one layer's mixing, batch 1 | {lin['ms']:.0f} | {soft['ms']:.0f} | {soft['ms'] / lin['ms']:.2f}× |",
        "",
        "Tessera's Mamba activation arena by sequence length: " + ", ".join(f"{s}: {arenas[s]:.1f} MiB" for s in sorted(arenas)),
        end,
    ]
    write_section(section)


if __name__ == "__main__":
    main()
