"""The main job: ``python -m experiments.scale_sweep [--config CONFIG[:ARGS]] [--workdir W]``.

With no arguments: the default CPU ladder on the built-in synthetic data (about 15 minutes on 2
CPU cores) into ``runs/scale_sweep``: ``results.jsonl`` / ``results.csv`` (one row per point),
``fits.json`` (power laws), ``scaling.png``, ``table.md``. Rerunning skips finished points.
AOT mode (``experiments/configs/scale_sweep.py:pods --config.topology=v5p-128``) compiles each
point's fused step for a TPU topology and writes ``aot_results.csv`` / ``aot_table.md``.
Exit status 1 when any point failed (its error is in ``results.jsonl``).
"""

import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

_DEFAULT = str(Path(__file__).parent / "configs" / "scale_sweep.py")
config_flags.DEFINE_config_file("config", _DEFAULT, "sweep config (experiments/configs/scale_sweep.py[:args])",
                                lock_config=True)
flags.DEFINE_string("workdir", "runs/scale_sweep", "output directory (rerunning resumes)")


def main(argv):
    del argv
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    from hllm_jax.sweep.runner import run_sweep
    print(f"scale sweep -> {Path(flags.FLAGS.workdir).resolve()}")
    failed = run_sweep(flags.FLAGS.config, flags.FLAGS.workdir)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    app.run(main)
