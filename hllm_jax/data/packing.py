"""Pack variable-length item token lists into fixed-shape rows (host side, numpy).

First-fit decreasing bin packing: items are placed longest first into the first row with room,
so rows fill densely and the packing is deterministic. Each item gets its own segment id inside
its row; attention never crosses segments. Overflow of a static capacity is an error that names
the setting to raise, never a silent truncation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hllm_jax.batch import PackedItems

ITEM_PLACEHOLDER_ID = 0


class PackingOverflow(ValueError):
    """A static bucket (rows, row length, unique items) is too small for a batch."""


def item_lengths(token_lists: Sequence[np.ndarray], item_slot: bool) -> np.ndarray:
    return np.asarray([len(t) + int(item_slot) for t in token_lists], np.int64)


def pack_items(token_lists: Sequence[Sequence[int]], *, row_len: int, num_rows: int | None = None,
               item_capacity: int | None = None, item_slot: bool = True, max_text_len: int | None = None,
               positions: str = "right_aligned", item_ids: Sequence[int] | None = None) -> PackedItems:
    """Pack ``token_lists`` (each item's BOS + text tokens, no ITEM slot) into rows.

    item_slot: append one [ITEM] slot to every item (``item_emb_token_n = 1``); False = mean pooling.
    positions: ``right_aligned`` (reference: k tokens get ``max_text_len-k .. max_text_len-1``, the
      ITEM slot ``max_text_len``) or ``from_zero`` (``0..k``; equal under RoPE up to rounding).
    num_rows / item_capacity: static capacities (default: as many as needed).
    Returns numpy arrays in the ``PackedItems`` layout (see ``hllm_jax.batch``).
    """
    n = len(token_lists)
    lens = item_lengths(token_lists, item_slot)
    if n and lens.max() > row_len:
        i = int(lens.argmax())
        raise PackingOverflow(f"item {i} has {lens[i]} tokens (with ITEM slot) but row_len is {row_len}; "
                              f"raise row_len to at least max_text_len + 1")
    if positions == "right_aligned" and max_text_len is None:
        raise ValueError("positions='right_aligned' needs max_text_len")
    if positions not in ("right_aligned", "from_zero"):
        raise ValueError(f"positions={positions!r}: choose 'right_aligned' or 'from_zero'")
    cap = n if item_capacity is None else int(item_capacity)
    if n > cap:
        raise PackingOverflow(f"{n} unique items do not fit item_capacity={cap}; raise the unique-item "
                              f"capacity (e.g. config.max_unique_items)")

    # First-fit decreasing (stable for equal lengths, so deterministic).
    order = np.argsort(-lens, kind="stable")
    free: list[int] = []
    row_of = np.zeros(n, np.int64)
    start_of = np.zeros(n, np.int64)
    for i in order:
        li = lens[i]
        for r, f in enumerate(free):
            if f >= li:
                break
        else:
            free.append(row_len)
            r = len(free) - 1
        row_of[i] = r
        start_of[i] = row_len - free[r]
        free[r] -= li
    rows = len(free) if num_rows is None else int(num_rows)
    if len(free) > rows:
        raise PackingOverflow(f"{n} items ({int(lens.sum())} tokens) need {len(free)} rows of {row_len} tokens "
                              f"but num_rows={rows}; raise the row capacity (e.g. config.item_rows) or row_len")
    rows = max(rows, 1)

    tokens = np.zeros((rows, row_len), np.int32)
    segments = np.zeros((rows, row_len), np.int32)
    pos = np.zeros((rows, row_len), np.int32)
    slot = np.zeros((rows, row_len), bool)
    token_item = np.full((rows, row_len), cap, np.int32)
    item_last = np.zeros((cap,), np.int32)
    ids = np.zeros((cap,), np.int32)
    seg_counter = np.zeros(rows, np.int32)
    # Segment ids in order of placement within each row.
    for i in sorted(range(n), key=lambda j: (row_of[j], start_of[j])):
        r, s, li = row_of[i], start_of[i], lens[i]
        toks = np.asarray(token_lists[i], np.int32)
        k = len(toks)
        seg_counter[r] += 1
        tokens[r, s:s + k] = toks
        if item_slot:
            tokens[r, s + k] = ITEM_PLACEHOLDER_ID
            slot[r, s + k] = True
        segments[r, s:s + li] = seg_counter[r]
        base = (max_text_len - k) if positions == "right_aligned" else 0
        pos[r, s:s + li] = base + np.arange(li)
        token_item[r, s:s + li] = i
        item_last[i] = r * row_len + s + li - 1
        if item_ids is not None:
            ids[i] = item_ids[i]
    return PackedItems(tokens=tokens, segments=segments, positions=pos, item_slot=slot,
                       token_item=token_item, item_last=item_last, item_ids=ids)


def dedup(item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique ids in order of first occurrence and the index of every input into them."""
    flat = np.asarray(item_ids).reshape(-1)
    uniq, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[inverse].reshape(np.shape(item_ids))


def pad_rows(p: PackedItems, num_rows: int) -> PackedItems:
    """``p`` with padding rows appended up to ``num_rows`` (padding tokens belong to no item)."""
    extra = num_rows - p.tokens.shape[0]
    if extra < 0:
        raise PackingOverflow(f"{p.tokens.shape[0]} rows do not fit num_rows={num_rows}")
    pad = lambda x, value=0: np.pad(x, [(0, extra), (0, 0)], constant_values=value)
    return p.replace(tokens=pad(p.tokens), segments=pad(p.segments), positions=pad(p.positions),
                     item_slot=pad(p.item_slot), token_item=pad(p.token_item, p.item_last.shape[0]))
