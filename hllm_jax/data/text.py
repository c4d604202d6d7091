"""Item text and the tokenised catalogue (HLLM.md section 2), cached on disk as .npz.

Text of an item in the item file: `prompt + "".join(f"{key}: {value}" ...)` over the non-skipped
text fields (no separator). PAD and items without an item-file row get the empty text. Tokens:
the tokenizer's output with BOS first, truncated to `max_text_len` tokens including BOS. The
catalogue stores these tokens only; the ITEM slot is appended by the packer.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from hllm_jax.data.tables import Dataset

DEFAULT_PROMPT = "Compress the following sentence into embedding: "
CACHE_VERSION = "hllm-catalogue-v1"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx")


def format_text(values: Sequence[str | None], text_keys: Sequence[str], prompt: str = DEFAULT_PROMPT) -> str:
    """`prompt + "key: value"...` for the values that are not None (no separator)."""
    return prompt + "".join(f"{k}: {v}" for k, v in zip(text_keys, values) if v)


def catalogue_texts(ds: Dataset, text_keys: Sequence[str] | None = None, prompt: str = DEFAULT_PROMPT) -> list[str]:
    """The text of every dense item id: "" for PAD and items absent from the item file."""
    keys = list(ds.text_keys if text_keys is None else text_keys)
    unknown = [k for k in keys if k not in ds.item_text]
    if unknown:
        raise ValueError(f"text_keys {unknown} were not read; the dataset has {list(ds.text_keys)}. "
                         f"Fix: load the dataset with these text_keys")
    cols = [ds.item_text[k] for k in keys]
    return [format_text([c[i] for c in cols], keys, prompt) if ds.in_item_file[i] else ""
            for i in range(ds.num_items)]


@dataclass(frozen=True, eq=False)
class Catalogue:
    """Tokens of every dense item id: item i = tokens[offsets[i]:offsets[i + 1]] (BOS + text)."""
    tokens: np.ndarray        # int32 [T]
    offsets: np.ndarray       # int64 [num_items + 1]
    full_lengths: np.ndarray  # int32 [num_items]: token count before truncation
    max_text_len: int
    bos_id: int
    key: str                  # cache key (sha256 hex)

    @property
    def num_items(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets).astype(np.int32)

    def item_tokens(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def token_lists(self, ids: Sequence[int]) -> list[np.ndarray]:
        return [self.item_tokens(int(i)) for i in np.asarray(ids).reshape(-1)]

    def stats(self) -> dict:
        """Length distribution (tokens incl. BOS, after truncation) and truncation counts."""
        lens = self.lengths
        return {"items": self.num_items, "max_text_len": self.max_text_len,
                "tokens_total": int(lens.sum()), "truncated": int((self.full_lengths > self.max_text_len).sum()),
                "bos_only": int((lens == 1).sum()), "lengths": distribution(lens),
                "lengths_before_truncation": distribution(self.full_lengths)}


def distribution(x: np.ndarray) -> dict:
    x = np.asarray(x)
    if x.size == 0:
        return {"n": 0}
    q = np.percentile(x, [50, 90, 99])
    return {"n": int(x.size), "min": int(x.min()), "mean": float(x.mean()), "p50": float(q[0]),
            "p90": float(q[1]), "p99": float(q[2]), "max": int(x.max())}


def pack_reference(cat: Catalogue, item_ids: Sequence[int], item_emb_token_n: int = 1):
    """The reference's packed layout for `item_ids` (for parity checks): input ids with one
    placeholder 0 per ITEM slot, per-item lengths (not cumulative), right-aligned position ids."""
    ids, lens, pos = [], [], []
    for t in cat.token_lists(item_ids):
        k = len(t)
        ids.append(np.concatenate([t, np.zeros(item_emb_token_n, np.int32)]))
        lens.append(k + item_emb_token_n)
        pos.append(np.arange(k + item_emb_token_n) + (cat.max_text_len - k))
    return (np.concatenate(ids).astype(np.int64), np.asarray(lens, np.int64),
            np.concatenate(pos).astype(np.int64))


def _tokenizer_files(tokenizer_dir: Path) -> list[Path]:
    files = sorted(p for p in tokenizer_dir.rglob("*") if p.is_file() and not p.name.endswith(_WEIGHT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no tokenizer files in {tokenizer_dir}. Fix: pass a HF tokenizer directory "
                                f"(tokenizer.json, tokenizer_config.json, ...)")
    return files


def cache_key(texts: Sequence[str], tokenizer_dir: str | Path, max_text_len: int,
              text_keys: Sequence[str] = (), prompt: str = "", ensure_bos: bool = True) -> str:
    """sha256 of the tokenizer files' content, the settings and every item text."""
    d = Path(tokenizer_dir)
    h = hashlib.sha256(CACHE_VERSION.encode())
    for p in _tokenizer_files(d):
        data = p.read_bytes()
        h.update(f"{p.relative_to(d).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    h.update(json.dumps([list(text_keys), prompt, int(max_text_len), bool(ensure_bos), len(texts)]).encode())
    for t in texts:
        b = t.encode("utf-8", errors="surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def load_tokenizer(tokenizer_dir: str | Path):
    """`transformers.AutoTokenizer.from_pretrained(dir)` (local files only, no download)."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


def encode_texts(tokenizer, texts: Sequence[str], ensure_bos: bool = True) -> list[list[int]]:
    """One batch call of the tokenizer with its special tokens (as the reference's `encode`).

    ensure_bos: prepend `bos_token_id` where the tokenizer did not put it first (a no-op for
    Llama-style tokenizers, which add BOS themselves).
    """
    out = tokenizer(list(texts), add_special_tokens=True, return_attention_mask=False, verbose=False)["input_ids"]
    if ensure_bos:
        bos = tokenizer.bos_token_id
        if bos is None:
            raise ValueError("the tokenizer has no bos_token_id. Fix: use a tokenizer with a BOS token or "
                             "pass ensure_bos=False")
        out = [ids if ids[:1] == [bos] else [bos] + list(ids) for ids in out]
    return out


def tokenize_texts(texts: Sequence[str], tokenizer_dir: str | Path, max_text_len: int, *,
                   cache_dir: str | Path | None = None, text_keys: Sequence[str] = (), prompt: str = "",
                   ensure_bos: bool = True) -> Catalogue:
    """Tokenise all texts once (or load them from `cache_dir`); item i = texts[i]."""
    if max_text_len < 1:
        raise ValueError(f"max_text_len={max_text_len} must be >= 1 (it includes BOS)")
    key = cache_key(texts, tokenizer_dir, max_text_len, text_keys, prompt, ensure_bos)
    path = None if cache_dir is None else Path(cache_dir) / f"catalogue-{key[:24]}.npz"
    if path is not None and path.is_file():
        cat = _load_cache(path, key)
        if cat is not None:
            return cat
    tok = load_tokenizer(tokenizer_dir)
    seqs = encode_texts(tok, texts, ensure_bos)
    full = np.asarray([len(s) for s in seqs], np.int32)
    cut = [s[:max_text_len] for s in seqs]
    offsets = np.zeros(len(cut) + 1, np.int64)
    offsets[1:] = np.cumsum([len(s) for s in cut])
    tokens = np.fromiter((t for s in cut for t in s), np.int32, count=int(offsets[-1]))
    bos = tok.bos_token_id if tok.bos_token_id is not None else -1
    cat = Catalogue(tokens, offsets, full, int(max_text_len), int(bos), key)
    if path is not None:
        _save_cache(path, cat)
    return cat


def build_catalogue(ds: Dataset, tokenizer_dir: str | Path, max_text_len: int, *,
                    text_keys: Sequence[str] | None = None, prompt: str = DEFAULT_PROMPT,
                    cache_dir: str | Path | None = None, ensure_bos: bool = True) -> Catalogue:
    """The tokenised catalogue of a dataset (dense ids, PAD included at 0)."""
    keys = list(ds.text_keys if text_keys is None else text_keys)
    texts = catalogue_texts(ds, keys, prompt)
    return tokenize_texts(texts, tokenizer_dir, max_text_len, cache_dir=cache_dir, text_keys=keys,
                          prompt=prompt, ensure_bos=ensure_bos)


def _save_cache(path: Path, cat: Catalogue) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"key": cat.key, "max_text_len": cat.max_text_len, "bos_id": cat.bos_id})
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, tokens=cat.tokens, offsets=cat.offsets, full_lengths=cat.full_lengths, meta=np.asarray(meta))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load_cache(path: Path, key: str) -> Catalogue | None:
    """The cached catalogue, or None when the file is unreadable or belongs to another key."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("key") != key:
                return None
            return Catalogue(z["tokens"], z["offsets"], z["full_lengths"], int(meta["max_text_len"]),
                             int(meta["bos_id"]), key)
    except (OSError, ValueError, KeyError):
        return None
