#!/usr/bin/env python3
"""Generation: Tessera's cached decoding against Hugging Face `generate()` (PyTorch eager with
HF's cache, and with `torch.compile` and a static cache), on this machine, in one run, with 2
threads.

    cargo build --release
    /path/to/venv/bin/python bench/generate.py     # a venv with torch and transformers

Workloads (batch 1, random weights, greedy, every token forced: no stop at EOS): GPT-2 small,
the Llama-style model of bench/run.py (hidden 768, 12 layers, 12 heads, 4 KV heads, FFN 2048,
vocabulary 32000) and Mamba (hidden 768, 24 layers, state 16: bench/scan.py's), 64 new
tokens after a 128-token prompt. Reported: ms per token over the 63 steps after the first
token, and the time to the first token (the prompt's prefill and its first choice). Medians
of REPEAT runs after a warm-up run, on both sides; the peers alternate with Tessera, with a
pause between libraries. Writes its
section of bench/RESULTS.md between the markers below, keeping the rest of the file.
"""
from __future__ import annotations

import os, re, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import ROOT, TESSERA, gemm_rate, peer, write_section  # noqa: E402

REPEAT = 3
PROMPT, NEW = 128, 64
os.environ.setdefault("RAYON_NUM_THREADS", "2")

MODELS = [
    ("GPT-2 small", "gpt2", ["stdlib/gpt2.tsr"]),
    ("Llama-style (768, 12 layers, GQA 12:4, vocab 32000)", "llama",
     ["stdlib/llama.tsr", "-D", "vocab=32000", "-D", "d=768", "-D", "layers=12", "-D", "heads=12", "-D", "kv_heads=4", "-D", "hidden=2048"]),
    ("Mamba (768, 24 layers, state 16)", "mamba", ["stdlib/mamba.tsr"]),
]

HF_CHILD = r'''
import json, sys, time, statistics
import torch, transformers
torch.set_num_threads(2)
spec = json.loads(sys.argv[1])
torch.manual_seed(0)
kind = spec["kind"]
if kind == "gpt2":
    cfg = transformers.GPT2Config()
    model = transformers.GPT2LMHeadModel(cfg)
elif kind == "llama":
    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                   num_key_value_heads=4, intermediate_size=2048)
    model = transformers.LlamaForCausalLM(cfg)
else:
    cfg = transformers.MambaConfig(hidden_size=768, num_hidden_layers=24, state_size=16, expand=2, vocab_size=50280)
    model = transformers.MambaForCausalLM(cfg)
model.eval()
ids = torch.randint(0, cfg.vocab_size, (1, spec["prompt"]))
gen = dict(do_sample=False, num_beams=1, eos_token_id=None, pad_token_id=0, use_cache=True)
if spec["compile"]:
    gen["cache_implementation"] = "static"
    model.forward = torch.compile(model.forward)
def run(n):
    t = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, **gen)
    return (time.perf_counter() - t) * 1e3
run(spec["new"])  # warm-up (and compilation)
first, total = [], []
for _ in range(spec["repeat"]):
    first.append(run(1))
    total.append(run(spec["new"]))
f, t = statistics.median(first), statistics.median(total)
print(json.dumps({"first_ms": f, "ms_per_token": (t - f) / (spec["new"] - 1)}))
'''


def tessera_generate(args: list[str], prompt: str) -> dict:
    """`tessera generate` (its own timing of the first token and of the steps after it)."""
    # A warm-up run and REPEAT timed ones in one process, as the peer's child does.
    out = subprocess.run([TESSERA, "generate", *args, "--inputs", prompt, "--max-new-tokens", str(NEW), "--ignore-eos",
                          "--repeat", str(REPEAT + 1)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"tessera generate failed on {args}: {out.stderr}")
    m = re.search(r"first token ([\d.]+) ms, then ([\d.]+) ms/token", out.stderr)
    time.sleep(0.3)
    return {"first_ms": float(m.group(1)), "ms_per_token": float(m.group(2))}


def hf_generate(kind: str, compiled: bool) -> dict:
    spec = {"kind": kind, "prompt": PROMPT, "new": NEW, "repeat": REPEAT, "compile": compiled}
    result = peer(HF_CHILD, spec, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=900)
    time.sleep(0.3)
    return result


def main() -> None:
    if not os.path.exists(TESSERA):
        sys.exit("build first: cargo build --release")
    import numpy as np
    from safetensors.numpy import save_file
    load = open("/proc/loadavg").read().split()[0]
    rows = []
    for title, kind, args in MODELS:
        vocab = {"gpt2": 50257, "llama": 32000, "mamba": 50280}[kind]
        prompt = os.path.join(ROOT, "target", f"bench-prompt-{kind}.safetensors")
        ids = np.random.default_rng(0).integers(0, vocab, (1, PROMPT)).astype(np.int64)
        save_file({"input_ids": ids}, prompt)
        t = tessera_generate(args, prompt)
        print(title, "tessera", t, flush=True)
        eager = hf_generate(kind, False)
        print(title, "eager", eager, flush=True)
        compiled = hf_generate(kind, True) if kind != "mamba" else {"error": "not run (HF's Mamba has no static cache)"}
        print(title, "compile", compiled, flush=True)
        rows.append((title, t, eager, compiled))
    g, gflops = gemm_rate()

    def cell(p: dict, key: str) -> str:
        return f"{p[key]:.1f}" if key in p else p.get("error", "–")

    def ratio(t: dict, p: dict) -> str:
        return f"{p['ms_per_token'] / t['ms_per_token']:.2f}×" if "ms_per_token" in p else "–"

    begin, end = "<!-- generate: written by bench/generate.py -->", "<!-- end generate -->"
    section = [
        begin,
        "## Generation",
        "",
        f"Measured by `bench/generate.py` (2 threads, load {load} at start), {time.strftime('%Y-%m-%d')}; batch 1, {NEW} new tokens after a {PROMPT}-token prompt, greedy, medians of {REPEAT} runs.",
        f"This host's GEMM rate in the same run: {gflops:.0f} GFLOP/s (Tessera, [512, 768] @ [768, 3072], {g['ms']:.1f} ms).",
        "",
        "| model | Tessera ms/token | HF eager ms/token | HF torch.compile ms/token | vs eager | vs compile | first token ms: Tessera / eager / compile |",
        "|---|---|---|---|---|---|---|",
    ]
    for title, t, eager, compiled in rows:
        section.append(
            f"| {title} | {t['ms_per_token']:.1f} | {cell(eager, 'ms_per_token')} | {cell(compiled, 'ms_per_token')} | {ratio(t, eager)} | {ratio(t, compiled)} "
            f"| {t['first_ms']:.0f} / {cell(eager, 'first_ms')} / {cell(compiled, 'first_ms')} |"
        )
    section += [
        "",
        "Targets (issue 17): GPT-2 small ≤ 19.5 ms/token, Llama-style ≤ 16, Mamba ≤ 25.",
        end,
    ]
    write_section(section)


if __name__ == "__main__":
    main()
