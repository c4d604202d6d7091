"""Orbax checkpoints: one composite checkpoint per step, async saves, keep last K plus the best.

Items of a step's checkpoint (each restorable alone, so an export never needs the optimiser):
  params     the model parameters (sharded arrays, restorable onto any mesh)
  opt_state  the optimiser state
  data       the input iterator's state (JSON), so a resumed run continues at the same batch
  meta       JSON: the model config, the step, the metrics at save time
A step directory is written under a temporary name and renamed when complete, so a crash leaves
no half-written step; a step that is complete but unreadable is skipped with a warning and the
previous one is used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from hllm_jax.train.state import TrainState

log = logging.getLogger(__name__)
ITEMS = ("params", "opt_state", "data", "meta")


class CheckpointError(ValueError):
    """A checkpoint that cannot serve this run (missing, other model shape, unreadable)."""


def config_to_json(cfg) -> dict:
    if dataclasses.is_dataclass(cfg):
        return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    return json.loads(json.dumps(cfg, default=str))


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: checkpoint {a!r} vs run {b!r}"]


class Checkpointer:
    """Save / restore TrainStates under ``directory`` (``workdir/checkpoints``)."""

    def __init__(self, directory, *, model_config, keep: int = 3, best_metric: str | None = "valid/ndcg@200",
                 async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.model_config = config_to_json(model_config)
        self.best_metric = best_metric
        policies = [cm.LatestN(n=keep)]
        if best_metric:
            policies.append(cm.BestN(get_metric_fn=lambda m: m[best_metric], reverse=False, n=1,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save, create=True,
            preservation_policy=cm.AnyPreservationPolicy(policies))
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    # -- save ---------------------------------------------------------------------------------
    def save(self, step: int, state: TrainState, data_state: Any = None, metrics: dict | None = None,
             force: bool = False) -> bool:
        """Start an (async) save of ``state`` at ``step``; metrics rank the best checkpoint."""
        best = None
        if metrics and self.best_metric and self.best_metric in metrics:
            best = {self.best_metric: float(metrics[self.best_metric])}
        meta = dict(step=int(step), model_config=self.model_config, metrics=metrics or {})
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(state.opt_state),
            data=ocp.args.JsonSave(data_state if data_state is not None else {}),
            meta=ocp.args.JsonSave(json.loads(json.dumps(meta, default=float))))
        return self.manager.save(int(step), args=args, metrics=best, force=force)

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()

    # -- inspect ------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The kept step with the highest ``best_metric`` (None when no step has it)."""
        best = None
        for step in self.steps():
            try:
                v = self.meta(step).get("metrics", {}).get(self.best_metric)
            except Exception:  # noqa: BLE001 - unreadable steps cannot be the best
                continue
            if v is not None and (best is None or v > best[0]):
                best = (v, step)
        return None if best is None else best[1]

    def meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def check_model(self, step: int):
        meta = self.meta(step)
        diff = _diff(meta.get("model_config"), self.model_config)
        if diff:
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} holds another model shape:\n  " + "\n  ".join(diff)
                + "\nuse a fresh --workdir, or the config the checkpoint was trained with")
        return meta

    # -- restore ------------------------------------------------------------------------------
    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, Any, dict]:
        """(state, data_state, meta) of ``step``; ``abstract_state`` gives shapes and shardings."""
        meta = self.check_model(step)
        as_abstract = lambda t: jax.tree.map(ocp.utils.to_shape_dtype_struct, t)
        out = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(as_abstract(abstract_state.params)),
            opt_state=ocp.args.StandardRestore(as_abstract(abstract_state.opt_state)),
            data=ocp.args.JsonRestore()))
        state = TrainState(step=jax.numpy.asarray(meta["step"], jax.numpy.int32), params=out["params"],
                           opt_state=out["opt_state"])
        return state, out["data"], meta

    def restore_params(self, step: int, abstract_params) -> Any:
        """Parameters alone (the optimiser state is never read)."""
        self.check_model(step)
        out = self.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(
            jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_params))))
        return out["params"]

    def restore_latest(self, abstract_state: TrainState):
        """The newest readable checkpoint, or None when there is none. Unreadable ones are skipped
        with a warning; a checkpoint of another model shape is an error."""
        for step in reversed(self.steps()):
            try:
                return self.restore(step, abstract_state)
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any read failure means "try the previous one"
                log.warning("checkpoint %s/%d is unreadable (%s: %s); trying the previous one",
                            self.directory, step, type(e).__name__, str(e).splitlines()[0][:200])
        return None
