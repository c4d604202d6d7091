"""Train and evaluate one model: ``python -m experiments.train --config CONFIG[:ARGS] --workdir W``.

Overrides: ``--config.batch.batch_size=32`` (unknown keys are errors). Results: ``W/metrics.json``,
``W/log.jsonl``, TensorBoard events in ``W/tensorboard``; rerunning with the same workdir resumes.
"""

import json

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "config file (experiments/configs/*.py[:args])", lock_config=True)
flags.DEFINE_string("workdir", None, "output directory (resumes when it holds a checkpoint)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax's per-save INFO lines
    from hllm_jax.train.loop import train_and_evaluate
    out = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    summary = {k: out[k] for k in ("status", "step", "best", "wall_seconds") if k in out}
    if "test" in out:
        summary["test"] = {k: v for k, v in out["test"].items() if k != "cold_start"}
    print(json.dumps(summary, indent=1, default=float))


if __name__ == "__main__":
    app.run(main)
