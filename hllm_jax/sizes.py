"""One table of decoder sizes, decoded by name (big_vision's ``decode_variant`` style).

A size fixes the shape of one LLM (item or user); the vocabulary comes from the tokenizer. CPU
sizes are named by their non-embedding parameter count; pod sizes by the public
model whose shape they take (HLLM.md section 8).
"""

from __future__ import annotations

from hllm_jax.models.llama import LlamaConfig

# name: (hidden, layers, heads, kv_heads, mlp, rope_theta, norm_eps)
SIZES: dict[str, tuple] = {
    # The golden case / Beauty reference config shape.
    "ref64": (64, 2, 4, 2, 172, 1e4, 1e-5),
    # CPU ladder, named by non-embedding parameters per LLM (tested within 10%).
    "cpu-0.1m": (64, 2, 4, 2, 192, 1e4, 1e-5),
    "cpu-0.3m": (96, 3, 4, 2, 256, 1e4, 1e-5),
    "cpu-1m": (128, 5, 4, 2, 384, 1e4, 1e-5),
    "cpu-3m": (192, 8, 6, 2, 512, 1e4, 1e-5),
    "cpu-16m": (384, 9, 6, 2, 1152, 1e4, 1e-5),
    "cpu-50m": (640, 11, 10, 2, 1792, 1e4, 1e-5),
    # Public shapes.
    "smollm2-135m": (576, 30, 9, 3, 1536, 1e5, 1e-5),
    "tinyllama-1.1b": (2048, 22, 32, 4, 5632, 1e4, 1e-5),
    "llama-3.2-3b": (3072, 28, 24, 8, 8192, 5e5, 1e-5),
    "llama-2-7b": (4096, 32, 32, 32, 11008, 1e4, 1e-5),
    "baichuan2-7b": (4096, 32, 32, 32, 11008, 1e4, 1e-6),
}
# Vocabulary of the public models (the item LLM's when a config asks for the public tokenizer's size).
PUBLIC_VOCAB = {"smollm2-135m": 49152, "tinyllama-1.1b": 32000, "llama-3.2-3b": 128256, "llama-2-7b": 32000,
                "baichuan2-7b": 125696}
ALIASES = {"1b": "tinyllama-1.1b", "3b": "llama-3.2-3b", "7b": "llama-2-7b"}


def decode_variant(name: str, *, vocab: int = 0, **overrides) -> LlamaConfig:
    """LlamaConfig of a named size; ``vocab`` = 0 for the user LLM. Overrides win."""
    key = canonical(name)
    if key not in SIZES:
        raise ValueError(f"unknown model size {name!r}; known sizes: {', '.join(sorted(SIZES))} "
                         f"(aliases {', '.join(sorted(ALIASES))})")
    hidden, layers, heads, kv, mlp, theta, eps = SIZES[key]
    kw = dict(hidden=hidden, layers=layers, heads=heads, kv_heads=kv, mlp=mlp, vocab=vocab,
              rope_theta=theta, norm_eps=eps)
    kw.update(overrides)
    return LlamaConfig(**kw)


def non_embedding_params(cfg: LlamaConfig) -> int:
    """Parameters of the decoder stack and final norm (no token embedding)."""
    d, hd = cfg.hidden, cfg.hd
    attn = d * cfg.heads * hd * 2 + d * cfg.kv_heads * hd * 2
    per_layer = attn + 3 * d * cfg.mlp + 2 * d
    return cfg.layers * per_layer + d  # + the final norm


def canonical(name: str) -> str:
    """The table key of a size name or alias (``7b`` -> ``llama-2-7b``)."""
    return ALIASES.get(name.lower(), name.lower())


def embedding_params(cfg: LlamaConfig) -> int:
    return cfg.vocab * cfg.hidden


def hllm_param_counts(cfg) -> dict[str, int]:
    """Parameter counts of an ``HLLMConfig``: each LLM's non-embedding count (what sizes are named
    by and the scaling fits use), the token embedding, the rest (item token, projection, logit
    scale) and the total."""
    item, user = non_embedding_params(cfg.item), non_embedding_params(cfg.user)
    emb = embedding_params(cfg.item) + embedding_params(cfg.user)
    extra = 1 + cfg.item.hidden * int(cfg.item_emb_token_n) + cfg.item.hidden * cfg.user.hidden * int(cfg.item_proj)
    return dict(item_non_embedding=item, user_non_embedding=user, non_embedding=item + user, embedding=emb,
                other=extra, total=item + user + emb + extra)
