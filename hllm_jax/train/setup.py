"""From a run config to data, model and shapes: everything the loop and the evaluator share."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from pathlib import Path

import numpy as np

from hllm_jax import sharding, sizes
from hllm_jax.data import synthetic, tables, text
from hllm_jax.data.batches import BatchBuilder, BatchConfig
from hllm_jax.models.hllm import HLLMConfig

ID_MODELS = ("sasrec", "hstu")


def cache_dir(config) -> Path:
    d = config.data.get("cache_dir") or os.environ.get("HLLM_JAX_CACHE") or "~/.cache/hllm_jax"
    return Path(d).expanduser()


@dataclasses.dataclass
class RunData:
    dataset: tables.Dataset
    catalogue: text.Catalogue
    samples: tables.TrainSamples
    vocab: int
    tokenizer_dir: Path | None
    source: str


def _id_catalogue(num_items: int, max_text_len: int) -> text.Catalogue:
    """ID models read no text: every item is one placeholder token (packing stays trivial)."""
    return text.Catalogue(tokens=np.ones(num_items, np.int32), offsets=np.arange(num_items + 1, dtype=np.int64),
                          full_lengths=np.ones(num_items, np.int32), max_text_len=max_text_len, bos_id=1,
                          key="id-only")


def _trained_tokenizer(config, texts, vocab: int) -> Path:
    """A BPE tokenizer of ``vocab`` tokens trained on ``texts``, cached by their content (no download)."""
    h = hashlib.sha256(("\n".join(texts) + f"|{vocab}").encode()).hexdigest()[:12]
    tok_dir = cache_dir(config) / f"tokenizer-{h}"
    if not (tok_dir / "tokenizer.json").exists():
        synthetic.train_tokenizer(texts, tok_dir, vocab_size=vocab)
    return tok_dir


def load_data(config) -> RunData:
    """Dataset (CSV directory or the built-in synthetic one), tokenised catalogue, training samples."""
    d = config.data
    keys = list(d.text_keys) if d.get("text_keys") else None
    if d.get("dir"):
        ds = tables.load_dir(Path(d.dir).expanduser(), text_keys=keys)
        source, tok_dir = str(d.dir), None
        tok = str(d.get("tokenizer") or "")
        if tok.startswith("train:"):  # trained on this catalogue's own item texts
            tok_dir = _trained_tokenizer(config, text.catalogue_texts(ds, keys, d.prompt), int(tok.split(":", 1)[1]))
        elif tok:
            tok_dir = Path(tok).expanduser()
    else:
        syn = synthetic.SyntheticConfig(**dict(config.synthetic))
        data = synthetic.generate(syn)
        ds = synthetic.to_dataset(data, keys)
        source = f"synthetic({', '.join(f'{k}={v}' for k, v in dict(config.synthetic).items())})"
        tok_dir = None
        if config.model.name not in ID_MODELS:
            tok_dir = _trained_tokenizer(config, synthetic.item_texts(data), int(d.get("synthetic_vocab", 1000)))
    if config.model.name in ID_MODELS:
        cat, vocab = _id_catalogue(ds.num_items, 1), 2
    else:
        if tok_dir is None:
            raise ValueError(f"data.dir={d.dir!r} needs a tokenizer for the item LLM: set "
                             f"--config.data.tokenizer=DIR (a Hugging Face tokenizer directory) or "
                             f"--config.data.tokenizer=train:4000 (a BPE trained on the item texts)")
        cat = text.build_catalogue(ds, tok_dir, int(d.max_text_len), text_keys=keys, prompt=d.prompt,
                                   cache_dir=cache_dir(config) / "catalogues")
        vocab = len(text.load_tokenizer(tok_dir))
    samples = tables.train_samples(ds, int(d.max_seq_len), d.get("sample_mode", "chunks"))
    return RunData(ds, cat, samples, int(vocab), tok_dir, source)


def model_config(config, vocab: int, num_items: int):
    """The model config (HLLM or an ID baseline) of a run config."""
    m = config.model
    if m.name == "hllm":
        common = dict(dtype=m.dtype, remat=m.remat, attention=m.attention,
                      attention_window=int(config.data.max_text_len) + int(m.item_emb_token_n))
        item = sizes.decode_variant(m.item_size, vocab=vocab, **common, **dict(m.get("item_overrides", {})))
        user = sizes.decode_variant(m.user_size, vocab=0, **dict(common, attention="dense"),
                                    **dict(m.get("user_overrides", {})))
        return HLLMConfig(item=item, user=user, item_emb_token_n=int(m.item_emb_token_n),
                          item_proj=item.hidden != user.hidden, nce_threshold=float(m.nce_threshold))
    if m.name in ID_MODELS:
        from hllm_jax.models import baselines
        return baselines.config_from(m, num_items=num_items, max_seq_len=int(config.data.max_seq_len))
    raise ValueError(f"model.name={m.name!r}: choose 'hllm', 'sasrec' or 'hstu'")


def axis_rules(config):
    """The logical-axis -> mesh-axis rules of a run config (``logical_axis_rules``, else the defaults)."""
    rules = config.get("logical_axis_rules")
    return [tuple(r) for r in rules] if rules else sharding.DEFAULT_RULES


def batch_config(config, item_emb_token_n: int, max_text_len: int) -> BatchConfig:
    b, d = config.batch, config.data
    return BatchConfig(batch_size=int(b.batch_size), max_seq_len=int(d.max_seq_len),
                       num_negatives=b.get("num_negatives") or None, negative_sampling=b.negative_sampling,
                       row_len=int(b.row_len), item_rows=b.get("item_rows") or None,
                       max_unique_items=b.get("max_unique_items") or None, item_emb_token_n=item_emb_token_n,
                       max_text_len=int(max_text_len), seed=int(config.seed),
                       sample_mode=d.get("sample_mode", "chunks"))


def total_steps(config, builder: BatchBuilder) -> tuple[int, int]:
    """(total steps, steps per epoch): ``train.steps`` if set, else ``train.epochs`` epochs."""
    per_epoch = max(1, math.ceil(builder.steps_per_epoch))
    steps = int(config.train.get("steps") or 0) or int(config.train.epochs) * per_epoch
    return steps, per_epoch
