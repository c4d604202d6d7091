"""Tests of hllm_jax.data.text: item text, tokens vs the golden case, the on-disk cache."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hllm_jax.data import synthetic as S
from hllm_jax.data import tables as T
from hllm_jax.data import text as X

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINY = SHARED / "reference" / "tiny"
needs_tiny = pytest.mark.skipif(not TINY.is_dir(), reason=f"golden case {TINY} absent (needs ../shared)")
P = X.DEFAULT_PROMPT


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """A tokenizer that needs no files outside the repo (trained on synthetic text)."""
    data = S.generate(S.SyntheticConfig(num_users=30, num_items=40, seed=3))
    return S.synthetic_tokenizer(data, tmp_path_factory.mktemp("tok"), vocab_size=400)


def small_dataset(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "interactions.csv").write_text("item_id,user_id,timestamp\na,u,0\nb,u,1\nx,u,2\nc,u,3\n")
    (d / "items.csv").write_text("item_id,title,tag\na,Red shoe,0\nb,,\nc,Long " + "word " * 60 + ",x\n")
    return T.load_dir(d)


def test_format_text_no_separator_and_skips():
    assert X.format_text(["Foo bar", None, "x"], ["title", "tag", "description"], "P: ") == \
        "P: title: Foo bardescription: x"
    assert X.format_text([None, None], ["title", "tag"], P) == P


def test_catalogue_texts(tmp_path):
    ds = small_dataset(tmp_path)
    texts = X.catalogue_texts(ds)
    ids = [str(i) for i in ds.item_ids]
    assert texts[0] == ""                                   # PAD
    assert texts[ids.index("x")] == ""                      # absent from the item file
    assert texts[ids.index("b")] == P                       # in the file, every field empty
    assert texts[ids.index("a")] == P + "title: Red shoetag: 0"  # "0" in a text column is kept
    assert X.catalogue_texts(ds, ["tag"])[ids.index("a")] == P + "tag: 0"
    with pytest.raises(ValueError, match="were not read"):
        X.catalogue_texts(ds, ["description"])


def test_tokens_bos_truncation_and_empty_items(tmp_path, tok_dir):
    ds = small_dataset(tmp_path)
    cat = X.build_catalogue(ds, tok_dir, 12)
    tok = X.load_tokenizer(tok_dir)
    ids = [str(i) for i in ds.item_ids]
    assert cat.item_tokens(0).tolist() == [1]                       # PAD: [BOS]
    assert cat.item_tokens(ids.index("x")).tolist() == [1]          # absent: [BOS]
    assert cat.item_tokens(ids.index("b")).tolist() == tok.encode(P)[:12]  # prompt only
    assert (cat.lengths <= 12).all() and (cat.tokens[cat.offsets[:-1]] == 1).all()
    long_item = ids.index("c")
    assert cat.full_lengths[long_item] > 12 and cat.lengths[long_item] == 12  # 12 includes BOS
    assert cat.stats()["truncated"] >= 1 and cat.stats()["bos_only"] == 2
    assert cat.tokens.dtype == np.int32


def test_pack_reference_positions(tmp_path, tok_dir):
    cat = X.build_catalogue(small_dataset(tmp_path), tok_dir, 12)
    ids, lens, pos = X.pack_reference(cat, [0, 1])
    k1 = cat.lengths[1]
    assert lens.tolist() == [2, k1 + 1]
    assert ids[:2].tolist() == [1, 0] and ids[-1] == 0       # one placeholder 0 per ITEM slot
    assert pos[:2].tolist() == [11, 12] and pos[-1] == 12    # right-aligned, ITEM slot at L
    ids, lens, pos = X.pack_reference(cat, [1], item_emb_token_n=0)  # mean pooling: no slot
    assert len(ids) == k1 and pos.tolist() == list(range(12 - k1, 12))


def test_ensure_bos_prepends_when_missing():
    class NoBos:
        bos_token_id = 7

        def __call__(self, texts, **kw):
            return {"input_ids": [[5, 6] if t else [] for t in texts]}

    assert X.encode_texts(NoBos(), ["a", ""]) == [[7, 5, 6], [7]]
    assert X.encode_texts(NoBos(), ["a"], ensure_bos=False) == [[5, 6]]


def test_cache_reused_without_tokenizer(tmp_path, tok_dir, monkeypatch):
    ds = small_dataset(tmp_path)
    cache = tmp_path / "cache"
    first = X.build_catalogue(ds, tok_dir, 12, cache_dir=cache)
    assert len(list(cache.glob("catalogue-*.npz"))) == 1

    import transformers

    def boom(*a, **k):
        raise AssertionError("tokenizer invoked on a cache hit")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)
    monkeypatch.setattr(X, "load_tokenizer", boom)
    second = X.build_catalogue(ds, tok_dir, 12, cache_dir=cache)
    assert second.key == first.key
    for f in ("tokens", "offsets", "full_lengths"):
        assert np.array_equal(getattr(first, f), getattr(second, f))
    # anything that changes the tokens changes the key (and so misses the cache)
    with pytest.raises(AssertionError, match="tokenizer invoked"):
        X.build_catalogue(ds, tok_dir, 11, cache_dir=cache)
    with pytest.raises(AssertionError, match="tokenizer invoked"):
        X.build_catalogue(ds, tok_dir, 12, prompt="other: ", cache_dir=cache)
    with pytest.raises(AssertionError, match="tokenizer invoked"):
        X.build_catalogue(ds, tok_dir, 12, text_keys=["title"], cache_dir=cache)


def test_cache_key_covers_tokenizer_files(tmp_path, tok_dir):
    texts = ["", P + "title: a"]
    other = tmp_path / "tok2"
    shutil.copytree(tok_dir, other)
    assert X.cache_key(texts, tok_dir, 8) == X.cache_key(texts, other, 8)
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 7
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert X.cache_key(texts, tok_dir, 8) != X.cache_key(texts, other, 8)
    assert X.cache_key(texts, tok_dir, 8) != X.cache_key(texts[::-1], tok_dir, 8)


def test_corrupt_cache_is_rebuilt(tmp_path, tok_dir):
    ds = small_dataset(tmp_path)
    cache = tmp_path / "cache"
    cat = X.build_catalogue(ds, tok_dir, 12, cache_dir=cache)
    (path,) = cache.glob("*.npz")
    path.write_bytes(b"not a zip")
    again = X.build_catalogue(ds, tok_dir, 12, cache_dir=cache)
    assert np.array_equal(again.tokens, cat.tokens)


@needs_tiny
def test_golden_item_tokens_match_reference(tmp_path):
    """MUST-SHOW: the catalogue reproduces the golden packed inputs item by item."""
    cfg = json.loads((TINY / "case.json").read_text())["config"]
    a = np.load(TINY / "arrays.npz")
    ds = T.load_dir(TINY / "dataset", cfg["text_keys"])
    cat = X.build_catalogue(ds, TINY / "tokenizer", cfg["MAX_TEXT_LENGTH"], prompt=cfg["item_prompt"],
                            cache_dir=tmp_path)
    assert np.array_equal(ds.item_ids, a["eval/item_token_ids"])
    for step in ("batch", "steps/0", "steps/1", "steps/2"):
        for side in ("pos", "neg"):
            item_ids = a[f"{step}/{side}_item_ids"].reshape(-1)
            gold_ids, gold_lens = a[f"{step}/{side}_input_ids"], a[f"{step}/{side}_cu_input_lens"]
            starts = np.concatenate([[0], np.cumsum(gold_lens)[:-1]])
            for item, s, n in zip(item_ids, starts, gold_lens):  # item by item: BOS + text, then slot 0
                assert cat.item_tokens(item).tolist() == gold_ids[s:s + n - 1].tolist(), (step, side, item)
                assert gold_ids[s + n - 1] == 0
            ids, lens, pos = X.pack_reference(cat, item_ids, cfg["item_emb_token_n"])
            assert np.array_equal(ids, gold_ids) and np.array_equal(lens, gold_lens)
            assert np.array_equal(pos, a[f"{step}/{side}_position_ids"])
    assert cat.item_tokens(0).tolist() == [1]
