"""SASRec (ID baseline) on the built-in synthetic data (default) or a shared dataset.

Command (2 CPU cores):
  python -m experiments.train --config experiments/configs/sasrec.py:dataset=beauty --workdir W
Defaults follow the public HLLM's ID runs where they apply to small data: hidden 64, 2 layers,
2 heads, dropout 0.1 (hidden and attention), learnable temperature, shared negatives
(B x (S + 1), reference sampling), AdamW lr 1e-3 with a constant schedule, up to 50 epochs with
early stopping (patience 5 evaluations) on valid NDCG@200.

Measured on Amazon Beauty (dataset=beauty, 2 CPU cores): early-stopped after 10 epochs (best 5),
3.1 min; test R@10 8.08, R@50 16.08, R@200 26.20, N@10 4.79, N@200 8.05 (x100).
Amazon Scientific (dataset=scientific): early-stopped after 10 epochs (best 5), 0.9 min; test
R@10 9.92, R@50 17.54, R@200 30.91, N@10 7.14, N@200 10.78.
MovieLens (dataset=movielens): early-stopped after 23 epochs (best 18), 1.3 min; test R@10 10.16,
R@50 23.77, R@200 44.26, N@10 5.74, N@200 11.69.
"""

from experiments.configs.common import base_config, parse_arg, set_dataset


def get_config(arg=None, name="sasrec"):
    a = parse_arg(arg, dataset="synthetic", hidden=64, layers=2, heads=2, epochs=50, runlocal=False)
    c = set_dataset(base_config(), a.dataset)
    c.model.name = name
    c.model.hidden, c.model.layers, c.model.heads, c.model.dropout = a.hidden, a.layers, a.heads, 0.1
    c.batch.batch_size, c.batch.negative_sampling = 64, "reference"
    c.batch.row_len = 8  # ID models read no text: one placeholder token per item
    c.optim.lr, c.optim.weight_decay, c.optim.schedule = 1e-3, 0.0, "constant"
    c.train.epochs = a.epochs
    c.eval.patience = 5
    c.log_every = 200
    if a.runlocal:
        c.train.steps, c.log_every, c.eval.every_steps = 20, 5, 10
        c.synthetic.num_users, c.synthetic.num_items = 100, 120
    return c
