"""Scaling sweep of HLLM: item-LLM x user-LLM sizes, each point trained and evaluated (or, with
``pods`` / ``--config.topology``, compiled ahead of time for a TPU topology).

Default (no arguments; built-in synthetic data, 4 points cpu-0.1m ... cpu-3m, item = user size,
the same 160 steps of batch 16 for every point):
  python -m experiments.scale_sweep
Measured (2 idle CPU cores): 15.5 min; final train loss 3.49 / 3.45 / 3.38 / 3.34 (power law in
non-embedding parameters: exponent -0.0131 +/- 0.0013), test N@200 35.2-35.5 and R@10 43.0-43.7
(x100) at every size: the synthetic data's ceiling. Table and scaling.png: docs/SCALE_SWEEP.md.

AOT plan (libtpu; compiled on a 2-core CPU, 37 min for 15 compiles):
  JAX_PLATFORMS=cpu python -m experiments.scale_sweep --config experiments/configs/scale_sweep.py:pods \
      --config.sweep.grid=False --config.topology=v5p-128,v6e-64 --workdir W
Measured: largest per-device batch that fits, 1Bx1B: 16 on v5p-128 (77.6 GiB peak), 4 on v6e-64;
7Bx7B: 4 on v5p-128 (60.5 GiB), 1 on v6e-64 (27.6 of 32 GiB); roofline MFU bound 0.75 (full remat).

Arguments (``scale_sweep.py:dataset=beauty,grid``):
  dataset=NAME  a shared dataset (experiments/configs/common.py) instead of the synthetic one
  grid          every item size x every user size (sweep.user_sizes, default the item sizes)
  background    the larger CPU sizes (cpu-1m ... cpu-50m), meant for background runs (hours)
  pods          AOT mode: 1B and 7B shapes (the paper's 1Bx1B, 1Bx7B, 7Bx1B, 7Bx7B grid), bf16,
                full remat, text 255 tokens + [ITEM], 50 items per sequence; needs
                --config.topology=v5p-128[,v6e-64] and requirements-tpu.txt
  runlocal      a tiny smoke sweep (tests)
Any field: ``--config.sweep.item_sizes='("cpu-0.1m","cpu-1m")'``, ``--config.points=cpu-1mxcpu-1m``
(rerun chosen points), ``--config.run.train.steps=400``.
"""

import ml_collections

from experiments.configs.common import base_config, parse_arg, set_dataset

CPU_LADDER = ("cpu-0.1m", "cpu-0.3m", "cpu-1m", "cpu-3m")
BACKGROUND_LADDER = ("cpu-1m", "cpu-3m", "cpu-16m", "cpu-50m")
POD_SIZES = ("1b", "7b")


def get_config(arg=None):
    a = parse_arg(arg, dataset="synthetic", grid=False, background=False, pods=False, runlocal=False)
    c = ml_collections.ConfigDict()
    run = set_dataset(base_config(), a.dataset)
    # A fixed token budget per point: the same steps over the same batches for every size;
    # evaluated once, at the end (valid for the row, test for the fit).
    run.train.steps = 160
    run.eval.every_steps = run.train.steps
    run.checkpoint.every_steps = 40  # an interrupted point resumes
    run.log_every = 40
    run.tensorboard = False
    c.run = run
    c.sweep = ml_collections.ConfigDict(dict(item_sizes=CPU_LADDER, user_sizes=(), grid=a.grid))
    if a.background:
        c.sweep.item_sizes = BACKGROUND_LADDER
        run.train.steps = run.eval.every_steps = 1000
    c.points = ""  # comma-separated ITEMxUSER names to rerun from scratch
    c.fit_metrics = ("test/ndcg@200", "test/recall@10", "final_loss")
    c.fit_x = ("params", "train_flops")
    c.mode = "train"
    c.topology = ""
    c.aot = ml_collections.ConfigDict(dict(
        per_device_batches=(1, 2, 4, 8, 16), remat_fallback=("full",), negatives_per_device=64,
        row_len=1024, vocab=0, mesh_shape=(1, -1, 1)))
    c.progress = True
    if a.pods:
        c.mode = "aot"
        c.sweep.item_sizes, c.sweep.grid = POD_SIZES, True
        run.model.dtype, run.model.remat = "bfloat16", "full"
        run.data.max_text_len, run.data.max_seq_len = 255, 50
        run.optim.lr = 1e-4
    if a.runlocal:
        c.sweep.item_sizes = ("cpu-0.1m", "ref64")
        run.train.steps = run.eval.every_steps = 4
        run.checkpoint.every_steps, run.log_every = 2, 2
        run.batch.capacity_probe_steps = 4
        run.synthetic.num_users, run.synthetic.num_items = 60, 80
        run.progress = c.progress = False
    return c
