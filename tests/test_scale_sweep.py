"""The scale sweep: shipped configs, power-law fits, topologies, resume / rerun / failing points, AOT."""

import importlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from hllm_jax.sweep import fit, points, runner, topologies
from hllm_jax.sweep.results import Results
from hllm_jax.train import setup
from hllm_jax.train import state as state_lib

CONFIGS = sorted(p.stem for p in Path("experiments/configs").glob("*.py") if p.stem not in ("__init__", "common"))
CONFIG_ARGS = {"scale_sweep": ["", "grid", "background", "pods", "runlocal", "dataset=beauty"],
               "hllm": ["", "item=cpu-1m,user=cpu-0.3m", "dataset=scientific"], "sasrec": ["", "dataset=beauty"],
               "hstu": ["", "dataset=scientific"]}


needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="AOT compilation needs libtpu: "
                                  "pip install -r requirements-tpu.txt")


def _model_configs(name, arg):
    c = importlib.import_module(f"experiments.configs.{name}").get_config(arg or None)
    if name == "scale_sweep":
        return [setup.model_config(runner.point_run_config(c, p), 1000, 50) for p in runner.sweep_points(c)]
    return [setup.model_config(c, 1000, 50)]


@pytest.mark.parametrize("name,arg", [(n, a) for n in CONFIGS for a in CONFIG_ARGS.get(n, [""])])
def test_every_shipped_config_parses_and_builds(name, arg):
    mod = importlib.import_module(f"experiments.configs.{name}")
    assert mod.__doc__ and "python -m experiments." in mod.__doc__, f"{name}.py docstring must carry its command"
    for cfg in _model_configs(name, arg):
        _, params, axes = state_lib.abstract_model(cfg)  # shapes only
        assert params and axes


def test_unknown_config_argument_is_refused():
    from experiments.configs import scale_sweep
    with pytest.raises(ValueError, match="unknown config argument 'pod'"):
        scale_sweep.get_config("pod")


def test_power_law_fit_recovers_exponent_and_reports_error():
    x = np.geomspace(1e5, 1e8, 6)
    exact = fit.power_law(x, 3.0 * x ** 0.25)
    assert exact["exponent"] == pytest.approx(0.25) and exact["prefactor"] == pytest.approx(3.0)
    assert exact["r2"] == pytest.approx(1.0) and exact["exponent_stderr"] < 1e-9
    noisy = fit.power_law(x, 3.0 * x ** 0.25 * np.exp(np.random.default_rng(0).normal(0, 0.1, 6)))
    assert abs(noisy["exponent"] - 0.25) < 4 * noisy["exponent_stderr"] and noisy["exponent_stderr"] > 0
    with pytest.raises(ValueError, match=">= 2 points"):
        fit.power_law([1.0], [2.0])


def test_points_diagonal_grid_and_selection():
    assert [p.name for p in points.make_points(["a", "b"])] == ["axa", "bxb"]
    assert [p.name for p in points.make_points(["a", "b"], grid=True)] == ["axa", "axb", "bxa", "bxb"]
    with pytest.raises(ValueError, match="as many"):
        points.make_points(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="unknown point.*this sweep's points: axa"):
        points.select(points.make_points(["a"]), "bxb")


def test_topology_names():
    t = topologies.resolve("v5p-128")
    assert (t.jax_name, t.chips, t.chip.generation) == ("v5p:4x4x4", 64, "v5p")
    assert topologies.resolve("v5e:4x4").chips == 16 and topologies.resolve("V6E-64").jax_name == "v6e:8x8"
    assert topologies.resolve("v4-16").chips == 8  # Cloud v4/v5p names count TensorCores
    with pytest.raises(ValueError, match="unknown TPU topology 'v7-8'.*v5p-128"):
        topologies.resolve("v7-8")
    with pytest.raises(ValueError, match="3 dimensions"):
        topologies.resolve("v5p:4x4")


def _sweep_config(**over):
    from experiments.configs import scale_sweep
    c = scale_sweep.get_config("runlocal")
    c.update_from_flattened_dict(over)
    return c


def test_sweep_resumes_reruns_and_records_a_failing_point(tmp_path, capsys):
    w = tmp_path / "sweep"
    assert runner.run_sweep(_sweep_config(**{"sweep.item_sizes": ("ref64",)}), w) == 0
    first = Results(w).latest()["ref64xref64"]
    assert first["status"] == "ok" and first["steps"] == 4 and first["train_flops"] > 0
    assert first["params"] == 2 * 90944 and first["item_tokens"] > 0
    assert first["workdir"] == "points/ref64xref64"  # relative: results move with the workdir
    log = w / "points" / "ref64xref64" / "log.jsonl"
    n_log = len(log.read_text().splitlines())
    # A second, wider sweep: the finished point is skipped, the new one trained, a bad one recorded.
    c = _sweep_config(**{"sweep.item_sizes": ("ref64", "cpu-0.1m", "no-such-size")})
    assert runner.run_sweep(c, w) == 1
    out = capsys.readouterr().out
    assert "ref64xref64: done earlier" in out
    assert len(log.read_text().splitlines()) == n_log  # not retrained
    latest = Results(w).latest()
    assert latest["cpu-0.1mxcpu-0.1m"]["status"] == "ok"
    assert latest["no-such-sizexno-such-size"]["status"] == "error"
    assert "unknown model size 'no-such-size'" in latest["no-such-sizexno-such-size"]["error"]
    for f in ("results.csv", "fits.json", "scaling.png", "table.md"):
        assert (w / f).stat().st_size > 0, f
    fits = json.loads((w / "fits.json").read_text())
    assert fits["test/ndcg@200~params"]["n"] == 2
    # --config.points reruns the chosen point only; a changed setting retrains.
    rows_before = len(Results(w).rows())
    c.points = "ref64xref64"
    runner.run_sweep(c, w)
    rows = Results(w).rows()
    assert [r["key"] for r in rows[rows_before:]] == ["ref64xref64", "no-such-sizexno-such-size"]
    assert rows[rows_before]["time"] >= first["time"]


def test_interrupted_point_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A point stopped by SIGTERM at step 2 of 4 (just after its periodic checkpoint) continues
    from there when the sweep is rerun."""
    import os
    import signal

    import tqdm.auto
    from hllm_jax.train.loop import train_and_evaluate
    w = tmp_path / "sweep"
    c = _sweep_config(**{"sweep.item_sizes": ("ref64",)})
    p = runner.sweep_points(c)[0]
    rc = runner.point_run_config(c, p)
    pdir = w / "points" / p.name
    pdir.mkdir(parents=True)
    (pdir / "fingerprint").write_text(points.fingerprint(rc.to_dict()))
    real_write = tqdm.auto.tqdm.write

    def write(msg, *a, **k):  # the loop's step-2 log line: preempt the process
        if msg.startswith("step 2,"):
            os.kill(os.getpid(), signal.SIGTERM)
        return real_write(msg, *a, **k)
    monkeypatch.setattr(tqdm.auto.tqdm, "write", staticmethod(write))
    out = train_and_evaluate(rc, pdir)
    monkeypatch.setattr(tqdm.auto.tqdm, "write", staticmethod(real_write))
    assert out["status"] == "preempted" and out["step"] == 2
    assert runner.run_sweep(c, w) == 0
    row = Results(w).latest()[p.name]
    assert row["steps"] == 4 and row["status"] == "ok"
    steps = [json.loads(l)["step"] for l in (pdir / "log.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "train"]
    assert steps == [2, 4]  # the second run started at step 2
    assert row["train_flops"] > out["totals"]["train_flops"] > 0  # totals continue across the resume


@needs_libtpu
def test_aot_compiles_a_small_point_for_a_small_topology(tmp_path):
    from experiments.configs import scale_sweep
    c = scale_sweep.get_config("pods")
    c.sweep.item_sizes, c.sweep.grid = ("cpu-0.1m",), False
    c.run.data.max_text_len, c.run.data.max_seq_len = 31, 4
    c.topology = "v5e-4"
    c.aot.per_device_batches, c.aot.negatives_per_device, c.aot.row_len, c.aot.vocab = (1, 2), 8, 64, 512
    c.progress = False
    w = tmp_path / "aot"
    assert runner.run_sweep(c, w) == 0
    rows = [r for r in Results(w).rows() if r["kind"] == "aot"]
    assert [r["per_device_batch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["status"] == "ok" and r["fits"] and r["chips"] == 4 and r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
        assert 0 < r["argument_bytes"] <= r["peak_bytes"] < r["hbm_per_chip"]
        assert 0 < r["roofline_mfu"] <= 1 and r["model_flops"] > 0
    assert rows[1]["model_flops"] > rows[0]["model_flops"]
    assert "| cpu-0.1mxcpu-0.1m | v5e:2x2 | 4 |" in (w / "aot_table.md").read_text()
    # Cached: a rerun compiles nothing.
    n = len(Results(w).rows())
    assert runner.run_sweep(c, w) == 0 and len(Results(w).rows()) == n
    c.aot.per_device_batches = (1, 2, 4)  # one more batch to try: only it is compiled
    assert runner.run_sweep(c, w) == 0
    assert [r["per_device_batch"] for r in Results(w).rows()[n:]] == [4]
    # A size that cannot be sharded: the error names the dimension; recorded, non-zero result.
    c.aot.mesh_shape = (1, 1, -1)  # tensor = 4 > kv_heads = 2
    assert runner.run_sweep(c, tmp_path / "bad") == 1
    bad = [r for r in Results(tmp_path / "bad").rows() if r["kind"] == "aot"][0]
    assert bad["status"] == "error" and "does not divide" in bad["error"] and "kv_heads" in bad["error"]
