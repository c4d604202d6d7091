"""Llama-family decoder in Flax NNX: RMSNorm, RoPE, grouped-query attention, SwiGLU, no biases.

Layers are stacked along a leading ``layers`` axis and run with ``jax.lax.scan`` (compile time
independent of depth), each layer wrapped in ``jax.checkpoint`` with a named remat policy. The
decoder returns the final normed hidden states; it never computes vocabulary logits.

Parameter layout (logical axes in brackets):
  embed [vocab, embed]                          (item LLM only: the user LLM reads vectors)
  layers/attn_norm [layers, norm]   layers/wq [layers, embed, heads, kv]
  layers/wk, wv [layers, embed, kv_heads, kv]    layers/wo [layers, heads, kv, embed]
  layers/mlp_norm [layers, norm]    layers/w_gate, w_up [layers, embed, mlp]
  layers/w_down [layers, mlp, embed]            final_norm [norm]
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from hllm_jax.models.attention import attention
from hllm_jax.sharding import constrain

REMAT_POLICIES = {
    "none": None,  # no rematerialisation
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shape and numerics of one decoder."""
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    mlp: int = 172
    vocab: int = 1000  # 0: no token embedding (the user LLM)
    head_dim: int | None = None  # default hidden // heads
    rope_theta: float = 1e4
    norm_eps: float = 1e-5
    init_std: float = 0.02
    dtype: str = "float32"  # compute dtype; parameters are always float32
    remat: str = "none"
    attention: str = "dense"
    attention_window: int | None = None  # for attention='local'

    def __post_init__(self):
        for name in ("hidden", "layers", "heads", "kv_heads", "mlp"):
            if getattr(self, name) < 1:
                raise ValueError(f"LlamaConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.heads % self.kv_heads:
            raise ValueError(f"LlamaConfig: heads={self.heads} is not a multiple of kv_heads={self.kv_heads}")
        if self.head_dim is None and self.hidden % self.heads:
            raise ValueError(f"LlamaConfig: hidden={self.hidden} does not divide by heads={self.heads}; "
                             f"set head_dim explicitly")
        if self.hd % 2:
            raise ValueError(f"LlamaConfig: head_dim={self.hd} must be even for RoPE")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"LlamaConfig.remat={self.remat!r}; choose one of {sorted(REMAT_POLICIES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"LlamaConfig.dtype={self.dtype!r}; choose one of {sorted(DTYPES)}")

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads


def rms_norm(x, weight, eps):
    """HF LlamaRMSNorm: normalise in float32, cast back, then scale."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * x32.astype(x.dtype)


def rope(x, positions, theta):
    """Rotary embedding, half-rotation layout (HF Llama). x [B, L, H, d], positions [B, L]."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq          # [B, L, d/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]        # [B, L, 1, d]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


def decoder_layer(cfg: LlamaConfig, p: dict, x, segments, positions):
    """One pre-norm decoder layer on x [B, L, D]; p holds one layer's (unstacked) parameters."""
    dt = x.dtype
    c = lambda w: w.astype(dt)
    h = rms_norm(x, p["attn_norm"], cfg.norm_eps)
    q = jnp.einsum("bld,dhk->blhk", h, c(p["wq"]))
    k = jnp.einsum("bld,dhk->blhk", h, c(p["wk"]))
    v = jnp.einsum("bld,dhk->blhk", h, c(p["wv"]))
    q = constrain(q, ("act_batch", "act_length", "act_heads", None))
    k = constrain(k, ("act_batch", "act_length", "act_heads", None))
    q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
    o = attention(q, k, v, segments, impl=cfg.attention, window=cfg.attention_window)
    x = x + jnp.einsum("blhk,hkd->bld", o, c(p["wo"]))
    x = constrain(x, ("act_batch", "act_length", "act_embed"))
    h = rms_norm(x, p["mlp_norm"], cfg.norm_eps)
    g = jnp.einsum("bld,df->blf", h, c(p["w_gate"]))
    u = jnp.einsum("bld,df->blf", h, c(p["w_up"]))
    a = constrain(jax.nn.silu(g) * u, ("act_batch", "act_length", "act_mlp"))
    x = x + jnp.einsum("blf,fd->bld", a, c(p["w_down"]))
    return constrain(x, ("act_batch", "act_length", "act_embed"))


def _param(rngs, shape, axes, std):
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32), axes=axes)


class Layers(nnx.Module):
    """All decoder layers' parameters, stacked on a leading ``layers`` axis."""

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        n, d, h, kh, hd, f, s = cfg.layers, cfg.hidden, cfg.heads, cfg.kv_heads, cfg.hd, cfg.mlp, cfg.init_std
        self.attn_norm = nnx.Param(jnp.ones((n, d), jnp.float32), axes=("layers", "norm"))
        self.wq = _param(rngs, (n, d, h, hd), ("layers", "embed", "heads", "kv"), s)
        self.wk = _param(rngs, (n, d, kh, hd), ("layers", "embed", "kv_heads", "kv"), s)
        self.wv = _param(rngs, (n, d, kh, hd), ("layers", "embed", "kv_heads", "kv"), s)
        self.wo = _param(rngs, (n, h, hd, d), ("layers", "heads", "kv", "embed"), s)
        self.mlp_norm = nnx.Param(jnp.ones((n, d), jnp.float32), axes=("layers", "norm"))
        self.w_gate = _param(rngs, (n, d, f), ("layers", "embed", "mlp"), s)
        self.w_up = _param(rngs, (n, d, f), ("layers", "embed", "mlp"), s)
        self.w_down = _param(rngs, (n, f, d), ("layers", "mlp", "embed"), s)

    def stacked(self) -> dict:
        names = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down")
        return {k: getattr(self, k)[...] for k in names}


class LlamaDecoder(nnx.Module):
    """Decoder stack over input vectors; ``embed_tokens`` looks up token embeddings."""

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        if cfg.vocab:
            self.embed = _param(rngs, (cfg.vocab, cfg.hidden), ("vocab", "embed"), cfg.init_std)
        self.layers = Layers(cfg, rngs)
        self.final_norm = nnx.Param(jnp.ones((cfg.hidden,), jnp.float32), axes=("norm",))

    @property
    def compute_dtype(self):
        return DTYPES[self.cfg.dtype]

    def embed_tokens(self, tokens):
        if not self.cfg.vocab:
            raise ValueError("this decoder has no token embedding (vocab=0)")
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.compute_dtype)
        return constrain(x, ("act_batch", "act_length", "act_embed"))

    def __call__(self, x, segments, positions):
        """x [B, L, D] input vectors, segments/positions [B, L] -> final normed hidden [B, L, D]."""
        cfg = self.cfg
        x = constrain(x.astype(self.compute_dtype), ("act_batch", "act_length", "act_embed"))
        layer = functools.partial(decoder_layer, cfg)
        policy = REMAT_POLICIES[cfg.remat]
        if cfg.remat != "none":
            layer = jax.checkpoint(layer, policy=policy)

        def body(carry, p):
            return layer(p, carry, segments, positions), None

        x, _ = jax.lax.scan(body, x, self.layers.stacked())
        return rms_norm(x, self.final_norm[...], cfg.norm_eps)
