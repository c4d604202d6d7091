"""Shared config pieces: the default run config that every experiment config starts from."""

import ml_collections

PROMPT = "Compress the following sentence into embedding: "


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """big_vision style ``key=value,flag`` argument: ``hllm.py:item=cpu-1m,runlocal``."""
    out = dict(defaults)
    for part in (arg or "").split(","):
        if not part:
            continue
        if "=" in part:
            k, v = part.split("=", 1)
        else:
            k, v = part, "True"
        if k not in defaults:
            raise ValueError(f"unknown config argument {k!r}; known: {', '.join(sorted(defaults))}")
        kind = type(defaults[k])
        out[k] = (v.lower() in ("1", "true", "yes")) if kind is bool else kind(v)
    return ml_collections.ConfigDict(out)


# name: (directory, text keys, tokenizer). "train:N" = a BPE of N tokens trained on the catalogue.
SHARED = "../shared"
DATASETS = {
    "synthetic": ("", (), ""),
    "beauty": (f"{SHARED}/data/amazon-beauty-2014", ("title",), f"{SHARED}/reference/beauty-tokenizer"),
    "scientific": (f"{SHARED}/data/amazon-scientific-2018", ("title", "description", "brand", "categories"),
                   "train:8000"),
    "movielens": (f"{SHARED}/data/ml-latest-small", ("title", "genres", "tag"), "train:4000"),
    "allbeauty": (f"{SHARED}/data/amazon-allbeauty-2023-tiny", ("title", "categories"), "train:2000"),
}


def set_dataset(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    c.data.dir, c.data.text_keys, c.data.tokenizer = DATASETS[name]
    return c


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = dict(dir="", tokenizer="", text_keys=(), prompt=PROMPT, max_text_len=32, max_seq_len=10,
                  sample_mode="chunks", cache_dir="", prefetch_threads=1, synthetic_vocab=1000)
    # Built-in synthetic dataset (used when data.dir is empty).
    c.synthetic = dict(num_users=600, num_items=400, num_topics=8, seed=0)
    c.model = dict(name="hllm", item_size="ref64", user_size="ref64", item_emb_token_n=1, dtype="float32",
                   remat="none", attention="local", nce_threshold=0.99, item_overrides={}, user_overrides={},
                   # ID baselines (model.name = sasrec / hstu)
                   hidden=64, layers=2, heads=2, dropout=0.1, temperature="learnable", id_options={})
    # item_rows / max_unique_items: 0 = measured over capacity_probe_steps steps (+ capacity_margin).
    c.batch = dict(batch_size=16, num_negatives=0, negative_sampling="uniform", row_len=132, item_rows=0,
                   max_unique_items=0, capacity_probe_steps=200, capacity_margin=0.1)
    c.optim = dict(lr=1e-3, weight_decay=0.01, warmup=0.1, schedule="cosine")
    c.train = dict(epochs=6, steps=0)
    c.eval = dict(every_steps=0, patience=0, items_per_batch=512, users_per_batch=256, max_seq_len=0)
    c.checkpoint = dict(every_steps=0, keep=2, async_save=True)
    c.mesh_shape = (-1, 1, 1)  # (data, fsdp, tensor); -1 = the rest of the devices
    c.mesh_devices = 0  # 0 = all devices; N = the first N
    c.logical_axis_rules = ()
    c.log_every = 50
    c.progress = True
    c.tensorboard = True
    return c
