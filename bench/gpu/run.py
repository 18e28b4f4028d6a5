#!/usr/bin/env python3
"""Tessera's CUDA backend vs PyTorch on one GPU, in one run (the GPU machine: torch with CUDA).

    cargo build --release --features cuda          # on the build machine
    TESSERA_BIN=path/to/tessera python bench/gpu/run.py

Workloads, all bf16:
- attention alone (batch 4, 32 heads, head dim 128), causal and full, seq 1k/4k/16k, against
  the naive math in eager PyTorch and under torch.compile, and scaled_dot_product_attention
  (PyTorch picks its best backend);
- a 1024-token sliding window with ALiBi at 4k/16k against FlexAttention (compiled, with a
  block mask);
- a Llama-7B-shaped 4-layer stack (hidden 4096, 32 heads, 8 KV heads, FFN 14336, vocabulary
  32000) prefill of 4096 tokens against transformers' LlamaForCausalLM, eager and compiled.

Times are medians of 5 runs after a warm-up. Tessera's is the device time of a run (uploads
and downloads excluded, as PyTorch's inputs are already on the GPU); compile times are cold.
Writes the GPU section of bench/RESULTS.md.
"""
from __future__ import annotations

import json, os, re, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESSERA = os.environ.get("TESSERA_BIN", os.path.join(ROOT, "target", "release", "tessera"))
REPEAT = 5
BEGIN, END = "<!-- gpu: written by bench/gpu/run.py -->", "<!-- end gpu -->"

LLAMA = dict(layers=4, d=4096, heads=32, kv_heads=8, hidden=14336, vocab=32000)


def tessera(args: list[str]) -> dict:
    """Runs `tessera run --backend cuda --dtype bf16` in a child process."""
    cmd = [TESSERA, "run", *args, "--backend", "cuda", "--dtype", "bf16", "--repeat", str(REPEAT)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return {
        "ms": float(re.search(r"median of \d+ runs: ([\d.]+) ms", out.stdout).group(1)),
        "compile_ms": float(re.search(r"compile: ([\d.]+) ms", out.stdout).group(1)),
    }


TORCH_CHILD = r'''
import json, sys, time, statistics
import torch
spec = json.loads(sys.argv[1])
torch.manual_seed(0)
dev, dt = "cuda", torch.bfloat16
def timeit(fn, n):
    fn(); torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)
res = {}
with torch.no_grad():
    kind = spec["kind"]
    if kind in ("causal", "full", "window_alibi"):
        s, h, e = spec["seq"], 32, 128
        q, k, v = (torch.randn(4, h, s, e, device=dev, dtype=dt) for _ in range(3))
        causal = kind != "full"
        if spec["impl"] == "sdpa":
            f = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        elif spec["impl"] == "flex":
            from torch.nn.attention.flex_attention import flex_attention, create_block_mask
            slopes = torch.tensor([2 ** (-8 * (i + 1) / h) for i in range(h)], device=dev)
            def score_mod(score, b, hh, i, j):
                return score - slopes[hh] * (i - j)
            def mask_mod(b, hh, i, j):
                return (j <= i) & (i - j < 1024)
            mask = create_block_mask(mask_mod, None, None, s, s, device=dev)
            flex = torch.compile(flex_attention)
            t = time.perf_counter(); flex(q, k, v, score_mod=score_mod, block_mask=mask); torch.cuda.synchronize()
            res["compile_ms"] = (time.perf_counter() - t) * 1e3
            f = lambda: flex(q, k, v, score_mod=score_mod, block_mask=mask)
        else:
            def naive(q, k, v):
                x = (q @ k.transpose(-1, -2)) * e ** -0.5
                if causal:
                    x = x.masked_fill(torch.ones(s, s, device=dev, dtype=torch.bool).triu(1), float("-inf"))
                return torch.softmax(x.float(), -1).to(dt) @ v
            f = (lambda: naive(q, k, v))
            if spec["impl"] == "compile":
                g = torch.compile(naive)
                t = time.perf_counter(); g(q, k, v); torch.cuda.synchronize()
                res["compile_ms"] = (time.perf_counter() - t) * 1e3
                f = lambda: g(q, k, v)
        res["ms"] = timeit(f, spec["repeat"])
    else:
        import transformers
        c = spec["llama"]
        cfg = transformers.LlamaConfig(hidden_size=c["d"], num_hidden_layers=c["layers"], num_attention_heads=c["heads"],
                                       num_key_value_heads=c["kv_heads"], intermediate_size=c["hidden"], vocab_size=c["vocab"],
                                       max_position_embeddings=8192)
        model = transformers.LlamaForCausalLM(cfg).to(dev, dt).eval()
        ids = torch.randint(0, c["vocab"], (1, spec["seq"]), device=dev)
        if spec["impl"] == "compile":
            t = time.perf_counter(); model = torch.compile(model); model(ids); torch.cuda.synchronize()
            res["compile_ms"] = (time.perf_counter() - t) * 1e3
        res["ms"] = timeit(lambda: model(ids), spec["repeat"])
print(json.dumps(res))
'''


def torch_run(spec: dict) -> dict:
    spec = dict(spec, repeat=REPEAT)
    env = dict(os.environ, TORCHINDUCTOR_FORCE_DISABLE_CACHES="1")
    out = subprocess.run([sys.executable, "-c", TORCH_CHILD, json.dumps(spec)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return {"error": lines[-1][:80] if lines else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def cell(r: dict | None) -> str:
    if r is None:
        return "–"
    return f"{r['ms']:.2f}" if "ms" in r else f"({r.get('error', 'failed')})"


def ratio(t: dict, p: dict | None) -> str:
    return f"{p['ms'] / t['ms']:.2f}×" if p and "ms" in p and "ms" in t else "–"


def main() -> None:
    if not os.path.exists(TESSERA):
        sys.exit("build first: cargo build --release --features cuda (or set TESSERA_BIN)")
    rows = []
    for kind in ("causal", "full"):
        for seq in (1024, 4096, 16384):
            t = tessera(["bench/gpu/attention.tsr", "--model", kind, "--dim", "batch=4", "--dim", f"seq={seq}"])
            peers = {impl: torch_run({"kind": kind, "seq": seq, "impl": impl}) for impl in ("eager", "compile", "sdpa")}
            rows.append((f"attention {kind}, seq {seq}", t, peers))
            print(rows[-1], flush=True)
    for seq in (4096, 16384):
        t = tessera(["bench/gpu/attention.tsr", "--model", "window_alibi", "--dim", "batch=4", "--dim", f"seq={seq}"])
        rows.append((f"window 1024 + ALiBi, seq {seq}", t, {"flex": torch_run({"kind": "window_alibi", "seq": seq, "impl": "flex"})}))
        print(rows[-1], flush=True)
    args = ["stdlib/llama.tsr", *sum((["-D", f"{k}={v}"] for k, v in LLAMA.items()), []), "--dim", "seq=4096"]
    t = tessera(args)
    peers = {impl: torch_run({"kind": "llama", "seq": 4096, "impl": impl, "llama": LLAMA}) for impl in ("eager", "compile")}
    rows.append(("Llama-7B-shaped 4 layers, prefill 4096", t, peers))
    print(rows[-1], flush=True)

    lines = [
        BEGIN,
        "## GPU",
        "",
        f"Measured by `bench/gpu/run.py` ({time.strftime('%Y-%m-%d')}), bf16, medians of {REPEAT} runs; ratio = peer time / Tessera time.",
        "",
        "| workload | Tessera ms | peers ms | ratios | Tessera compile | peer compile |",
        "|---|---|---|---|---|---|",
    ]
    for title, t, peers in rows:
        pm = ", ".join(f"{k} {cell(v)}" for k, v in peers.items())
        pr = ", ".join(f"{k} {ratio(t, v)}" for k, v in peers.items())
        pc = ", ".join(f"{k} {v['compile_ms'] / 1e3:.1f} s" for k, v in peers.items() if "compile_ms" in v) or "–"
        tc = f"{t['compile_ms']:.0f} ms" if "compile_ms" in t else "–"
        lines.append(f"| {title} | {cell(t)} | {pm} | {pr} | {tc} | {pc} |")
    lines.append(END)
    path = os.path.join(ROOT, "bench", "RESULTS.md")
    text = open(path).read() if os.path.exists(path) else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + "\n".join(lines) + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + "\n".join(lines) + "\n"
    open(path, "w").write(text)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
