"""Full-ranking metrics from target ranks: Recall@K, NDCG@K, and cold-start buckets.

Rank rule (documented, deterministic): rank = 1 + the number of other items whose score is
greater than **or equal to** the target's (ties count against the target, so a model that scores
everything equally gets the worst rank, never the best). A target whose own score is -inf (it
occurs earlier in the user's history and is masked, as in the reference) is never retrieved.
Recall@K = 1 if rank <= K; NDCG@K = 1 / log2(rank + 1) if rank <= K, else 0 (one target).
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

TOPK = (5, 10, 50, 200)
# Target-item frequency buckets (occurrences in the training part), inclusive bounds.
COLD_START_BUCKETS = ((0, 0), (1, 4), (5, 19), (20, None))


def target_ranks(scores, targets):
    """scores [B, N] (masked entries -inf), targets [B] -> rank [B] float32 (inf = not retrievable)."""
    t = jnp.take_along_axis(scores, targets[:, None], axis=1)            # [B, 1]
    n = scores.shape[1]
    others = jnp.arange(n)[None, :] != targets[:, None]
    ahead = jnp.sum((scores >= t) & others & (scores > -jnp.inf), axis=1)
    rank = 1.0 + ahead.astype(jnp.float32)
    return jnp.where(jnp.isneginf(t[:, 0]), jnp.inf, rank)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = TOPK) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over users (float64)."""
    r = np.asarray(ranks, np.float64)
    out = {}
    if r.size == 0:
        return {f"{m}@{k}": float("nan") for k in ks for m in ("recall", "ndcg")}
    mean = lambda x: float(np.mean(x))
    for k in ks:
        hit = r <= k
        out[f"recall@{k}"] = mean(hit.astype(np.float64))
        with np.errstate(divide="ignore"):
            out[f"ndcg@{k}"] = mean(np.where(hit, 1.0 / np.log2(r + 1.0), 0.0))
    return out


def bucket_name(lo: int, hi: int | None) -> str:
    return f"{lo}" if hi == lo else (f"{lo}+" if hi is None else f"{lo}-{hi}")


def cold_start_metrics(ranks: np.ndarray, target_counts: np.ndarray, ks: Sequence[int] = TOPK,
                       buckets=COLD_START_BUCKETS) -> dict[str, dict]:
    """Metrics split by how often each user's target occurs in training (plus the user count)."""
    ranks, counts = np.asarray(ranks), np.asarray(target_counts)
    out = {}
    for lo, hi in buckets:
        sel = (counts >= lo) & (counts <= (np.inf if hi is None else hi))
        out[bucket_name(lo, hi)] = dict(users=int(sel.sum()), **metrics_from_ranks(ranks[sel], ks))
    return out
