"""HLLM on Amazon Scientific (2018): the Beauty reference config with this dataset's richer text.

Same model, batch, negatives, optimiser and 6 epochs as ``hllm_beauty_ref.py``; the item text is
title, description, brand and categories (the reference prompt first), cut at 64 tokens, with a
byte-level BPE of 8,000 tokens trained on this catalogue (``tokenizer="train:8000"``, cached).

Command (2 CPU cores):
  python -m experiments.train --config experiments/configs/hllm_scientific.py --workdir W
Measured: see the README results table.
"""

from experiments.configs import hllm_beauty_ref
from experiments.configs.common import DATASETS, parse_arg


def get_config(arg=None):
    a = parse_arg(arg, seed=0, max_text_len=64)
    c = hllm_beauty_ref.get_config(f"seed={a.seed}")
    c.data.dir, c.data.text_keys, c.data.tokenizer = DATASETS["scientific"]
    c.data.max_text_len = a.max_text_len
    c.batch.row_len = 4 * (a.max_text_len + 1)  # room for whole items, packed several per row
    return c
