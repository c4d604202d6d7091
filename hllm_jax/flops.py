"""Analytic FLOP counts (multiply-add = 2 FLOPs, MaxText's convention) and a jaxpr matmul counter.

Per decoder layer and token (forward): the projections ``2 * (D*H*hd + 2*D*K*hd + H*hd*D + 3*D*F)``;
attention scores and the weighted sum ``2 * 2 * H * hd * c`` where ``c`` is the number of keys
the token attends to. Model FLOPs count causal attention as ``l * l / 2`` key visits per segment
of ``l`` tokens (not ``l * (l + 1) / 2``, and not the ``L * L`` a dense kernel computes over a
whole packed row); ``attention="computed"`` counts what a dense kernel does instead (the test
compares that with the counted program). Training = 3 x forward (the backward pass costs two
forwards) for everything that carries a gradient. InfoNCE: the logits ``2 * P * M * D``
(positions x negatives x width) with gradient, plus the same-item mask ``2 * P * M * D``
(target x negatives, no gradient: counted once). Norms, softmax, RoPE, gathers are not counted.

ID baselines (``baseline_flops``), per layer and position (forward; ``D`` = width = heads x
head dim): SASRec ``2 * (4*D*D + 2*D*F)`` (Q, K, V, O and the FFN of width ``F``), HSTU
``2 * (4*D*D + D*D)`` (the fused U/V/Q/K projection and O); attention ``2 * 2 * D * c`` as
above; HSTU's optional item projection ``2 * E * D`` per unique item (``E`` its item width). The
ID lookup is a gather (0 FLOPs). InfoNCE as above, with ``num_negatives`` the count each position
is scored against (the shared M, or K of its own).

``cost_analysis()`` cannot replace this: it counts a scanned layer body once (ENVIRONMENT.md).
``count_matmul_flops`` walks a program's jaxpr instead (scan bodies times their length) and
is what the tests check these formulas against.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from hllm_jax.models.baselines import HSTUConfig, SASRecConfig
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


def hllm_flops(item: LlamaConfig, user: LlamaConfig, *, item_lengths, batch: int, seq_len: int,
               num_negatives: int, proj: bool = False, train: bool = True, attention: str = "model",
               rows: tuple[int, int] | None = None) -> float:
    """FLOPs of one HLLM step: item LLM over items of ``item_lengths`` tokens (incl. the [ITEM]
    slot; deduplicated), user LLM over ``batch`` x ``seq_len``, InfoNCE over ``num_negatives``.

    train: forward + backward (else forward only). attention: ``model`` (causal, per segment) or
    ``computed`` (what a dense kernel computes: ``rows = (R, L)`` packed rows, ``B * S * S``
    for the user LLM; for checking against a counted program).
    """
    lengths = np.asarray(item_lengths, np.float64)
    if attention == "model":
        item_visits, user_visits = segment_key_visits(lengths), batch * seq_len * seq_len / 2.0
    elif attention == "computed":
        if rows is None:
            raise ValueError("attention='computed' needs rows=(R, L)")
        item_visits, user_visits = rows[0] * rows[1] ** 2, batch * seq_len ** 2
    else:
        raise ValueError(f"attention={attention!r}: 'model' or 'computed'")
    positions = batch * seq_len
    fwd = lengths.sum() * matmul_flops_per_token(item) + attention_flops(item, item_visits)
    if proj:
        fwd += 2 * len(lengths) * item.hidden * user.hidden
    fwd += positions * matmul_flops_per_token(user) + attention_flops(user, user_visits)
    return _with_info_nce(fwd, positions, num_negatives, user.hidden, train)


def _with_info_nce(fwd: float, positions: int, num_negatives: int, width: int, train: bool) -> float:
    """Step FLOPs from the model's forward ``fwd``: plus the InfoNCE logits (with gradient) and
    the same-item mask (no gradient, counted once); x3 for training."""
    fwd += 2 * positions * num_negatives * width          # logits
    mask = 2 * positions * num_negatives * width          # same-item mask
    return (3.0 * fwd if train else fwd) + mask


def hllm_train_flops(item: LlamaConfig, user: LlamaConfig, *, item_lengths, batch: int, seq_len: int,
                     num_negatives: int, proj: bool = False) -> float:
    """Model FLOPs of one fused training step (see ``hllm_flops``)."""
    return hllm_flops(item, user, item_lengths=item_lengths, batch=batch, seq_len=seq_len,
                      num_negatives=num_negatives, proj=proj)


def baseline_flops(cfg, *, unique_items: int, batch: int, seq_len: int, num_negatives: int,
                   train: bool = True, attention: str = "model") -> float:
    """FLOPs of one SASRec/HSTU step (``hllm_jax.models.baselines`` configs): ``unique_items``
    looked up (HSTU projects them), a user model over ``batch`` x ``seq_len``, InfoNCE with each
    position scored against ``num_negatives``. train / attention as ``hllm_flops`` (``computed``:
    ``S * S`` key visits per sequence, what the dense kernel does)."""
    d = cfg.hidden
    if isinstance(cfg, SASRecConfig):
        per_token = 2 * (4 * d * d + 2 * d * cfg.inner_mult * d)
        lookup = 0.0
    elif isinstance(cfg, HSTUConfig):
        per_token = 2 * (4 * d * d + d * d)
        lookup = 2.0 * unique_items * cfg.item_width * d if cfg.item_width != d else 0.0
    else:
        raise TypeError(f"baseline_flops: {type(cfg).__name__} is not an ID baseline config")
    visits = {"model": seq_len * seq_len / 2.0, "computed": float(seq_len * seq_len)}
    if attention not in visits:
        raise ValueError(f"attention={attention!r}: 'model' or 'computed'")
    positions = batch * seq_len
    fwd = lookup + cfg.layers * (positions * per_token + 4 * d * batch * visits[attention])
    return _with_info_nce(fwd, positions, num_negatives, d, train)


def batch_item_lengths(segments: np.ndarray) -> np.ndarray:
    """Token count of every item in packed ``segments`` [R, L] (0 = padding)."""
    seg = np.asarray(segments)
    out = []
    for row in seg:
        c = np.bincount(row[row > 0])
        out.append(c[c > 0])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


# -- counting ---------------------------------------------------------------------------------
def _sub_jaxprs(value):
    """Jaxprs inside an equation parameter (a Jaxpr, a ClosedJaxpr, or tuples of them)."""
    if hasattr(value, "eqns"):
        return [value]
    if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        return [value.jaxpr]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def _jaxpr_matmul_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
            continue
        if name == "while":
            raise ValueError("count_matmul_flops: a while loop has no static trip count")
        if name == "cond":
            total += max(_jaxpr_matmul_flops(j) for j in _sub_jaxprs(eqn.params["branches"]))
            continue
        inner = sum(_jaxpr_matmul_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
        total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


def count_matmul_flops(fn, *args) -> float:
    """FLOPs of every matrix multiply (``dot_general``) ``fn(*args)`` executes; scans counted
    once per iteration, rematerialised forwards included."""
    return _jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)
