"""Model construction, the reference learning-rate schedule, AdamW, and the train state pytree."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from hllm_jax.models.hllm import HLLM, HLLMConfig


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # nested dict of float32 arrays (nnx pure dict)
    opt_state: Any


def reference_schedule(lr: float, total_steps: int, warmup: float = 0.1):
    """HLLM's schedule: linear warm-up over ``warmup * total_steps`` steps (a float, not rounded;
    denominator at least 1), then half-cosine to 0 at ``total_steps``; evaluated at the update count."""
    w = warmup * total_steps

    def schedule(count):
        step = jnp.asarray(count, jnp.float32)
        warm = step / max(1.0, w)
        progress = (step - w) / max(1.0, total_steps - w)
        cos = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(math.pi * progress)))
        return lr * jnp.where(step < w, warm, cos)

    return schedule


def learning_rate(lr: float, total_steps: int, warmup: float = 0.1, schedule: str = "cosine"):
    """The learning rate as a function of the update count.

    schedule: ``cosine`` (HLLM's warm-up + half-cosine) or ``constant`` (the reference ID runs).
    """
    if schedule == "cosine":
        return reference_schedule(lr, total_steps, warmup)
    if schedule == "constant":
        return optax.constant_schedule(lr)
    raise ValueError(f"optim.schedule={schedule!r}: choose 'cosine' or 'constant'")


def make_optimizer(lr: float, total_steps: int, *, warmup: float = 0.1, weight_decay: float = 0.01,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   schedule: str = "cosine") -> optax.GradientTransformation:
    """AdamW as torch.optim.AdamW (decoupled decay on every parameter), no gradient clipping."""
    return optax.adamw(learning_rate(lr, total_steps, warmup, schedule), b1=b1, b2=b2, eps=eps,
                       weight_decay=weight_decay)


def build_model(cfg, rngs: nnx.Rngs):
    """HLLM for an HLLMConfig, an ID baseline (SASRec, HSTU) for theirs."""
    if isinstance(cfg, HLLMConfig):
        return HLLM(cfg, rngs)
    from hllm_jax.models import baselines
    return baselines.build(cfg, rngs)


def init_model(cfg, seed: int = 0):
    """(graphdef, params pure dict, logical-axes tree) of a freshly initialised model."""
    model = build_model(cfg, nnx.Rngs(params=seed))
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state), param_axes(state)


def abstract_model(cfg):
    """(graphdef, params ShapeDtypeStructs, logical-axes tree) without allocating parameters."""
    model = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(params=0)))
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state), param_axes(state)


def param_axes(state) -> dict:
    axes = jax.tree.map(lambda v: tuple(v.axes), state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(axes) if not isinstance(axes, dict) else axes


def create_state(params, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
