"""HLLM on the built-in synthetic data (default) or a CSV dataset.

Command (built-in synthetic data: 600 users, 400 items; 2 CPU cores):
  python -m experiments.train --config experiments/configs/hllm.py --workdir /tmp/hllm_synth
Measured: 228 steps (6 epochs) in 68 s on an idle 2-core machine (3.0 min when shared); test R@10 43.67,
R@200 96.33, N@10 24.82, N@200 35.25 (x100; best epoch 6 of 6).
Arguments: ``hllm.py:item=cpu-1m,user=cpu-0.3m,dataset=beauty,runlocal`` (sizes from
``hllm_jax/sizes.py``; datasets from ``experiments/configs/common.py``: synthetic, beauty,
scientific, movielens, allbeauty; ``runlocal`` = a 20-step smoke run). Any field:
``--config.batch.batch_size=32``.
"""

from experiments.configs.common import base_config, parse_arg, set_dataset


def get_config(arg=None):
    a = parse_arg(arg, item="ref64", user="ref64", dataset="synthetic", runlocal=False)
    c = set_dataset(base_config(), a.dataset)
    c.model.item_size, c.model.user_size = a.item, a.user
    if a.runlocal:
        c.train.steps, c.log_every, c.eval.every_steps = 20, 5, 10
        c.synthetic.num_users, c.synthetic.num_items = 100, 120
    return c
