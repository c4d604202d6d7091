"""ID baselines: SASRec and HSTU over learned item-ID embeddings, with HLLM's interface.

Both models read only ``items.item_ids`` (never the token rows) and plug into the same fused train
step and evaluation as HLLM:

- ``encode_items(items) -> [U, D]``: the ID embedding of each unique item (HSTU: then its optional
  bias-free projection to the model width).
- ``encode_users(item_embs [B, S, D], mask [B, S] bool, rng=None) -> [B, S, D]``: causal with key
  padding, absolute positions ``0..S-1`` regardless of left padding (as the reference).
- ``forward(batch, rng=None)`` -> item_emb, user, targets, negatives;
  ``__call__(batch, rng=None)`` -> ``(loss, metrics, outputs)``, outputs as HLLM's plus ``logits``.
  Dropout draws from ``rng`` (``jax.random.bernoulli``); ``rng=None`` is deterministic.

What the public HLLM code computes (``code/REC/model/IDNet``, ``code/REC/model/layers.py``):

SASRec (post-LN transformer)::

    x = dropout(LayerNorm(E[item] + P[pos]))                       P: max_seq_len learned rows
    per layer:  a = softmax(q k^T / sqrt(d) + mask)  ->  attention-dropout  ->  a v
                x = LayerNorm(x + dropout(W_o (a v) + b_o))
                x = LayerNorm(x + dropout(W_2 act(W_1 x + b_1) + b_2))   FFN width = inner_mult * D
    no final norm; Linear/Embedding weights N(0, init_std), biases 0, LayerNorm (1, 0), eps 1e-12

HSTU (pointwise aggregated attention)::

    x = proj(E[item]) + P[pos]                                     no input norm, no input dropout
    per layer:  u, v, q, k = split(silu(LN(x) @ W_uvqk))           LN without affine, eps 1e-6
                a = (silu(q k^T) / S) * mask                        S = padded sequence length
                x = x + W_o dropout(u * LN(a v)) + b_o             LN over all heads jointly
    no final norm; W_uvqk N(0, 0.02); W_o Xavier-uniform, b_o U(+-1/sqrt(H d)); E, P, proj
    truncated normal (+-2 std) std 0.02

Loss (both, as HLLM): InfoNCE over cosine similarities with a learnable ``logit_scale`` (init
ln(1/0.07), clamped to [0, ln 100] by the train step) or a fixed temperature, negatives whose
cosine to the target exceeds ``nce_threshold`` masked. Negatives are either shared by every
position of the global batch (``negatives_per_position = 0``: ``hllm_jax.losses.info_nce``) or
``K = negatives_per_position`` of their own per position (the reference's ``num_negatives``
setting for ID models): ``batch.negatives`` then holds ``B * S * K`` entries laid out row-major as
``[B, S, K]`` and each position is scored against its own K only.

Construction: ``init_baseline(cfg, seed)`` / ``abstract_baseline(cfg)`` return the same
(graphdef, params, axes) triple as ``hllm_jax.train.state.init_model`` / ``abstract_model``;
``config_from(config.model, num_items=, max_seq_len=)`` builds a config from a run config.

Parameter layout (logical axes in brackets); layers are stacked and scanned::

  item_emb [vocab, embed]   pos_emb [None, embed]   logit_scale []   (SASRec) in_norm_* [norm]
  SASRec layers/: wq, wk, wv [layers, embed, heads, kv]  bq, bk, bv [layers, heads, kv]
                  wo [layers, heads, kv, embed]  bo [layers, norm]  attn_norm_scale/bias [layers, norm]
                  w1 [layers, embed, mlp]  b1 [layers, mlp]  w2 [layers, mlp, embed]  b2 [layers, norm]
                  ffn_norm_scale/bias [layers, norm]
  HSTU   proj [embed, None] (item width != width only)
         layers/: w_uvqk [layers, embed, None(4: u v q k), heads, kv]  wo [layers, heads, kv, embed]
                  bo [layers, norm]  rel_bias [layers, None] (rel_pos_bias only)
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from hllm_jax.batch import PackedItems, TrainBatch
from hllm_jax.losses import info_nce
from hllm_jax.models.hllm import LOGIT_SCALE_INIT
from hllm_jax.models.llama import DTYPES
from hllm_jax.sharding import constrain

_MASK_VALUE = -1e9  # the reference's additive mask value (SASRec)
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # erf form, as the reference
    "relu": jax.nn.relu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}
HSTU_LINEAR_ACTIVATIONS = ("silu", "none")

_ACT = ("act_batch", "act_length", "act_embed")
_ACT_HEADS = ("act_batch", "act_length", "act_heads", None)


# Configs ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _IDConfig:
    num_items: int  # catalogue size counting PAD (= max dense id + 1); may be padded up
    hidden: int = 512
    layers: int = 2
    heads: int = 4
    max_seq_len: int = 10  # longest user sequence the position table covers
    hidden_dropout: float = 0.1
    init_std: float = 0.02
    temperature: float | None = None  # None: learnable logit_scale; a value: fixed (ref fix_temp: 0.05)
    nce_threshold: float = 0.99
    negatives_per_position: int = 0  # 0: shared negatives; K: K own negatives per position
    dtype: str = "float32"  # compute dtype; parameters are float32

    def _fail(self, name, why):
        raise ValueError(f"{type(self).__name__}.{name}={getattr(self, name)!r}: {why}")

    def __post_init__(self):
        if self.num_items < 2:
            self._fail("num_items", "must count PAD plus at least one item (>= 2)")
        for name in ("hidden", "layers", "heads", "max_seq_len"):
            if getattr(self, name) < 1:
                self._fail(name, "must be >= 1")
        if self.hidden % self.heads:
            self._fail("hidden", f"must divide by heads={self.heads}")
        for name in self._dropouts():
            if not 0.0 <= getattr(self, name) < 1.0:
                self._fail(name, "must be in [0, 1)")
        if self.init_std <= 0:
            self._fail("init_std", "must be > 0")
        if self.temperature is not None and not self.temperature > 0:
            self._fail("temperature", "must be > 0, or None for a learnable logit_scale")
        if not -1.0 <= self.nce_threshold <= 1.0:
            self._fail("nce_threshold", "is a cosine similarity: choose a value in [-1, 1]")
        if self.negatives_per_position < 0:
            self._fail("negatives_per_position", "must be 0 (shared negatives) or a count K >= 1")
        if self.dtype not in DTYPES:
            self._fail("dtype", f"choose one of {sorted(DTYPES)}")

    def _dropouts(self):
        return ("hidden_dropout",)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclasses.dataclass(frozen=True)
class SASRecConfig(_IDConfig):
    """SASRec; defaults = ``code/IDNet/sasrec.yaml`` + ``overall/ID.yaml`` (``MAX_ITEM_LIST_LENGTH 10``)."""
    inner_mult: int = 1  # FFN width = inner_mult * hidden (the reference's ``inner_size``)
    attn_dropout: float = 0.1
    act: str = "gelu"
    norm_eps: float = 1e-12

    def __post_init__(self):
        super().__post_init__()
        if self.inner_mult < 1:
            self._fail("inner_mult", "must be >= 1 (FFN width = inner_mult * hidden)")
        if self.act not in ACTIVATIONS:
            self._fail("act", f"choose one of {sorted(ACTIVATIONS)}")
        if self.norm_eps <= 0:
            self._fail("norm_eps", "must be > 0")

    def _dropouts(self):
        return ("hidden_dropout", "attn_dropout")


@dataclasses.dataclass(frozen=True)
class HSTUConfig(_IDConfig):
    """HSTU; defaults = ``code/IDNet/hstu.yaml`` + ``overall/ID.yaml``."""
    item_hidden: int | None = None  # item-embedding width (default: hidden); else bias-free projection
    linear_act: str = "silu"  # activation on the U/V/Q/K projection (the reference's ``hidden_act``)
    norm_eps: float = 1e-6
    rel_pos_bias: bool = False  # learned relative-position bias before the SiLU (unused by the reference)

    def __post_init__(self):
        super().__post_init__()
        if self.item_hidden is not None and self.item_hidden < 1:
            self._fail("item_hidden", "must be >= 1, or None for the model width")
        if self.linear_act not in HSTU_LINEAR_ACTIVATIONS:
            self._fail("linear_act", f"choose one of {HSTU_LINEAR_ACTIVATIONS}")
        if self.norm_eps <= 0:
            self._fail("norm_eps", "must be > 0")

    @property
    def item_width(self) -> int:
        return self.item_hidden or self.hidden


# Building blocks ----------------------------------------------------------------------------------
def dropout(x, rate: float, key):
    """Inverted dropout; the identity when ``key`` is None or ``rate`` is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


def layer_norm(x, scale, bias, eps: float, axes=(-1,)):
    """LayerNorm over ``axes`` in float32 (biased variance, as torch); no affine if scale is None."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=axes, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    if scale is not None:
        y = y * scale + bias
    return y.astype(x.dtype)


def _split_keys(key, n):
    return (None,) * n if key is None else tuple(jax.random.split(key, n))


def _causal_key_mask(mask):
    """[B, 1, S, S] bool: key index <= query index and the key is a valid position."""
    s = mask.shape[1]
    causal = jnp.arange(s)[:, None] >= jnp.arange(s)[None, :]
    return (causal[None] & mask[:, None, :])[:, None]


def sasrec_layer(cfg: SASRecConfig, p: dict, x, mask, key=None):
    """One post-LN SASRec layer on x [B, S, D]; p holds one layer's (unstacked) parameters."""
    dt = x.dtype
    c = lambda w: w.astype(dt)
    k_attn, k_out, k_ffn = _split_keys(key, 3)
    q = jnp.einsum("bsd,dhk->bshk", x, c(p["wq"])) + c(p["bq"])
    k = jnp.einsum("bsd,dhk->bshk", x, c(p["wk"])) + c(p["bk"])
    v = jnp.einsum("bsd,dhk->bshk", x, c(p["wv"])) + c(p["bv"])
    q, k, v = (constrain(t, _ACT_HEADS) for t in (q, k, v))
    scores = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(cfg.head_dim)
    scores = jnp.where(_causal_key_mask(mask), scores, _MASK_VALUE)
    probs = dropout(jax.nn.softmax(scores, axis=-1), cfg.attn_dropout, k_attn).astype(dt)
    ctx = constrain(jnp.einsum("bhqs,bshk->bqhk", probs, v), _ACT_HEADS)
    h = jnp.einsum("bqhk,hkd->bqd", ctx, c(p["wo"])) + c(p["bo"])
    x = layer_norm(x + dropout(h, cfg.hidden_dropout, k_out), p["attn_norm_scale"], p["attn_norm_bias"],
                   cfg.norm_eps)
    x = constrain(x, _ACT)
    f = ACTIVATIONS[cfg.act](jnp.einsum("bsd,df->bsf", x, c(p["w1"])) + c(p["b1"]))
    f = constrain(f, ("act_batch", "act_length", "act_mlp"))
    f = jnp.einsum("bsf,fd->bsd", f, c(p["w2"])) + c(p["b2"])
    x = layer_norm(x + dropout(f, cfg.hidden_dropout, k_ffn), p["ffn_norm_scale"], p["ffn_norm_bias"],
                   cfg.norm_eps)
    return constrain(x, _ACT)


def relative_position_bias(w, s: int, max_seq_len: int):
    """[S, S] Toeplitz bias ``w[j - i + max_seq_len - 1]`` from ``w`` [2 * max_seq_len - 1]."""
    idx = jnp.arange(s)[None, :] - jnp.arange(s)[:, None] + (max_seq_len - 1)
    return jnp.take(w, idx)


def hstu_layer(cfg: HSTUConfig, p: dict, x, mask, key=None):
    """One HSTU layer on x [B, S, D]; p holds one layer's (unstacked) parameters."""
    dt = x.dtype
    c = lambda w: w.astype(dt)
    s = x.shape[1]
    normed = layer_norm(x, None, None, cfg.norm_eps)
    uvqk = jnp.einsum("bsd,dphk->bsphk", normed, c(p["w_uvqk"]))        # [B, S, 4, H, d]
    if cfg.linear_act == "silu":
        uvqk = jax.nn.silu(uvqk)
    u, v, q, k = (constrain(uvqk[:, :, i], _ACT_HEADS) for i in range(4))
    scores = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32)
    if cfg.rel_pos_bias:
        scores = scores + relative_position_bias(p["rel_bias"], s, cfg.max_seq_len)
    attn = jax.nn.silu(scores) / s
    attn = jnp.where(_causal_key_mask(mask), attn, 0.0).astype(dt)
    a = constrain(jnp.einsum("bhqs,bshk->bqhk", attn, v), _ACT_HEADS)  # [B, S, H, d]
    o_in = u * layer_norm(a, None, None, cfg.norm_eps, axes=(-2, -1))
    o_in = dropout(o_in, cfg.hidden_dropout, key)
    x = x + jnp.einsum("bqhk,hkd->bqd", o_in, c(p["wo"])) + c(p["bo"])
    return constrain(x, _ACT)


def _run_layers(layer, stacked: dict, x, mask, rng, n_layers: int):
    """Scan ``layer`` over parameters stacked on a leading axis; one dropout key per layer."""
    if rng is None:
        body = lambda carry, p: (layer(p, carry, mask, None), None)
        x, _ = jax.lax.scan(body, x, stacked)
    else:
        body = lambda carry, pk: (layer(pk[0], carry, mask, pk[1]), None)
        x, _ = jax.lax.scan(body, x, (stacked, jax.random.split(rng, n_layers)))
    return x


def _normal(rngs, shape, axes, std):
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32), axes=axes)


def _trunc_normal(rngs, shape, axes, std):
    return nnx.Param(std * jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape, jnp.float32),
                     axes=axes)


def _uniform(rngs, shape, axes, bound):
    return nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound), axes=axes)


def _const(value, shape, axes):
    return nnx.Param(jnp.full(shape, value, jnp.float32), axes=axes)


class _Stacked(nnx.Module):
    """Parameters of all layers, stacked on a leading ``layers`` axis."""

    def stacked(self) -> dict:
        return {k: v[...] for k, v in vars(self).items() if isinstance(v, nnx.Param)}


class SASRecLayers(_Stacked):
    def __init__(self, cfg: SASRecConfig, rngs: nnx.Rngs):
        n, d, h, hd, s = cfg.layers, cfg.hidden, cfg.heads, cfg.head_dim, cfg.init_std
        f = cfg.inner_mult * d
        for name in ("wq", "wk", "wv"):
            setattr(self, name, _normal(rngs, (n, d, h, hd), ("layers", "embed", "heads", "kv"), s))
        for name in ("bq", "bk", "bv"):
            setattr(self, name, _const(0.0, (n, h, hd), ("layers", "heads", "kv")))
        self.wo = _normal(rngs, (n, h, hd, d), ("layers", "heads", "kv", "embed"), s)
        self.bo = _const(0.0, (n, d), ("layers", "norm"))
        self.attn_norm_scale = _const(1.0, (n, d), ("layers", "norm"))
        self.attn_norm_bias = _const(0.0, (n, d), ("layers", "norm"))
        self.w1 = _normal(rngs, (n, d, f), ("layers", "embed", "mlp"), s)
        self.b1 = _const(0.0, (n, f), ("layers", "mlp"))
        self.w2 = _normal(rngs, (n, f, d), ("layers", "mlp", "embed"), s)
        self.b2 = _const(0.0, (n, d), ("layers", "norm"))
        self.ffn_norm_scale = _const(1.0, (n, d), ("layers", "norm"))
        self.ffn_norm_bias = _const(0.0, (n, d), ("layers", "norm"))


class HSTULayers(_Stacked):
    def __init__(self, cfg: HSTUConfig, rngs: nnx.Rngs):
        n, d, h, hd = cfg.layers, cfg.hidden, cfg.heads, cfg.head_dim
        # The reference initialises its HSTU blocks itself (it skips them in reset_params):
        # W_uvqk ~ N(0, 0.02), W_o Xavier-uniform, b_o torch's default Linear bias init.
        self.w_uvqk = _normal(rngs, (n, d, 4, h, hd), ("layers", "embed", None, "heads", "kv"), 0.02)
        self.wo = _uniform(rngs, (n, h, hd, d), ("layers", "heads", "kv", "embed"), math.sqrt(6.0 / (h * hd + d)))
        self.bo = _uniform(rngs, (n, d), ("layers", "norm"), 1.0 / math.sqrt(h * hd))
        if cfg.rel_pos_bias:
            self.rel_bias = _normal(rngs, (n, 2 * cfg.max_seq_len - 1), ("layers", None), 0.02)


# Models -------------------------------------------------------------------------------------------
class _IDModel(nnx.Module):
    """Shared by SASRec and HSTU: item lookup, forward, loss. Subclasses define ``encode_users``."""

    cfg: _IDConfig

    def _init_loss(self, cfg):
        if cfg.temperature is None:
            self.logit_scale = nnx.Param(jnp.asarray(LOGIT_SCALE_INIT, jnp.float32), axes=())

    @property
    def compute_dtype(self):
        return DTYPES[self.cfg.dtype]

    def _lookup(self, ids):
        return jnp.take(self.item_emb[...], ids, axis=0)

    def encode_items(self, items: PackedItems):
        """Unique-item vectors [U, D] (float32): the ID embeddings of ``items.item_ids``."""
        return constrain(self._lookup(items.item_ids), ("act_batch", None))

    def _check_length(self, s: int):
        if s > self.cfg.max_seq_len:
            raise ValueError(f"{type(self.cfg).__name__}.max_seq_len={self.cfg.max_seq_len} but the "
                             f"sequence has {s} positions; raise max_seq_len (the position table size)")

    def scale(self):
        """The logit scale: exp(logit_scale) (learnable) or 1 / temperature (fixed)."""
        if self.cfg.temperature is None:
            return jnp.exp(self.logit_scale[...])
        return jnp.asarray(1.0 / self.cfg.temperature, jnp.float32)

    def forward(self, batch: TrainBatch, rng=None):
        """Everything the loss needs: user outputs, targets, negatives (float32)."""
        emb = self.encode_items(batch.items)
        seq = jnp.take(emb, batch.seq, axis=0)                            # [B, S+1, D]
        negs = jnp.take(emb, batch.negatives, axis=0)                     # [M, D]
        user = self.encode_users(seq[:, :-1], batch.seq_mask, rng=rng)
        return dict(item_emb=emb, user=user, targets=seq[:, 1:], negatives=negs)

    def loss(self, user, targets, negatives, mask):
        """(loss, metrics, logits) with shared ([M, D]) or per-position negatives (see module doc)."""
        cfg = self.cfg
        k = cfg.negatives_per_position
        if not k:
            return info_nce(user, targets, negatives, mask, self.scale(), threshold=cfg.nce_threshold)
        return per_position_info_nce(user, targets, negatives, mask, self.scale(), k,
                                     threshold=cfg.nce_threshold)

    def __call__(self, batch: TrainBatch, rng=None):
        """(loss, metrics, outputs); dropout only when ``rng`` is given."""
        out = self.forward(batch, rng=rng)
        loss, metrics, logits = self.loss(out["user"], out["targets"], out["negatives"], batch.seq_mask)
        return loss, metrics, dict(out, logits=logits)


def per_position_info_nce(user, targets, negatives, mask, scale, k: int, *, threshold: float = 0.99):
    """InfoNCE where each position has its own ``k`` negatives: ``negatives`` [B * S * k, D] laid
    out as [B, S, k]. Same definition, masking and metrics as ``info_nce`` (which it applies to every
    position alone). Returns (loss, metrics, logits [B, S, 1 + k])."""
    b, s, d = user.shape
    if negatives.shape[0] != b * s * k:
        raise ValueError(
            f"negatives_per_position={k} needs batch.negatives of length B * S * K = {b}*{s}*{k} = "
            f"{b * s * k} (row-major [B, S, K]), got {negatives.shape[0]}")
    negs = constrain(negatives.reshape(b * s, k, d), ("act_batch", None, None))
    one = lambda u, p, n, m: info_nce(u[None, None], p[None, None], n, m[None, None], scale, threshold=threshold)
    losses, metrics, logits = jax.vmap(one)(user.reshape(b * s, d), targets.reshape(b * s, d), negs,
                                            mask.reshape(b * s))
    count = jnp.maximum(mask.astype(jnp.float32).sum(), 1.0)
    # Per position, info_nce returns its value at a valid position and 0 at a masked one.
    out = {name: (v.sum() if name == "valid_positions" else v.sum() / count) for name, v in metrics.items()}
    return losses.sum() / count, out, logits.reshape(b, s, 1 + k)


class SASRec(_IDModel):
    def __init__(self, cfg: SASRecConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.hidden
        # padding_idx=0 in the reference only zeroes row 0's gradient; here PAD never reaches the loss.
        self.item_emb = _normal(rngs, (cfg.num_items, d), ("vocab", "embed"), cfg.init_std)
        self.pos_emb = _normal(rngs, (cfg.max_seq_len, d), (None, "embed"), cfg.init_std)
        self.in_norm_scale = _const(1.0, (d,), ("norm",))
        self.in_norm_bias = _const(0.0, (d,), ("norm",))
        self.layers = SASRecLayers(cfg, rngs)
        self._init_loss(cfg)

    def encode_users(self, item_embs, mask, rng=None):
        """SASRec outputs [B, S, D] (float32) over item vectors [B, S, D]; mask [B, S] bool."""
        cfg = self.cfg
        s = item_embs.shape[1]
        self._check_length(s)
        k_in, k_layers = _split_keys(rng, 2)
        x = item_embs.astype(jnp.float32) + self.pos_emb[...][:s]
        x = layer_norm(x, self.in_norm_scale[...], self.in_norm_bias[...], cfg.norm_eps)
        x = dropout(x, cfg.hidden_dropout, k_in).astype(self.compute_dtype)
        x = constrain(x, _ACT)
        layer = lambda p, h, m, key: sasrec_layer(cfg, p, h, m, key)
        x = _run_layers(layer, self.layers.stacked(), x, mask.astype(bool), k_layers, cfg.layers)
        return x.astype(jnp.float32)


class HSTU(_IDModel):
    def __init__(self, cfg: HSTUConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.item_emb = _trunc_normal(rngs, (cfg.num_items, cfg.item_width), ("vocab", "embed"), cfg.init_std)
        if cfg.item_width != cfg.hidden:
            self.proj = _trunc_normal(rngs, (cfg.item_width, cfg.hidden), ("embed", None), cfg.init_std)
        self.pos_emb = _trunc_normal(rngs, (cfg.max_seq_len + 1, cfg.hidden), (None, "embed"), cfg.init_std)
        self.layers = HSTULayers(cfg, rngs)
        self._init_loss(cfg)

    def _lookup(self, ids):
        emb = super()._lookup(ids)
        if self.cfg.item_width != self.cfg.hidden:
            emb = emb @ self.proj[...]
        return emb

    def encode_users(self, item_embs, mask, rng=None):
        """HSTU outputs [B, S, D] (float32) over (projected) item vectors [B, S, D]; mask [B, S] bool."""
        cfg = self.cfg
        s = item_embs.shape[1]
        self._check_length(s)
        x = (item_embs.astype(jnp.float32) + self.pos_emb[...][:s]).astype(self.compute_dtype)
        x = constrain(x, _ACT)
        layer = lambda p, h, m, key: hstu_layer(cfg, p, h, m, key)
        x = _run_layers(layer, self.layers.stacked(), x, mask.astype(bool), rng, cfg.layers)
        return x.astype(jnp.float32)


# Construction -------------------------------------------------------------------------------------
MODELS = {SASRecConfig: SASRec, HSTUConfig: HSTU}


def build(cfg: SASRecConfig | HSTUConfig, rngs: nnx.Rngs):
    if type(cfg) not in MODELS:
        raise TypeError(f"no baseline for config {type(cfg).__name__}; choose one of "
                        f"{[c.__name__ for c in MODELS]}")
    return MODELS[type(cfg)](cfg, rngs)


ID_MODELS = {"sasrec": SASRecConfig, "hstu": HSTUConfig}


def config_from(m, *, num_items: int, max_seq_len: int) -> SASRecConfig | HSTUConfig:
    """The baseline config of a run config's ``model`` section (a dict or ConfigDict).

    Reads ``name`` (sasrec | hstu), ``hidden``, ``layers``, ``heads``, ``dropout`` (SASRec: both
    dropouts, as every reference script sets them equal), ``temperature`` ("learnable" or a
    number), ``nce_threshold`` and ``dtype``; ``id_options`` (a dict) sets any other field by name,
    e.g. ``{"negatives_per_position": 512, "inner_mult": 1, "rel_pos_bias": True}``.
    """
    name = m.get("name")
    if name not in ID_MODELS:
        raise ValueError(f"model.name={name!r}: the ID baselines are {sorted(ID_MODELS)}")
    cls = ID_MODELS[name]
    fields = dict(num_items=int(num_items), max_seq_len=int(max_seq_len))
    for key, conv in (("hidden", int), ("layers", int), ("heads", int), ("nce_threshold", float), ("dtype", str)):
        if m.get(key) is not None:
            fields[key] = conv(m.get(key))
    if m.get("dropout") is not None:
        fields["hidden_dropout"] = float(m.get("dropout"))
        if cls is SASRecConfig:
            fields["attn_dropout"] = float(m.get("dropout"))
    temp = m.get("temperature")
    if temp is not None and temp != "learnable":
        try:
            fields["temperature"] = float(temp)
        except (TypeError, ValueError):
            raise ValueError(f"model.temperature={temp!r}: 'learnable' or a number > 0 (the reference's "
                             f"fix_temp is 0.05)") from None
    opts = dict(m.get("id_options") or {})
    known = {f.name for f in dataclasses.fields(cls)}
    if set(opts) - known:
        raise ValueError(f"model.id_options: {sorted(set(opts) - known)} are not {cls.__name__} fields; "
                         f"known: {sorted(known)}")
    return cls(**(fields | opts))


def _axes(state) -> dict:
    axes = jax.tree.map(lambda v: tuple(v.axes), state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(axes)


def abstract_baseline(cfg: SASRecConfig | HSTUConfig):
    """(graphdef, params ShapeDtypeStructs, logical-axes tree) without allocating parameters."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build(cfg, nnx.Rngs(params=0))))
    return graphdef, nnx.to_pure_dict(state), _axes(state)


def init_baseline(cfg: SASRecConfig | HSTUConfig, seed: int = 0):
    """(graphdef, params pure dict, logical-axes tree), as ``hllm_jax.train.state.init_model``.

    The initialisers run as one jitted function (one compile instead of one per parameter).
    """
    graphdef, _, axes = abstract_baseline(cfg)
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.split(build(cfg, nnx.Rngs(params=seed)))[1]))()
    return graphdef, params, axes
