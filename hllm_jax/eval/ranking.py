"""Full-ranking evaluation: embed the whole catalogue, score every user against every item.

1. The catalogue (PAD included at index 0) is embedded by the item LLM in packed batches of
   ``items_per_batch`` items (static shapes: every batch packed into the same number of rows).
2. User vector = the user model's output at the last position, over the last ``max_seq_len``
   history items left-padded with PAD.
3. Score = cosine(user, item); PAD and every item that occurs before the target in the user's
   sequence are set to -inf (the reference's rule, which also masks a target that occurred
   earlier); ranks and Recall/NDCG@K as in ``hllm_jax.eval.metrics``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from hllm_jax import sharding
from hllm_jax.batch import PACKED_AXES, PackedItems
from hllm_jax.data.packing import pack_items, pad_rows
from hllm_jax.eval.metrics import TOPK, cold_start_metrics, metrics_from_ranks, target_ranks


def _progress(it, total, desc, show):
    if not show:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, total=total, desc=desc, leave=False)


@dataclasses.dataclass
class CatalogueBatches:
    """The catalogue packed once into equal-shape batches (reused at every evaluation)."""
    batches: list[PackedItems]
    counts: list[int]  # real items in each batch
    num_items: int


def pack_catalogue(token_lists, *, items_per_batch: int, row_len: int, item_slot: bool,
                   max_text_len: int, multiple_of: int = 1) -> CatalogueBatches:
    """Pack item i = token_lists[i] in consecutive chunks; rows/capacity padded to common shapes."""
    n = len(token_lists)
    chunks = [(s, min(n, s + items_per_batch)) for s in range(0, n, items_per_batch)]
    cap = int(math.ceil(items_per_batch / multiple_of) * multiple_of)
    packed = [pack_items(token_lists[a:b], row_len=row_len, item_slot=item_slot, max_text_len=max_text_len,
                         item_ids=np.arange(a, b), item_capacity=cap) for a, b in chunks]
    rows = max(p.tokens.shape[0] for p in packed)
    rows = int(math.ceil(rows / multiple_of) * multiple_of)
    return CatalogueBatches([pad_rows(p, rows) for p in packed], [b - a for a, b in chunks], n)


class Ranker:
    """Jitted catalogue-embedding, user-vector and ranking functions for one model (and mesh)."""

    def __init__(self, graphdef, mesh=None, rules=sharding.DEFAULT_RULES):
        self.graphdef, self.mesh, self.rules = graphdef, mesh, rules

        def encode(params, items):
            with sharding.use_rules(mesh, rules):
                return nnx.merge(graphdef, params).encode_items(items)

        def rank(params, item_feature, history, targets, seen):
            with sharding.use_rules(mesh, rules):
                model = nnx.merge(graphdef, params)
                emb = jnp.take(item_feature, history, axis=0)
                user = model.encode_users(emb, history > 0)[:, -1]
                u = user / jnp.linalg.norm(user, axis=-1, keepdims=True)
                f = item_feature / jnp.linalg.norm(item_feature, axis=-1, keepdims=True)
                scores = u @ f.T                                                # [B, N]
                scores = scores.at[:, 0].set(-jnp.inf)
                rows = jnp.broadcast_to(jnp.arange(seen.shape[0])[:, None], seen.shape)
                scores = scores.at[rows, seen].set(-jnp.inf)                   # pad value 0 = PAD
                return target_ranks(scores, targets)

        self._encode = jax.jit(encode)
        self._rank = jax.jit(rank)

    def _put(self, x, axes):
        if self.mesh is None:
            return jnp.asarray(x)
        spec = sharding.logical_to_spec(axes, self.rules, self.mesh, np.shape(x), what="eval batch")
        return jax.device_put(x, NamedSharding(self.mesh, spec))

    def item_features(self, params, cat: CatalogueBatches, show_progress: bool = False) -> jax.Array:
        """[num_items, D] float32 item vectors of the whole catalogue."""
        outs = []
        for b, c in _progress(zip(cat.batches, cat.counts), len(cat.counts), "embed catalogue", show_progress):
            items = jax.tree.map(self._put, b, PACKED_AXES, is_leaf=lambda x: isinstance(x, np.ndarray))
            outs.append(self._encode(params, items)[:c])
        return jnp.concatenate(outs, axis=0)

    def ranks(self, params, item_feature, history, targets, seen, *, batch_size: int = 256,
              show_progress: bool = False) -> np.ndarray:
        """Target ranks of every user (history [U, S], targets [U], seen [U, H] padded with 0)."""
        n = len(targets)
        out = []
        pad = (-n) % batch_size
        hist = np.pad(history, [(0, pad), (0, 0)])
        tgt = np.pad(targets, [(0, pad)])
        seen = np.pad(seen, [(0, pad), (0, 0)])
        steps = range(0, n + pad, batch_size)
        for s in _progress(steps, len(steps), "rank users", show_progress):
            sl = slice(s, s + batch_size)
            r = self._rank(params, item_feature, self._put(hist[sl], ("batch", None)),
                           self._put(tgt[sl], ("batch",)), self._put(seen[sl], ("batch", None)))
            out.append(np.asarray(r))
        return np.concatenate(out)[:n]


def seen_matrix(seq_items: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """[U, H] every user's full history before the target, right-padded with 0 (= PAD)."""
    lens = np.asarray(stops) - np.asarray(starts)
    out = np.zeros((len(lens), max(int(lens.max(initial=0)), 1)), np.int32)
    for r, (a, b) in enumerate(zip(starts, stops)):
        out[r, : b - a] = seq_items[a:b]
    return out


def evaluate_split(ranker: Ranker, params, item_feature, split, seq_items, *, ks=TOPK,
                   train_counts: np.ndarray | None = None, batch_size: int = 256,
                   show_progress: bool = False) -> dict:
    """Metrics of one EvalSplit (``hllm_jax.data.tables.eval_split``), plus cold-start buckets."""
    seen = seen_matrix(seq_items, split.seen_starts, split.seen_stops)
    ranks = ranker.ranks(params, item_feature, split.history, split.targets, seen, batch_size=batch_size,
                         show_progress=show_progress)
    out = dict(metrics_from_ranks(ranks, ks), users=int(len(ranks)),
               target_in_history=int(np.sum(split.target_in_history)))
    if train_counts is not None:
        out["cold_start"] = cold_start_metrics(ranks, train_counts[split.targets], ks)
    return out


def train_item_counts(ds, num_items: int) -> np.ndarray:
    """How often each item occurs in the training part (all but each user's last two items)."""
    counts = np.zeros(num_items, np.int64)
    for u in range(1, ds.num_users):
        seq = ds.sequence(u)[:-2]
        np.add.at(counts, seq, 1)
    return counts
