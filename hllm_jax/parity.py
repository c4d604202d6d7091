"""``python -m hllm_jax.parity --case DIR``: prove this model computes the public HLLM.

Loads a golden case (the format of ``shared/reference/tiny``: ``case.json`` + ``arrays.npz``),
its weights and packed batches, runs our model and compares item embeddings (positives and
negatives), user outputs on valid positions, logits, loss, nce metrics, every gradient, and the
losses and weights of the three AdamW steps. One JSON line per quantity, then a verdict line;
exit status 1 when any quantity is outside its tolerance.

Error (the case README's definition): ``err = max|a - b| / max(max|b|, atol)``, atol = 1e-6;
infinities must sit at the same positions with the same sign and are left out; any NaN fails.
Tolerances: 1e-4 for tensors, 1e-5 relative for scalar losses, exact for counts and accuracies
(Recall@K as hit counts); NDCG@K from the golden item features within 1e-12 relative (identical
ranks; the float64 mean over users differs from the reference's only in summation order).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hllm_jax.batch import TrainBatch
from hllm_jax.convert.reference import REFERENCE_ONLY, from_reference, to_reference
from hllm_jax.data.packing import dedup, pack_items
from hllm_jax.models.hllm import HLLMConfig, project_logit_scale
from hllm_jax.models.llama import LlamaConfig
from hllm_jax.train import state as state_lib
from hllm_jax.train.step import build_train_step, loss_fn

ATOL = 1e-6
TOL_TENSOR = 1e-4
TOL_SCALAR = 1e-5
TOL_METRIC = 1e-12  # NDCG means (float64) from identical ranks: summation order only
BATCH_KEYS = ("pos_item_ids", "neg_item_ids", "pos_input_ids", "pos_cu_input_lens", "pos_position_ids",
              "neg_input_ids", "neg_cu_input_lens", "neg_position_ids", "attention_mask")


class CaseError(ValueError):
    """A golden-case directory that is incomplete or inconsistent."""


@dataclasses.dataclass
class Case:
    path: Path
    meta: dict
    arrays: dict

    def batch(self, prefix: str) -> dict[str, np.ndarray]:
        return {k: self.arrays[f"{prefix}{k}"] for k in BATCH_KEYS}

    def tree(self, prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix):]: v for k, v in self.arrays.items() if k.startswith(prefix)}


def load_case(path) -> Case:
    path = Path(path)
    for f in ("case.json", "arrays.npz"):
        if not (path / f).exists():
            raise CaseError(f"{path}: {f} is missing; a case directory holds case.json and arrays.npz "
                            f"(see shared/reference/README.md)")
    meta = json.loads((path / "case.json").read_text())
    for k in ("dims", "llm", "config", "outputs", "train"):
        if k not in meta:
            raise CaseError(f"{path / 'case.json'}: key {k!r} is missing")
    with np.load(path / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    steps = int(meta["train"].get("steps", 0))
    required = [f"batch/{k}" for k in BATCH_KEYS] + [
        f"activations/{k}" for k in ("pos_embedding", "neg_embedding", "user_embedding", "logits")]
    required += [f"steps/{i}/{k}" for i in range(steps) for k in BATCH_KEYS]
    missing = [k for k in required if k not in arrays]
    for prefix in ("state_dict/", "grads/"):
        if not any(k.startswith(prefix) for k in arrays):
            missing.append(prefix + "*")
    if steps and not any(k.startswith("after_steps/") for k in arrays):
        missing.append("after_steps/*")
    if missing:
        raise CaseError(f"{path / 'arrays.npz'}: missing arrays: {', '.join(missing)}")
    return Case(path, meta, arrays)


def model_config(meta: dict, dtype: str = "float32", attention: str = "dense", remat: str = "none") -> HLLMConfig:
    """The HLLM config a case describes (``dims``, ``llm``, ``config`` of case.json)."""
    d, llm, cfg = meta["dims"], meta["llm"], meta["config"]

    def llama(dims, vocab):
        return LlamaConfig(hidden=dims["hidden"], layers=dims["layers"], heads=dims["heads"],
                           kv_heads=dims.get("kv_heads", dims["heads"]), mlp=dims["inter"], vocab=vocab,
                           head_dim=dims.get("head_dim"), rope_theta=float(llm.get("rope_theta", 1e4)),
                           norm_eps=float(llm.get("rms_norm_eps", 1e-6)), dtype=dtype, remat=remat,
                           attention=attention, attention_window=int(cfg["MAX_TEXT_LENGTH"]) + 1)
    if llm.get("hidden_act", "silu") != "silu":
        raise CaseError(f"case.json llm.hidden_act={llm['hidden_act']!r}: only 'silu' (SwiGLU) is supported")
    user_dims = meta.get("user_dims", d)
    n_tok = int(cfg.get("item_emb_token_n", 1))
    return HLLMConfig(item=llama(d, int(d.get("vocab", llm.get("vocab_size")))), user=llama(user_dims, 0),
                      item_emb_token_n=n_tok, nce_threshold=float(cfg.get("nce_thres") or 0.99),
                      item_proj=user_dims["hidden"] != d["hidden"])


def split_stream(ids, lens, positions):
    offs = np.concatenate([[0], np.cumsum(lens)])
    return [(ids[a:b], positions[a:b]) for a, b in zip(offs[:-1], offs[1:])]


def reference_batch(b: dict, *, max_text_len: int, item_slot: bool, row_len: int):
    """Our TrainBatch (deduplicated, packed) from the reference's packed-stream batch."""
    pos_ids, neg_ids = np.asarray(b["pos_item_ids"]), np.asarray(b["neg_item_ids"])
    streams = (split_stream(b["pos_input_ids"], b["pos_cu_input_lens"], b["pos_position_ids"])
               + split_stream(b["neg_input_ids"], b["neg_cu_input_lens"], b["neg_position_ids"]))
    all_ids = np.concatenate([pos_ids.reshape(-1), neg_ids.reshape(-1)])
    if len(streams) != len(all_ids):
        raise CaseError(f"batch: {len(streams)} items in the token streams but {len(all_ids)} item ids")
    uniq, index = dedup(all_ids)
    tokens = [None] * len(uniq)
    for (toks, pos), u, iid in zip(streams, index, all_ids):
        text = toks[:-1] if item_slot else toks            # drop the ITEM placeholder
        if tokens[u] is None:
            tokens[u] = text
            k = len(text)
            expect = np.arange(len(toks)) + (max_text_len - k)
            if not np.array_equal(pos, expect):
                raise CaseError(f"batch: item {iid} has positions {pos.tolist()}, not right-aligned {expect.tolist()}")
        elif not np.array_equal(tokens[u], text):
            raise CaseError(f"batch: item {iid} appears twice with different tokens")
    items = pack_items(tokens, row_len=row_len, item_slot=item_slot, max_text_len=max_text_len,
                       item_ids=uniq)
    n, s1 = pos_ids.shape
    batch = TrainBatch(items=items, seq=index[: n * s1].reshape(n, s1).astype(np.int32),
                       seq_mask=np.asarray(b["attention_mask"]).astype(bool),
                       negatives=index[n * s1:].astype(np.int32))
    return batch, len(all_ids)


def compare(a, b, atol: float = ATOL) -> float:
    """The case README's error; inf when infinities or NaNs disagree."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if np.isnan(a).any() or np.isnan(b).any():
        return float("inf")
    ia, ib = np.isinf(a), np.isinf(b)
    if not np.array_equal(ia, ib) or not np.array_equal(np.sign(a[ia]), np.sign(b[ib])):
        return float("inf")
    fa, fb = a[~ia], b[~ib]
    if fa.size == 0:
        return 0.0
    return float(np.max(np.abs(fa - fb)) / max(np.max(np.abs(fb)), atol))


def _np(tree):
    return jax.tree.map(lambda x: np.asarray(x), tree)


def run(case_dir, *, dtype: str = "float32", attention: str = "dense", row_len: int = 0,
        tol_scale: float = 1.0, train_steps: bool = True, emit=None):
    """Run every comparison; returns the list of result records."""
    case = load_case(case_dir)
    meta = case.meta
    cfg = model_config(meta, dtype=dtype, attention=attention)
    L = int(meta["config"]["MAX_TEXT_LENGTH"])
    item_slot = cfg.item_emb_token_n == 1
    row_len = row_len or 4 * (L + 1)
    records = []

    def rec(name, err, tol, **extra):
        r = dict(quantity=name, err=err, tol=tol, ok=bool(np.isfinite(err) and err <= tol), **extra)
        records.append(r)
        if emit:
            emit(r)

    def exact(name, ours, ref):
        ours, ref = float(ours), float(ref)
        rec(name, 0.0 if ours == ref else float("inf"), 0.0, ours=ours, ref=ref)

    graphdef, like, axes = state_lib.abstract_model(cfg)
    params, skipped = from_reference(case.tree("state_dict/"), like, source=f"{case.path}/arrays.npz state_dict/")
    if emit:
        emit(dict(info="loaded", skipped_reference_only=skipped))

    batch, _ = reference_batch(case.batch("batch/"), max_text_len=L, item_slot=item_slot, row_len=row_len)

    @jax.jit
    def fwd(p, b):
        return jax.value_and_grad(lambda q: loss_fn(graphdef, q, b), has_aux=True)(project_logit_scale(p))

    (loss, (metrics, out)), grads = fwd(params, jax.tree.map(jnp.asarray, batch))
    out, metrics, grads = _np(out), _np(metrics), _np(grads)
    act = case.tree("activations/")
    mask = batch.seq_mask
    emb = out["item_emb"]
    t = TOL_TENSOR * tol_scale
    rec("pos_embedding", compare(emb[batch.seq.reshape(-1)], act["pos_embedding"]), t)
    rec("neg_embedding", compare(emb[batch.negatives], act["neg_embedding"]), t)
    if "target_pos" in act:
        rec("target_pos", compare(out["targets"], act["target_pos"]), t)
    if "target_neg" in act:
        rec("target_neg", compare(out["negatives"], act["target_neg"].reshape(-1, emb.shape[-1])), t)
    rec("user_embedding", compare(out["user"][mask], act["user_embedding"][mask]), t)
    rec("logits", compare(out["logits"][mask], act["logits"]), t)
    rec("loss", compare(loss, meta["outputs"]["loss"]), TOL_SCALAR * tol_scale)
    for k, v in meta["outputs"].items():
        if k == "loss":
            continue
        if k not in metrics:
            rec(k, float("inf"), 0.0, note="metric not computed")
            continue
        if tol_scale == 1.0:
            exact(k, np.float32(metrics[k]), np.float32(v))
        else:
            rec(k, abs(float(metrics[k]) - float(v)), 0.1 * tol_scale, ours=float(metrics[k]), ref=float(v))

    ref_grads = case.tree("grads/")
    our_grads = to_reference(grads)
    for k in sorted(ref_grads):
        if k in REFERENCE_ONLY:
            continue
        if k not in our_grads:
            rec(f"grad/{k}", float("inf"), t, note="no such parameter here")
            continue
        rec(f"grad/{k}", compare(our_grads[k].reshape(ref_grads[k].shape), ref_grads[k]), t)

    steps = int(meta["train"].get("steps", 0)) if train_steps else 0
    if steps:
        c = meta["config"]
        tx = state_lib.make_optimizer(float(c["optim_args"]["learning_rate"]), steps,
                                      warmup=float(c.get("scheduler_args", {}).get("warmup", 0.1)),
                                      weight_decay=float(c["optim_args"].get("weight_decay", 0.0)))
        sched = state_lib.reference_schedule(float(c["optim_args"]["learning_rate"]), steps,
                                             float(c.get("scheduler_args", {}).get("warmup", 0.1)))
        batches = [reference_batch(case.batch(f"steps/{i}/"), max_text_len=L, item_slot=item_slot,
                                   row_len=row_len)[0] for i in range(steps)]
        state = state_lib.create_state(jax.tree.map(jnp.asarray, params), tx)
        fns = build_train_step(graphdef, tx, state, axes, batches[0], donate=False)
        losses = []
        for i, b in enumerate(batches):
            lr_ref = meta["train"].get("lr_before_each_step", [None] * steps)[i]
            if lr_ref is not None:
                rec(f"train/lr[{i}]", compare(float(sched(i)), lr_ref), TOL_SCALAR)
            state, m = fns.train(state, jax.tree.map(jnp.asarray, b))  # shapes differ per step: retraces
            losses.append(float(m["loss"]))
        for i, (ours, ref) in enumerate(zip(losses, meta["train"]["losses"])):
            rec(f"train/loss[{i}]", compare(ours, ref), TOL_SCALAR * tol_scale)
        after = case.tree("after_steps/")
        ours = to_reference(_np(state.params))
        for k in sorted(after):
            if k in REFERENCE_ONLY:
                continue
            rec(f"after_steps/{k}", compare(ours[k].reshape(after[k].shape), after[k]), t)
    if "eval" in meta and "eval/item_feature" in case.arrays:
        _eval_parity(case, cfg, rec, exact, t, row_len)
    return records


def _eval_parity(case: Case, cfg: HLLMConfig, rec, exact, tol, row_len):
    """Full-ranking metrics from the golden item features (exact) and our catalogue pass."""
    from hllm_jax.data import tables, text
    from hllm_jax.eval import ranking
    meta, c = case.meta, case.meta["config"]
    data_dir, tok_dir = case.path / "dataset", case.path / "tokenizer"
    if not data_dir.is_dir() or not tok_dir.is_dir():
        raise CaseError(f"{case.path}: eval metrics need dataset/ and tokenizer/ beside case.json")
    ds = tables.load_dir(data_dir, text_keys=c["text_keys"])
    want_ids = case.arrays.get("eval/item_token_ids")
    if want_ids is not None and not np.array_equal(ds.item_ids[1:], want_ids[1:]):
        raise CaseError(f"{data_dir}: dense item ids differ from eval/item_token_ids")
    graphdef, like, _ = state_lib.abstract_model(cfg)
    params, _ = from_reference(case.tree("after_steps/"), like, source="after_steps/")
    params = project_logit_scale(params)
    golden = case.arrays["eval/item_feature"]
    ranker = ranking.Ranker(graphdef)
    L = int(c["MAX_TEXT_LENGTH"])
    cat = text.build_catalogue(ds, tok_dir, L, text_keys=c["text_keys"], prompt=c["item_prompt"])
    packed = ranking.pack_catalogue(cat.token_lists(range(cat.num_items)), items_per_batch=64,
                                    row_len=row_len, item_slot=cfg.item_emb_token_n == 1, max_text_len=L)
    ours = np.asarray(ranker.item_features(params, packed))
    rec("eval/item_feature", compare(ours, golden), tol)
    max_len = int(c.get("MAX_ITEM_LIST_LENGTH_TEST") or c["MAX_ITEM_LIST_LENGTH"])
    for phase in ("valid", "test"):
        split = tables.eval_split(ds, phase, max_len)
        got = ranking.evaluate_split(ranker, params, jnp.asarray(golden), split, ds.seq_items,
                                     ks=tuple(c.get("topk", (5, 10, 50, 200))), batch_size=16)
        for k, v in meta["eval"][phase].items():
            if k.startswith("recall@"):      # hit counts: exact
                exact(f"eval/{phase}/{k}", round(got[k] * got["users"]), round(v * got["users"]))
            elif "@" in k:                   # same ranks; float64 means differ only by summation order
                rec(f"eval/{phase}/{k}", abs(got[k] - v) / max(abs(v), ATOL), TOL_METRIC, ours=got[k], ref=v)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hllm_jax.parity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", required=True, help="golden case directory (case.json + arrays.npz)")
    ap.add_argument("--attention", default="dense", help="attention impl: dense, dot_product, local")
    ap.add_argument("--row_len", type=int, default=0, help="packed row length (default 4 * (MAX_TEXT_LENGTH + 1))")
    args = ap.parse_args(argv)
    emit = lambda r: print(json.dumps(r), flush=True)
    try:
        records = run(args.case, attention=args.attention, row_len=args.row_len, emit=emit)
    except (CaseError, ValueError, FileNotFoundError) as e:
        print(json.dumps(dict(verdict="ERROR", error=str(e))))
        return 2
    bad = [r["quantity"] for r in records if not r["ok"]]
    worst = max((r["err"] for r in records if r["tol"] > 0), default=0.0)
    print(json.dumps(dict(verdict="PASS" if not bad else "FAIL", compared=len(records), failed=bad,
                          max_tensor_err=worst)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
