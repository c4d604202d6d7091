"""Dataset statistics: sizes, splits, sequence and text lengths, and every filtered count.

python -m hllm_jax.data.stats --data_dir DIR [--text_keys title,description]
    [--tokenizer DIR --max_text_len 32] [--max_seq_len 10] [--prompt ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import numpy as np

from hllm_jax.data import tables, text


def compute_stats(ds: tables.Dataset, *, max_seq_len: int = 10, text_keys: Sequence[str] | None = None,
                  prompt: str = text.DEFAULT_PROMPT, tokenizer: str | None = None, max_text_len: int = 32,
                  cache_dir: str | None = None) -> dict:
    """All statistics as a nested dict (counts exclude PAD unless named `*_with_pad`)."""
    keys = list(ds.text_keys if text_keys is None else text_keys)
    lens = ds.lengths()[1:]
    chunks = tables.train_samples(ds, max_seq_len, "chunks")
    last = tables.train_samples(ds, max_seq_len, "last")
    texts = text.catalogue_texts(ds, keys, prompt)
    real = np.flatnonzero(ds.in_item_file)
    out = {
        "users": ds.num_users - 1, "items": ds.num_items - 1, "interactions": ds.num_interactions,
        "num_users_with_pad": ds.num_users, "num_items_with_pad": ds.num_items,
        "density": ds.num_interactions / max(1, (ds.num_users - 1) * (ds.num_items - 1)),
        "split": {"max_seq_len": max_seq_len, "train_interactions": int((lens - 2).sum()),
                  "train_samples_chunks": len(chunks),
                  "train_samples_chunks_without_target": chunks.num_without_target,
                  "train_interactions_dropped_by_chunking": int((lens - 2).sum() - chunks.lengths.sum()),
                  "train_samples_last": len(last), "valid": ds.num_users - 1, "test": ds.num_users - 1},
        "sequence_length": text.distribution(lens),
        "item_popularity": text.distribution(np.bincount(ds.seq_items, minlength=ds.num_items)[1:]),
        "text_keys": keys, "prompt": prompt,
        "text_chars": text.distribution([len(texts[i]) for i in real]),
        "field_chars": {k: _field_stats(ds.item_text[k], real) for k in keys},
        "filtered": ds.report.as_dict(),
    }
    if tokenizer:
        cat = text.build_catalogue(ds, tokenizer, max_text_len, text_keys=keys, prompt=prompt, cache_dir=cache_dir)
        out["tokens"] = cat.stats()
    return out


def _field_stats(values: Sequence[str | None], rows: np.ndarray) -> dict:
    present = [len(values[i]) for i in rows if values[i] is not None]
    return {"present": len(present), "skipped": len(rows) - len(present), **text.distribution(present)}


def _dist(d: dict) -> str:
    if not d.get("n"):
        return "n=0"
    return (f"n={d['n']:,} min={d['min']} mean={d['mean']:.1f} p50={d['p50']:g} p90={d['p90']:g} "
            f"p99={d['p99']:g} max={d['max']}")


def format_stats(s: dict) -> str:
    """Human-readable report of `compute_stats`."""
    sp = s["split"]
    lines = [
        f"users {s['users']:,}  items {s['items']:,}  interactions {s['interactions']:,}  "
        f"(with PAD: num_users {s['num_users_with_pad']:,}, num_items {s['num_items_with_pad']:,}; "
        f"density {s['density']:.2e})",
        f"split (max_seq_len {sp['max_seq_len']}, samples of {sp['max_seq_len'] + 1}): "
        f"train interactions {sp['train_interactions']:,}; train samples {sp['train_samples_chunks']:,} "
        f"(chunks; {sp['train_samples_chunks_without_target']:,} of one item, no target; "
        f"{sp['train_interactions_dropped_by_chunking']:,} oldest items dropped) or {sp['train_samples_last']:,} "
        f"(one per user, last M); valid {sp['valid']:,}; test {sp['test']:,}",
        f"sequence length (per user, all items): {_dist(s['sequence_length'])}",
        f"item popularity (interactions per item): {_dist(s['item_popularity'])}",
        f"text keys {s['text_keys']}; item text chars (prompt included, items in the item file): "
        f"{_dist(s['text_chars'])}",
    ]
    for k, f in s["field_chars"].items():
        lines.append(f"  field {k!r}: present {f['present']:,}, skipped (empty/NaN/0) {f['skipped']:,}; "
                     f"chars {_dist(f)}")
    if "tokens" in s:
        t = s["tokens"]
        lines.append(f"tokens (BOS included, max_text_len {t['max_text_len']}): {_dist(t['lengths'])}; "
                     f"truncated {t['truncated']:,}; BOS only {t['bos_only']:,}; total {t['tokens_total']:,}")
        lines.append(f"  before truncation: {_dist(t['lengths_before_truncation'])}")
    lines.append("filtered / dropped / flagged:")
    lines += [f"  {k}: {v:,}" for k, v in s["filtered"].items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hllm_jax.data.stats", description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True, help="directory with interactions.csv and items.csv")
    p.add_argument("--interactions", default="interactions.csv")
    p.add_argument("--items", default="items.csv")
    p.add_argument("--text_keys", default=None, help="comma-separated item columns (default: all but item_id)")
    p.add_argument("--prompt", default=text.DEFAULT_PROMPT)
    p.add_argument("--cell_rule", default="pandas", choices=tables.CELL_RULES)
    p.add_argument("--tokenizer", default=None, help="HF tokenizer directory (token lengths)")
    p.add_argument("--max_text_len", type=int, default=32)
    p.add_argument("--max_seq_len", type=int, default=10)
    p.add_argument("--cache_dir", default=None, help="catalogue cache (.npz) directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    a = p.parse_args(argv)
    keys = a.text_keys.split(",") if a.text_keys else None
    try:
        ds = tables.load_dir(a.data_dir, keys, interactions=a.interactions, items=a.items, cell_rule=a.cell_rule)
    except (tables.DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = compute_stats(ds, max_seq_len=a.max_seq_len, text_keys=keys, prompt=a.prompt, tokenizer=a.tokenizer,
                      max_text_len=a.max_text_len, cache_dir=a.cache_dir)
    print(json.dumps(s, indent=1) if a.json else format_stats(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
