"""Analytic FLOP counts (multiply-add = 2 FLOPs), MaxText's convention.

Per decoder layer and token (forward): the projections ``2 * (D*H*hd + 2*D*K*hd + H*hd*D + 3*D*F)``;
attention scores and the weighted sum ``2 * 2 * H * hd * c`` where ``c`` is the number of keys
the token attends to. Causal masking halves the dense count: a segment of ``l`` tokens
contributes ``l * l / 2`` key visits (not ``l * (l + 1) / 2``, and not the ``L * L`` a dense
kernel computes over a whole packed row: only model FLOPs are counted). Training = 3 x forward
(the backward pass costs two forwards). The InfoNCE logits add ``2 * 2 * P * M * D`` (positions x
negatives x width, targets too). Norms, softmax, RoPE and embedding lookups are not counted.
``cost_analysis()`` cannot replace this: it counts a scanned layer body once.
"""

from __future__ import annotations

import numpy as np

from hllm_jax.models.llama import LlamaConfig


def matmul_flops_per_token(cfg: LlamaConfig) -> int:
    d, hd = cfg.hidden, cfg.hd
    per_layer = 2 * (d * cfg.heads * hd + 2 * d * cfg.kv_heads * hd + cfg.heads * hd * d + 3 * d * cfg.mlp)
    return cfg.layers * per_layer


def attention_flops(cfg: LlamaConfig, key_visits: float) -> float:
    """Forward attention FLOPs for ``key_visits`` = sum over segments of l * l / 2."""
    return cfg.layers * 4 * cfg.heads * cfg.hd * key_visits


def segment_key_visits(lengths) -> float:
    lengths = np.asarray(lengths, np.float64)
    return float(np.sum(lengths * lengths) / 2.0)


def hllm_train_flops(item: LlamaConfig, user: LlamaConfig, *, item_lengths, batch: int, seq_len: int,
                     num_negatives: int, proj: bool = False) -> float:
    """Training FLOPs of one fused step: item LLM over the (deduplicated) items of lengths
    ``item_lengths`` (tokens incl. the [ITEM] slot), user LLM over ``batch`` x ``seq_len``, loss."""
    lengths = np.asarray(item_lengths, np.float64)
    tokens = lengths.sum()
    fwd = tokens * matmul_flops_per_token(item) + attention_flops(item, segment_key_visits(lengths))
    if proj:
        fwd += 2 * len(lengths) * item.hidden * user.hidden
    fwd += batch * seq_len * matmul_flops_per_token(user)
    fwd += attention_flops(user, batch * seq_len * seq_len / 2.0)
    fwd += 2 * 2 * batch * seq_len * num_negatives * user.hidden
    return 3.0 * fwd


def batch_item_lengths(segments: np.ndarray) -> np.ndarray:
    """Token count of every item in packed ``segments`` [R, L] (0 = padding)."""
    seg = np.asarray(segments)
    out = []
    for row in seg:
        c = np.bincount(row[row > 0])
        out.append(c[c > 0])
    return np.concatenate(out) if out else np.zeros(0, np.int64)
