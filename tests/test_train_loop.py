"""End to end: train + eval runs, bit-exact resume, SIGTERM, NaN stop, bad configs and checkpoints."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import REPO, SHARED
from experiments.configs.hllm import get_config
from hllm_jax.train.checkpoint import CheckpointError, Checkpointer
from hllm_jax.train.loop import NonFiniteLoss, Run, train_and_evaluate

TINY = SHARED / "data" / "amazon-allbeauty-2023-tiny"
BEAUTY_TOK = SHARED / "reference" / "beauty-tokenizer"


def small_config(tmp_path, **over):
    c = get_config()
    c.data.cache_dir = str(tmp_path / "cache")
    c.synthetic.num_users, c.synthetic.num_items = 60, 80
    c.data.max_text_len, c.data.max_seq_len = 12, 5
    c.batch.batch_size, c.batch.row_len = 8, 52
    c.model.item_overrides = dict(hidden=32, layers=1, heads=2, kv_heads=1, mlp=64)
    c.model.user_overrides = dict(hidden=32, layers=1, heads=2, kv_heads=1, mlp=64)
    c.train.steps, c.eval.every_steps, c.log_every = 6, 3, 1
    c.mesh_shape, c.mesh_devices = (1, 1, 1), 1  # one device (fast); the fixture run uses all 8
    c.progress = False
    c.tensorboard = False
    c.update_from_flattened_dict(over)
    return c


def _final_params(workdir, config):
    run = Run(config, workdir)
    ck = Checkpointer(Path(workdir) / "checkpoints", model_config=run.model_cfg, best_metric=None)
    step = max(ck.steps())
    return step, jax.tree.map(np.asarray, ck.restore_params(step, run.abstract_state().params))


@pytest.mark.skipif(not TINY.exists() or not BEAUTY_TOK.exists(), reason=f"needs {TINY} and {BEAUTY_TOK}")
def test_two_step_train_and_eval_on_tiny_fixture(tmp_path):
    c = small_config(tmp_path, **{"data.dir": str(TINY), "data.tokenizer": str(BEAUTY_TOK),
                                  "data.text_keys": ("title",), "train.steps": 2, "eval.every_steps": 2,
                                  "mesh_shape": (-1, 1, 1), "mesh_devices": 0, "tensorboard": True})
    out = train_and_evaluate(c, tmp_path / "w")
    assert out["status"] == "completed" and out["step"] == 2
    m = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert m["test"]["users"] == 253 and 0.0 <= m["test"]["recall@200"] <= 1.0
    assert set(m["test"]["cold_start"]) == {"0", "1-4", "5-19", "20+"}
    assert sum(b["users"] for b in m["test"]["cold_start"].values()) == 253
    lines = [json.loads(l) for l in (tmp_path / "w" / "log.jsonl").read_text().splitlines()]
    kinds = [l["kind"] for l in lines]
    assert kinds.count("train") == 2 and "eval" in kinds and kinds[-1] == "test"
    train = [l for l in lines if l["kind"] == "train"]
    assert all(l["tflops_per_device"] > 0 and l["tokens_per_second_per_device"] > 0 for l in train)
    assert list((tmp_path / "w" / "tensorboard").glob("events.out.tfevents.*"))
    # Re-evaluating the saved run reproduces its test metrics.
    from experiments.evaluate import evaluate
    again = evaluate(tmp_path / "w", "test")
    assert again["step"] == m["best"]["step"]
    assert json.dumps({k: again[k] for k in m["test"]}) == json.dumps(m["test"])


def _sigterm_when_logged(workdir, step):
    log = Path(workdir) / "log.jsonl"

    def watch():
        for _ in range(6000):
            if log.exists() and any(json.loads(l).get("step", 0) >= step for l in log.read_text().splitlines()):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.01)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_resume_is_bit_exact_and_sigterm_saves(tmp_path):
    c = small_config(tmp_path, **{"train.steps": 12, "eval.every_steps": 6})
    full = train_and_evaluate(c, tmp_path / "full")
    assert full["status"] == "completed"
    # Interrupted run: SIGTERM after step 1 is logged -> saves and exits cleanly ...
    watcher = _sigterm_when_logged(tmp_path / "part", 1)
    part = train_and_evaluate(c, tmp_path / "part")
    watcher.join(timeout=5)
    assert part["status"] == "preempted" and 1 <= part["step"] < 12
    assert part["step"] in Checkpointer(tmp_path / "part" / "checkpoints", model_config={}, best_metric=None).steps()
    # ... and the same command resumes it to the end.
    resumed = train_and_evaluate(c, tmp_path / "part")
    assert resumed["status"] == "completed" and resumed["step"] == 12
    s1, p1 = _final_params(tmp_path / "full", c)
    s2, p2 = _final_params(tmp_path / "part", c)
    assert s1 == s2 == 12
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        assert np.array_equal(a, b)
    assert json.dumps(resumed["test"]) == json.dumps(full["test"])  # (NaN-safe comparison)


def test_nan_loss_stops_with_step_and_saves_state_before_it(tmp_path):
    c = small_config(tmp_path, **{"optim.lr": 1e32, "optim.warmup": 0.0, "train.steps": 30,
                                  "eval.every_steps": 100})
    with pytest.raises(NonFiniteLoss, match=r"at step (\d+) \(0-based\).*saved at") as err:
        train_and_evaluate(c, tmp_path / "w")
    step = int(err.value.args[0].split("at step ")[1].split(" ")[0])
    s, params = _final_params(tmp_path / "w", c)
    assert s == step
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_checkpoint_of_another_model_shape_is_refused(tmp_path):
    c = small_config(tmp_path, **{"train.steps": 2, "eval.every_steps": 2})
    train_and_evaluate(c, tmp_path / "w")
    other = small_config(tmp_path, **{"train.steps": 2, "eval.every_steps": 2,
                                      "model.user_overrides": dict(hidden=32, layers=2, heads=2, kv_heads=1, mlp=64)})
    with pytest.raises(CheckpointError, match=r"user\.layers: checkpoint 1 vs run 2"):
        train_and_evaluate(other, tmp_path / "w")


def test_corrupt_latest_checkpoint_falls_back_with_warning(tmp_path, caplog):
    c = small_config(tmp_path, **{"train.steps": 4, "eval.every_steps": 2, "checkpoint.keep": 3})
    train_and_evaluate(c, tmp_path / "w")
    ck = tmp_path / "w" / "checkpoints"
    assert sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit()) == [2, 4]
    for f in (ck / "4" / "params").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    run = Run(c, tmp_path / "w")
    with caplog.at_level("WARNING"):
        state, data, meta = run.ckpt.restore_latest(run.abstract_state())
    assert meta["step"] == 2 and data["next_step"] == 2
    assert any("checkpoint" in r.message and "unreadable" in r.message for r in caplog.records)


def test_bad_config_and_missing_data_dir(tmp_path):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "experiments.train", "--config", "experiments/configs/hllm.py",
                           "--workdir", str(tmp_path / "w"), "--config.batch.nope=3"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "nope" in proc.stderr
    c = small_config(tmp_path, **{"data.dir": str(tmp_path / "no_such_dir"), "data.tokenizer": "x"})
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        train_and_evaluate(c, tmp_path / "w2")
    c = small_config(tmp_path, **{"data.dir": str(TINY)})
    if TINY.exists():
        with pytest.raises(ValueError, match="needs a tokenizer"):
            train_and_evaluate(c, tmp_path / "w3")


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
def test_id_baselines_train_and_evaluate(tmp_path, name):
    from experiments.configs.sasrec import get_config as id_config
    c = id_config("runlocal", name=name)
    c.data.cache_dir = str(tmp_path / "cache")
    c.train.steps, c.eval.every_steps, c.log_every = 4, 4, 2
    c.mesh_shape, c.mesh_devices, c.progress, c.tensorboard = (1, 1, 1), 1, False, False
    out = train_and_evaluate(c, tmp_path / "w")
    assert out["status"] == "completed" and out["test"]["users"] == 99 + 1
    assert out["evals"][0]["valid/recall@200"] > 0
    train = [json.loads(l) for l in (tmp_path / "w" / "log.jsonl").read_text().splitlines()]
    train = [l for l in train if l["kind"] == "train"]
    assert len(train) == 2 and all(l["tflops_per_device"] > 0 for l in train)  # analytic baseline FLOPs
