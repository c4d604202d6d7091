"""Batch-pipeline report: item-LLM tokens after dedup + packing, unique items, rows, build time.

python -m hllm_jax.data.report --data_dir DIR --text_keys title --tokenizer DIR --max_text_len 32
    --max_seq_len 10 --batch_size 16 --num_negatives 512 [--negative_sampling reference]
    [--row_len 256] [--steps 50] [--process_count 1] [--step_time] [--json]

Capacities (item_rows, max_unique_items) come from ``suggest_capacities`` over the same steps
unless given. With ``--step_time`` it also times the fused train step of the Beauty reference
model dims (hidden 64, 2 layers, 4 heads, 2 KV heads, FFN 172, vocab = the tokenizer's) on the
local default device, fed by these batches.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Sequence

import numpy as np

from hllm_jax.data import tables, text
from hllm_jax.data.batches import BatchBuilder, BatchConfig, BatchStats, suggest_capacities


def _dist(x) -> dict:
    x = np.asarray(x, np.float64)
    return {"mean": float(x.mean()), "p90": float(np.percentile(x, 90)), "min": float(x.min()), "max": float(x.max())}


def measure_report(builder: BatchBuilder, steps: int, process_count: int = 1) -> dict:
    """Per-step totals over the process shards and host build time per shard (seconds)."""
    rows, per_step, times = [], [], []
    for k in range(steps):
        shards = []
        for p in range(process_count):
            t0 = time.perf_counter()
            _, st = builder.build_with_stats(k, p, process_count)
            times.append(time.perf_counter() - t0)
            shards.append(st)
        per_step.append(BatchStats.sum(shards))
    cfg = builder.cfg
    for st in per_step:
        rows.append(dict(unique_items=st.unique_items, item_tokens=st.item_tokens,
                         nodedup_tokens=st.nodedup_tokens, padded_tokens=st.padded_tokens,
                         capacity_tokens=st.capacity_tokens, rows_used=st.rows_used,
                         packing_efficiency=st.packing_efficiency, capacity_efficiency=st.capacity_efficiency,
                         valid_positions=st.valid_positions))
    out = {k: _dist([r[k] for r in rows]) for k in rows[0]}
    out["build_seconds_per_shard"] = _dist(times)
    out["static"] = {"item_rows": cfg.item_rows, "row_len": cfg.row_len, "max_unique_items": cfg.max_unique_items,
                     "item_refs": cfg.seq_items + cfg.num_negatives, "capacity_tokens": per_step[0].capacity_tokens,
                     "padded_tokens": per_step[0].padded_tokens}
    return out


def step_time(builder: BatchBuilder, vocab: int, steps: int = 20) -> dict:
    """Seconds per fused train step (Beauty reference dims) on the default device."""
    import jax

    from hllm_jax.models.hllm import HLLMConfig
    from hllm_jax.models.llama import LlamaConfig
    from hllm_jax.train import state as state_lib
    from hllm_jax.train.step import build_train_step

    dims = dict(hidden=64, layers=2, heads=4, kv_heads=2, mlp=172)
    cfg = HLLMConfig(item=LlamaConfig(vocab=vocab, **dims), user=LlamaConfig(vocab=0, **dims),
                     item_emb_token_n=builder.cfg.item_emb_token_n)
    graphdef, params, axes = state_lib.init_model(cfg, seed=0)
    tx = state_lib.make_optimizer(1e-3, total_steps=1000)
    state = state_lib.create_state(params, tx)
    batches = [builder.build(k) for k in range(steps + 2)]
    fns = build_train_step(graphdef, tx, state, axes, batches[0])
    t0 = time.perf_counter()
    state, m = fns.train(state, fns.put_batch(batches[0]))
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    state, m = fns.train(state, fns.put_batch(batches[1]))
    jax.block_until_ready(m)
    times = []
    for b in batches[2:]:
        t0 = time.perf_counter()
        state, m = fns.train(state, fns.put_batch(b))
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return {"compile_and_first_step_s": compile_s, "step_seconds": _dist(times), "device": str(jax.devices()[0]),
            "loss_last": float(m["loss"])}


def format_report(r: dict, cfg: BatchConfig, process_count: int) -> str:
    st = r["static"]
    def f(d, fmt="{:,.0f}"):
        return f"mean {fmt.format(d['mean'])}  p90 {fmt.format(d['p90'])}  max {fmt.format(d['max'])}"
    lines = [
        f"config: batch {cfg.batch_size} x {cfg.max_seq_len + 1} items, {cfg.num_negatives} negatives "
        f"({cfg.negative_sampling}), max_text_len {cfg.max_text_len} + {cfg.item_emb_token_n} ITEM slot, "
        f"row_len {cfg.row_len}, item_rows {cfg.item_rows}, max_unique_items {cfg.max_unique_items}, "
        f"process_count {process_count}",
        f"item references per step (positions + negatives): {st['item_refs']:,}",
        f"unique items per step:                 {f(r['unique_items'])}",
        f"item tokens, padded to max_text_len+{cfg.item_emb_token_n}: {st['padded_tokens']:,} (no dedup, no packing)",
        f"item tokens, packed, no dedup:         {f(r['nodedup_tokens'])} (the reference's varlen stream)",
        f"item tokens after dedup + packing:     {f(r['item_tokens'])} real",
        f"item-LLM tokens computed (static):     {st['capacity_tokens']:,} = {st['item_rows']} rows x "
        f"{st['row_len']}  ({st['padded_tokens'] / st['capacity_tokens']:.2f}x fewer than padding every item)",
        f"rows used:                             {f(r['rows_used'])} of {st['item_rows']}",
        f"packing efficiency (real / used rows): {f(r['packing_efficiency'], '{:.3f}')}",
        f"capacity efficiency (real / static):   {f(r['capacity_efficiency'], '{:.3f}')}",
        f"host batch build time per shard:       mean {r['build_seconds_per_shard']['mean'] * 1e3:.1f} ms  "
        f"p90 {r['build_seconds_per_shard']['p90'] * 1e3:.1f} ms",
    ]
    if "step_time" in r:
        s = r["step_time"]
        t = s["step_seconds"]
        lines.append(f"train step (Beauty reference dims, {s['device']}): mean {t['mean'] * 1e3:.1f} ms  "
                     f"p90 {t['p90'] * 1e3:.1f} ms  (compile + first step {s['compile_and_first_step_s']:.1f} s)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--text_keys", default=None)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--max_text_len", type=int, default=32)
    ap.add_argument("--max_seq_len", type=int, default=10)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--num_negatives", type=int, default=None)
    ap.add_argument("--negative_sampling", default="uniform")
    ap.add_argument("--row_len", type=int, default=256)
    ap.add_argument("--item_rows", type=int, default=None)
    ap.add_argument("--max_unique_items", type=int, default=None)
    ap.add_argument("--item_emb_token_n", type=int, default=1)
    ap.add_argument("--sample_mode", default="chunks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--process_count", type=int, default=1)
    ap.add_argument("--cache_dir", default=None, help="catalogue cache directory")
    ap.add_argument("--step_time", action="store_true", help="also time the train step (Beauty dims)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    keys = None if a.text_keys is None else tuple(a.text_keys.split(","))
    ds = tables.load_dir(a.data_dir, keys)
    cat = text.build_catalogue(ds, a.tokenizer, a.max_text_len, cache_dir=a.cache_dir)
    samples = tables.train_samples(ds, a.max_seq_len, a.sample_mode)
    cfg = BatchConfig(batch_size=a.batch_size, max_seq_len=a.max_seq_len, num_negatives=a.num_negatives,
                      negative_sampling=a.negative_sampling, row_len=a.row_len, item_rows=a.item_rows,
                      max_unique_items=a.max_unique_items, item_emb_token_n=a.item_emb_token_n,
                      max_text_len=a.max_text_len, seed=a.seed, sample_mode=a.sample_mode)
    if cfg.item_rows is None or cfg.max_unique_items is None:
        s = suggest_capacities(samples, cat, cfg, steps=a.steps, process_count=a.process_count)
        cfg = dataclasses.replace(cfg, item_rows=cfg.item_rows or s.item_rows,
                                  max_unique_items=cfg.max_unique_items or s.max_unique_items)
    builder = BatchBuilder(samples, cat, cfg)
    r = measure_report(builder, a.steps, a.process_count)
    if a.step_time:
        r["step_time"] = step_time(builder, len(text.load_tokenizer(a.tokenizer)))
    if a.json:
        print(json.dumps({"config": dataclasses.asdict(cfg), "process_count": a.process_count, **r}, indent=1))
    else:
        print(format_report(r, cfg, a.process_count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
