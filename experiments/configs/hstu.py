"""HSTU (ID baseline, as in the public HLLM code) on the built-in synthetic data or a shared dataset.

Command (2 CPU cores):
  python -m experiments.train --config experiments/configs/hstu.py:dataset=beauty --workdir W
Same training recipe as experiments/configs/sasrec.py (hidden 64, 2 layers, 2 heads, dropout 0.1,
shared negatives, AdamW lr 1e-3 constant, early stopping on valid NDCG@200).

Measured on Amazon Beauty (dataset=beauty, 2 CPU cores): early-stopped after 11 epochs (best 6),
3.6 min; test R@10 5.90, R@50 12.80, R@200 22.37, N@10 3.40, N@200 6.32 (x100).
Amazon Scientific (dataset=scientific): early-stopped after 11 epochs (best 6), 0.9 min; test
R@10 6.64, R@50 11.54, R@200 21.15, N@10 5.03, N@200 7.51.
MovieLens (dataset=movielens): early-stopped after 19 epochs (best 14), 1.3 min; test R@10 5.74,
R@50 14.59, R@200 31.31, N@10 2.62, N@200 7.04.
"""

from experiments.configs import sasrec


def get_config(arg=None):
    return sasrec.get_config(arg, name="hstu")
