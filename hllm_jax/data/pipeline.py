"""Training batches through grain, with a checkpointable step position, and host -> global arrays.

    builder = BatchBuilder(samples, catalogue, cfg)          # hllm_jax.data.batches
    it = make_train_iterator(builder, num_steps, mesh=mesh)  # yields this process's TrainBatch (numpy)
    batch = to_global(next(it), mesh, rules)                 # global jax.Arrays, sharded by the rules
    state = it.get_state()                                   # {"next_step": k, "data": {...}}: JSON
    it2 = make_train_iterator(builder, num_steps, mesh=mesh); it2.set_state(state)  # resumes at step k

The iterator is a ``grain.DatasetIterator`` (so grain's Orbax checkpoint handler and its
``save``/``load`` work) whose state is only the next step: the batch of a step is a pure
function of (seed, step, data), so a restored iterator rebuilds its grain pipeline from that step,
whatever the prefetch mode, worker count or process count of the run that saved it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import jax
import numpy as np

from hllm_jax import sharding as sharding_lib
from hllm_jax.batch import TrainBatch
from hllm_jax.data.batches import BatchBuilder, BatchConfig
from hllm_jax.train.step import batch_shardings

# Settings that change which data a step sees: a state saved under other values is refused.
_DATA_FIELDS = ("seed", "batch_size", "max_seq_len", "num_negatives", "negative_sampling", "sample_mode")


def data_shard(mesh, rules=sharding_lib.DEFAULT_RULES) -> tuple[int, int]:
    """(index, count): which block of the batch dimension this process's devices hold.

    The batch axis is split into ``count`` contiguous blocks over processes; processes that hold
    the same block (the batch replicated over a mesh axis spanning processes) load the same data.
    Raises when a process's devices hold non-contiguous parts of the batch.
    """
    spec = sharding_lib.logical_to_spec(("batch",), rules, mesh)
    axes = spec[0] if len(spec) else None
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    n = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
    blocks: dict[int, set[int]] = {}
    for dev, idx in s.devices_indices_map((n,)).items():
        sl = idx[0]
        blocks.setdefault(dev.process_index, set()).add(0 if sl.start is None else sl.start)
    mine = sorted(blocks[jax.process_index()])
    k = len(mine)
    for proc, shards in blocks.items():
        sh = sorted(shards)
        if len(sh) != k or sh != list(range(sh[0], sh[0] + k)) or sh[0] % k:
            raise ValueError(f"process {proc} holds batch shards {sh} of {n}: not one contiguous block of "
                             f"{k}; build the mesh from devices ordered by process (sharding.make_mesh over "
                             f"jax.devices() does)")
    return mine[0] // k, n // k


def to_global(batch_local: TrainBatch, mesh, rules=sharding_lib.DEFAULT_RULES) -> TrainBatch:
    """This process's numpy shard -> global ``jax.Array``s (``make_array_from_process_local_data``).

    The shard must be the builder's shard ``data_shard(mesh, rules)`` (``make_train_iterator``
    with ``mesh`` takes care of it); shardings are ``hllm_jax.train.step.batch_shardings``.
    """
    _, count = data_shard(mesh, rules)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct((x.shape[0] * count,) + x.shape[1:], x.dtype),
                          batch_local)
    shards = batch_shardings(shapes, mesh, rules)
    return jax.tree.map(lambda sh, x, g: jax.make_array_from_process_local_data(sh, np.asarray(x), g.shape),
                        shards, batch_local, shapes)


@dataclasses.dataclass(frozen=True)
class _BuildStep:
    """Picklable step -> local batch map (grain workers receive a copy)."""
    builder: BatchBuilder
    process_index: int
    process_count: int

    def __call__(self, step) -> TrainBatch:
        return self.builder.build(int(step), self.process_index, self.process_count)


def _data_fingerprint(cfg: BatchConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in _DATA_FIELDS}


class TrainIterator(grain.DatasetIterator):
    """Yields this process's ``TrainBatch`` shards for steps ``next_step .. num_steps - 1``."""

    def __init__(self, builder: BatchBuilder, num_steps: int, process_index: int, process_count: int, *,
                 start_step: int = 0, num_threads: int = 1, prefetch_buffer_size: int = 2,
                 worker_count: int = 0, worker_buffer_size: int = 2):
        super().__init__()
        self.builder = builder
        self.num_steps = int(num_steps)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self._opts = dict(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size,
                          worker_count=worker_count, worker_buffer_size=worker_buffer_size)
        self._inner = None
        self._start(int(start_step))

    def _start(self, step: int) -> None:
        if not 0 <= step <= self.num_steps:
            raise ValueError(f"step {step} is outside [0, num_steps={self.num_steps}]")
        if self._inner is not None:
            self._inner.close()
        o = self._opts
        ds = grain.MapDataset.range(step, self.num_steps).map(
            _BuildStep(self.builder, self.process_index, self.process_count))
        if o["worker_count"] > 0:
            _mark_flags_parsed()
            it_ds = ds.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(
                num_workers=o["worker_count"], per_worker_buffer_size=o["worker_buffer_size"]))
        else:
            it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=o["num_threads"],
                                                         prefetch_buffer_size=o["prefetch_buffer_size"]))
        self._inner = iter(it_ds)
        self._next_step = step

    @property
    def next_step(self) -> int:
        return self._next_step

    def __next__(self) -> TrainBatch:
        self._assert_not_closed()
        batch = next(self._inner)
        self._next_step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """``{"next_step": k, "data": {seed, batch_size, ...}}`` (JSON-serialisable)."""
        return {"next_step": self._next_step, "data": _data_fingerprint(self.builder.cfg)}

    def set_state(self, state: dict[str, Any]) -> None:
        saved = state.get("data")
        if saved is not None and saved != _data_fingerprint(self.builder.cfg):
            raise ValueError(f"iterator state was saved with data settings {saved} but this builder has "
                             f"{_data_fingerprint(self.builder.cfg)}; resume with the same BatchConfig")
        self._start(int(state["next_step"]))

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
        super().close()


def _mark_flags_parsed() -> None:
    """grain's multiprocessing reads absl flags; outside absl.app.run they must be marked parsed."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_train_iterator(builder: BatchBuilder, num_steps: int, *, mesh=None, rules=sharding_lib.DEFAULT_RULES,
                        process_index: int | None = None, process_count: int | None = None,
                        start_step: int = 0, num_threads: int = 1, prefetch_buffer_size: int = 2,
                        worker_count: int = 0, worker_buffer_size: int = 2) -> TrainIterator:
    """Iterator over this process's local batch shards of steps ``start_step .. num_steps - 1``.

    Shard: explicit ``process_index``/``process_count``, else ``data_shard(mesh, rules)``, else
    ``(jax.process_index(), jax.process_count())``.
    Prefetch: ``num_threads`` background threads building up to ``prefetch_buffer_size`` batches
    ahead (``num_threads=0``: build on ``next``), or ``worker_count`` grain worker processes
    (``mp_prefetch``; the builder is pickled to them; the script needs ``if __name__ == "__main__"``).
    """
    if process_index is None or process_count is None:
        if mesh is not None:
            process_index, process_count = data_shard(mesh, rules)
        else:
            process_index, process_count = jax.process_index(), jax.process_count()
    builder.capacities(process_count)  # divisibility errors now, not in a worker
    return TrainIterator(builder, num_steps, process_index, process_count, start_step=start_step,
                         num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size,
                         worker_count=worker_count, worker_buffer_size=worker_buffer_size)
