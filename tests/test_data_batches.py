"""Training batches: determinism by (seed, step), per-process shards, dedup, negatives, overflow."""

import dataclasses

import jax
import numpy as np
import pytest

from hllm_jax.data import synthetic as S
from hllm_jax.data import tables, text
from hllm_jax.data.batches import (BatchBuilder, BatchConfig, BatchStats, concat_shards, global_item_ids,
                                   padded_samples, suggest_capacities)
from hllm_jax.data.packing import PackingOverflow
from hllm_jax.models.hllm import HLLMConfig
from hllm_jax.models.llama import LlamaConfig
from hllm_jax.train.state import init_model
from hllm_jax.train.step import loss_fn

MAX_TEXT_LEN = 12
SEQ = 5


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    syn = S.generate(S.SyntheticConfig(num_users=150, num_items=220, seed=1))
    tok = S.synthetic_tokenizer(syn, tmp_path_factory.mktemp("tok"), vocab_size=300)
    ds = S.to_dataset(syn, ("title", "tag"))
    cat = text.build_catalogue(ds, tok, MAX_TEXT_LEN)
    return ds, cat, tables.train_samples(ds, SEQ), len(text.load_tokenizer(tok))


def base_cfg(**kw):
    kw = dict(dict(batch_size=8, max_seq_len=SEQ, num_negatives=32, max_text_len=MAX_TEXT_LEN, row_len=48, seed=5),
              **kw)
    return BatchConfig(**kw)


@pytest.fixture(scope="module")
def cfg(data):
    _, cat, samples, _ = data
    return suggest_capacities(samples, cat, base_cfg(), steps=20, process_count=4)


def leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(la, lb))


def test_padded_samples_matches_tables(data):
    _, _, samples, _ = data
    np.testing.assert_array_equal(padded_samples(samples), samples.padded())


def test_determinism_by_seed_and_step(data, cfg):
    _, cat, samples, _ = data
    a, b = BatchBuilder(samples, cat, cfg), BatchBuilder(samples, cat, cfg)
    history = [a.build(k) for k in range(7)]  # a has built steps 0..6 first; b builds step 7 cold
    assert leaves_equal(a.build(7), b.build(7))
    assert leaves_equal(history[3], b.build(3))
    assert not np.array_equal(a.build(7).seq, a.build(8).seq)
    assert not np.array_equal(a.build(7).items.item_ids, a.build(8).items.item_ids)
    other = BatchBuilder(samples, cat, dataclasses.replace(cfg, seed=cfg.seed + 1))
    assert not np.array_equal(global_item_ids(other.build(7))[0], global_item_ids(a.build(7))[0])
    # The dtypes and shapes are static.
    x = a.build(0)
    assert x.items.tokens.shape == (cfg.item_rows, cfg.row_len) and x.items.item_ids.shape == (cfg.max_unique_items,)
    assert x.seq.shape == (cfg.batch_size, SEQ + 1) and x.negatives.shape == (cfg.num_negatives,)
    assert {l.dtype for l in jax.tree.leaves(x)} == {np.dtype(np.int32), np.dtype(bool)}


def test_epochs_are_permutations(data, cfg):
    _, cat, samples, _ = data
    b = BatchBuilder(samples, cat, cfg)
    n, bs = len(samples), cfg.batch_size
    steps = -(-2 * n // bs) + 1
    stream = np.concatenate([b.sample_indices(k) for k in range(steps)])
    for e in range(2):
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))
    assert not np.array_equal(stream[:n], stream[n:2 * n])  # a new permutation each epoch


def test_reference_negatives_avoid_own_items(data):
    _, cat, samples, _ = data
    cfg = base_cfg(negative_sampling="reference", num_negatives=None)
    assert cfg.num_negatives == 8 * (SEQ + 1)
    b = BatchBuilder(samples, cat, cfg)
    for k in range(30):
        seqs, _, negs = b.global_ids(k)
        negs = negs.reshape(cfg.batch_size, SEQ + 1)
        assert (negs >= 1).all() and (negs < cat.num_items).all()
        for row, neg in zip(seqs, negs):
            assert not np.isin(neg, row).any()
    with pytest.raises(ValueError, match=r"= 48 negatives per step, but num_negatives=100; set num_negatives=48"):
        base_cfg(negative_sampling="reference", num_negatives=100)


def test_uniform_negatives_fixed_count(data, cfg):
    _, cat, samples, _ = data
    b = BatchBuilder(samples, cat, cfg)
    negs = np.concatenate([b.global_ids(k)[2] for k in range(50)])
    assert len(negs) == 50 * cfg.num_negatives
    assert negs.min() >= 1 and negs.max() <= cat.num_items - 1
    assert len(np.unique(negs)) > cat.num_items // 2


def test_dedup_and_index_maps(data, cfg):
    _, cat, samples, _ = data
    b = BatchBuilder(samples, cat, cfg)
    for count in (1, 2):
        step = 4
        seqs, mask, negs = b.global_ids(step)
        for p in range(count):
            local = b.build(step, p, count)
            it = local.items
            u_l = it.item_ids.shape[0]
            seq_ids, neg_ids = global_item_ids(local, p)
            np.testing.assert_array_equal(seq_ids, np.split(seqs, count)[p])
            np.testing.assert_array_equal(neg_ids, np.split(negs, count)[p])
            np.testing.assert_array_equal(local.seq_mask, np.split(mask, count)[p])
            used = np.unique(np.concatenate([local.seq.ravel(), local.negatives])) - p * u_l
            ids = it.item_ids[used]
            assert len(np.unique(ids)) == len(ids)  # each distinct item encoded once per shard
            encoded = np.unique(it.token_item[it.segments > 0])
            np.testing.assert_array_equal(encoded, used + p * u_l)
            # Every unique item's packed tokens are its catalogue tokens + an ITEM slot at item_last.
            tok, ti, flat_slot = it.tokens.ravel(), it.token_item.ravel(), it.item_slot.ravel()
            r_off = p * it.tokens.shape[0] * cfg.row_len
            for j in used:
                where = np.flatnonzero(ti == j + p * u_l)
                assert where.max() + r_off == it.item_last[j]
                assert flat_slot[where[-1]] and not flat_slot[where[:-1]].any()
                np.testing.assert_array_equal(tok[where[:-1]], cat.item_tokens(int(it.item_ids[j])))
            pad = ti == u_l * count
            assert (it.segments.ravel()[pad] == 0).all() and (it.segments.ravel()[~pad] > 0).all()


def tiny_model(vocab, pooling=1):
    return HLLMConfig(item=LlamaConfig(hidden=32, layers=1, heads=2, kv_heads=1, mlp=64, vocab=vocab),
                      user=LlamaConfig(hidden=32, layers=1, heads=2, kv_heads=1, mlp=64, vocab=0),
                      item_emb_token_n=pooling)


@pytest.mark.parametrize("pooling", [1, 0])
def test_process_shards_give_the_same_loss(data, cfg, pooling):
    _, cat, samples, vocab = data
    cfg = dataclasses.replace(cfg, item_emb_token_n=pooling)
    builder = BatchBuilder(samples, cat, cfg)
    graphdef, params, _ = init_model(tiny_model(vocab, pooling), seed=0)
    loss = jax.jit(lambda p, b: loss_fn(graphdef, p, b)[0])
    step = 2
    ref = builder.build(step)
    ref_loss = float(loss(params, ref))
    ref_ids = global_item_ids(ref)
    for count in (1, 2, 4):
        glob = concat_shards([builder.build(step, p, count) for p in range(count)])
        assert jax.tree.map(np.shape, glob) == jax.tree.map(np.shape, ref)
        for a, b in zip(global_item_ids(glob), ref_ids):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(glob.seq_mask, ref.seq_mask)
        got = float(loss(params, glob))
        assert abs(got - ref_loss) <= 1e-5 * abs(ref_loss), (count, got, ref_loss)


def test_stats(data, cfg):
    _, cat, samples, _ = data
    b = BatchBuilder(samples, cat, cfg)
    batch, st = b.build_with_stats(1)
    refs = cfg.seq_items + cfg.num_negatives
    assert st.item_refs == refs and st.padded_tokens == refs * (MAX_TEXT_LEN + 1)
    seq_ids, neg_ids = global_item_ids(batch)
    uniq = np.unique(np.concatenate([seq_ids.ravel(), neg_ids]))
    assert st.unique_items == len(uniq)
    assert st.item_tokens == int((cat.lengths[uniq] + 1).sum()) == int((batch.items.segments > 0).sum())
    assert st.rows == cfg.item_rows and 0 < st.packing_efficiency <= 1
    assert st.capacity_efficiency <= st.packing_efficiency
    shards = [b.build_with_stats(1, p, 4)[1] for p in range(4)]
    tot = BatchStats.sum(shards)
    assert tot.item_refs == refs and tot.samples == cfg.batch_size and tot.rows == cfg.item_rows
    assert tot.unique_items >= st.unique_items  # an item drawn by two shards is encoded twice


def test_overflow_and_config_errors_name_the_setting(data, cfg):
    _, cat, samples, _ = data
    with pytest.raises(PackingOverflow, match="BatchConfig.item_rows"):
        BatchBuilder(samples, cat, dataclasses.replace(cfg, item_rows=4)).build(0)
    with pytest.raises(PackingOverflow, match="BatchConfig.max_unique_items"):
        BatchBuilder(samples, cat, dataclasses.replace(cfg, max_unique_items=8)).build(0)
    with pytest.raises(ValueError, match="row_len"):
        base_cfg(row_len=MAX_TEXT_LEN)
    with pytest.raises(ValueError, match="batch_size=8 does not divide by process_count=3"):
        BatchBuilder(samples, cat, cfg).build(0, 0, 3)
    with pytest.raises(ValueError, match="max_unique_items=.* does not divide by process_count=8"):
        BatchBuilder(samples, cat, dataclasses.replace(cfg, max_unique_items=cfg.max_unique_items + 4)).build(0, 0, 8)
    with pytest.raises(ValueError, match="max_seq_len"):
        BatchBuilder(tables.train_samples(data[0], SEQ + 1), cat, cfg)
    with pytest.raises(ValueError, match="negative_sampling"):
        base_cfg(negative_sampling="popular")


def test_default_capacities_are_safe(data):
    _, cat, samples, _ = data
    b = BatchBuilder(samples, cat, base_cfg())  # item_rows / max_unique_items None: worst-case bounds
    for count in (1, 2):
        rows, uniq = b.capacities(count)
        for k in range(10):
            for p in range(count):
                x = b.build(k, p, count)
                assert x.items.tokens.shape[0] * count == rows and x.items.item_ids.shape[0] * count == uniq


def test_reference_sampling_needs_an_item_outside_each_sample():
    cat = text.Catalogue(np.asarray([1, 1, 5, 1, 6], np.int32), np.asarray([0, 1, 3, 5]),
                         np.asarray([1, 2, 2], np.int32),
                         MAX_TEXT_LEN, 1, "k")
    samples = tables.TrainSamples(np.asarray([1, 2], np.int32), np.asarray([1], np.int32), np.asarray([0]),
                                  np.asarray([2], np.int32), SEQ + 1)
    cfg = base_cfg(batch_size=1, negative_sampling="reference", num_negatives=None)
    with pytest.raises(ValueError, match="contains every item of the catalogue"):
        BatchBuilder(samples, cat, cfg)
    batch = BatchBuilder(samples, cat, base_cfg(batch_size=1, num_negatives=4)).build(0)  # uniform is fine
    assert set(global_item_ids(batch)[1]) <= {1, 2}
