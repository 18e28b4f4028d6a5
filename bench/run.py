#!/usr/bin/env python3
"""Tessera vs PyTorch (eager and torch.compile) on this machine, in one run, with 2 threads.

    cargo build --release
    /path/to/venv/bin/python bench/run.py          # a venv with torch and transformers

Workloads (batch 1, random weights): GPT-2 small prefill at 128 and 512 tokens, a Llama-style
model (hidden 768, 12 layers, 12 heads, 4 KV heads, FFN 2048, vocabulary 32000) prefill at 512,
and causal attention alone (12 heads of 64) at 512/2048/4096 against
torch's scaled_dot_product_attention. Each time is the median of 5 runs after a warm-up; peak
memory is the peak RSS of a separate process. Writes bench/RESULTS.md.
"""
from __future__ import annotations

import json, os, re, resource, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESSERA = os.path.join(ROOT, "target", "release", "tessera")
REPEAT = 5
os.environ.setdefault("RAYON_NUM_THREADS", "2")


def tessera(args: list[str]) -> dict:
    """Runs `tessera run` in a child process; returns compile ms, median ms and peak RSS MiB."""
    proc = subprocess.Popen([TESSERA, "run", *args, "--repeat", str(REPEAT)], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"tessera failed on {args}")
    rss = usage.ru_maxrss
    compile_ms = float(re.search(r"compile: ([\d.]+) ms", out).group(1))
    median = float(re.search(r"median of \d+ runs: ([\d.]+) ms", out).group(1))
    arena = float(re.search(r"arena ([\d.]+) MiB", out).group(1))
    return {"ms": median, "compile_ms": compile_ms, "arena_mib": arena, "rss_mib": rss / 1024}


def gemm_rate() -> tuple[dict, float]:
    """This host's GEMM rate now, by Tessera on bench/gemm.tsr ([512, 768] @ [768, 3072]): ratios
    are comparable across hosts of one kind only with it. Returns the run and its GFLOP/s."""
    g = tessera(["bench/gemm.tsr", "--backend", "cpu", "--dim", "seq=512"])
    return g, 2 * 512 * 768 * 3072 / (g["ms"] * 1e6)


RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")
# A section another script writes: `<!-- NAME: written by SCRIPT -->` .. `<!-- end NAME -->`.
SECTION = re.compile(r"<!-- (\w+): written by [^>]*-->.*?<!-- end \1 -->", re.S)


def write_section(lines: list[str]) -> None:
    """Writes one script's section of bench/RESULTS.md (its first and last lines are its
    markers), in place of its earlier one or at the end, keeping the rest of the file."""
    begin, end = lines[0], lines[-1]
    old = open(RESULTS).read() if os.path.exists(RESULTS) else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + "\n".join(lines) + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    open(RESULTS, "w").write(new)
    print("\n".join(lines))


# The PyTorch side runs in a child process too, so that peak memory is its own.
TORCH_CHILD = r'''
import json, sys, time, statistics, resource
import torch
torch.set_num_threads(2)
spec = json.loads(sys.argv[1])
torch.manual_seed(0)
def timeit(fn, n):
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)
res = {}
with torch.no_grad():
    if spec["kind"] == "attention":
        s = spec["seq"]
        q, k, v = (torch.randn(1, 12, s, 64) for _ in range(3))
        res["ms"] = timeit(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), spec["repeat"])
    else:
        import transformers
        if spec["kind"] == "gpt2":
            cfg = transformers.GPT2Config(n_positions=1024, n_embd=768, n_layer=12, n_head=12, vocab_size=50257)
            model = transformers.GPT2LMHeadModel(cfg)
        else:
            cfg = transformers.LlamaConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                                           intermediate_size=2048, vocab_size=32000, max_position_embeddings=2048)
            model = transformers.LlamaForCausalLM(cfg)
        model.eval()
        ids = torch.randint(0, cfg.vocab_size, (1, spec["seq"]))
        if spec["compile"]:
            t = time.perf_counter()
            model = torch.compile(model)
            model(ids)
            res["compile_ms"] = (time.perf_counter() - t) * 1e3
        res["ms"] = timeit(lambda: model(ids), spec["repeat"])
res["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(res))
'''


def peer(code: str, spec: dict, env: dict | None = None, timeout: float | None = None) -> dict:
    """Runs a peer's timing program `code` in a child Python (so that its peak memory and
    threads are its own) with `spec` as JSON; returns the JSON of its last output line, or
    {"error": ...} with the last line of its errors."""
    try:
        out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1][:200] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_run(spec: dict) -> dict:
    # Cold compiles: torch.compile otherwise reuses its on-disk cache from earlier runs.
    return peer(TORCH_CHILD, dict(spec, repeat=REPEAT), env=dict(os.environ, TORCHINDUCTOR_FORCE_DISABLE_CACHES="1"))


def main() -> None:
    if not os.path.exists(TESSERA):
        sys.exit("build first: cargo build --release")
    load = open("/proc/loadavg").read().split()[0]
    rows = []
    models = [("GPT-2 small prefill 128", "gpt2", 128), ("GPT-2 small prefill 512", "gpt2", 512), ("Llama-style prefill 512", "llama", 512)]
    for title, kind, seq in models:
        if kind == "gpt2":
            args = ["stdlib/gpt2.tsr", "--dim", f"seq={seq}"]
        else:
            args = ["stdlib/llama.tsr", "-D", "vocab=32000", "-D", "d=768", "-D", "layers=12", "-D", "heads=12", "-D", "kv_heads=4", "-D", "hidden=2048", "--dim", f"seq={seq}"]
        t = tessera(args); time.sleep(0.3)
        e = torch_run({"kind": kind, "seq": seq, "compile": False}); time.sleep(0.3)
        c = torch_run({"kind": kind, "seq": seq, "compile": True}); time.sleep(0.3)
        rows.append((title, t, e, c))
        print(title, t, e, c, flush=True)
    for seq in (512, 2048, 4096):
        t = tessera(["bench/attention.tsr", "--dim", f"seq={seq}"]); time.sleep(0.3)
        e = torch_run({"kind": "attention", "seq": seq, "compile": False}); time.sleep(0.3)
        rows.append((f"causal attention 12×64, seq {seq} (vs SDPA)", t, e, None))
        print(seq, t, e, flush=True)

    def ratio(t, p):
        return f"{p['ms'] / t['ms']:.2f}×" if p and "ms" in p else "–"

    lines = [
        "# Benchmarks (CPU)",
        "",
        f"Measured by `bench/run.py` on this machine (2 cores, 2 threads, load {load} at start), {time.strftime('%Y-%m-%d')}.",
        f"Medians of {REPEAT} runs after a warm-up; ratio = peer time / Tessera time (> 1: Tessera is faster).",
        "Reproduce: `cargo build --release && python bench/run.py` (in a venv with torch and transformers).",
        "",
        "| workload | Tessera ms | PyTorch eager ms | torch.compile ms | vs eager | vs compile | Tessera compile | torch.compile compile | peak RSS Tessera / PyTorch MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for title, t, e, c in rows:
        cm = f"{c['ms']:.1f}" if c and "ms" in c else "–"
        cc = f"{c['compile_ms'] / 1e3:.1f} s" if c and "compile_ms" in c else "–"
        em = f"{e['ms']:.1f}" if "ms" in e else e.get("error", "–")
        lines.append(
            f"| {title} | {t['ms']:.1f} | {em} | {cm} | {ratio(t, e)} | {ratio(t, c)} | {t['compile_ms']:.0f} ms | {cc} | {t['rss_mib']:.0f} / {e.get('rss_mib', 0):.0f} |"
        )
    lines += ["", "Tessera's activation arena (peak live intermediates): " + ", ".join(f"{title}: {t['arena_mib']:.1f} MiB" for title, t, _, _ in rows), ""]
    # Keep the sections the other scripts wrote (bench/gpu/run.py on a GPU machine,
    # bench/scan.py, bench/moe.py).
    old = open(RESULTS).read() if os.path.exists(RESULTS) else ""
    for m in SECTION.finditer(old):
        lines += ["", m.group(0), ""]
    open(RESULTS, "w").write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
