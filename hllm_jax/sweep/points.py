"""Sweep points: (item size, user size) pairs from a size list (diagonal) or a grid."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Point:
    item: str
    user: str

    @property
    def name(self) -> str:
        return f"{self.item}x{self.user}"


def make_points(item_sizes: Sequence[str], user_sizes: Sequence[str] = (), grid: bool = False) -> list[Point]:
    """``grid``: every item size with every user size; else pairs (diagonal: user = item size when
    ``user_sizes`` is empty, or position by position)."""
    items = list(item_sizes)
    users = list(user_sizes) or ([] if grid else items)
    if not items:
        raise ValueError("sweep.item_sizes is empty: name at least one size (hllm_jax/sizes.py)")
    if grid:
        return [Point(i, u) for i in items for u in (users or items)]
    if len(users) != len(items):
        raise ValueError(f"sweep.user_sizes has {len(users)} sizes and sweep.item_sizes {len(items)}: give "
                         f"as many (pairs), none (user = item size), or set sweep.grid=True")
    return [Point(i, u) for i, u in zip(items, users)]


def select(points: list[Point], names: str | Sequence[str]) -> list[Point]:
    """The points named in ``names`` (comma-separated ``ITEMxUSER``); an unknown name is an error."""
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    known = {p.name: p for p in points}
    bad = [n for n in wanted if n not in known]
    if bad:
        raise ValueError(f"--config.points: unknown point(s) {', '.join(bad)}; this sweep's points: "
                         f"{', '.join(known)}")
    return [known[n] for n in wanted]


def fingerprint(obj) -> str:
    """Short content hash of a JSON-able object (a point's run settings): results are reused only
    when it matches."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]
