"""Readers for the HLLM CSV layout: dense ids, leave-one-out split and training samples.

Rules (docs/DATA.md): ids are dense in order of first appearance in the interactions file as
read, 0 = PAD; rows are stable-sorted by timestamp and grouped by user; train = all but the last
two items, valid target = second-to-last, test target = last. Every row or item that is filtered
is counted in `FilterReport`; malformed input raises `DataError` naming file, line and the fix.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

PAD = 0
PAD_TOKEN = "[PAD]"
MIN_INTERACTIONS = 3  # leave-one-out needs a train item, a valid target and a test target
INTERACTION_COLUMNS = ("item_id", "user_id", "timestamp")
ITEM_ID_COLUMN = "item_id"
# pandas.read_csv's default NA strings (pandas 2.x): cells equal to one of these are missing.
NA_STRINGS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                        "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
_INT_RE = re.compile(r"^\s*[+-]?\d+\s*$")
_FLOAT_RE = re.compile(r"^\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity)\s*$", re.IGNORECASE)
_TRUE = frozenset({"True", "TRUE", "true"})
_FALSE = frozenset({"False", "FALSE", "false"})
CELL_RULES = ("pandas", "raw")

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class DataError(ValueError):
    """Malformed input; the message names the file, the line and the fix."""


# ----------------------------------------------------------------------------------------------
# Structures


@dataclass(frozen=True)
class FilterReport:
    """Everything read, filtered or dropped, with counts (see docs/DATA.md for each rule)."""
    interaction_rows: int = 0            # data rows of the interactions file
    interaction_blank_lines: int = 0     # skipped
    interaction_non_utf8_lines: int = 0  # decoded with U+FFFD replacement, kept
    duplicate_rows: int = 0              # exact duplicates (item, user, timestamp): first kept
    short_users: int = 0                 # users with < MIN_INTERACTIONS interactions: dropped
    short_user_interactions: int = 0     # their interactions (after de-duplication)
    items_only_in_short_users: int = 0   # items that left the catalogue with them
    item_file_rows: int = 0              # data rows of the item file (0 when no item file)
    item_blank_lines: int = 0
    item_non_utf8_lines: int = 0
    item_file_duplicate_ids: int = 0     # repeated item_id rows: the LAST row wins (as the reference)
    items_not_in_interactions: int = 0   # in the item file only: not in the catalogue
    items_missing_from_item_file: int = 0      # in the catalogue, no row: empty text [BOS]
    interactions_missing_item_text: int = 0    # interactions of those items (kept)
    items_without_text: int = 0          # in the item file, every text field empty: prompt only
    valid_target_in_history: int = 0     # users whose valid target occurs earlier in their history
    test_target_in_history: int = 0      # same for the test target

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)
class Interactions:
    """Parsed interactions file, before any filtering (ids still original strings)."""
    item: list[str]
    user: list[str]
    timestamp: np.ndarray  # int64 [rows]
    source: str
    blank_lines: int = 0
    non_utf8_lines: int = 0


@dataclass(frozen=True, eq=False)
class ItemTable:
    """Parsed item file: one entry per row, text cells typed by the cell rule (None = skipped)."""
    ids: list[str]
    columns: dict[str, list[str | None]]
    source: str
    blank_lines: int = 0
    non_utf8_lines: int = 0


@dataclass(frozen=True, eq=False)
class Dataset:
    """An HLLM dataset with dense ids (0 = PAD) and time-ordered per-user sequences.

    User u's items are `seq_items[seq_offsets[u]:seq_offsets[u + 1]]` (user 0 = PAD is empty).
    `item_text[key][i]` is dense item i's value of text column `key` as it enters the item text
    (None = skipped); `in_item_file[i]` is False for PAD and for items without an item-file row.
    """
    item_ids: np.ndarray     # str [num_items]: dense id -> original id, [0] = "[PAD]"
    user_ids: np.ndarray     # str [num_users]
    seq_items: np.ndarray    # int32 [num_interactions]
    seq_times: np.ndarray    # int64 [num_interactions]
    seq_offsets: np.ndarray  # int64 [num_users + 1]
    text_keys: tuple[str, ...]
    item_text: Mapping[str, tuple[str | None, ...]]
    in_item_file: np.ndarray  # bool [num_items]
    report: FilterReport

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_interactions(self) -> int:
        return len(self.seq_items)

    def lengths(self) -> np.ndarray:
        return np.diff(self.seq_offsets)

    def sequence(self, user: int) -> np.ndarray:
        return self.seq_items[self.seq_offsets[user]:self.seq_offsets[user + 1]]


@dataclass(frozen=True, eq=False)
class TrainSamples:
    """Training samples as slices of `Dataset.seq_items`: sample i = items[starts[i]:+lengths[i]]."""
    items: np.ndarray    # the dataset's seq_items (shared, not copied)
    users: np.ndarray    # int32 [N]
    starts: np.ndarray   # int64 [N]
    lengths: np.ndarray  # int32 [N], 1 <= length <= max_len
    max_len: int         # M = max_seq_len + 1

    def __len__(self) -> int:
        return len(self.users)

    def sample(self, i: int) -> np.ndarray:
        return self.items[self.starts[i]:self.starts[i] + self.lengths[i]]

    def padded(self) -> np.ndarray:
        """int32 [N, M]: each sample left-padded with PAD (0)."""
        out = np.zeros((len(self), self.max_len), np.int32)
        for i, (s, n) in enumerate(zip(self.starts, self.lengths)):
            out[i, self.max_len - n:] = self.items[s:s + n]
        return out

    def target_mask(self) -> np.ndarray:
        """bool [N, M-1]: True at the l-1 real prediction positions (the right end)."""
        s = self.max_len - 1
        return np.arange(s)[None, :] >= (s - (self.lengths[:, None] - 1))

    @property
    def num_without_target(self) -> int:
        """Samples of a single item (users with exactly 3 interactions): no prediction position."""
        return int(np.sum(self.lengths < 2))


@dataclass(frozen=True, eq=False)
class EvalSplit:
    """Leave-one-out evaluation examples, one per user (users 1..num_users-1 in dense order)."""
    phase: str
    users: np.ndarray         # int32 [U]
    history: np.ndarray       # int32 [U, max_seq_len]: last max_seq_len history items, left-padded
    targets: np.ndarray       # int32 [U]
    seen_starts: np.ndarray   # int64 [U]: the FULL history (all items before the target) is
    seen_stops: np.ndarray    #   seq_items[seen_starts[u]:seen_stops[u]]; mask these in ranking
    target_in_history: np.ndarray  # bool [U]


# ----------------------------------------------------------------------------------------------
# CSV reading


def _decode(path: Path) -> tuple[str, int]:
    """UTF-8 text of the file (BOM dropped) and the number of lines that needed U+FFFD."""
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        bad = 0
        for line in raw.split(b"\n"):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                bad += 1
        return raw.decode("utf-8", errors="replace"), bad


def _records(text: str, source: str, counter: list[int]) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank record; blank lines are counted in counter[0]."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if not row or row == [""]:
                counter[0] += 1
                continue
            yield reader.line_num, row
    except csv.Error as e:
        raise DataError(f"{source}:{reader.line_num}: CSV error: {e}. Fix: quote fields containing "
                        f"commas, quotes or newlines (RFC 4180)") from e


def _open_csv(path: str | Path, kind: str) -> tuple[list[str], Iterator[tuple[int, list[str]]], list[int], int]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file not found: {path}. Fix: pass the right path (the HLLM "
                                f"layout is a directory with interactions.csv and items.csv)")
    text, non_utf8 = _decode(path)
    counter = [0]
    recs = _records(text, str(path), counter)
    first = next(recs, None)
    if first is None:
        raise DataError(f"{path}:1: empty file, no header. Fix: write a header line and data rows")
    header = [h.strip() for h in first[1]]
    return header, recs, counter, non_utf8


def _column_index(header: Sequence[str], names: Iterable[str], source: str, fix: str) -> list[int]:
    missing = [n for n in names if n not in header]
    if missing:
        raise DataError(f"{source}:1: missing column(s) {missing}; header is {list(header)}. Fix: {fix}")
    return [list(header).index(n) for n in names]


def _check_width(row: list[str], header: Sequence[str], source: str, line: int) -> None:
    if len(row) != len(header):
        raise DataError(f"{source}:{line}: {len(row)} fields but the header has {len(header)}. "
                        f"Fix: quote fields that contain commas (RFC 4180 CSV)")


def parse_interactions(header: Sequence[str], records: Iterable[tuple[int, list[str]]], source: str,
                       blank_lines: int | list[int] = 0, non_utf8_lines: int = 0) -> Interactions:
    """Interactions from a header and (line, fields) records; columns are matched by name."""
    ii, ui, ti = _column_index(header, INTERACTION_COLUMNS, source,
                               "the header must be item_id,user_id,timestamp (any order)")
    items, users, stamps = [], [], []
    for line, row in records:
        _check_width(row, header, source, line)
        item, user, ts = row[ii], row[ui], row[ti]
        if not item or not user:
            raise DataError(f"{source}:{line}: empty item_id or user_id. Fix: remove the row or fill the id")
        if not _INT_RE.match(ts):
            raise DataError(f"{source}:{line}: timestamp {ts!r} is not an integer. Fix: write integer "
                            f"timestamps (unix seconds, or positions 0..n-1 when only the order is known)")
        items.append(item)
        users.append(user)
        stamps.append(int(ts))
    if not items:
        raise DataError(f"{source}: no data rows (empty file or header only). Fix: add interactions")
    blank = blank_lines[0] if isinstance(blank_lines, list) else blank_lines
    return Interactions(items, users, np.asarray(stamps, np.int64), source, blank, non_utf8_lines)


def read_interactions(path: str | Path) -> Interactions:
    """Read an interactions CSV (`item_id,user_id,timestamp`, string ids, integer timestamps)."""
    header, recs, counter, non_utf8 = _open_csv(path, "interactions")
    return parse_interactions(header, recs, str(path), counter, non_utf8)


def _pandas_cells(cells: list[str]) -> tuple[str, list]:
    """Type a column like pandas.read_csv: ('int'|'float'|'bool'|'object', values; None = NA)."""
    vals = [None if c in NA_STRINGS else c for c in cells]
    present = [v for v in vals if v is not None]
    if not present:
        return "float", vals  # an all-NaN column is float64
    if all(_INT_RE.match(v) for v in present):
        if len(present) == len(vals):
            return "int", [int(v) for v in vals]
        return "float", [None if v is None else float(v) for v in vals]
    if all(_FLOAT_RE.match(v) for v in present):
        return "float", [None if v is None else float(v) for v in vals]
    if all(v in _TRUE or v in _FALSE for v in present):
        return "bool", [None if v is None else v in _TRUE for v in vals]
    return "object", vals


def _render(value) -> str | None:
    """The value as the reference formats it, or None when it skips it (falsy or NaN)."""
    if value is None or not value or value != value:
        return None
    return str(value)


def type_text_columns(columns: Mapping[str, list[str]], cell_rule: str = "pandas") -> dict[str, list[str | None]]:
    """Apply the cell rule to raw text cells (all rows of the item file, in file order).

    pandas (default, parity with the reference): a column whose every non-missing cell is an
    integer is numeric, so a cell "0" is skipped and "007" reads "7"; float columns render like
    Python floats ("114.000" -> "114.0"); true/false columns render "True" and skip False; the
    pandas NA strings ("NA", "None", "null", ...) are missing; when every selected column is
    numeric and one is float, integers render as floats (pandas upcasts the transposed frame).
    raw: every cell is kept as written; only the empty string is skipped.
    """
    if cell_rule not in CELL_RULES:
        raise ValueError(f"cell_rule={cell_rule!r}: choose one of {CELL_RULES}")
    if cell_rule == "raw":
        return {k: [c if c else None for c in v] for k, v in columns.items()}
    typed = {k: _pandas_cells(v) for k, v in columns.items()}
    kinds = {kind for kind, _ in typed.values()}
    if kinds and kinds <= {"int", "float"} and "float" in kinds:
        typed = {k: ("float", [None if x is None else float(x) for x in v]) for k, (_, v) in typed.items()}
    return {k: [_render(x) for x in v] for k, (_, v) in typed.items()}


def parse_items(header: Sequence[str], records: Iterable[tuple[int, list[str]]], source: str,
                text_keys: Sequence[str] | None = None, cell_rule: str = "pandas",
                blank_lines: int | list[int] = 0, non_utf8_lines: int = 0) -> ItemTable:
    """Item table from a header and records; text_keys None = every column except item_id."""
    (idx,) = _column_index(header, [ITEM_ID_COLUMN], source, "the item file needs an item_id column")
    keys = [h for h in header if h != ITEM_ID_COLUMN] if text_keys is None else list(text_keys)
    cols = _column_index(header, keys, source, "choose text_keys among the header's columns")
    ids: list[str] = []
    raw: dict[str, list[str]] = {k: [] for k in keys}
    for line, row in records:
        _check_width(row, header, source, line)
        ids.append(row[idx])
        for k, c in zip(keys, cols):
            raw[k].append(row[c])
    if not ids:
        raise DataError(f"{source}: no data rows (empty file or header only). Fix: add item rows or "
                        f"pass no item file")
    blank = blank_lines[0] if isinstance(blank_lines, list) else blank_lines
    return ItemTable(ids, type_text_columns(raw, cell_rule), source, blank, non_utf8_lines)


def read_items(path: str | Path, text_keys: Sequence[str] | None = None, cell_rule: str = "pandas") -> ItemTable:
    """Read an item CSV (`item_id` plus text columns); only `text_keys` are kept."""
    header, recs, counter, non_utf8 = _open_csv(path, "item")
    return parse_items(header, recs, str(path), text_keys, cell_rule, counter, non_utf8)


# ----------------------------------------------------------------------------------------------
# Building the dataset


def _first_appearance_ids(values: Iterable[str]) -> tuple[np.ndarray, list[str]]:
    """Provisional ids 0.. in order of first appearance, and the id -> value list."""
    table: dict[str, int] = {}
    ids = np.fromiter((table.setdefault(v, len(table)) for v in values), np.int64)
    return ids, list(table)


def _duplicate_mask(item: np.ndarray, user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """True for every row that repeats an earlier row exactly."""
    order = np.lexsort((np.arange(len(ts)), ts, user, item))
    same = np.zeros(len(ts), bool)
    k_i, k_u, k_t = item[order], user[order], ts[order]
    same[1:] = (k_i[1:] == k_i[:-1]) & (k_u[1:] == k_u[:-1]) & (k_t[1:] == k_t[:-1])
    dup = np.zeros(len(ts), bool)
    dup[order] = same
    return dup


def _densify(prov: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense ids 1.. of the kept rows in order of first appearance; returns (ids, old of new-1)."""
    kept = prov[keep]
    uniq, first = np.unique(kept, return_index=True)
    old = uniq[np.argsort(first, kind="stable")]
    remap = np.zeros(prov.max() + 1, np.int64)
    remap[old] = np.arange(1, len(old) + 1)
    return remap[kept], old


def seen_before(ds: Dataset) -> np.ndarray:
    """bool [num_interactions]: the item already occurs earlier in the same user's sequence."""
    n = ds.num_interactions
    user = np.repeat(np.arange(ds.num_users), ds.lengths())
    order = np.lexsort((np.arange(n), ds.seq_items, user))
    rep = np.zeros(n, bool)
    a, b = user[order], ds.seq_items[order]
    rep[1:] = (a[1:] == a[:-1]) & (b[1:] == b[:-1])
    out = np.zeros(n, bool)
    out[order] = rep
    return out


def build_dataset(inter: Interactions, items: ItemTable | None = None, *, drop_duplicates: bool = True,
                  min_interactions: int = MIN_INTERACTIONS) -> Dataset:
    """Apply the HLLM rules (module docstring) to parsed tables and count everything dropped."""
    item_p, item_names = _first_appearance_ids(inter.item)
    user_p, user_names = _first_appearance_ids(inter.user)
    ts = inter.timestamp
    keep = ~_duplicate_mask(item_p, user_p, ts) if drop_duplicates else np.ones(len(ts), bool)
    n_dup = int((~keep).sum())
    counts = np.bincount(user_p[keep], minlength=len(user_names))
    short = counts < min_interactions
    short_rows = keep & short[user_p]
    items_before = len(np.unique(item_p[keep]))
    keep &= ~short[user_p]
    if not keep.any():
        raise DataError(f"{inter.source}: no user has {min_interactions} or more interactions. Fix: "
                        f"leave-one-out needs at least {min_interactions} per user")
    item_d, item_old = _densify(item_p, keep)
    user_d, user_old = _densify(user_p, keep)
    ts_k = ts[keep]
    order = np.argsort(ts_k, kind="stable")
    order = order[np.argsort(user_d[order], kind="stable")]
    item_ids = np.asarray([PAD_TOKEN] + [item_names[i] for i in item_old])
    user_ids = np.asarray([PAD_TOKEN] + [user_names[u] for u in user_old])
    offsets = np.zeros(len(user_ids) + 1, np.int64)
    offsets[1:] = np.cumsum(np.bincount(user_d, minlength=len(user_ids)))
    text_keys, item_text, in_file, item_counts = _align_text(items, item_ids)
    ds = Dataset(item_ids, user_ids, item_d[order].astype(np.int32), ts_k[order], offsets, text_keys,
                 item_text, in_file, FilterReport())
    missing = ~in_file
    missing[0] = False
    rep = seen_before(ds)
    last = offsets[2:] - 1  # users 1..U-1
    report = FilterReport(
        interaction_rows=len(ts), interaction_blank_lines=inter.blank_lines,
        interaction_non_utf8_lines=inter.non_utf8_lines, duplicate_rows=n_dup,
        short_users=int(short.sum()), short_user_interactions=int(short_rows.sum()),
        items_only_in_short_users=items_before - (len(item_ids) - 1),
        interactions_missing_item_text=int(np.isin(ds.seq_items, np.flatnonzero(missing)).sum()),
        items_missing_from_item_file=int(missing.sum()),
        valid_target_in_history=int(rep[last - 1].sum()), test_target_in_history=int(rep[last].sum()),
        **item_counts)
    return dataclasses.replace(ds, report=report)


def _align_text(items: ItemTable | None, item_ids: np.ndarray):
    """Text columns aligned with dense ids (last row wins for repeated ids) and the item counts."""
    n = len(item_ids)
    if items is None:
        return (), {}, np.zeros(n, bool), {}
    row_of = {item_id: r for r, item_id in enumerate(items.ids)}  # last row wins
    dense = {str(item_id): i for i, item_id in enumerate(item_ids) if i}
    in_file = np.zeros(n, bool)
    rows = np.full(n, -1, np.int64)
    for item_id, r in row_of.items():
        i = dense.get(item_id)
        if i is not None:
            in_file[i] = True
            rows[i] = r
    keys = tuple(items.columns)
    text = {k: tuple(None if r < 0 else col[r] for r in rows) for k, col in items.columns.items()}
    no_text = sum(1 for i in np.flatnonzero(in_file) if all(text[k][i] is None for k in keys))
    counts = dict(item_file_rows=len(items.ids), item_blank_lines=items.blank_lines,
                  item_non_utf8_lines=items.non_utf8_lines,
                  item_file_duplicate_ids=len(items.ids) - len(row_of),
                  items_not_in_interactions=len(row_of) - int(in_file.sum()), items_without_text=no_text)
    return keys, text, in_file, counts


def load_dataset(interactions_path: str | Path, items_path: str | Path | None = None,
                 text_keys: Sequence[str] | None = None, *, cell_rule: str = "pandas",
                 drop_duplicates: bool = True, min_interactions: int = MIN_INTERACTIONS) -> Dataset:
    """Read and build a dataset from an interactions CSV and (optionally) an item CSV.

    The reference's own layout is `dataset/<name>.csv` + `information/<name>.csv`.
    """
    inter = read_interactions(interactions_path)
    items = None if items_path is None else read_items(items_path, text_keys, cell_rule)
    return build_dataset(inter, items, drop_duplicates=drop_duplicates, min_interactions=min_interactions)


def load_dir(data_dir: str | Path, text_keys: Sequence[str] | None = None, *,
             interactions: str = "interactions.csv", items: str = "items.csv", **kwargs) -> Dataset:
    """`load_dataset` for a directory holding interactions.csv and items.csv."""
    d = Path(data_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"data directory not found: {d}. Fix: pass a directory with {interactions} "
                                f"and {items}")
    return load_dataset(d / interactions, d / items, text_keys, **kwargs)


# ----------------------------------------------------------------------------------------------
# Samples and splits


def train_samples(ds: Dataset, max_seq_len: int, mode: str = "chunks") -> TrainSamples:
    """Training samples of M = max_seq_len + 1 items from each user's train part (all but last 2).

    chunks (reference default): a train part of length l > M drops its oldest l % M items and is
    cut into l // M non-overlapping chunks of M; otherwise it is one sample of l items.
    last (reference `data_split: False`, Books 28k runs): one sample per user, its last M items.
    """
    if mode not in ("chunks", "last"):
        raise ValueError(f"mode={mode!r}: choose 'chunks' or 'last'")
    m = int(max_seq_len) + 1
    users, starts, lens = [], [], []
    for u in range(1, ds.num_users):
        s0, n = int(ds.seq_offsets[u]), int(ds.seq_offsets[u + 1] - ds.seq_offsets[u]) - 2
        if n <= 0:
            continue
        if mode == "chunks" and n > m:
            first = s0 + n % m
            for k in range(n // m):
                users.append(u), starts.append(first + k * m), lens.append(m)
        else:
            take = min(n, m)
            users.append(u), starts.append(s0 + n - take), lens.append(take)
    return TrainSamples(ds.seq_items, np.asarray(users, np.int32), np.asarray(starts, np.int64),
                        np.asarray(lens, np.int32), m)


def eval_split(ds: Dataset, phase: str, max_seq_len: int) -> EvalSplit:
    """valid: target = second-to-last item; test: target = last; history = everything before."""
    if phase not in ("valid", "test"):
        raise ValueError(f"phase={phase!r}: choose 'valid' or 'test'")
    back = 2 if phase == "valid" else 1
    users = np.arange(1, ds.num_users, dtype=np.int32)
    starts = ds.seq_offsets[1:-1]
    stops = ds.seq_offsets[2:] - back
    targets = ds.seq_items[stops]
    history = np.zeros((len(users), max_seq_len), np.int32)
    for r, (s, e) in enumerate(zip(starts, stops)):
        h = ds.seq_items[max(s, e - max_seq_len):e]
        if len(h):
            history[r, max_seq_len - len(h):] = h
    rep = seen_before(ds)[stops]
    return EvalSplit(phase, users, history, targets.astype(np.int32), starts.copy(), stops, rep)
