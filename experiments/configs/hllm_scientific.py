"""HLLM on Amazon Scientific (2018): the Beauty reference config with this dataset's richer text.

Same model, batch, negatives, optimiser and 6 epochs as ``hllm_beauty_ref.py``; the item text is
title, description, brand and categories (the reference prompt first), cut at 64 tokens, with a
byte-level BPE of 8,000 tokens trained on this catalogue (``tokenizer="train:8000"``, cached).

Command (2 CPU cores):
  python -m experiments.train --config experiments/configs/hllm_scientific.py --workdir W
Measured (2 CPU cores): 6 epochs = 3,144 steps, ~50 min of running time (0.71-0.77 s/step alone);
best epoch 6 (valid N@200 13.62); test R@10 10.98, R@50 21.70, R@200 38.21, N@10 6.69, N@200 11.46
(x100). Per-epoch valid metrics and the cold-start split: README results.
"""

from experiments.configs import hllm_beauty_ref
from experiments.configs.common import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, seed=0, max_text_len=64)
    return hllm_beauty_ref.on_dataset("scientific", a.seed, a.max_text_len)
