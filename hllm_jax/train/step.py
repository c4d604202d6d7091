"""The fused train step: item encoding, user model, InfoNCE, gradient and AdamW in one jit.

Sharded with ``jax.jit`` + ``NamedSharding``: parameters and optimiser state by the logical-axis
rules, the batch over the batch axes (``data``, ``fsdp``). Activations are constrained inside
the model through ``hllm_jax.sharding.constrain``; XLA inserts the collectives (the shared
negatives are gathered from every device's items).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from hllm_jax import sharding
from hllm_jax.batch import TRAIN_AXES, TrainBatch
from hllm_jax.models.hllm import project_logit_scale
from hllm_jax.train.state import TrainState


def loss_fn(graphdef, params, batch: TrainBatch, rng=None):
    """Scalar loss and (metrics, outputs) of the model ``graphdef`` at ``params``.

    Every model (HLLM, the ID baselines) is called as ``model(batch, rng=...)`` and returns
    ``(loss, metrics, outputs)``; ``rng`` feeds dropout where a model has it.
    """
    model = nnx.merge(graphdef, params)
    loss, metrics, outputs = model(batch, rng=rng)
    return loss, (metrics, outputs)


def train_step(graphdef, tx: optax.GradientTransformation, state: TrainState, batch: TrainBatch,
               mesh=None, rules=sharding.DEFAULT_RULES, seed: int = 0):
    """One update. The logit scale is projected to [0, ln 100] before the forward (reference).

    The dropout key is ``fold_in(PRNGKey(seed), step)``: a pure function of (seed, step).
    """
    with sharding.use_rules(mesh, rules):
        params = project_logit_scale(state.params)
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)
        grad_fn = jax.value_and_grad(lambda p: loss_fn(graphdef, p, batch, rng), has_aux=True)
        (loss, (metrics, _)), grads = grad_fn(params)
        updates, opt_state = tx.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        # A non-finite loss leaves the state untouched (the loop then saves it and stops), so the
        # state before the bad step is never lost.
        ok = jnp.isfinite(loss)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
        params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    metrics = dict(metrics, loss=loss, finite=ok)
    return TrainState(step=state.step + ok.astype(state.step.dtype), params=params, opt_state=opt_state), metrics


@dataclasses.dataclass
class StepFns:
    """Jitted functions for one model and mesh, plus the shardings they were built with."""
    train: Callable
    state_sharding: TrainState
    batch_sharding: TrainBatch | None
    mesh: object

    def put_state(self, state: TrainState) -> TrainState:
        return jax.device_put(state, self.state_sharding)

    def put_batch(self, batch: TrainBatch) -> TrainBatch:
        if self.batch_sharding is None:
            return jax.tree.map(jnp.asarray, batch)
        return jax.device_put(batch, self.batch_sharding)


def state_shardings(state: TrainState, param_axes: dict, mesh, rules, tx) -> TrainState:
    """Shardings of a TrainState: params by the rules, params-shaped optimiser leaves (AdamW's
    moments) like their parameters, everything else (counts) replicated."""
    p_sh = sharding.tree_shardings(param_axes, state.params, mesh, rules)
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, state.opt_state, p_sh,
                                   transform_non_params=lambda _: repl)
    return TrainState(step=repl, params=p_sh, opt_state=opt_sh)


def batch_shardings(batch: TrainBatch, mesh, rules) -> TrainBatch:
    def one(axes, x):
        return jax.sharding.NamedSharding(
            mesh, sharding.logical_to_spec(axes, rules, mesh, x.shape, what="batch"))
    return jax.tree.map(one, TRAIN_AXES, batch, is_leaf=lambda a: isinstance(a, tuple))


def build_train_step(graphdef, tx, state: TrainState, param_axes: dict, batch: TrainBatch,
                     mesh=None, rules=sharding.DEFAULT_RULES, donate: bool = True, seed: int = 0) -> StepFns:
    """Jit ``train_step`` for this model; with a mesh, with explicit in/out shardings.

    ``state`` and ``batch`` may be arrays or ShapeDtypeStructs (only shapes are used).
    """
    fn = lambda s, b: train_step(graphdef, tx, s, b, mesh, rules, seed)
    if mesh is None:
        return StepFns(jax.jit(fn, donate_argnums=(0,) if donate else ()), None, None, None)
    s_sh = state_shardings(state, param_axes, mesh, rules, tx)
    b_sh = batch_shardings(batch, mesh, rules)
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    jitted = jax.jit(fn, in_shardings=(s_sh, b_sh), out_shardings=(s_sh, repl),
                     donate_argnums=(0,) if donate else ())
    return StepFns(jitted, s_sh, b_sh, mesh)
