"""Random but well-formed training batches (random item texts and sequences), for tests and benchmarks."""

from __future__ import annotations

import numpy as np

from hllm_jax.batch import TrainBatch
from hllm_jax.data.packing import dedup, pack_items


def random_train_batch(seed: int, *, num_items: int, vocab: int, batch: int, seq_len: int,
                       num_negatives: int, max_text_len: int, row_len: int, num_rows: int,
                       item_capacity: int, item_slot: bool = True, min_len: int = 2,
                       left_pad: bool = True) -> TrainBatch:
    """A deduplicated, packed batch over a random catalogue of ``num_items`` items.

    Item i's text is fixed by (seed, i) so an item drawn twice has the same tokens. With
    ``left_pad`` some sequences are shorter (left-padded with PAD, masked).
    """
    cat = np.random.default_rng(seed)
    lens = cat.integers(min_len, max_text_len + 1, size=num_items)
    texts = [np.concatenate([[1], cat.integers(3, vocab, size=l - 1)]).astype(np.int32) for l in lens]
    rng = np.random.default_rng(seed + 1)
    seqs = rng.integers(1, num_items, size=(batch, seq_len + 1))
    mask = np.ones((batch, seq_len), bool)
    if left_pad:
        for b in range(0, batch, 2):
            n = int(rng.integers(2, seq_len + 2))  # real items in this sequence
            seqs[b, : seq_len + 1 - n] = 0
            mask[b, : seq_len + 1 - n] = False
    negs = rng.integers(1, num_items, size=(num_negatives,))
    ids = np.concatenate([seqs.reshape(-1), negs])
    uniq, index = dedup(ids)
    items = pack_items([texts[i] for i in uniq], row_len=row_len, num_rows=num_rows, item_capacity=item_capacity,
                       item_slot=item_slot, max_text_len=max_text_len, item_ids=uniq)
    n = batch * (seq_len + 1)
    return TrainBatch(items=items, seq=index[:n].reshape(batch, seq_len + 1).astype(np.int32),
                      seq_mask=mask, negatives=index[n:].astype(np.int32))
