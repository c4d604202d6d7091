"""``train_and_evaluate(config, workdir)``: the training loop around the fused step; owns all I/O.

Per run: data and model from the config, a mesh, resume from the newest readable checkpoint
(model, optimiser, step, data position), training with a progress bar and a per-interval log line
(step, s/step, model TFLOP/s per device, tokens/s per device, loss), full-ranking evaluation on
the valid split every ``eval.every_steps`` (0: every epoch), early stopping on valid NDCG@200,
test metrics with the best checkpoint. Writes ``metrics.json``, ``log.jsonl`` (every logged step
and eval), TensorBoard events and ``config.json`` to the workdir. SIGTERM: save, exit cleanly.
A non-finite loss stops the run with the step number; the state before that step is saved.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import time
from pathlib import Path

import jax
import numpy as np

from hllm_jax import flops as flops_lib
from hllm_jax import sharding, sizes
from hllm_jax.data.batches import BatchBuilder, suggest_capacities
from hllm_jax.data.pipeline import make_train_iterator, to_global
from hllm_jax.eval import ranking
from hllm_jax.models.hllm import HLLMConfig, project_logit_scale
from hllm_jax.train import setup
from hllm_jax.train import state as state_lib
from hllm_jax.train.checkpoint import Checkpointer
from hllm_jax.train.step import build_train_step, state_shardings

log = logging.getLogger(__name__)
BEST_METRIC = "valid/ndcg@200"


class NonFiniteLoss(FloatingPointError):
    pass


class _Jsonl:
    def __init__(self, path: Path):
        self.f = open(path, "a")

    def write(self, **rec):
        self.f.write(json.dumps(rec, default=float) + "\n")
        self.f.flush()

    def close(self):
        self.f.close()


class _Tensorboard:
    def __init__(self, logdir: Path, enabled: bool):
        self.w = None
        if enabled:
            from tensorboardX import SummaryWriter
            self.w = SummaryWriter(str(logdir))

    def scalars(self, step: int, values: dict, prefix: str = ""):
        if self.w is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v):
                self.w.add_scalar(prefix + k, float(v), step)
        self.w.flush()

    def close(self):
        if self.w is not None:
            self.w.close()


class Run:
    """Everything built from a config (also used by ``experiments.evaluate``)."""

    def __init__(self, config, workdir):
        self.config = config
        self.workdir = Path(workdir)
        self.data = setup.load_data(config)
        self.model_cfg = setup.model_config(config, self.data.vocab, self.data.dataset.num_items)
        n_tok = self.model_cfg.item_emb_token_n if isinstance(self.model_cfg, HLLMConfig) else 0  # ID: no slot
        n_dev = int(config.get("mesh_devices") or 0)
        self.mesh = sharding.make_mesh(tuple(config.mesh_shape), jax.devices()[:n_dev] if n_dev else None)
        self.rules = setup.axis_rules(config)
        self.batch_cfg = setup.batch_config(config, n_tok, self.data.catalogue.max_text_len)
        # Static capacities (rows, unique items): from the config, else measured over the first
        # ``batch.capacity_probe_steps`` steps plus a margin (a later overflow is an error naming the
        # setting). They must divide over the batch-sharded devices.
        self.batch_shards = shards = sharding.batch_shards(self.mesh, self.rules)
        probe = int(config.batch.get("capacity_probe_steps", 200))
        if probe and (self.batch_cfg.item_rows is None or self.batch_cfg.max_unique_items is None):
            measured = suggest_capacities(self.data.samples, self.data.catalogue, self.batch_cfg, steps=probe,
                                          margin=float(config.batch.get("capacity_margin", 0.1)),
                                          multiple=math.lcm(8, shards))
            self.batch_cfg = dataclasses.replace(
                self.batch_cfg, item_rows=self.batch_cfg.item_rows or measured.item_rows,
                max_unique_items=self.batch_cfg.max_unique_items or measured.max_unique_items)
        rows, uniq = BatchBuilder(self.data.samples, self.data.catalogue, self.batch_cfg).capacities()
        up = lambda x: -(-x // shards) * shards
        self.batch_cfg = dataclasses.replace(self.batch_cfg, item_rows=up(rows), max_unique_items=up(uniq))
        self.builder = BatchBuilder(self.data.samples, self.data.catalogue, self.batch_cfg)
        self.total_steps, self.steps_per_epoch = setup.total_steps(config, self.builder)
        o = config.optim
        kind = o.get("schedule", "cosine")
        self.schedule = state_lib.learning_rate(float(o.lr), self.total_steps, float(o.warmup), kind)
        self.tx = state_lib.make_optimizer(float(o.lr), self.total_steps, warmup=float(o.warmup),
                                           weight_decay=float(o.weight_decay), schedule=kind)
        self.graphdef, self.abstract_params, self.axes = state_lib.abstract_model(self.model_cfg)
        self.ckpt = Checkpointer(self.workdir / "checkpoints", model_config=self.model_cfg,
                                 keep=int(config.checkpoint.keep), best_metric=BEST_METRIC,
                                 async_save=bool(config.checkpoint.get("async_save", True)))
        self.ranker = ranking.Ranker(self.graphdef, self.mesh, self.rules)
        self._catalogue = None

    # -- state ------------------------------------------------------------------------------
    def init_state(self):
        _, params, _ = state_lib.init_model(self.model_cfg, seed=int(self.config.seed))
        state = state_lib.create_state(params, self.tx)
        return jax.device_put(state, state_shardings(state, self.axes, self.mesh, self.rules, self.tx))

    def abstract_state(self):
        abstract = jax.eval_shape(lambda p: state_lib.create_state(p, self.tx), self.abstract_params)
        sh = state_shardings(abstract, self.axes, self.mesh, self.rules, self.tx)
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, sh)

    # -- evaluation -------------------------------------------------------------------------
    def catalogue(self):
        if self._catalogue is None:
            e = self.config.eval
            cat = self.data.catalogue
            self._catalogue = ranking.pack_catalogue(
                cat.token_lists(range(cat.num_items)), items_per_batch=int(e.items_per_batch),
                row_len=int(self.config.batch.row_len), item_slot=self.batch_cfg.item_emb_token_n == 1,
                max_text_len=self.batch_cfg.max_text_len, multiple_of=self.batch_shards)
            self._train_counts = ranking.train_item_counts(self.data.dataset, cat.num_items)
        return self._catalogue

    def evaluate(self, params, phase: str, show_progress: bool = False) -> dict:
        from hllm_jax.data import tables
        params = project_logit_scale(params)
        cat = self.catalogue()
        feats = self.ranker.item_features(params, cat, show_progress=show_progress)
        max_len = int(self.config.eval.get("max_seq_len") or self.config.data.max_seq_len)
        split = tables.eval_split(self.data.dataset, phase, max_len)
        return ranking.evaluate_split(self.ranker, params, feats, split, self.data.dataset.seq_items,
                                      train_counts=self._train_counts,
                                      batch_size=int(self.config.eval.users_per_batch), show_progress=show_progress)


def _step_flops(run: Run, batch_local, n_proc: int) -> tuple[float, int]:
    """(global model FLOPs, global item tokens) of a step, from this process's shard.

    Shared negatives: every user is scored against all M, so M is not divided by the processes.
    """
    lengths = flops_lib.batch_item_lengths(batch_local.items.segments)
    cfg = run.model_cfg
    b = run.batch_cfg
    local_batch = b.batch_size // n_proc
    if isinstance(cfg, HLLMConfig):
        f = flops_lib.hllm_train_flops(cfg.item, cfg.user, item_lengths=lengths, batch=local_batch,
                                       seq_len=b.max_seq_len, num_negatives=b.num_negatives, proj=cfg.item_proj)
    else:
        f = flops_lib.baseline_flops(cfg, unique_items=len(lengths), batch=local_batch, seq_len=b.max_seq_len,
                                     num_negatives=cfg.negatives_per_position or b.num_negatives)
    return f * n_proc, int(lengths.sum()) * n_proc


def train_and_evaluate(config, workdir) -> dict:
    """Train, evaluate, write results; returns the metrics dict (also ``workdir/metrics.json``)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    t_start = time.time()
    run = Run(config, workdir)
    jsonl = _Jsonl(workdir / "log.jsonl")
    tb = _Tensorboard(workdir / "tensorboard", bool(config.get("tensorboard", True)))
    stop = {"signal": None}
    prev = signal.signal(signal.SIGTERM, lambda sig, frame: stop.__setitem__("signal", sig))
    try:
        return _train(run, config, workdir, jsonl, tb, stop, t_start)
    finally:
        signal.signal(signal.SIGTERM, prev)
        run.ckpt.close()
        jsonl.close()
        tb.close()


def _train(run: Run, config, workdir: Path, jsonl, tb, stop, t_start) -> dict:
    state = run.init_state()
    restored = run.ckpt.restore_latest(run.abstract_state())
    data_state, evals, best = None, [], None
    # Running totals over the whole run (kept in checkpoints, so a resumed run continues them).
    totals = dict(train_flops=0.0, item_tokens=0)
    if restored is not None:
        state, data_state, meta = restored
        evals = meta.get("metrics", {}).get("evals", [])
        best = meta.get("metrics", {}).get("best")
        totals.update(meta.get("metrics", {}).get("totals", {}))
        log.info("resumed from step %d", int(state.step))
    start = int(state.step)
    it = make_train_iterator(run.builder, run.total_steps, mesh=run.mesh, rules=run.rules,
                             num_threads=int(config.data.get("prefetch_threads", 1)))
    if data_state:
        it.set_state(data_state)
    if it.next_step != start:
        raise RuntimeError(f"data position {it.next_step} does not match the checkpoint step {start}")
    shard, n_proc = _shard(run)
    example = jax.tree.map(np.asarray, run.builder.build(0, shard, n_proc))
    fns = build_train_step(run.graphdef, run.tx, state, run.axes, to_global(example, run.mesh, run.rules),
                           mesh=run.mesh, rules=run.rules, seed=int(config.seed))
    e = config.eval
    eval_every = int(e.every_steps) or run.steps_per_epoch
    patience = int(e.patience)
    n_dev = jax.device_count()
    log_every = int(config.log_every)

    def record(step, metrics=None):
        """What a checkpoint remembers of the run: evals so far, the best, this step's metric."""
        payload = dict(step=step, best=best, evals=evals, totals=dict(totals))
        if metrics and BEST_METRIC in metrics:
            payload[BEST_METRIC] = metrics[BEST_METRIC]
        return payload

    def save(step, metrics=None, force=False):
        run.ckpt.save(step, state, it.get_state(), record(step, metrics), force=force)

    from tqdm.auto import tqdm
    bar = tqdm(total=run.total_steps, initial=start, desc="train", dynamic_ncols=True,
               disable=not config.get("progress", True))
    window = dict(t=time.time(), flops=0.0, tokens=0, steps=0, loss=0.0)
    last_window_loss = None
    status, stale = "completed", 0
    if evals and best:
        stale = sum(1 for ev in evals if ev["step"] > best["step"])
    step = start
    while step < run.total_steps:
        local = next(it)
        f, toks = _step_flops(run, local, n_proc)
        state, m = fns.train(state, to_global(local, run.mesh, run.rules))
        if not bool(m["finite"]):
            run.ckpt.save(step, state, {"next_step": step, "data": it.get_state()["data"]}, record(step),
                          force=True)
            run.ckpt.wait()
            raise NonFiniteLoss(f"loss is {float(m['loss'])} at step {step} (0-based); training stopped; the "
                                f"state before this step is saved at {run.ckpt.directory}/{step}")
        step += 1
        loss = float(m["loss"])
        window["flops"] += f
        window["tokens"] += toks
        window["steps"] += 1
        window["loss"] += loss
        totals["train_flops"] += f
        totals["item_tokens"] += toks
        bar.update(1)
        if step % log_every == 0 or step == run.total_steps:
            dt = (time.time() - window["t"]) / window["steps"]
            last_window_loss = window["loss"] / window["steps"]
            rec = dict(step=step, loss=loss, mean_loss=last_window_loss, seconds_per_step=dt,
                       tflops_per_device=window["flops"] / window["steps"] / dt / n_dev / 1e12,
                       tokens_per_second_per_device=window["tokens"] / window["steps"] / dt / n_dev,
                       lr=float(run.schedule(step - 1)),
                       **{k: float(v) for k, v in m.items() if k not in ("loss", "finite")})
            jsonl.write(kind="train", **rec)
            tb.scalars(step, rec, "train/")
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rec['tokens_per_second_per_device'] * n_dev:,.0f}")
            bar.write(f"step {step}, {dt:.3f} s/step, {rec['tflops_per_device']:.4f} TFLOP/s/device, "
                      f"{rec['tokens_per_second_per_device']:.0f} tokens/s/device, loss {loss:.5f}")
            window = dict(t=time.time(), flops=0.0, tokens=0, steps=0, loss=0.0)
        saved = False
        if step % eval_every == 0 or step == run.total_steps:
            t0 = time.time()
            res = run.evaluate(state.params, "valid")
            ev = dict(step=step, epoch=step / run.steps_per_epoch, seconds=time.time() - t0,
                      **{f"valid/{k}": v for k, v in res.items() if k != "cold_start"})
            evals.append(ev)
            jsonl.write(kind="eval", **ev)
            tb.scalars(step, {k: v for k, v in ev.items() if k.startswith("valid/")})
            if best is None or ev[BEST_METRIC] > best[BEST_METRIC]:
                best, stale = dict(step=step, **{BEST_METRIC: ev[BEST_METRIC]}), 0
            else:
                stale += 1
            save(step, {BEST_METRIC: ev[BEST_METRIC]}, force=True)
            saved = True
            bar.write(f"step {step} epoch {ev['epoch']:.2f}: valid R@10 {ev['valid/recall@10']:.4f} "
                      f"N@10 {ev['valid/ndcg@10']:.4f} N@200 {ev[BEST_METRIC]:.4f}")
            if patience and stale >= patience:
                status = "early_stopped"
                break
        if not saved and int(config.checkpoint.every_steps) and step % int(config.checkpoint.every_steps) == 0:
            save(step)
            saved = True
        if stop["signal"] is not None:
            if not saved:
                save(step, force=True)
            status = "preempted"
            break
    bar.close()
    it.close()
    run.ckpt.wait()
    out = dict(status=status, step=step, total_steps=run.total_steps, steps_per_epoch=run.steps_per_epoch,
               data=run.data.source, evals=evals, best=best, wall_seconds=time.time() - t_start,
               devices=jax.device_count(), totals=totals, final_mean_loss=last_window_loss)
    if isinstance(run.model_cfg, HLLMConfig):
        out["param_counts"] = sizes.hllm_param_counts(run.model_cfg)
    if status != "preempted" and best is not None:
        params = run.ckpt.restore_params(best["step"], run.abstract_state().params)
        t0 = time.time()
        test = run.evaluate(params, "test")
        out["test"] = test
        out["test_seconds"] = time.time() - t0
        jsonl.write(kind="test", step=best["step"], **{k: v for k, v in test.items() if k != "cold_start"})
        tb.scalars(best["step"], {f"test/{k}": v for k, v in test.items() if k != "cold_start"})
    (workdir / "metrics.json").write_text(json.dumps(out, indent=2, default=float))
    return out


def _shard(run: Run) -> tuple[int, int]:
    from hllm_jax.data.pipeline import data_shard
    return data_shard(run.mesh, run.rules)
