"""Tests of the synthetic dataset and its tokenizer."""

import filecmp
from itertools import combinations

import numpy as np
import pytest

from hllm_jax.data import synthetic as S
from hllm_jax.data import tables as T
from hllm_jax.data import text as X

CFG = S.SyntheticConfig(num_users=120, num_items=160, num_topics=6, seed=7)


def test_same_seed_same_files(tmp_path):
    a = S.write_csv(S.generate(CFG), tmp_path / "a")
    b = S.write_csv(S.generate(CFG), tmp_path / "b")
    c = S.write_csv(S.generate(S.SyntheticConfig(num_users=120, num_items=160, num_topics=6, seed=8)), tmp_path / "c")
    for f in ("interactions.csv", "items.csv"):
        assert filecmp.cmp(a / f, b / f, shallow=False)
        assert not filecmp.cmp(a / f, c / f, shallow=False)


def test_in_memory_equals_files(tmp_path):
    data = S.generate(CFG)
    mem = S.to_dataset(data)
    disk = T.load_dir(S.write_csv(data, tmp_path))
    for f in ("item_ids", "user_ids", "seq_items", "seq_times", "seq_offsets", "in_item_file"):
        assert np.array_equal(getattr(mem, f), getattr(disk, f)), f
    assert mem.item_text == disk.item_text and mem.text_keys == disk.text_keys == ("title", "tag", "description")
    assert mem.report == disk.report


def test_sizes_and_lengths():
    data = S.generate(CFG)
    ds = S.to_dataset(data)
    lens = ds.lengths()[1:]
    assert ds.num_users - 1 == CFG.num_users
    assert lens.min() >= CFG.min_seq_len and lens.max() <= CFG.max_seq_len
    assert len(data.items) == CFG.num_items
    assert ds.report.items_without_text == 0 and ds.report.short_users == 0


def _words(row):
    return set(" ".join(row[1:]).lower().replace(".", "").split())


def test_items_of_a_topic_share_words():
    data = S.generate(CFG)
    words = {r[0]: _words(r) for r in data.items}
    same, other = [], []
    for a, b in combinations(list(words)[:80], 2):
        j = len(words[a] & words[b]) / len(words[a] | words[b])
        (same if data.item_topic[a] == data.item_topic[b] else other).append(j)
    assert np.mean(same) > 3 * np.mean(other)
    for r in data.items:  # the tag uses only the item's topic words
        assert set(r[2].split()) <= set(data.topic_words[data.item_topic[r[0]]])


def test_next_topic_predictable_from_last_item():
    data = S.generate(CFG)
    ds = S.to_dataset(data)
    topic = np.asarray([-1] + [data.item_topic[str(i)] for i in ds.item_ids[1:]])
    hits = total = 0
    for u in range(1, ds.num_users):
        t = topic[ds.sequence(u)]
        hits += int((t[1:] == t[:-1]).sum())
        total += len(t) - 1
    chance = 1 / CFG.num_topics
    assert hits / total > chance + 0.3  # stay_prob 0.6 vs chance 0.17


def test_tokenizer_deterministic_and_loadable(tmp_path):
    data = S.generate(S.SyntheticConfig(num_users=20, num_items=30, seed=2))
    a = S.synthetic_tokenizer(data, tmp_path / "a", vocab_size=300)
    b = S.synthetic_tokenizer(data, tmp_path / "b", vocab_size=300)
    assert filecmp.cmp(a / "tokenizer.json", b / "tokenizer.json", shallow=False)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(a))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.encode("") == [1]
    ids = tok.encode(S.item_texts(data)[0])
    assert ids[0] == 1 and 0 not in ids[1:]  # BOS first, every word of its own text is known
    cat = X.build_catalogue(S.to_dataset(data), a, 16)
    assert cat.num_items == S.to_dataset(data).num_items and (cat.lengths <= 16).all()


def test_config_checked():
    with pytest.raises(ValueError, match="min_seq_len"):
        S.generate(S.SyntheticConfig(min_seq_len=2))
    with pytest.raises(ValueError, match="num_items >= num_topics"):
        S.generate(S.SyntheticConfig(num_items=3, num_topics=8))
