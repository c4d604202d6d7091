"""Re-evaluate a saved run: ``python -m experiments.evaluate --workdir W [--split test] [--step N]``.

Rebuilds data and model from ``W/config.json``, restores the parameters alone (no optimiser state)
of the best checkpoint (or ``--step``), and prints the full-ranking metrics (plus cold-start
buckets) as JSON; ``--out FILE`` also writes them.
"""

import json
from pathlib import Path

import ml_collections
from absl import app, flags

flags.DEFINE_string("workdir", None, "a workdir written by experiments.train")
flags.DEFINE_enum("split", "test", ["valid", "test"], "which split to rank")
flags.DEFINE_integer("step", None, "checkpoint step (default: the best one, else the latest)")
flags.DEFINE_string("out", None, "also write the metrics to this JSON file")
flags.mark_flags_as_required(["workdir"])


def evaluate(workdir, split="test", step=None) -> dict:
    from hllm_jax.train.loop import Run
    workdir = Path(workdir)
    cfg_file = workdir / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found: is {workdir} a workdir written by experiments.train?")
    config = ml_collections.ConfigDict(json.loads(cfg_file.read_text()))
    run = Run(config, workdir)
    steps = run.ckpt.steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {run.ckpt.directory}")
    step = step if step is not None else (run.ckpt.best_step() or max(steps))
    if step not in steps:
        raise ValueError(f"no checkpoint at step {step}; available: {steps}")
    params = run.ckpt.restore_params(step, run.abstract_state().params)
    res = run.evaluate(params, split, show_progress=True)
    run.ckpt.close()
    return dict(step=step, split=split, **res)


def main(argv):
    del argv
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    res = evaluate(flags.FLAGS.workdir, flags.FLAGS.split, flags.FLAGS.step)
    text = json.dumps(res, indent=1, default=float)
    print(text)
    if flags.FLAGS.out:
        Path(flags.FLAGS.out).write_text(text)


if __name__ == "__main__":
    app.run(main)
