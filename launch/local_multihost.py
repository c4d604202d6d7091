"""One process of a local multi-host run (the stand-in for one host of a pod), and its check task.

Started by ``launch/local_multihost.sh`` (N processes on this machine, CPU devices), which sets
  HLLM_COORDINATOR=127.0.0.1:PORT  HLLM_NUM_PROCESSES=N  HLLM_PROCESS_ID=i
  XLA_FLAGS=--xla_force_host_platform_device_count=D  JAX_PLATFORMS=cpu
``initialize()`` calls ``jax.distributed.initialize`` from those variables (or explicit values).

As a script it runs the data-pipeline check: every process builds its own shard of the same
batch (``hllm_jax.data.batches``), makes global arrays with ``make_array_from_process_local_data``
(``hllm_jax.data.pipeline.to_global``) on a mesh over all devices of all processes, runs one jitted
forward loss of a tiny HLLM, and writes ``{"loss": ..., ...}`` as JSON:

    launch/local_multihost.sh -n 2 -d 2 launch/local_multihost.py --tokenizer TOK_DIR --out OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> tuple[int, int]:
    """``jax.distributed.initialize`` from arguments or the HLLM_* variables; (process_id, count)."""
    import jax
    coordinator = coordinator or os.environ["HLLM_COORDINATOR"]
    num_processes = int(num_processes if num_processes is not None else os.environ["HLLM_NUM_PROCESSES"])
    process_id = int(process_id if process_id is not None else os.environ["HLLM_PROCESS_ID"])
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return jax.process_index(), jax.process_count()


def tiny_setup(tokenizer_dir: str | Path, cache_dir: str | Path | None = None):
    """(BatchBuilder, HLLMConfig) of the check: synthetic data, tiny model; capacities fit 8 shards."""
    from hllm_jax.data import synthetic, tables, text
    from hllm_jax.data.batches import BatchBuilder, BatchConfig, suggest_capacities
    from hllm_jax.models.hllm import HLLMConfig
    from hllm_jax.models.llama import LlamaConfig

    data = synthetic.generate(synthetic.SyntheticConfig(num_users=120, num_items=200, seed=3))
    ds = synthetic.to_dataset(data)
    cat = text.build_catalogue(ds, tokenizer_dir, 16, cache_dir=cache_dir)
    samples = tables.train_samples(ds, 5)
    cfg = BatchConfig(batch_size=8, max_seq_len=5, num_negatives=32, max_text_len=16, row_len=64, seed=7)
    cfg = suggest_capacities(samples, cat, cfg, steps=10, process_count=8)
    from tokenizers import Tokenizer
    vocab = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json")).get_vocab_size()
    model = HLLMConfig(item=LlamaConfig(hidden=32, layers=1, heads=2, kv_heads=1, mlp=64, vocab=vocab),
                       user=LlamaConfig(hidden=32, layers=1, heads=2, kv_heads=1, mlp=64, vocab=0))
    return BatchBuilder(samples, cat, cfg), model


def check_loss(tokenizer_dir: str, step: int, cache_dir: str | None = None) -> dict:
    """This process's view of the multi-process forward loss (see the module docstring)."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from hllm_jax import sharding
    from hllm_jax.data.batches import global_item_ids
    from hllm_jax.data.pipeline import data_shard, to_global
    from hllm_jax.train.state import init_model
    from hllm_jax.train.step import loss_fn

    t0 = time.perf_counter()
    builder, model_cfg = tiny_setup(tokenizer_dir, cache_dir)
    t_setup = time.perf_counter() - t0
    mesh = sharding.make_mesh((-1, 1, 1))
    p, count = data_shard(mesh)
    local = builder.build(step, p, count)
    batch = to_global(local, mesh)
    graphdef, params, _ = init_model(model_cfg, seed=0)
    repl = NamedSharding(mesh, PartitionSpec())
    params = jax.tree.map(lambda x: jax.make_array_from_process_local_data(repl, np.asarray(x)), params)
    fn = jax.jit(lambda prm, b: loss_fn(graphdef, prm, b)[0], out_shardings=repl)
    loss = fn(params, batch)
    t_loss = time.perf_counter() - t0 - t_setup
    seq_ids, neg_ids = global_item_ids(local, p)
    return {"loss": float(np.asarray(loss.addressable_data(0))), "process_index": jax.process_index(),
            "process_count": jax.process_count(), "data_shard": [p, count], "devices": jax.device_count(),
            "local_devices": jax.local_device_count(), "seq_ids": seq_ids.tolist(), "neg_ids": neg_ids.tolist(),
            "global_shape_tokens": list(batch.items.tokens.shape),
            "seconds": {"setup": t_setup, "loss": t_loss}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="local multi-host data-pipeline check")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True, help="directory for process_<i>.json")
    ap.add_argument("--step", type=int, default=3)
    ap.add_argument("--cache_dir", default=None, help="catalogue cache (skips the tokenizer when warm)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    pid, _ = initialize()
    print(f"process {pid}: initialized in {time.perf_counter() - t0:.1f} s", flush=True)
    result = check_loss(a.tokenizer, a.step, a.cache_dir)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"process_{pid}.json").write_text(json.dumps(result))
    print(f"process {pid}: loss {result['loss']:.8f} data_shard {result['data_shard']}", flush=True)
    import jax
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
