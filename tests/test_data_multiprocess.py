"""A real 2-process run on CPU: each process builds its own shard, the global loss equals one process's.

launch/local_multihost.sh starts 2 processes of launch/local_multihost.py (2 CPU devices each,
jax.distributed over 127.0.0.1); each builds its local batch shard, makes global arrays with
make_array_from_process_local_data on a mesh over all 4 devices and runs a jitted forward loss.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from hllm_jax.data import synthetic as S
from hllm_jax.data.batches import global_item_ids
from hllm_jax.train.state import init_model
from hllm_jax.train.step import loss_fn

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "local_multihost.sh"
WORKER = REPO / "launch" / "local_multihost.py"
TIMEOUT_S = 150


def _worker_module():
    spec = importlib.util.spec_from_file_location("local_multihost", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _distributed_available() -> str | None:
    if not hasattr(jax, "distributed") or not hasattr(jax.distributed, "initialize"):
        return "jax.distributed is unavailable in this JAX build"
    if not hasattr(jax, "make_array_from_process_local_data"):
        return "jax.make_array_from_process_local_data is unavailable"
    if sys.platform != "linux" or not shutil.which("bash") or not shutil.which("timeout"):
        return "the local multi-process launcher needs Linux with bash and GNU timeout"
    return None


@pytest.mark.skipif(_distributed_available() is not None, reason=str(_distributed_available()))
def test_two_processes_match_one(tmp_path):
    mod = _worker_module()
    syn = S.generate(S.SyntheticConfig(num_users=120, num_items=200, seed=3))
    tok = S.synthetic_tokenizer(syn, tmp_path / "tok", vocab_size=300)
    cache = tmp_path / "cache"
    builder, model_cfg = mod.tiny_setup(tok, cache)  # also warms the catalogue cache for the workers

    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "HLLM_", "TPU_"))}
    env["PYTHON"] = sys.executable
    out = tmp_path / "out"
    cmd = ["bash", str(LAUNCH), "-n", "2", "-d", "2", "-t", str(TIMEOUT_S - 10), str(WORKER),
           "--tokenizer", str(tok), "--cache_dir", str(cache), "--out", str(out), "--step", "3"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session this test started
        log, _ = proc.communicate()
        pytest.fail(f"the 2-process run did not finish in {TIMEOUT_S} s:\n{log[-4000:]}")
    assert proc.returncode == 0, log[-4000:]
    results = [json.loads((out / f"process_{i}.json").read_text()) for i in range(2)]

    # Single process, one device: the whole global batch.
    graphdef, params, _ = init_model(model_cfg, seed=0)
    batch = builder.build(3)
    ref = float(jax.jit(lambda p, b: loss_fn(graphdef, p, b)[0])(params, batch))
    seq_ids, neg_ids = global_item_ids(batch)
    for i, r in enumerate(results):
        assert r["process_index"] == i and r["process_count"] == 2 and r["devices"] == 4
        assert r["local_devices"] == 2 and r["data_shard"] == [i, 2]
        assert abs(r["loss"] - ref) <= 1e-5 * abs(ref), (r["loss"], ref)
        np.testing.assert_array_equal(r["seq_ids"], np.split(seq_ids, 2)[i])
        np.testing.assert_array_equal(r["neg_ids"], np.split(neg_ids, 2)[i])
    assert results[0]["global_shape_tokens"] == list(batch.items.tokens.shape)
