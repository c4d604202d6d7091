"""Fixed-shape training batches: samples, negatives, dedup, packing, index maps; one shard per process.

The batch of step k is a pure function of (seed, k, data):
- samples: an epoch-wise permutation of the training samples, ``default_rng([seed, 0, epoch])``;
  step k takes stream positions ``[k*B, (k+1)*B)`` (a batch may straddle two epochs);
- negatives: ``default_rng([seed, 1, step])`` (uniform) or ``default_rng([seed, 2, step])``
  (reference rejection sampling); no RNG state is carried from one step to the next.

Multi-host: the GLOBAL samples and negatives are drawn from (seed, step), independent of the
process count P. Process p takes samples ``[p*B/P, (p+1)*B/P)`` and negatives
``[p*M/P, (p+1)*M/P)``, deduplicates and packs only its own shard into ``item_rows/P`` rows and
``max_unique_items/P`` unique-item slots, and writes GLOBAL indices (unique-item indices offset by
``p*U/P``, ``item_last`` by ``p*(R/P)*row_len``, ``token_item`` padding = ``U``), so the P local
shards concatenated along axis 0 of every array form one valid global ``TrainBatch``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hllm_jax.batch import TrainBatch
from hllm_jax.data.packing import PackingOverflow, dedup, pack_items
from hllm_jax.data.tables import PAD, TrainSamples
from hllm_jax.data.text import Catalogue

NEGATIVE_SAMPLING = ("uniform", "reference")
POSITIONS = ("right_aligned", "from_zero")
SAMPLE_MODES = ("chunks", "last")
# Stream tags of the counter-based RNGs (never reuse a tag for another purpose).
_TAG_EPOCH, _TAG_UNIFORM, _TAG_REFERENCE = 0, 1, 2
_MAX_REJECTION_ROUNDS = 1000


@dataclass(frozen=True)
class BatchConfig:
    """Static shapes and sampling of the training batches. Sizes are GLOBAL (all processes).

    batch_size: B sequences per step; max_seq_len: S (samples have S + 1 items).
    num_negatives: M shared negatives per step, fixed here and independent of the device or
      process count. None: ``B * (S + 1)`` (the reference's count for one GPU).
    negative_sampling: ``uniform`` (M draws uniform over 1..num_items-1, with replacement) or
      ``reference`` (per sample S + 1 draws, each rejecting that sample's own items; M must be
      ``B * (S + 1)``).
    row_len: tokens per packed row (>= max_text_len + item_emb_token_n).
    item_rows: R packed rows; max_unique_items: U unique-item slots. None: a safe worst-case bound
      (see ``BatchBuilder.capacities``); ``suggest_capacities`` measures tight values.
    item_emb_token_n: 1 = one [ITEM] slot per item, 0 = mean pooling (no slot).
    max_text_len: tokens per item incl. BOS (must equal the catalogue's).
    positions: ``right_aligned`` (reference) or ``from_zero``.
    sample_mode: ``chunks`` or ``last`` (how ``tables.train_samples`` cuts the sequences).
    """
    batch_size: int = 16
    max_seq_len: int = 10
    num_negatives: int | None = None
    negative_sampling: str = "uniform"
    row_len: int = 256
    item_rows: int | None = None
    max_unique_items: int | None = None
    item_emb_token_n: int = 1
    max_text_len: int = 32
    positions: str = "right_aligned"
    seed: int = 0
    sample_mode: str = "chunks"

    def __post_init__(self):
        for name in ("batch_size", "max_seq_len", "row_len", "max_text_len"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"BatchConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(f"BatchConfig.negative_sampling={self.negative_sampling!r}: choose one of "
                             f"{NEGATIVE_SAMPLING}")
        if self.positions not in POSITIONS:
            raise ValueError(f"BatchConfig.positions={self.positions!r}: choose one of {POSITIONS}")
        if self.sample_mode not in SAMPLE_MODES:
            raise ValueError(f"BatchConfig.sample_mode={self.sample_mode!r}: choose one of {SAMPLE_MODES}")
        if self.item_emb_token_n not in (0, 1):
            raise ValueError(f"BatchConfig.item_emb_token_n={self.item_emb_token_n}: 1 ([ITEM] slot) or 0 "
                             f"(mean pooling)")
        per_ref = self.batch_size * (self.max_seq_len + 1)
        if self.num_negatives is None:
            object.__setattr__(self, "num_negatives", per_ref)
        if self.num_negatives < 1:
            raise ValueError(f"BatchConfig.num_negatives must be >= 1 (or None), got {self.num_negatives}")
        if self.negative_sampling == "reference" and self.num_negatives != per_ref:
            raise ValueError(
                f"negative_sampling='reference' draws batch_size * (max_seq_len + 1) = {self.batch_size} * "
                f"{self.max_seq_len + 1} = {per_ref} negatives per step, but num_negatives={self.num_negatives}; "
                f"set num_negatives={per_ref} (or None), or use negative_sampling='uniform'")
        if self.row_len < self.item_len:
            raise ValueError(f"BatchConfig.row_len={self.row_len} is shorter than one item (max_text_len + "
                             f"item_emb_token_n = {self.item_len}); raise row_len")
        for name in ("item_rows", "max_unique_items"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"BatchConfig.{name} must be >= 1 (or None for the worst-case bound), got {v}")

    @property
    def item_len(self) -> int:
        """Longest item in tokens: max_text_len + the [ITEM] slot."""
        return self.max_text_len + self.item_emb_token_n

    @property
    def seq_items(self) -> int:
        return self.batch_size * (self.max_seq_len + 1)


@dataclass(frozen=True)
class BatchStats:
    """Counts of one batch shard (sum shards with ``BatchStats.sum``)."""
    samples: int            # sequences
    valid_positions: int    # prediction positions with a target
    item_refs: int          # sequence positions + negatives (item references before dedup)
    unique_items: int       # distinct items encoded (after dedup)
    item_tokens: int        # tokens of the unique items (BOS + text + ITEM slot)
    nodedup_tokens: int     # tokens of every reference, no dedup (the reference's varlen stream)
    padded_tokens: int      # item_refs * (max_text_len + item_emb_token_n): no dedup, no packing
    rows_used: int
    rows: int               # static row capacity
    row_len: int

    @property
    def capacity_tokens(self) -> int:
        """Tokens the item LLM computes (static: rows * row_len)."""
        return self.rows * self.row_len

    @property
    def packing_efficiency(self) -> float:
        """Real tokens / tokens of the rows in use."""
        return self.item_tokens / max(1, self.rows_used * self.row_len)

    @property
    def capacity_efficiency(self) -> float:
        """Real tokens / static capacity (what the accelerator actually spends)."""
        return self.item_tokens / max(1, self.capacity_tokens)

    @staticmethod
    def sum(stats: Sequence["BatchStats"]) -> "BatchStats":
        f = [x.name for x in dataclasses.fields(BatchStats) if x.name != "row_len"]
        return BatchStats(**{k: sum(getattr(s, k) for s in stats) for k in f}, row_len=stats[0].row_len)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    p = np.random.default_rng([seed, _TAG_EPOCH, epoch]).permutation(n)
    p.setflags(write=False)
    return p


def padded_samples(samples: TrainSamples) -> np.ndarray:
    """int32 [N, M]: every sample left-padded with PAD (vectorised ``TrainSamples.padded``)."""
    m = samples.max_len
    lens = samples.lengths.astype(np.int64)
    col = np.arange(m)[None, :]
    first = (m - lens)[:, None]
    src = samples.starts[:, None] + col - first
    valid = col >= first
    return np.where(valid, samples.items[np.where(valid, src, 0)], PAD).astype(np.int32)


def _split(n: int, p: int, count: int, what: str) -> slice:
    if n % count:
        raise ValueError(f"{what}={n} does not divide by process_count={count}; choose a multiple of {count}")
    k = n // count
    return slice(p * k, (p + 1) * k)


class BatchBuilder:
    """Builds the training batch of any step, for any process, from samples + catalogue."""

    def __init__(self, samples: TrainSamples, catalogue: Catalogue, cfg: BatchConfig):
        if samples.max_len != cfg.max_seq_len + 1:
            raise ValueError(f"samples have {samples.max_len} items (max_seq_len {samples.max_len - 1}) but "
                             f"BatchConfig.max_seq_len={cfg.max_seq_len}; build them with "
                             f"train_samples(ds, {cfg.max_seq_len})")
        if catalogue.max_text_len != cfg.max_text_len:
            raise ValueError(f"catalogue max_text_len={catalogue.max_text_len} but BatchConfig.max_text_len="
                             f"{cfg.max_text_len}; tokenise with the same max_text_len")
        if len(samples) == 0:
            raise ValueError("no training samples")
        self.cfg = cfg
        self.catalogue = catalogue
        self.num_items = catalogue.num_items
        if self.num_items < 2:
            raise ValueError("the catalogue has no item besides PAD; nothing to sample negatives from")
        self.sequences = padded_samples(samples)          # [N, S+1]
        self.lengths = samples.lengths.astype(np.int32)   # [N]
        if self.sequences.max() >= self.num_items:
            raise ValueError(f"samples use item id {int(self.sequences.max())} but the catalogue has "
                             f"{self.num_items} items; build both from the same dataset")
        if cfg.negative_sampling == "reference":
            srt = np.sort(self.sequences, axis=1)
            distinct = ((srt[:, 1:] != srt[:, :-1]) & (srt[:, 1:] != PAD)).sum(1) + (srt[:, 0] != PAD)
            if (distinct >= self.num_items - 1).any():
                raise ValueError("negative_sampling='reference': a sample contains every item of the catalogue, "
                                 "so no negative can be drawn for it; use negative_sampling='uniform'")
        self.item_lens = catalogue.lengths + cfg.item_emb_token_n  # tokens per item incl. ITEM slot
        if self.item_lens.max() > cfg.row_len:
            raise ValueError(f"an item has {int(self.item_lens.max())} tokens but row_len={cfg.row_len}; "
                             f"raise BatchConfig.row_len")

    @property
    def num_samples(self) -> int:
        return len(self.sequences)

    @property
    def steps_per_epoch(self) -> float:
        return self.num_samples / self.cfg.batch_size

    # -- global (process-independent) draws ------------------------------------------------------
    def sample_indices(self, step: int) -> np.ndarray:
        """Global sample indices of ``step`` (int64 [B])."""
        b, n = self.cfg.batch_size, self.num_samples
        pos = np.arange(step * b, (step + 1) * b, dtype=np.int64)
        out = np.empty(b, np.int64)
        epochs = pos // n
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = _epoch_permutation(self.cfg.seed, int(e), n)[pos[sel] % n]
        return out

    def negative_ids(self, step: int, seqs: np.ndarray) -> np.ndarray:
        """Global negatives of ``step`` (dense item ids, int32 [M]) for the global sequences ``seqs``."""
        cfg, hi = self.cfg, self.num_items
        if cfg.negative_sampling == "uniform":
            rng = np.random.default_rng([cfg.seed, _TAG_UNIFORM, step])
            return rng.integers(1, hi, size=cfg.num_negatives).astype(np.int32)
        # reference: per sample S + 1 draws uniform over 1..num_items-1, rejecting that sample's items
        rng = np.random.default_rng([cfg.seed, _TAG_REFERENCE, step])
        b, m = seqs.shape
        own = np.sort(seqs, axis=1)
        neg = rng.integers(1, hi, size=(b, m))
        for _ in range(_MAX_REJECTION_ROUNDS):
            bad = (neg[:, :, None] == own[:, None, :]).any(-1)
            k = int(bad.sum())
            if not k:
                return neg.reshape(-1).astype(np.int32)
            neg[bad] = rng.integers(1, hi, size=k)
        raise RuntimeError("negative_sampling='reference': rejection sampling did not converge")

    def global_ids(self, step: int):
        """(seq ids int32 [B, S+1], seq_mask bool [B, S], negative ids int32 [M]) of ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        idx = self.sample_indices(step)
        seqs = self.sequences[idx]
        s = self.cfg.max_seq_len
        mask = np.arange(s)[None, :] >= (s - (self.lengths[idx][:, None] - 1))
        return seqs, mask, self.negative_ids(step, seqs)

    # -- static capacities -----------------------------------------------------------------------
    def capacities(self, process_count: int = 1) -> tuple[int, int]:
        """Global (item_rows, max_unique_items): the config's, or safe worst-case bounds when None.

        Worst case per process: every reference distinct (capped by the catalogue), the longest
        items. First-fit opens a row only when the item fits in no open row, so every row but the
        last holds more than ``row_len - item_len`` tokens: rows <= tokens // (row_len - item_len + 1) + 1.
        """
        cfg, p = self.cfg, process_count
        _split(cfg.batch_size, 0, p, "BatchConfig.batch_size")
        _split(cfg.num_negatives, 0, p, "BatchConfig.num_negatives")
        refs = cfg.seq_items // p + cfg.num_negatives // p
        u_local = min(refs, self.num_items)
        u = cfg.max_unique_items if cfg.max_unique_items is not None else p * u_local
        if cfg.item_rows is not None:
            r = cfg.item_rows
        else:
            longest = np.sort(self.item_lens)[::-1][:min(u // p, self.num_items)]
            r = p * min(u // p, int(longest.sum()) // (cfg.row_len - cfg.item_len + 1) + 1)
        _split(r, 0, p, "BatchConfig.item_rows")
        _split(u, 0, p, "BatchConfig.max_unique_items")
        return r, u

    # -- one process's shard ---------------------------------------------------------------------
    def build(self, step: int, process_index: int = 0, process_count: int = 1) -> TrainBatch:
        """This process's shard of the batch of ``step`` (numpy, global indices)."""
        return self.build_with_stats(step, process_index, process_count)[0]

    def build_with_stats(self, step: int, process_index: int = 0, process_count: int = 1,
                         capacities: tuple[int | None, int | None] | None = None) -> tuple[TrainBatch, BatchStats]:
        """``build`` plus its ``BatchStats``. ``capacities=(None, None)`` grows the shard as needed
        (for measuring; the shapes are then not static)."""
        cfg, p, count = self.cfg, int(process_index), int(process_count)
        if not 0 <= p < count:
            raise ValueError(f"process_index={p} must be in [0, process_count={count})")
        rows, uniq_cap = self.capacities(count) if capacities is None else capacities
        seqs, mask, negs = self.global_ids(step)
        sb = _split(cfg.batch_size, p, count, "BatchConfig.batch_size")
        sm = _split(cfg.num_negatives, p, count, "BatchConfig.num_negatives")
        seqs, mask, negs = seqs[sb], mask[sb], negs[sm]
        r_local = None if rows is None else rows // count
        u_local = None if uniq_cap is None else uniq_cap // count
        ids = np.concatenate([seqs.reshape(-1), negs])
        uniq, index = dedup(ids)
        where = f"step {step}, process {p} of {count}"
        if u_local is not None and len(uniq) > u_local:
            raise PackingOverflow(
                f"{where}: {len(uniq)} unique items do not fit max_unique_items/process_count = {uniq_cap}/"
                f"{count} = {u_local}; raise BatchConfig.max_unique_items (suggest_capacities measures it)")
        try:
            items = pack_items(self.catalogue.token_lists(uniq), row_len=cfg.row_len, num_rows=r_local,
                               item_capacity=u_local, item_slot=bool(cfg.item_emb_token_n),
                               max_text_len=cfg.max_text_len, positions=cfg.positions, item_ids=uniq)
        except PackingOverflow as e:
            raise PackingOverflow(f"{where}: {e}. Global setting: BatchConfig.item_rows={rows} (per process "
                                  f"{r_local}); raise BatchConfig.item_rows (suggest_capacities measures "
                                  f"it) or BatchConfig.row_len") from e
        u_l, r_l = items.item_last.shape[0], items.tokens.shape[0]
        u_off, r_off = p * u_l, p * r_l * cfg.row_len
        n = seqs.size
        token_item = np.where(items.token_item == u_l, u_l * count, items.token_item + u_off).astype(np.int32)
        items = dataclasses.replace(items, token_item=token_item,
                                    item_last=(items.item_last + r_off).astype(np.int32))
        batch = TrainBatch(items=items, seq=(index[:n].reshape(seqs.shape) + u_off).astype(np.int32),
                           seq_mask=mask, negatives=(index[n:] + u_off).astype(np.int32))
        item_tokens = int(self.item_lens[uniq].sum())
        used = int((items.segments > 0).any(axis=1).sum())
        stats = BatchStats(samples=len(seqs), valid_positions=int(mask.sum()), item_refs=int(ids.size),
                           unique_items=len(uniq), item_tokens=item_tokens,
                           nodedup_tokens=int(self.item_lens[ids].sum()),
                           padded_tokens=int(ids.size) * cfg.item_len, rows_used=used, rows=r_l,
                           row_len=cfg.row_len)
        return batch, stats


def concat_shards(shards: Sequence[TrainBatch]) -> TrainBatch:
    """The global batch from the P local shards (concatenated along axis 0 of every array)."""
    import jax
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *shards)


def global_item_ids(batch: TrainBatch, process_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dense item ids of every sequence position [B, S+1] and every negative [M].

    ``batch`` is a global batch, or the local shard of process ``process_index`` (whose indices
    are global, offset by ``process_index * U_local``).
    """
    ids = np.asarray(batch.items.item_ids)
    off = process_index * ids.shape[0]
    return ids[np.asarray(batch.seq) - off], ids[np.asarray(batch.negatives) - off]


def measure(builder: BatchBuilder, steps: Sequence[int], process_count: int = 1,
            fixed: bool = False) -> list[list[BatchStats]]:
    """Stats of every shard of the given steps; ``fixed=False`` ignores the static capacities."""
    caps = None if fixed else (None, None)
    return [[builder.build_with_stats(k, p, process_count, caps)[1] for p in range(process_count)]
            for k in steps]


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


def suggest_capacities(samples: TrainSamples, catalogue: Catalogue, cfg: BatchConfig, steps: int = 50, *,
                       process_count: int = 1, margin: float = 0.1, multiple: int = 8) -> BatchConfig:
    """``cfg`` with ``item_rows`` and ``max_unique_items`` set from the worst of ``steps`` steps.

    Per process: max over steps and shards, times ``1 + margin``, rounded up to ``multiple``; the
    global values are ``process_count`` times that (so they divide by the process count).
    """
    builder = BatchBuilder(samples, catalogue, dataclasses.replace(cfg, item_rows=None, max_unique_items=None))
    stats = [s for shard in measure(builder, range(steps), process_count) for s in shard]
    u = max(s.unique_items for s in stats)
    r = max(s.rows_used for s in stats)
    return dataclasses.replace(cfg, item_rows=process_count * _round_up(r * (1 + margin), multiple),
                               max_unique_items=process_count * _round_up(u * (1 + margin), multiple))
