"""HLLM: an item LLM that turns packed item text into vectors, a user LLM over those vectors.

- ``encode_items``: packed rows -> one vector per unique item: the final normed hidden state at
  the item's [ITEM] slot (a learned vector written into the input embeddings there), or the mean
  over the item's tokens when ``item_emb_token_n = 0``. Optional learned projection to the user
  width when the two LLMs differ in width.
- ``encode_users``: item vectors [B, S, D] -> user LLM outputs, causal with key padding,
  positions 0..S-1 regardless of left padding.
- ``__call__`` on a ``TrainBatch``: the InfoNCE loss and its metrics (``hllm_jax.losses``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from hllm_jax.batch import PackedItems, TrainBatch
from hllm_jax.losses import info_nce
from hllm_jax.models.llama import LlamaConfig, LlamaDecoder
from hllm_jax.sharding import constrain

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


@dataclasses.dataclass(frozen=True)
class HLLMConfig:
    item: LlamaConfig = LlamaConfig()
    user: LlamaConfig = LlamaConfig(vocab=0)
    item_emb_token_n: int = 1  # 1: [ITEM] slot; 0: mean pooling over the item's tokens
    item_proj: bool = False  # learned linear map item width -> user width
    nce_threshold: float = 0.99

    def __post_init__(self):
        if self.item_emb_token_n not in (0, 1):
            raise ValueError(f"item_emb_token_n={self.item_emb_token_n}: only 0 (mean pooling) or 1 "
                             f"([ITEM] slot) are supported")
        if not self.item.vocab:
            raise ValueError("the item LLM needs a token embedding: set item.vocab > 0")
        if self.user.vocab:
            raise ValueError("the user LLM reads item vectors, not tokens: set user.vocab = 0")
        if self.item.hidden != self.user.hidden and not self.item_proj:
            raise ValueError(
                f"item LLM width {self.item.hidden} != user LLM width {self.user.hidden}: set "
                f"item_proj=True to learn a linear projection, or make the widths equal")


class HLLM(nnx.Module):
    def __init__(self, cfg: HLLMConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.item_llm = LlamaDecoder(cfg.item, rngs)
        self.user_llm = LlamaDecoder(cfg.user, rngs)
        if cfg.item_emb_token_n:
            self.item_token = nnx.Param(
                cfg.item.init_std * jax.random.normal(rngs.params(), (cfg.item.hidden,), jnp.float32),
                axes=("norm",))
        if cfg.item_proj:
            self.proj = nnx.Param(
                jax.random.normal(rngs.params(), (cfg.item.hidden, cfg.user.hidden), jnp.float32)
                / math.sqrt(cfg.item.hidden), axes=("embed", None))
        self.logit_scale = nnx.Param(jnp.asarray(LOGIT_SCALE_INIT, jnp.float32), axes=())

    def encode_items(self, items: PackedItems):
        """Unique-item vectors [U, D_user] (float32) from packed rows."""
        llm = self.item_llm
        x = llm.embed_tokens(items.tokens)
        if self.cfg.item_emb_token_n:
            tok = self.item_token[...].astype(x.dtype)
            x = jnp.where(items.item_slot[..., None], tok, x)
        h = llm(x, items.segments, items.positions)                      # [R, L, D]
        flat = h.reshape(-1, h.shape[-1]).astype(jnp.float32)
        u = items.item_last.shape[0]
        if self.cfg.item_emb_token_n:
            emb = jnp.take(flat, items.item_last, axis=0)
        else:
            seg = items.token_item.reshape(-1)
            sums = jax.ops.segment_sum(flat, seg, num_segments=u + 1)[:u]
            counts = jax.ops.segment_sum(jnp.ones_like(seg, jnp.float32), seg, num_segments=u + 1)[:u]
            emb = sums / jnp.maximum(counts, 1.0)[:, None]
        if self.cfg.item_proj:
            emb = emb @ self.proj[...]
        return constrain(emb, ("act_batch", None))

    def encode_users(self, item_embs, mask):
        """User LLM outputs [B, S, D] (float32) over item vectors [B, S, D]; mask [B, S] bool."""
        b, s, _ = item_embs.shape
        positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
        out = self.user_llm(item_embs, mask.astype(jnp.int32), positions)
        return out.astype(jnp.float32)

    def scale(self):
        """exp of the logit-scale parameter (the train step projects it to [0, ln 100] first)."""
        return jnp.exp(self.logit_scale[...])

    def forward(self, batch: TrainBatch):
        """Everything the loss needs: user outputs, targets, negatives (float32)."""
        emb = self.encode_items(batch.items)
        seq = jnp.take(emb, batch.seq, axis=0)                            # [B, S+1, D]
        negs = jnp.take(emb, batch.negatives, axis=0)                     # [M, D]
        user = self.encode_users(seq[:, :-1], batch.seq_mask)
        return dict(item_emb=emb, user=user, targets=seq[:, 1:], negatives=negs)

    def __call__(self, batch: TrainBatch, rng=None):
        """(loss, metrics, outputs). ``rng`` is accepted for models with dropout; HLLM has none."""
        out = self.forward(batch)
        loss, metrics, logits = info_nce(out["user"], out["targets"], out["negatives"], batch.seq_mask,
                                         self.scale(), threshold=self.cfg.nce_threshold)
        return loss, metrics, dict(out, logits=logits)


def project_logit_scale(params: dict) -> dict:
    """Clamp the logit-scale parameter to [0, ln 100], as the reference does before each forward."""
    if "logit_scale" not in params:
        return params
    return dict(params, logit_scale=jnp.clip(params["logit_scale"], 0.0, LOGIT_SCALE_MAX))
