"""The batch format: the one contract between the data pipeline and the models.

Items are deduplicated (each distinct item encoded once) and packed into fixed-shape token rows.
Every shape is static, fixed by config; unused capacity is padding.

  PackedItems (U = unique-item capacity, R rows of L tokens):
    tokens      [R, L] int32  token ids (the ITEM slot holds a placeholder id)
    segments    [R, L] int32  1..n = which item of the row a token belongs to, 0 = padding
    positions   [R, L] int32  RoPE positions (right-aligned as in the reference, or from 0)
    item_slot   [R, L] bool   True at each item's [ITEM] slot (all False for mean pooling)
    token_item  [R, L] int32  unique-item index of every token; U for padding tokens
    item_last   [U]    int32  flat index r * L + c of each unique item's last token
    item_ids    [U]    int32  dense item id of each unique item (0 for unused capacity)

  TrainBatch (B sequences of S + 1 items, M shared negatives):
    items       PackedItems
    seq         [B, S + 1] int32  unique-item index of every sequence position
    seq_mask    [B, S]     bool   valid prediction positions (input i predicts item i + 1);
                                  also the user LLM's key-padding mask
    negatives   [M]        int32  unique-item index of every negative (global, shared)
"""

from __future__ import annotations

import jax
from flax import struct


@struct.dataclass
class PackedItems:
    tokens: jax.Array
    segments: jax.Array
    positions: jax.Array
    item_slot: jax.Array
    token_item: jax.Array
    item_last: jax.Array
    item_ids: jax.Array

    @property
    def num_items(self) -> int:
        return self.item_last.shape[-1]


@struct.dataclass
class TrainBatch:
    items: PackedItems
    seq: jax.Array
    seq_mask: jax.Array
    negatives: jax.Array


# Logical axes of every batch array (leading dimensions shard over the batch axes).
PACKED_AXES = PackedItems(
    tokens=("batch", None), segments=("batch", None), positions=("batch", None),
    item_slot=("batch", None), token_item=("batch", None), item_last=("batch",), item_ids=("batch",))
TRAIN_AXES = TrainBatch(items=PACKED_AXES, seq=("batch", None), seq_mask=("batch", None),
                        negatives=("batch",))
