"""InfoNCE with negatives shared over the global batch (HLLM's loss), and its metrics.

  u, p, n = normalise(user outputs), normalise(next-item vectors), normalise(negatives)
  logits  = scale * [u.p, u.n_1 .. u.n_M]      every position is scored against ALL M negatives
  a negative whose cosine to the target exceeds ``threshold`` (0.99) is masked to -inf
  loss    = mean over valid positions of cross-entropy with the positive as label

Metrics (means over valid positions): ``nce_samples`` = 1 + surviving negatives, and
``nce_top{k}_acc`` = fraction whose positive is among the k largest logits of its row (k in
1, 5, 10, 50, 100; a k larger than the row is skipped, as in the reference).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TOPK = (1, 5, 10, 50, 100)


def _normalize(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def info_nce(user, targets, negatives, mask, scale, *, threshold: float = 0.99):
    """user, targets [B, S, D]; negatives [M, D]; mask [B, S] bool; scale = exp(logit_scale).

    Returns (loss, metrics, logits [B, S, 1 + M] with -inf at masked negatives).
    """
    u = _normalize(user.astype(jnp.float32))
    p = _normalize(targets.astype(jnp.float32))
    n = _normalize(negatives.astype(jnp.float32))
    pos = jnp.sum(u * p, axis=-1, keepdims=True)                    # [B, S, 1]
    neg = jnp.einsum("bsd,md->bsm", u, n)                           # [B, S, M]
    same = jnp.einsum("bsd,md->bsm", p, n) > threshold
    logits = jnp.concatenate([pos, neg], axis=-1) * scale
    dropped = jnp.concatenate([jnp.zeros_like(pos, bool), same], axis=-1)
    logits = jnp.where(dropped, -jnp.inf, logits)
    logp = logits[..., 0] - jax.nn.logsumexp(logits, axis=-1)       # [B, S]
    valid = mask.astype(jnp.float32)
    count = jnp.maximum(valid.sum(), 1.0)
    loss = -jnp.sum(jnp.where(mask, logp, 0.0)) / count

    mean = lambda x: jnp.sum(jnp.where(mask, x, 0.0)) / count
    metrics = {"nce_samples": mean((~dropped).sum(-1).astype(jnp.float32))}
    logits_sg = jax.lax.stop_gradient(logits)
    rank = jnp.sum(logits_sg[..., 1:] > logits_sg[..., :1], axis=-1)  # negatives beating the positive
    for k in TOPK:
        if k > logits.shape[-1]:
            break
        metrics[f"nce_top{k}_acc"] = mean((rank < k).astype(jnp.float32))
    metrics["valid_positions"] = valid.sum()
    return loss, metrics, logits
