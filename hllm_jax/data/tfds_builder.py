"""Each HLLM dataset as a tensorflow-datasets builder (array_record files, no TensorFlow needed).

A prepared dataset holds the tokenised catalogue and the split user sequences:
  items  one example per dense item id (PAD = 0 included): tokens (BOS + text, truncated to
         max_text_len), full_length (before truncation), original_id
  train  one example per training sample (``tables.train_samples``): sequence (<= max_seq_len + 1)
  valid, test  one example per user: sequence = the FULL history before the target, target
Every example stores its ``id`` (dense item id / sample index / row), and readers place examples
by it: tfds shuffles prepared splits by example key unless told not to (we also set
``disable_shuffling``, so ``source[i]`` is example i, and the readers check it).

It is a real ``tfds.core.GeneratorBasedBuilder`` (``file_format='array_record'``); without
TensorFlow it prepares with ``download_and_prepare`` and reads with ``as_data_source`` /
``tfds.data_source`` / ``tfds.builder_from_directory``; ``as_dataset`` and ``tfds.load`` would need
TensorFlow. Two tfds defaults are avoided: ``DatasetInfo`` is built directly
(``dataset_info_from_configs`` expects package metadata files next to the builder module) and
``code_path`` is None (finding checksums next to the code needs ``importlib_resources``).

The builder config is named ``<source>-<hash>``: the hash covers every setting and the content of
the CSVs and tokenizer files, so changed inputs never reuse stale files. Prepared files live
under ``data_dir`` (default ``$HLLM_TFDS_DIR`` or ``~/.cache/hllm_jax/tfds``), never in the repo.

CLI: ``python -m hllm_jax.data.tfds_builder --data_dir CSV_DIR --text_keys title --tokenizer DIR
--max_text_len 32 --max_seq_len 10 [--out CACHE_DIR]`` prepares and prints the directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from hllm_jax.data import synthetic, tables, text
from hllm_jax.data.tables import EvalSplit, TrainSamples
from hllm_jax.data.text import Catalogue

VERSION = "1.0.0"
SPLITS = ("items", "train", "valid", "test")
_REPO = Path(__file__).resolve().parents[2]
_READ_CHUNK = 4096


@dataclass(frozen=True)
class SourceSpec:
    """What to prepare: a CSV directory (interactions.csv + items.csv) or a synthetic config.

    tokenizer: a HF tokenizer directory; with ``synthetic`` and no tokenizer, one is trained on the
    synthetic item texts (``synthetic_vocab`` tokens).
    """
    csv_dir: str | None = None
    synthetic: synthetic.SyntheticConfig | None = None
    text_keys: tuple[str, ...] | None = None
    tokenizer: str | None = None
    max_text_len: int = 32
    max_seq_len: int = 10
    sample_mode: str = "chunks"
    prompt: str = text.DEFAULT_PROMPT
    cell_rule: str = "pandas"
    interactions: str = "interactions.csv"
    items: str = "items.csv"
    synthetic_vocab: int = 1000

    def __post_init__(self):
        if (self.csv_dir is None) == (self.synthetic is None):
            raise ValueError("SourceSpec: give exactly one of csv_dir or synthetic")
        if self.csv_dir is not None and self.tokenizer is None:
            raise ValueError("SourceSpec: a CSV dataset needs tokenizer (a HF tokenizer directory)")
        if self.text_keys is not None:
            object.__setattr__(self, "text_keys", tuple(self.text_keys))
        if self.sample_mode not in ("chunks", "last"):
            raise ValueError(f"SourceSpec.sample_mode={self.sample_mode!r}: choose 'chunks' or 'last'")

    @property
    def source_name(self) -> str:
        if self.synthetic is not None:
            return "synthetic"
        name = "".join(c if c.isalnum() else "_" for c in Path(self.csv_dir).resolve().name.lower())
        return name.strip("_") or "csv"

    def fingerprint(self) -> str:
        """sha256 over the settings and the content of the input files."""
        h = hashlib.sha256(f"hllm-tfds-{VERSION}".encode())
        fields = dataclasses.asdict(self)
        fields.pop("csv_dir"), fields.pop("tokenizer")
        h.update(json.dumps(fields, sort_keys=True, default=str).encode())
        files: list[tuple[str, Path]] = []
        if self.csv_dir is not None:
            files += [(f"csv/{n}", Path(self.csv_dir) / n) for n in (self.interactions, self.items)]
        if self.tokenizer is not None:
            d = Path(self.tokenizer)
            files += [(f"tok/{p.relative_to(d).as_posix()}", p) for p in text._tokenizer_files(d)]
        for name, p in files:
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found. Fix: pass the right csv_dir / tokenizer")
            data = p.read_bytes()
            h.update(f"{name}\0{len(data)}\0".encode())
            h.update(data)
        return h.hexdigest()


class HllmConfig(tfds.core.BuilderConfig):
    def __init__(self, spec: SourceSpec):
        self.spec = spec
        super().__init__(name=f"{spec.source_name}-{spec.fingerprint()[:16]}", version=VERSION,
                         description=f"HLLM data from {spec.csv_dir or spec.synthetic}")


class HllmDataset(tfds.core.GeneratorBasedBuilder):
    """tfds builder of one HLLM dataset (see the module docstring for the splits)."""

    VERSION = tfds.core.Version(VERSION)

    # tfds locates checksums next to a builder's code; for a class inside a package it probes the
    # path with `importlib_resources` (not installed: not a dependency here). This builder
    # downloads nothing, so it has no code path and no checksums file.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return None

    def __init__(self, spec: SourceSpec, data_dir: str | Path | None = None, **kwargs):
        data_dir = check_data_dir(default_data_dir() if data_dir is None else data_dir)
        super().__init__(config=HllmConfig(spec), data_dir=str(data_dir), file_format="array_record", **kwargs)

    @property
    def spec(self) -> SourceSpec:
        return self.builder_config.spec

    def _info(self) -> tfds.core.DatasetInfo:
        vec = lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32)  # noqa: E731
        features = tfds.features.FeaturesDict({
            "id": np.int64, "user": np.int32, "original_id": tfds.features.Text(),
            "tokens": vec(), "full_length": np.int32, "sequence": vec(), "target": np.int32})
        return tfds.core.DatasetInfo(builder=self, description=__doc__.split("\n")[0], features=features,
                                     metadata=tfds.core.MetadataDict(), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        spec = self.spec
        with tempfile.TemporaryDirectory() as tmp:
            if spec.synthetic is not None:
                data = synthetic.generate(spec.synthetic)
                ds = synthetic.to_dataset(data, spec.text_keys)
                tok_dir = spec.tokenizer or synthetic.synthetic_tokenizer(data, Path(tmp) / "tok",
                                                                           spec.synthetic_vocab, spec.prompt)
            else:
                d = Path(spec.csv_dir)
                ds = tables.load_dataset(d / spec.interactions, d / spec.items, spec.text_keys,
                                         cell_rule=spec.cell_rule)
                tok_dir = spec.tokenizer
            cat = text.build_catalogue(ds, tok_dir, spec.max_text_len, prompt=spec.prompt)
            vocab = len(text.load_tokenizer(tok_dir))
        samples = tables.train_samples(ds, spec.max_seq_len, spec.sample_mode)
        self.info.metadata.update(
            num_items=ds.num_items, num_users=ds.num_users, num_interactions=ds.num_interactions,
            num_train_samples=len(samples), max_text_len=spec.max_text_len, max_seq_len=spec.max_seq_len,
            sample_mode=spec.sample_mode, text_keys=list(ds.text_keys), prompt=spec.prompt,
            bos_id=cat.bos_id, catalogue_key=cat.key, vocab_size=vocab, report=ds.report.as_dict(),
            source=str(spec.csv_dir or dataclasses.asdict(spec.synthetic)))
        return {"items": self._items(ds, cat), "train": self._train(ds, samples),
                "valid": self._eval(ds, "valid"), "test": self._eval(ds, "test")}

    def _generate_examples(self, **kwargs):  # the split generators above yield the examples
        raise NotImplementedError

    @staticmethod
    def _example(i, user=0, original_id="", tokens=(), full_length=0, sequence=(), target=0):
        return i, {"id": int(i), "user": int(user), "original_id": str(original_id),
                   "tokens": np.asarray(tokens, np.int32), "full_length": int(full_length),
                   "sequence": np.asarray(sequence, np.int32), "target": int(target)}

    def _items(self, ds, cat: Catalogue):
        for i in range(cat.num_items):
            yield self._example(i, original_id=ds.item_ids[i], tokens=cat.item_tokens(i),
                                full_length=cat.full_lengths[i])

    def _train(self, ds, samples: TrainSamples):
        for i in range(len(samples)):
            u = samples.users[i]
            yield self._example(i, user=u, original_id=ds.user_ids[u], sequence=samples.sample(i))

    def _eval(self, ds, phase: str):
        back = 2 if phase == "valid" else 1
        for r, u in enumerate(range(1, ds.num_users)):
            s, e = int(ds.seq_offsets[u]), int(ds.seq_offsets[u + 1]) - back
            yield self._example(r, user=u, original_id=ds.user_ids[u], sequence=ds.seq_items[s:e],
                                target=ds.seq_items[e])


# ----------------------------------------------------------------------------------------------
# Locations


def default_data_dir() -> Path:
    return Path(os.environ.get("HLLM_TFDS_DIR", Path.home() / ".cache" / "hllm_jax" / "tfds"))


def check_data_dir(data_dir: str | Path) -> Path:
    """The prepared-files directory; never inside the repository."""
    d = Path(data_dir).expanduser().resolve()
    if (_REPO / ".git").exists() and (d == _REPO or _REPO in d.parents):
        raise ValueError(f"data_dir {d} is inside the repository {_REPO}; prepared files belong in a cache "
                         f"directory (default {default_data_dir()}, or set HLLM_TFDS_DIR)")
    return d


# ----------------------------------------------------------------------------------------------
# Prepare and read


def prepare(spec: SourceSpec, data_dir: str | Path | None = None, *, progress: bool = False) -> HllmDataset:
    """The builder of ``spec``, prepared under ``data_dir`` (reused when already there)."""
    b = HllmDataset(spec, data_dir)
    if not progress:
        tfds.display_progress_bar(False)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    return b


def open_prepared(directory: str | Path) -> tfds.core.DatasetBuilder:
    """A read-only builder of a prepared directory (``.../hllm_dataset/<config>/<version>``);
    needs neither the spec nor the input files."""
    return tfds.builder_from_directory(str(directory))


def _read(builder, split: str) -> list[dict]:
    """All examples of a split, placed by their stored id."""
    src = builder.as_data_source()[split]
    n = len(src)
    out: list = [None] * n
    for lo in range(0, n, _READ_CHUNK):
        for ex in src.__getitems__(list(range(lo, min(n, lo + _READ_CHUNK)))):
            i = int(ex["id"])
            if not 0 <= i < n or out[i] is not None:
                raise ValueError(f"{split}: example id {i} is out of range or repeated; the prepared files "
                                 f"are corrupt, delete {builder.data_dir} and prepare again")
            out[i] = ex
    return out


def _flat(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(arrays) + 1, np.int64)
    offsets[1:] = np.cumsum([len(a) for a in arrays])
    flat = np.concatenate(arrays).astype(np.int32) if len(arrays) else np.zeros(0, np.int32)
    return flat, offsets


def metadata(builder) -> dict:
    return dict(builder.info.metadata)


def read_catalogue(builder) -> Catalogue:
    """The tokenised catalogue (identical to ``text.build_catalogue`` of the same inputs)."""
    meta = metadata(builder)
    exs = _read(builder, "items")
    tokens, offsets = _flat([e["tokens"] for e in exs])
    full = np.asarray([e["full_length"] for e in exs], np.int32)
    return Catalogue(tokens, offsets, full, int(meta["max_text_len"]), int(meta["bos_id"]), meta["catalogue_key"])


def read_item_ids(builder) -> np.ndarray:
    """Original item id of every dense id (str [num_items], [0] = "[PAD]")."""
    return np.asarray([e["original_id"].decode() for e in _read(builder, "items")])


def read_train_samples(builder) -> TrainSamples:
    """The training samples (equal, sample by sample, to ``tables.train_samples``)."""
    meta = metadata(builder)
    exs = _read(builder, "train")
    items, offsets = _flat([e["sequence"] for e in exs])
    users = np.asarray([e["user"] for e in exs], np.int32)
    return TrainSamples(items, users, offsets[:-1].copy(), np.diff(offsets).astype(np.int32),
                        int(meta["max_seq_len"]) + 1)


@dataclass(frozen=True, eq=False)
class EvalData:
    """An ``EvalSplit`` whose seen_starts/seen_stops index ``seen_items`` (the full histories)."""
    split: EvalSplit
    seen_items: np.ndarray

    def seen(self, row: int) -> np.ndarray:
        return self.seen_items[self.split.seen_starts[row]:self.split.seen_stops[row]]


def read_eval(builder, phase: str, max_seq_len: int | None = None) -> EvalData:
    """valid / test rows as ``tables.eval_split`` builds them (history = last max_seq_len items)."""
    if phase not in ("valid", "test"):
        raise ValueError(f"phase={phase!r}: choose 'valid' or 'test'")
    s = int(metadata(builder)["max_seq_len"] if max_seq_len is None else max_seq_len)
    exs = _read(builder, phase)
    seen, offsets = _flat([e["sequence"] for e in exs])
    history = np.zeros((len(exs), s), np.int32)
    rep = np.zeros(len(exs), bool)
    targets = np.asarray([e["target"] for e in exs], np.int32)
    for r, e in enumerate(exs):
        h = e["sequence"][-s:] if s else e["sequence"][:0]
        if len(h):
            history[r, s - len(h):] = h
        rep[r] = bool(np.isin(targets[r], e["sequence"]))
    users = np.asarray([e["user"] for e in exs], np.int32)
    split = EvalSplit(phase, users, history, targets, offsets[:-1].copy(), offsets[1:].copy(), rep)
    return EvalData(split, seen)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data_dir", help="CSV directory (interactions.csv + items.csv)")
    ap.add_argument("--synthetic_seed", type=int, default=None, help="use the synthetic dataset instead")
    ap.add_argument("--text_keys", default=None, help="comma-separated item columns")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--max_text_len", type=int, default=32)
    ap.add_argument("--max_seq_len", type=int, default=10)
    ap.add_argument("--sample_mode", default="chunks")
    ap.add_argument("--out", default=None, help=f"prepared-files directory (default {default_data_dir()})")
    a = ap.parse_args(argv)
    syn = None if a.synthetic_seed is None else synthetic.SyntheticConfig(seed=a.synthetic_seed)
    spec = SourceSpec(csv_dir=a.data_dir, synthetic=syn,
                      text_keys=None if a.text_keys is None else tuple(a.text_keys.split(",")),
                      tokenizer=a.tokenizer, max_text_len=a.max_text_len, max_seq_len=a.max_seq_len,
                      sample_mode=a.sample_mode)
    b = prepare(spec, a.out)
    print(b.data_dir)
    print(json.dumps({k: v for k, v in metadata(b).items() if k != "report"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
