"""One table of decoder sizes, decoded by name (big_vision's ``decode_variant`` style).

A size fixes the shape of one LLM (item or user); the vocabulary comes from the tokenizer. CPU
sizes are named by their (approximate) non-embedding parameter count; pod sizes by the public
model whose shape they take (HLLM.md section 8).
"""

from __future__ import annotations

from hllm_jax.models.llama import LlamaConfig

# name: (hidden, layers, heads, kv_heads, mlp, rope_theta, norm_eps)
SIZES: dict[str, tuple] = {
    # The golden case / Beauty reference config shape.
    "ref64": (64, 2, 4, 2, 172, 1e4, 1e-5),
    # CPU ladder (non-embedding parameters per LLM in the name).
    "cpu-0.1m": (48, 2, 4, 2, 128, 1e4, 1e-5),
    "cpu-0.3m": (64, 3, 4, 2, 192, 1e4, 1e-5),
    "cpu-1m": (96, 4, 4, 2, 288, 1e4, 1e-5),
    "cpu-3m": (160, 5, 8, 4, 448, 1e4, 1e-5),
    "cpu-16m": (320, 8, 8, 4, 896, 1e4, 1e-5),
    "cpu-50m": (512, 10, 8, 4, 1408, 1e4, 1e-5),
    # Public shapes.
    "smollm2-135m": (576, 30, 9, 3, 1536, 1e5, 1e-5),
    "tinyllama-1.1b": (2048, 22, 32, 4, 5632, 1e4, 1e-5),
    "llama-3.2-3b": (3072, 28, 24, 8, 8192, 5e5, 1e-5),
    "llama-2-7b": (4096, 32, 32, 32, 11008, 1e4, 1e-5),
    "baichuan2-7b": (4096, 32, 32, 32, 11008, 1e4, 1e-6),
}
ALIASES = {"1b": "tinyllama-1.1b", "3b": "llama-3.2-3b", "7b": "llama-2-7b"}


def decode_variant(name: str, *, vocab: int = 0, **overrides) -> LlamaConfig:
    """LlamaConfig of a named size; ``vocab`` = 0 for the user LLM. Overrides win."""
    key = ALIASES.get(name.lower(), name.lower())
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
    return cfg.layers * per_layer + d
