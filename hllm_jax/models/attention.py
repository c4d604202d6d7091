"""Segment-causal attention behind one function with an implementation switch.

Tokens attend causally (by index in the row) and only to tokens of the same segment; segment id
0 marks padding and is never attended to. One packed row may hold many items, so attention must
never cross segments.

Implementations (``impl``):
- ``dense``: masked einsum with a [rows, 1, 1, L, L] boolean mask built from segment ids.
- ``dot_product``: ``jax.nn.dot_product_attention`` (XLA; ``cudnn`` on GPUs) with the same mask.
- ``local``: exact blockwise attention for packed item rows. A segment is at most ``window``
  tokens long, so a query only ever sees keys in its own block of ``window`` tokens and the block
  before it: cost O(L * 2 * window) and no [L, L] mask, whatever the row length.
- ``splash``: reserved for the TPU splash-attention kernel (segment ids natively).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("dense", "dot_product", "local", "splash")
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def segment_mask(q_segments, kv_segments, causal: bool = True):
    """[B, Lq, Lk] bool: same non-zero segment and (if causal) key index <= query index."""
    m = (q_segments[:, :, None] == kv_segments[:, None, :]) & (kv_segments[:, None, :] != 0)
    if causal:
        lq, lk = q_segments.shape[1], kv_segments.shape[1]
        m = m & (jnp.arange(lq)[:, None] >= jnp.arange(lk)[None, :])[None]
    return m


def _dense(q, k, v, mask):
    """q [B, L, H, d], k/v [B, S, K, d], mask [B, L, S] -> [B, L, H, d]."""
    b, l, h, d = q.shape
    kh = k.shape[2]
    qg = q.reshape(b, l, kh, h // kh, d)
    scores = jnp.einsum("blkgd,bskd->bkgls", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (d ** -0.5)
    scores = jnp.where(mask[:, None, None], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgls,bskd->blkgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, l, h, d).astype(q.dtype)


def _local(q, k, v, segments, window: int):
    """Blockwise exact attention: block j of queries sees key blocks j-1 and j."""
    b, l, h, d = q.shape
    w = int(window)
    pad = (-l) % w
    if pad:
        padw = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        q, k, v, segments = padw(q), padw(k), padw(v), padw(segments)
    n = (l + pad) // w
    blk = lambda x: x.reshape((b, n, w) + x.shape[2:])
    prev = lambda x: jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
    qb, kb, vb, sb = blk(q), blk(k), blk(v), blk(segments)
    k2 = jnp.concatenate([prev(kb), kb], axis=2)          # [b, n, 2w, K, d]
    v2 = jnp.concatenate([prev(vb), vb], axis=2)
    s2 = jnp.concatenate([prev(sb), sb], axis=2)          # zeros before block 0 = padding
    idx_q = jnp.arange(w)[:, None] + w                    # query index within [prev, cur]
    idx_k = jnp.arange(2 * w)[None, :]
    mask = (sb[..., :, None] == s2[..., None, :]) & (s2[..., None, :] != 0) & (idx_k <= idx_q)
    out = _dense(qb.reshape(b * n, w, h, d), k2.reshape((b * n, 2 * w) + k2.shape[3:]),
                 v2.reshape((b * n, 2 * w) + v2.shape[3:]), mask.reshape(b * n, w, 2 * w))
    return out.reshape(b, n * w, h, d)[:, :l]


def attention(q, k, v, segments, *, impl: str = "dense", window: int | None = None):
    """Causal attention within segments. q [B, L, H, d]; k, v [B, L, K, d] (K divides H).

    ``segments`` [B, L] int: equal non-zero ids attend to each other, 0 is padding.
    ``window`` (``local`` only): an upper bound on segment length.
    """
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"attention: {q.shape[2]} query heads do not divide into {k.shape[2]} kv heads")
    if impl == "dense":
        return _dense(q, k, v, segment_mask(segments, segments))
    if impl == "dot_product":
        mask = segment_mask(segments, segments)[:, None]
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=None).astype(q.dtype)
    if impl == "local":
        if not window:
            raise ValueError("attention impl 'local' needs window = the longest segment (e.g. max_text_len + 1)")
        return _local(q, k, v, segments, window)
    if impl == "splash":
        raise NotImplementedError(
            "attention impl 'splash' (TPU splash-attention kernel) is not wired in yet; use 'local' "
            "for long packed rows or 'dense' / 'dot_product'")
    raise ValueError(f"unknown attention impl {impl!r}; choose one of {IMPLEMENTATIONS}")
