"""grain iterator (resume), global arrays on a mesh, and the tfds builder (array_record, no TF)."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from hllm_jax import sharding
from hllm_jax.data import synthetic as S
from hllm_jax.data import tables, text
from hllm_jax.data import tfds_builder as TB
from hllm_jax.data.batches import BatchBuilder, BatchConfig, suggest_capacities
from hllm_jax.data.pipeline import data_shard, make_train_iterator, to_global

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINY = SHARED / "data" / "amazon-allbeauty-2023-tiny"
BEAUTY_TOK = SHARED / "reference" / "beauty-tokenizer"
SYN = S.SyntheticConfig(num_users=80, num_items=120, seed=2)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return S.synthetic_tokenizer(S.generate(SYN), tmp_path_factory.mktemp("tok"), vocab_size=300)


@pytest.fixture(scope="module")
def builder(tok_dir):
    ds = S.to_dataset(S.generate(SYN))
    cat = text.build_catalogue(ds, tok_dir, 10)
    samples = tables.train_samples(ds, 4)
    cfg = BatchConfig(batch_size=8, max_seq_len=4, num_negatives=16, max_text_len=10, row_len=44, seed=3)
    return BatchBuilder(samples, cat, suggest_capacities(samples, cat, cfg, steps=10, process_count=8))


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_resume_continues_at_the_same_batch(builder):
    it = make_train_iterator(builder, 20, process_index=0, process_count=1, num_threads=2, prefetch_buffer_size=3)
    first = [next(it) for _ in range(5)]
    state = json.loads(json.dumps(it.get_state()))  # JSON round trip, as a checkpoint stores it
    assert state["next_step"] == 5
    following = [next(it) for _ in range(3)]
    for prefetch in (dict(num_threads=2), dict(num_threads=0)):
        fresh = make_train_iterator(builder, 20, process_index=0, process_count=1, **prefetch)
        fresh.set_state(state)
        resumed = [next(fresh) for _ in range(3)]
        assert all(same(a, b) for a, b in zip(resumed, following))
        fresh.close()
    assert all(same(b, builder.build(k)) for k, b in enumerate(first + following))
    it.close()
    # start_step and the end of the run
    it = make_train_iterator(builder, 7, process_index=1, process_count=2, start_step=6, num_threads=0)
    assert same(next(it), builder.build(6, 1, 2))
    with pytest.raises(StopIteration):
        next(it)


def test_state_from_other_data_settings_is_refused(builder):
    it = make_train_iterator(builder, 10, process_index=0, process_count=1, num_threads=0)
    state = it.get_state()
    state["data"]["seed"] += 1
    with pytest.raises(ValueError, match="resume with the same BatchConfig"):
        it.set_state(state)


def test_worker_process_prefetch(builder):
    it = make_train_iterator(builder, 6, process_index=0, process_count=2, worker_count=1)
    try:
        got = [next(it) for _ in range(3)]
        state = it.get_state()
    finally:
        it.close()
    assert all(same(b, builder.build(k, 0, 2)) for k, b in enumerate(got))
    fresh = make_train_iterator(builder, 6, process_index=0, process_count=2, num_threads=0)
    fresh.set_state(state)  # the state is the step: portable across prefetch modes
    assert same(next(fresh), builder.build(3, 0, 2))


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py sets XLA_FLAGS)")
@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2), (1, 1, 8)])
def test_to_global_on_a_mesh(builder, mesh_shape):
    mesh = sharding.make_mesh(mesh_shape)
    assert data_shard(mesh) == (0, 1)  # one process holds the whole batch
    it = make_train_iterator(builder, 3, mesh=mesh, num_threads=0)
    local = next(it)
    glob = to_global(local, mesh)
    for g, x in zip(jax.tree.leaves(glob), jax.tree.leaves(local)):
        assert isinstance(g, jax.Array) and g.shape == x.shape
        np.testing.assert_array_equal(np.asarray(g), x)
    n_batch = mesh_shape[0] * mesh_shape[1]
    assert glob.items.tokens.sharding.spec[0] == (sharding.logical_to_spec(("batch",), sharding.DEFAULT_RULES, mesh)[0])
    assert glob.items.tokens.addressable_shards[0].data.shape[0] == local.items.tokens.shape[0] // n_batch


# ----------------------------------------------------------------------------------------------
# tfds


def check_against_tables(b, ds, cat, max_seq_len, sample_mode="chunks"):
    got = TB.read_catalogue(b)
    np.testing.assert_array_equal(got.tokens, cat.tokens)
    np.testing.assert_array_equal(got.offsets, cat.offsets)
    np.testing.assert_array_equal(got.full_lengths, cat.full_lengths)
    assert (got.max_text_len, got.bos_id, got.key) == (cat.max_text_len, cat.bos_id, cat.key)
    np.testing.assert_array_equal(TB.read_item_ids(b), ds.item_ids)
    want = tables.train_samples(ds, max_seq_len, sample_mode)
    samples = TB.read_train_samples(b)
    np.testing.assert_array_equal(samples.padded(), want.padded())
    np.testing.assert_array_equal(samples.users, want.users)
    np.testing.assert_array_equal(samples.lengths, want.lengths)
    for phase in ("valid", "test"):
        ev = TB.read_eval(b, phase)
        ref = tables.eval_split(ds, phase, max_seq_len)
        for f in ("users", "history", "targets", "target_in_history"):
            np.testing.assert_array_equal(getattr(ev.split, f), getattr(ref, f), err_msg=f"{phase}.{f}")
        for r in (0, len(ref.users) // 2, len(ref.users) - 1):
            np.testing.assert_array_equal(ev.seen(r), ds.seq_items[ref.seen_starts[r]:ref.seen_stops[r]])
    meta = TB.metadata(b)
    assert meta["num_items"] == ds.num_items and meta["num_train_samples"] == len(want)


def test_tfds_synthetic_round_trip(tmp_path, tok_dir):
    spec = TB.SourceSpec(synthetic=SYN, tokenizer=str(tok_dir), max_text_len=10, max_seq_len=4)
    b = TB.prepare(spec, tmp_path / "tfds")
    assert Path(b.data_dir).is_relative_to(tmp_path / "tfds")
    assert sorted(b.info.splits.keys()) == sorted(TB.SPLITS)
    ds = S.to_dataset(S.generate(SYN))
    cat = text.build_catalogue(ds, tok_dir, 10)
    check_against_tables(b, ds, cat, 4)
    assert TB.metadata(b)["vocab_size"] == len(text.load_tokenizer(tok_dir))
    # Reopened from the directory alone (no spec, no inputs), and tfds.data_source by name.
    ro = TB.open_prepared(b.data_dir)
    np.testing.assert_array_equal(TB.read_catalogue(ro).tokens, cat.tokens)
    import tensorflow_datasets as tfds
    src = tfds.data_source(f"hllm_dataset/{b.builder_config.name}", data_dir=str(tmp_path / "tfds"))
    assert len(src["train"]) == TB.metadata(b)["num_train_samples"]
    # Prepared once: a second prepare reuses the files.
    stamp = {p: p.stat().st_mtime_ns for p in Path(b.data_dir).iterdir()}
    b2 = TB.prepare(spec, tmp_path / "tfds")
    assert {p: p.stat().st_mtime_ns for p in Path(b2.data_dir).iterdir()} == stamp
    # Another setting -> another config name.
    other = TB.SourceSpec(synthetic=SYN, tokenizer=str(tok_dir), max_text_len=10, max_seq_len=5)
    assert TB.HllmConfig(other).name != b.builder_config.name


def test_tfds_refuses_a_data_dir_inside_the_repo(tok_dir):
    spec = TB.SourceSpec(synthetic=SYN, tokenizer=str(tok_dir))
    with pytest.raises(ValueError, match="inside the repository"):
        TB.HllmDataset(spec, Path(__file__).resolve().parents[1] / "tfds_data")
    with pytest.raises(ValueError, match="exactly one of csv_dir or synthetic"):
        TB.SourceSpec(tokenizer=str(tok_dir))


@pytest.mark.skipif(not (TINY / "interactions.csv").exists() or not BEAUTY_TOK.is_dir(),
                    reason=f"shared fixture not found at {TINY} / {BEAUTY_TOK} (needs ../shared beside the repo)")
def test_tfds_csv_fixture_feeds_the_batches(tmp_path):
    spec = TB.SourceSpec(csv_dir=str(TINY), text_keys=("title",), tokenizer=str(BEAUTY_TOK), max_text_len=16,
                         max_seq_len=6)
    b = TB.prepare(spec, tmp_path / "tfds")
    ds = tables.load_dir(TINY, ("title",))
    cat = text.build_catalogue(ds, BEAUTY_TOK, 16)
    check_against_tables(b, ds, cat, 6)
    samples = TB.read_train_samples(b)
    cfg = BatchConfig(batch_size=8, max_seq_len=6, num_negatives=64, max_text_len=16, row_len=68)
    cfg = suggest_capacities(samples, TB.read_catalogue(b), cfg, steps=10)
    from_tfds = BatchBuilder(samples, TB.read_catalogue(b), cfg).build(3)
    from_csv = BatchBuilder(tables.train_samples(ds, 6), cat, cfg).build(3)
    assert same(from_tfds, from_csv)
