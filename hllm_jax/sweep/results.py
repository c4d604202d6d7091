"""The sweep's results file: one JSON object per line, appended; the newest row per key wins."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable


class Results:
    """``results.jsonl`` in a workdir. A row is reused (its point skipped) when its ``key`` and
    ``fingerprint`` match and its status is ``ok``; rerunning a point appends a newer row."""

    def __init__(self, workdir):
        self.path = Path(workdir) / "results.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._latest: dict[str, dict] | None = None  # read once, then kept current by ``append``

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for i, line in enumerate(self.path.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash: skip it, say so
                print(f"warning: {self.path}:{i + 1} is not valid JSON (interrupted write?); ignored")
        return out

    def latest(self) -> dict[str, dict]:
        """The newest row of every key."""
        if self._latest is None:
            self._latest = {}
            for r in self.rows():
                self._latest[r["key"]] = r
        return self._latest

    def done(self, key: str, fingerprint: str, statuses=("ok",)) -> dict | None:
        """The newest row of ``key`` if it has this fingerprint and a final status (an AOT
        compile that ran out of memory is final too; an error is retried)."""
        r = self.latest().get(key)
        if r and r.get("status") in statuses and r.get("fingerprint") == fingerprint:
            return r
        return None

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        if self._latest is not None:
            self._latest[row["key"]] = row


def write_csv(rows: Iterable[dict], path) -> None:
    rows = list(rows)
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols and not isinstance(r[k], (dict, list))]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
