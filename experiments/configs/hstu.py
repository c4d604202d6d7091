"""HSTU (ID baseline, as in the public HLLM code) on the built-in synthetic data or a shared dataset.

Command (2 CPU cores):
  python -m experiments.train --config experiments/configs/hstu.py:dataset=beauty --workdir W
Same training recipe as experiments/configs/sasrec.py (hidden 64, 2 layers, 2 heads, dropout 0.1,
shared negatives, AdamW lr 1e-3 constant, early stopping on valid NDCG@200).
"""

from experiments.configs import sasrec


def get_config(arg=None):
    return sasrec.get_config(arg, name="hstu")
