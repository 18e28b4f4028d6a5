#!/usr/bin/env python3
"""NumPy references for the research architectures in examples/research/ (no Hugging Face class
exists for them). Each model is written here from its paper's equations, in float64, with
random parameters named as Tessera names them; the fixture holds the parameters, the inputs
and the expected outputs:

    tests/research/fixtures/<name>.safetensors   "param.<name>", "input.<name>", "output.<name>" (f32)
    tests/research/fixtures/<name>.json          the -D overrides and --dim sizes the test uses

Run from the repository root with any Python that has numpy and safetensors:

    /root/tvenv/bin/python tests/research/gen.py [NAME ...]   # all cases, or the ones named
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parent / "fixtures"
erf = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def layer_norm(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


class Params(dict):
    """Random parameters by name (weights multiply on the right: x @ W)."""

    def __init__(self, rng):
        super().__init__()
        self.rng = rng

    def w(self, name, *shape, scale=None):
        scale = scale if scale is not None else 1.0 / math.sqrt(shape[0])
        self[name] = self.rng.normal(0.0, scale, shape)
        return self[name]

    def b(self, name, n):
        self[name] = 0.1 * self.rng.normal(0.0, 1.0, (n,))
        return self[name]

    def norm(self, name, n):
        self[f"{name}.weight"] = 1.0 + 0.2 * self.rng.normal(0.0, 1.0, (n,))
        self[f"{name}.bias"] = 0.1 * self.rng.normal(0.0, 1.0, (n,))
        return self[f"{name}.weight"], self[f"{name}.bias"]

    def linear(self, name, x, n_out, bias=True):
        y = x @ self.w(f"{name}.weight", x.shape[-1], n_out)
        return y + self.b(f"{name}.bias", n_out) if bias else y

    def mlp(self, name, x, hidden):
        h = gelu(self.linear(f"{name}.fc_in", x, hidden))
        return self.linear(f"{name}.fc_out", h, x.shape[-1])


def heads(x, h):  # [b, s, h*e] -> [b, h, s, e]
    b, s, d = x.shape
    return x.reshape(b, s, h, d // h).transpose(0, 2, 1, 3)


def merge(x):  # [b, h, s, e] -> [b, s, h*e]
    b, h, s, e = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, h * e)


def linformer(P, x, d, n_heads, k, max_seq, hidden, layers, eps):
    s = x.shape[1]
    for l in range(layers):
        p = f"layers.{l}"
        h = layer_norm(x, *P.norm(f"{p}.ln_1", d), eps)
        q = heads(P.linear(f"{p}.attn.q", h, d), n_heads)
        kk = heads(P.linear(f"{p}.attn.k", h, d), n_heads)
        v = heads(P.linear(f"{p}.attn.v", h, d), n_heads)
        E = P.w(f"{p}.attn.e_proj", k, max_seq, scale=1.0 / math.sqrt(s))
        F = P.w(f"{p}.attn.f_proj", k, max_seq, scale=1.0 / math.sqrt(s))
        kp, vp = E[:, :s] @ kk, F[:, :s] @ v  # [b, h, k, e]
        o = softmax(q @ kp.transpose(0, 1, 3, 2) / math.sqrt(d // n_heads), -1) @ vp
        x = x + P.linear(f"{p}.attn.o", merge(o), d)
        x = x + P.mlp(f"{p}.mlp", layer_norm(x, *P.norm(f"{p}.ln_2", d), eps), hidden)
    return {"y": x}


def aft(P, x, d, max_seq, hidden, eps):
    s = x.shape[1]
    h = layer_norm(x, *P.norm("ln_1", d), eps)
    q, k, v = (P.linear(f"full.{n}", h, d) for n in "qkv")
    w = P.w("full.pos_bias", max_seq, max_seq, scale=0.5)[:s, :s]
    # Y_t = sigmoid(Q_t) * sum_t' exp(K_t' + w_tt') V_t' / sum_t' exp(K_t' + w_tt')
    y = np.empty_like(q)
    for t in range(s):
        a = k + w[t][None, :, None]  # [b, t', d]
        a = np.exp(a - a.max(axis=1, keepdims=True))
        y[:, t] = sigmoid(q[:, t]) * (a * v).sum(1) / a.sum(1)
    x = x + P.linear("proj_full", y, d)
    h = layer_norm(x, *P.norm("ln_2", d), eps)
    q, k, v = (P.linear(f"simple.{n}", h, d) for n in "qkv")
    y = sigmoid(q) * (softmax(k, 1) * v).sum(1, keepdims=True)
    x = x + P.linear("proj_simple", y, d)
    return {"y": x + P.mlp("mlp", layer_norm(x, *P.norm("ln_3", d), eps), hidden)}


def matformer(P, x, d, n_heads, hidden, layers, eps):
    s = x.shape[1]
    causal = np.tril(np.ones((s, s), dtype=bool))
    for l in range(layers):
        p = f"layers.{l}.block"
        P.norm(f"{p}.ln_1", d)
        for n in "qkvo":
            P.w(f"{p}.attn.{n}.weight", d, d)
        P.norm(f"{p}.ln_2", d)
        P.w(f"{p}.ffn.up", d, hidden)
        P.b(f"{p}.ffn.up_bias", hidden)
        P.w(f"{p}.ffn.down", hidden, d)
        P.b(f"{p}.ffn.down_bias", d)

    def model(x, used):
        for l in range(layers):
            p = f"layers.{l}.block"
            h = layer_norm(x, P[f"{p}.ln_1.weight"], P[f"{p}.ln_1.bias"], eps)
            q, k, v = (heads(h @ P[f"{p}.attn.{n}.weight"], n_heads) for n in "qkv")
            sc = np.where(causal, q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // n_heads), -np.inf)
            x = x + merge(softmax(sc, -1) @ v) @ P[f"{p}.attn.o.weight"]
            h = layer_norm(x, P[f"{p}.ln_2.weight"], P[f"{p}.ln_2.bias"], eps)
            # The granularity `used`: the first `used` hidden units of the one FFN.
            u = gelu(h @ P[f"{p}.ffn.up"][:, :used] + P[f"{p}.ffn.up_bias"][:used])
            x = x + u @ P[f"{p}.ffn.down"][:used] + P[f"{p}.ffn.down_bias"]
        return x

    return {"y_full": model(x, hidden), "y_half": model(x, hidden // 2), "y_quarter": model(x, hidden // 4)}


def transformer_vq(P, x, d, n_heads, codes, hidden, layers, eps):
    s = x.shape[1]
    hd = d // n_heads
    causal = np.tril(np.ones((s, s), dtype=bool))
    for l in range(layers):
        p = f"layers.{l}"
        h = layer_norm(x, *P.norm(f"{p}.ln_1", d), eps)
        q, k, v = (heads(P.linear(f"{p}.attn.{n}", h, d), n_heads) for n in "qkv")
        C = P.w(f"{p}.attn.codebook", codes, hd, scale=1.0)
        # the nearest code of every key (the lowest index on a tie)
        dist = ((k[..., None, :] - C) ** 2).sum(-1)  # [b, h, s, codes]
        k_hat = C[dist.argmin(-1)]
        sc = np.where(causal, q @ k_hat.transpose(0, 1, 3, 2) / math.sqrt(hd), -np.inf)
        x = x + P.linear(f"{p}.attn.o", merge(softmax(sc, -1) @ v), d)
        x = x + P.mlp(f"{p}.mlp", layer_norm(x, *P.norm(f"{p}.ln_2", d), eps), hidden)
    return {"y": x}


def causal_conv(x, h):
    """y[b, t, c] = sum_{s <= t} h[s, c] x[b, t - s, c], directly (numpy.convolve per channel)."""
    b, l, d = x.shape
    y = np.empty_like(x)
    for i in range(b):
        for c in range(d):
            y[i, :, c] = np.convolve(x[i, :, c], h[:, c])[:l]
    return y


def hyena(P, x, d, bands, width, hidden, layers, eps):
    l = x.shape[1]

    def implicit_filter(name):
        t = np.arange(l) / l
        f = np.arange(1, bands + 1) * 2.0 * math.pi
        z = np.concatenate([t[:, None], np.sin(t[:, None] * f), np.cos(t[:, None] * f)], axis=-1)
        h = np.sin(P.linear(f"{name}.fc_1", z, width))
        h = P.linear(f"{name}.fc_3", np.sin(P.linear(f"{name}.fc_2", h, width)), d, bias=False)
        decay = 1.0 + 0.5 * np.abs(P.rng.normal(0.0, 1.0, (d,)))
        P[f"{name}.decay"] = decay
        return h * np.exp(-t[:, None] * decay)

    for i in range(layers):
        p = f"layers.{i}"
        u = layer_norm(x, *P.norm(f"{p}.ln_1", d), eps)
        proj = P.linear(f"{p}.mixer.in_proj", u, 3 * d)
        v, x1, x2 = proj[..., :d], proj[..., d:2 * d], proj[..., 2 * d:]
        b1, b2 = P.b(f"{p}.mixer.bias_1", d), P.b(f"{p}.mixer.bias_2", d)
        z = x1 * (causal_conv(v, implicit_filter(f"{p}.mixer.filter_1")) + v * b1)
        y = x2 * (causal_conv(z, implicit_filter(f"{p}.mixer.filter_2")) + z * b2)
        x = x + P.linear(f"{p}.mixer.out_proj", y, d)
        x = x + P.mlp(f"{p}.mlp", layer_norm(x, *P.norm(f"{p}.ln_2", d), eps), hidden)
    return {"y": x}


def ponet(P, x, d, window, hidden, layers, eps, segment_ids):
    b, s, _ = x.shape
    half = (window - 1) // 2
    for l in range(layers):
        p = f"layers.{l}.mixer"
        q, k, v = (P.linear(f"{p}.{n}", x, d) for n in "qkv")
        g = q.mean(1, keepdims=True)  # one global query per sequence
        glob = softmax(g @ k.transpose(0, 2, 1) / math.sqrt(d), -1) @ v
        xs = P.linear(f"{p}.segment", x, d)
        seg = np.empty_like(xs)
        for i in range(b):
            for t in range(s):
                seg[i, t] = xs[i, segment_ids[i] == segment_ids[i, t]].max(0)
        xl = P.linear(f"{p}.local", x, d)
        loc = np.stack([xl[:, max(0, t - half):t + half + 1].max(1) for t in range(s)], axis=1)
        x = layer_norm(x + P.linear(f"{p}.o", glob + seg + loc, d), *P.norm(f"layers.{l}.ln_1", d), eps)
        x = layer_norm(x + P.mlp(f"layers.{l}.mlp", x, hidden), *P.norm(f"layers.{l}.ln_2", d), eps)
    return {"y": x}


def depthwise(P, name, x, k, weight="weight", bias="bias"):
    """A centred depthwise convolution along the sequence, zero-padded (torch's Conv1d with
    groups = channels, padding (k - 1) / 2); the weight is [k, channels] and cross-correlates."""
    w = P.w(f"{name}.{weight}", k, x.shape[-1], scale=1.0 / k)
    pad = (k - 1) // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (0, 0)))
    y = sum(w[j] * xp[:, j:j + x.shape[1]] for j in range(k))
    return y + P.b(f"{name}.{bias}", x.shape[-1])


def nalaformer(P, x, d, n_heads, hidden, layers, eps):
    b, s, _ = x.shape
    e = d // n_heads
    # The paper's theta_shift on a sequence: angle 1 / 10000 ** linspace(0, 1, e/2), one per
    # pair of features (2i, 2i + 1), which rotate together (rotate_every_two).
    angle = np.repeat(1.0 / 10000.0 ** np.linspace(0.0, 1.0, e // 2), 2)
    theta = np.arange(s)[:, None] * angle[None, :]  # [s, e]

    def theta_shift(y):
        rot = np.stack([-y[..., 1::2], y[..., 0::2]], axis=-1).reshape(y.shape)
        return y * np.cos(theta) + rot * np.sin(theta)

    for l in range(layers):
        p = f"layers.{l}"
        x = x + depthwise(P, f"{p}.cpe1", x, 3)
        h = layer_norm(x, *P.norm(f"{p}.norm1", d), eps)
        q, k, vm, g = (P.linear(f"{p}.attn.{n}", h, d) for n in "qkvg")
        q, k, v = heads(q, n_heads), heads(k, n_heads) ** 3, heads(vm, n_heads)
        qn = np.sqrt((q * q).sum(-1, keepdims=True))
        power = 3.0 * (0.5 + np.tanh(qn))
        q1, q2 = (np.maximum(q, 0) / qn) ** power, (np.maximum(-q, 0) / qn) ** power
        k1, k2 = np.maximum(k, 0), np.maximum(-k, 0)
        qr = np.concatenate([theta_shift(q1), theta_shift(q2)], -1)
        kr = np.concatenate([theta_shift(k1), theta_shift(k2)], -1)
        qf, kf = np.concatenate([q1, q2], -1), np.concatenate([k1, k2], -1)
        z = 1.0 / (qf @ kf.mean(2, keepdims=True).transpose(0, 1, 3, 2) + 1e-6)
        kv = (kr.transpose(0, 1, 3, 2) / math.sqrt(s)) @ (v / math.sqrt(s))
        o = merge(qr @ kv * z) + depthwise(P, f"{p}.attn", vm, 5, "lepe", "lepe_bias")
        o = layer_norm(o, *P.norm(f"{p}.attn.ln", d), eps) * g * sigmoid(g)
        x = x + P.linear(f"{p}.attn.out_proj", o, d)
        x = x + depthwise(P, f"{p}.cpe2", x, 3)
        h = layer_norm(x, *P.norm(f"{p}.norm2", d), eps)
        u = gelu(P.linear(f"{p}.ffn.fc1", h, hidden))
        u = u + depthwise(P, f"{p}.ffn", u, 3, "dwconv", "dwconv_bias")
        x = x + P.linear(f"{p}.ffn.fc2", u, d)
    return {"y": x}


def elu1(x):
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def linear_attention(P, x, d, n_heads, hidden, layers, eps):
    # Written in its quadratic form, y_t = sum_{i<=t} (phi(q_t).phi(k_i)) v_i / sum_{i<=t} phi(q_t).phi(k_i),
    # not as the recurrence the model uses: the two agree only if the recurrence is right.
    b, s, _ = x.shape
    e = d // n_heads
    for l in range(layers):
        p = f"layers.{l}"
        h = layer_norm(x, *P.norm(f"{p}.ln_1", d), eps)
        q, k, v = (P.linear(f"{p}.attn.{n}", h, d, bias=False).reshape(b, s, n_heads, e) for n in "qkv")
        q, k = elu1(q), elu1(k)
        y = np.zeros((b, s, n_heads, e))
        for t in range(s):
            a = np.einsum("bhe,bihe->bih", q[:, t], k[:, : t + 1])
            y[:, t] = np.einsum("bih,bihe->bhe", a, v[:, : t + 1]) / a.sum(1)[..., None]
        x = x + P.linear(f"{p}.attn.o", y.reshape(b, s, d), d, bias=False)
        x = x + P.mlp(f"{p}.mlp", layer_norm(x, *P.norm(f"{p}.ln_2", d), eps), hidden)
    return {"y": x}


def rwkv6(P, x, d, n_heads, hidden, layers, lora, eps):
    # RWKV-6 time mixing from the Finch paper's equations (static token shift), per head:
    # y_t = r_t (S + diag(u) k_t^T v_t), S <- diag(w_t) S + k_t^T v_t, w_t = exp(-exp(w0 + tanh(x_w A) B)).
    b, s, _ = x.shape
    e = d // n_heads
    for l in range(layers):
        p, tm = f"layers.{l}", f"layers.{l}.time_mix"
        h = layer_norm(x, *P.norm(f"{p}.ln_1", d), eps)
        prev = np.concatenate([np.zeros_like(h[:, :1]), h[:, :-1]], axis=1)
        mix = P[f"{tm}.mix"] = P.rng.uniform(0.0, 1.0, (5, d))
        xr, xk, xv, xg, xw = (h + (prev - h) * mix[i] for i in range(5))
        r, k, v = (P.linear(f"{tm}.{n}", xi, d, bias=False).reshape(b, s, n_heads, e)
                   for n, xi in (("receptance", xr), ("key", xk), ("value", xv)))
        g = P.linear(f"{tm}.gate", xg, d, bias=False)
        g = g * sigmoid(g)
        w0 = P[f"{tm}.decay"] = -0.5 + 0.5 * P.rng.normal(0.0, 1.0, (d,))
        w = np.exp(-np.exp(w0 + np.tanh(xw @ P.w(f"{tm}.decay_a", d, lora)) @ P.w(f"{tm}.decay_b", lora, d)))
        w = w.reshape(b, s, n_heads, e)
        u = P[f"{tm}.bonus"] = 0.5 * P.rng.normal(0.0, 1.0, (n_heads, e))
        S = np.zeros((b, n_heads, e, e))
        y = np.zeros((b, s, n_heads, e))
        for t in range(s):
            kv = k[:, t, :, :, None] * v[:, t, :, None, :]
            y[:, t] = np.einsum("bhi,bhij->bhj", r[:, t], S + u[None, :, :, None] * kv)
            S = w[:, t, :, :, None] * S + kv
        m = y.mean(-1, keepdims=True)
        yn = ((y - m) / np.sqrt(((y - m) ** 2).mean(-1, keepdims=True) + eps)).reshape(b, s, d)
        lw = P[f"{tm}.ln_x_weight"] = 1.0 + 0.2 * P.rng.normal(0.0, 1.0, (d,))
        lb = P[f"{tm}.ln_x_bias"] = 0.1 * P.rng.normal(0.0, 1.0, (d,))
        x = x + P.linear(f"{tm}.output", (yn * lw + lb) * g, d, bias=False)
        h = layer_norm(x, *P.norm(f"{p}.ln_2", d), eps)
        kk = np.maximum(P.linear(f"{p}.key", h, hidden, bias=False), 0.0)
        x = x + P.linear(f"{p}.value", kk * kk, d, bias=False)
    return {"y": x}


def mixture_of_depths(P, x, d, n_heads, hidden, layers, every, eps):
    # Mixture-of-Depths: on odd layers, the s/every tokens with the highest router score pass
    # through the block (attention among themselves in sequence order, then SwiGLU), their
    # update scaled by the score; the rest are copied. Even layers are full blocks.
    b, s, _ = x.shape
    e = d // n_heads

    def rms(name, h):
        w = P[f"{name}.weight"] = 1.0 + 0.2 * P.rng.normal(0.0, 1.0, (d,))
        return lambda y: y / np.sqrt((y * y).mean(-1, keepdims=True) + eps) * w

    def attention(name):
        wq, wk, wv, wo = (P.w(f"{name}.{n}.weight", d, d) for n in "qkvo")

        def f(h):  # h [b, t, d], causal over t
            t = h.shape[1]
            q, k, v = ((h @ w).reshape(h.shape[0], t, n_heads, e).transpose(0, 2, 1, 3) for w in (wq, wk, wv))
            sc = q @ k.transpose(0, 1, 3, 2) / math.sqrt(e)
            sc = np.where(np.tril(np.ones((t, t), dtype=bool)), sc, -np.inf)
            y = softmax(sc, -1) @ v
            return y.transpose(0, 2, 1, 3).reshape(h.shape[0], t, d) @ wo
        return f

    def swiglu(name):
        wg, wu, wd = P.w(f"{name}.gate.weight", d, hidden), P.w(f"{name}.up.weight", d, hidden), P.w(f"{name}.down.weight", hidden, d)
        return lambda h: ((h @ wg) * sigmoid(h @ wg) * (h @ wu)) @ wd

    margins = []
    for l in range(layers):
        p = f"layers.{l}" + (".mod" if l % 2 == 1 else "")
        if l % 2 == 1:
            wr = P.w(f"{p}.router.weight", d, 1)
        an, at, mn, ml = rms(f"{p}.attn_norm", x), attention(f"{p}.attn"), rms(f"{p}.mlp_norm", x), swiglu(f"{p}.mlp")
        if l % 2 == 0:
            x = x + at(an(x))
            x = x + ml(mn(x))
            continue
        r = (x @ wr)[..., 0]
        c = s // every
        out = x.copy()
        for bi in range(b):
            order = np.argsort(-r[bi], kind="stable")
            margins.append(r[bi, order[c - 1]] - r[bi, order[c]])
            pos = np.sort(order[:c])
            xs = x[bi:bi + 1, pos]
            h = xs + at(an(xs))
            h = h + ml(mn(h))
            out[bi, pos] = x[bi, pos] + (h - xs)[0] * r[bi, pos][:, None]
        x = out
    # A choice that f32 rounding could flip would make the fixture fragile.
    assert min(margins) > 1e-3, f"router margin {min(margins)}"
    return {"y": x}


CASES = [
    # name, function, hyper-parameters (passed as -D), batch, seq
    ("linformer", linformer, dict(d=24, n_heads=3, k=5, max_seq=16, hidden=40, layers=2, eps=1e-5), 2, 11),
    ("aft", aft, dict(d=20, max_seq=16, hidden=36, eps=1e-5), 2, 9),
    ("matformer", matformer, dict(d=24, n_heads=3, hidden=48, layers=2, eps=1e-5), 2, 10),
    ("transformer_vq", transformer_vq, dict(d=24, n_heads=3, codes=7, hidden=40, layers=2, eps=1e-5), 2, 9),
    ("hyena", hyena, dict(d=12, bands=3, width=10, hidden=24, layers=2, eps=1e-5), 2, 13),
    ("ponet", ponet, dict(d=16, window=3, hidden=32, layers=2, eps=1e-5), 2, 11),
    ("nalaformer", nalaformer, dict(d=24, n_heads=2, hidden=40, layers=2, eps=1e-6), 2, 13),
    ("linear_attention", linear_attention, dict(d=24, n_heads=3, hidden=40, layers=2, eps=1e-5), 2, 11),
    ("rwkv6", rwkv6, dict(d=24, n_heads=3, hidden=40, layers=2, lora=6, eps=1e-5), 2, 13),
    ("mixture_of_depths", mixture_of_depths, dict(d=24, n_heads=3, hidden=40, layers=4, every=4, eps=1e-5), 2, 12),
]
# Tessera's name for a hyper-parameter where it differs.
RENAME = {"n_heads": "heads"}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    only = set(sys.argv[1:])  # names to (re)write; all when none is given
    for i, (name, fn, hp, batch, seq) in enumerate(CASES):
        if only and name not in only:
            continue
        rng = np.random.default_rng(1000 + i)
        x = rng.normal(0.0, 1.0, (batch, seq, hp["d"]))
        P = Params(rng)
        extra = {}
        if name == "ponet":  # segments (sentences) of varied lengths
            extra["segment_ids"] = np.array([[0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3], [0, 1, 1, 1, 1, 1, 2, 2, 3, 3, 3]])
        outs = fn(P, x, **hp, **extra)
        tensors = {f"param.{k}": v.astype(np.float32) for k, v in P.items()}
        tensors["input.x"] = x.astype(np.float32)
        tensors.update({f"input.{k}": v.astype(np.int64) for k, v in extra.items()})
        tensors.update({f"output.{k}": v.astype(np.float32) for k, v in outs.items()})
        save_file(tensors, str(OUT / f"{name}.safetensors"))
        defines = {RENAME.get(k, k): v for k, v in hp.items()}
        with open(OUT / f"{name}.json", "w") as f:
            json.dump({"defines": defines, "dims": {"batch": batch, "seq": seq}}, f, indent=1)
            f.write("\n")
        print(name, {k: (list(v.shape), float(np.abs(v).max())) for k, v in outs.items()})


if __name__ == "__main__":
    main()
