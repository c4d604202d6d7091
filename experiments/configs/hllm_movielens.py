"""HLLM on MovieLens (ml-latest-small): the Beauty reference config with this dataset's text.

Same model, batch, negatives, optimiser and 6 epochs as ``hllm_beauty_ref.py``; the item text is
title, genres and user tags (the reference prompt first), cut at 32 tokens, with a byte-level BPE
of 4,000 tokens trained on this catalogue (``tokenizer="train:4000"``, cached). MovieLens has few
users (610) with long histories: training cuts each history into chunks of 11 items, evaluation
ranks the whole catalogue (9,742 movies) for 610 users, so one user moves a metric by 0.16 (x100).

Command (2 CPU cores):
  python -m experiments.train --config experiments/configs/hllm_movielens.py --workdir W
Measured (2 CPU cores, alone): 6 epochs = 3,294 steps, 11.5 min (median 0.21 s/step); best epoch 6
(valid N@200 14.17, still rising); test R@10 8.69, R@50 29.67, R@200 54.26, N@10 4.38, N@200 12.62
(x100). Per-epoch valid metrics and the cold-start split: README results.
"""

from experiments.configs import hllm_beauty_ref
from experiments.configs.common import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, seed=0, max_text_len=32)
    return hllm_beauty_ref.on_dataset("movielens", a.seed, a.max_text_len)
