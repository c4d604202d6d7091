"""The "Beauty reference config" of shared/reference/README.md: HLLM on Amazon Beauty (2014).

Item and user LLM: Llama, hidden 64, 2 layers, 4 heads / 2 KV heads, FFN 172, RMSNorm eps 1e-5,
RoPE theta 1e4, random init, float32; text = title, the reference prompt, MAX_TEXT_LENGTH 32, one
[ITEM] token, MAX_ITEM_LIST_LENGTH 10; InfoNCE with the reference's defaults (per-sample,
per-position rejection-sampled negatives: 16 x 11 = 176 per step); batch 16, AdamW lr 1e-3,
weight decay 0.01, the reference schedule, 6 epochs; valid every epoch, model selection on
NDCG@200, test at the best epoch.

Measured (seed 0, 2 shared CPU cores): 60.7 min for 6 epochs (9,048 steps, ~10 min/epoch); best
epoch 6 (valid N@200 11.11); test R@10 8.87, R@50 20.50, R@200 35.38, N@10 4.79, N@200 9.54 (x100).
Seed 1 (alone on the machine): 37.6 min; best epoch 6 (valid N@200 11.27); test R@10 8.89, R@50 20.43,
R@200 35.36, N@10 4.76, N@200 9.51.
The public HLLM's own loop on this config (``../shared/reference-harness/run_beauty.py --model hllm
--epochs 6 --seed 2020 --threads 2 --skip_lm_head``, alone on the machine): 33.0 min; best epoch 6
(valid N@200 11.21); test R@10 8.76, R@50 20.43, R@200 35.33, N@10 4.71, N@200 9.47.

Command (results and wall time in the README table):
  python -m experiments.train --config experiments/configs/hllm_beauty_ref.py --workdir W
  python -m experiments.train --config experiments/configs/hllm_beauty_ref.py:seed=1 --workdir W2
"""

from experiments.configs.common import DATASETS, base_config, parse_arg


def get_config(arg=None):
    a = parse_arg(arg, seed=0, data="../shared/data/amazon-beauty-2014",
                  tokenizer="../shared/reference/beauty-tokenizer")
    c = base_config()
    c.seed = a.seed
    c.data.dir, c.data.tokenizer, c.data.text_keys = a.data, a.tokenizer, ("title",)
    c.data.max_text_len, c.data.max_seq_len = 32, 10
    c.model.item_size = c.model.user_size = "ref64"
    c.model.item_emb_token_n = 1
    c.batch.batch_size, c.batch.negative_sampling, c.batch.num_negatives = 16, "reference", 0
    c.batch.row_len = 132
    c.optim.lr, c.optim.weight_decay, c.optim.warmup = 1e-3, 0.01, 0.1
    c.train.epochs = 6
    c.eval.every_steps = 0  # every epoch
    c.log_every = 200
    c.checkpoint.every_steps = 300  # resumable in chunks
    return c


def on_dataset(name: str, seed: int, max_text_len: int):
    """This config with another shared dataset's text, tokenizer and text length (rows fit 4 items)."""
    c = get_config(f"seed={seed}")
    c.data.dir, c.data.text_keys, c.data.tokenizer = DATASETS[name]
    c.data.max_text_len = max_text_len
    c.batch.row_len = 4 * (max_text_len + 1)  # room for whole items, packed several per row
    return c
