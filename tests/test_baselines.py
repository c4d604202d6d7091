"""ID baselines (SASRec, HSTU): shapes, causality, key padding, dropout, one layer by hand,
per-position negatives, fixed temperature, training, config errors, 8-device mesh equality."""

import dataclasses
import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hllm_jax import sharding
from hllm_jax.data.random_batch import random_train_batch
from hllm_jax.losses import info_nce
from hllm_jax.models import baselines as bl
from hllm_jax.train import state as state_lib
from hllm_jax.train.step import build_train_step

SAS = bl.SASRecConfig(num_items=200, hidden=32, layers=2, heads=4, max_seq_len=6, inner_mult=2)
HSTU = bl.HSTUConfig(num_items=200, hidden=32, layers=2, heads=4, max_seq_len=6, rel_pos_bias=True, item_hidden=16)
CONFIGS = {"sasrec": SAS, "hstu": HSTU}
# Text settings are irrelevant to ID models but random_train_batch packs them anyway.
TEXT = dict(vocab=32, max_text_len=4, row_len=32)

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices: "
                            "XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py sets it)")


def _batch(seed=0, batch=4, seq_len=5, num_negatives=8, capacity=64, rows=16, num_items=200):
    return random_train_batch(seed, num_items=num_items, batch=batch, seq_len=seq_len,
                              num_negatives=num_negatives, num_rows=rows, item_capacity=capacity, **TEXT)


@functools.lru_cache(maxsize=None)
def _init(cfg):
    return bl.init_baseline(cfg, seed=0)[1]


@functools.lru_cache(maxsize=None)
def _fns(cfg):
    """Parameters and jitted calls of one config, shared by the tests (compiles are the cost here).

    Configs that differ only in loss options or compute dtype share one initialisation.
    """
    graphdef, _, axes = bl.abstract_baseline(cfg)
    params = dict(_init(dataclasses.replace(cfg, negatives_per_position=0, dtype="float32", temperature=None)))
    if cfg.temperature is not None:
        del params["logit_scale"]
    call = jax.jit(lambda p, b, r: nnx.merge(graphdef, p)(b, rng=r))
    enc = jax.jit(lambda p, x, m, r: nnx.merge(graphdef, p).encode_users(x, m, rng=r))
    return types.SimpleNamespace(graphdef=graphdef, params=params, axes=axes,
                                 call=lambda b, rng=None: call(params, b, rng),
                                 enc=lambda x, m, rng=None: np.asarray(enc(params, x, m, rng)))


@functools.lru_cache(maxsize=None)
def _layer(cfg):
    """One jitted layer of ``cfg``'s model: (p, x, mask, key) -> x."""
    layer = bl.sasrec_layer if isinstance(cfg, bl.SASRecConfig) else bl.hstu_layer
    return jax.jit(functools.partial(layer, cfg))


def _embs(seed, b=2, s=6, d=32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, s, d)), jnp.float32)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shapes_axes_and_output_contract(name):
    cfg = CONFIGS[name]
    f = _fns(cfg)
    params, axes = f.params, f.axes
    for (path, p), a in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(
            axes, is_leaf=lambda x: isinstance(x, tuple))):
        assert len(a) == p.ndim, (path, a, p.shape)
    width = cfg.hidden if name == "sasrec" else cfg.item_width
    assert params["item_emb"].shape == (cfg.num_items, width)
    assert axes["item_emb"] == ("vocab", "embed")
    assert params["logit_scale"].shape == () and axes["logit_scale"] == ()
    batch = jax.tree.map(jnp.asarray, _batch())
    loss, metrics, out = f.call(batch)
    u, b, s, m = batch.items.item_ids.shape[0], *batch.seq_mask.shape, batch.negatives.shape[0]
    assert out["item_emb"].shape == (u, cfg.hidden)
    assert out["user"].shape == out["targets"].shape == (b, s, cfg.hidden)
    assert out["negatives"].shape == (m, cfg.hidden)
    assert out["logits"].shape == (b, s, 1 + m)
    assert set(metrics) >= {"nce_samples", "nce_top1_acc", "nce_top5_acc", "valid_positions"}
    assert np.isfinite(float(loss)) and all(v.dtype == jnp.float32 for v in out.values())
    # encode_items is the (projected) ID embedding of item_ids; tokens are never read.
    emb = np.asarray(out["item_emb"])
    want = np.asarray(params["item_emb"])[np.asarray(batch.items.item_ids)]
    if "proj" in params:
        want = want @ np.asarray(params["proj"])
    np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["targets"]), emb[np.asarray(batch.seq)[:, 1:]])
    scrambled = batch.replace(items=batch.items.replace(tokens=batch.items.tokens + 1))
    assert float(f.call(scrambled)[0]) == float(loss)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causal_and_key_padding(name):
    f = _fns(CONFIGS[name])
    x, full = _embs(0), jnp.ones((2, 6), bool)
    for rng in (None, jax.random.PRNGKey(3)):
        base = f.enc(x, full, rng)
        t = 3  # a new item at position t changes nothing before t
        moved = f.enc(x.at[:, t].set(_embs(9)[:, t]), full, rng)
        assert np.array_equal(base[:, :t], moved[:, :t])
        assert not np.allclose(base[:, t:], moved[:, t:])
        last = f.enc(x.at[:, -1].set(_embs(7)[:, -1]), full, rng)
        assert np.array_equal(base[:, :-1], last[:, :-1])
    # Left padding (mask False) never reaches a valid position.
    mask = full.at[0, :2].set(False)
    other = x.at[0, :2].set(_embs(8)[0, :2])
    base, moved = f.enc(x, mask), f.enc(other, mask)
    assert np.array_equal(base[0, 2:], moved[0, 2:]) and np.array_equal(base[1], moved[1])
    assert not np.allclose(f.enc(x, full)[0, 2:], f.enc(other, full)[0, 2:])  # unmasked, it would


@pytest.mark.parametrize("name", list(CONFIGS))
def test_dropout_only_with_rng_and_deterministic(name):
    cfg = CONFIGS[name]
    f = _fns(cfg)
    x, mask = _embs(0), jnp.ones((2, 6), bool)
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    det, a, a2, b = f.enc(x, mask), f.enc(x, mask, k1), f.enc(x, mask, k1), f.enc(x, mask, k2)
    assert np.array_equal(det, f.enc(x, mask)) and np.array_equal(a, a2)
    assert not np.allclose(a, b) and not np.allclose(a, det)
    # Rate 0 is the identity whatever the key.
    assert bl.dropout(x, 0.0, k1) is x and bl.dropout(x, 0.5, None) is x


# One layer by hand (numpy, float64, written from the reference's definitions) ---------------------
def _np_ln(x, axes=(-1,), eps=1e-12, g=None, b=None):
    m = x.mean(axis=axes, keepdims=True)
    v = ((x - m) ** 2).mean(axis=axes, keepdims=True)
    y = (x - m) / np.sqrt(v + eps)
    return y if g is None else y * g + b


def _random_layer(params, seed):
    r = np.random.default_rng(seed)
    one = jax.tree.map(lambda p: np.asarray(p[0], np.float64), params["layers"])
    return {k: v + 0.3 * r.normal(size=v.shape) for k, v in one.items()}


def _np_softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_sasrec_layer_matches_numpy():
    cfg = SAS
    p = _random_layer(_fns(cfg).params, 0)
    x = np.random.default_rng(1).normal(size=(2, 5, 32))
    mask = np.ones((2, 5), bool)
    mask[0, :2] = False
    B, S, D, H = 2, 5, 32, 4
    d = D // H
    lin = lambda t, w, b: t @ w.reshape(D, H * d) + b.reshape(H * d)
    heads = lambda t: t.reshape(B, S, H, d).transpose(0, 2, 1, 3)
    q, k, v = (heads(lin(x, p[w], p[b])) for w, b in (("wq", "bq"), ("wk", "bk"), ("wv", "bv")))
    ext = np.where(np.tril(np.ones((S, S), bool))[None] & mask[:, None, :], 0.0, -1e9)[:, None]
    probs = _np_softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + ext)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(B, S, H * d)
    h = _np_ln(ctx @ p["wo"].reshape(H * d, D) + p["bo"] + x, g=p["attn_norm_scale"], b=p["attn_norm_bias"])
    gelu = np.vectorize(lambda z: 0.5 * z * (1.0 + math.erf(z / math.sqrt(2.0))))
    f = gelu(h @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    want = _np_ln(f + h, g=p["ffn_norm_scale"], b=p["ffn_norm_bias"])
    got = _layer(cfg)(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p),
                      jnp.asarray(x, jnp.float32), jnp.asarray(mask), None)
    valid = mask  # padded query rows are never read; compare the rest
    np.testing.assert_allclose(np.asarray(got)[valid], want[valid], rtol=2e-5, atol=2e-5)


def _reference_rel_bias(w, n):
    """The reference's Toeplitz construction (pad, repeat, reshape, crop), in numpy."""
    t = np.tile(np.concatenate([w[: 2 * n - 1], np.zeros(n)]), n)[:-n].reshape(n, 3 * n - 2)
    r = (2 * n - 1) // 2
    return t[:, r:-r]


@pytest.mark.parametrize("rab", [False, True])
def test_hstu_layer_matches_numpy(rab):
    cfg = dataclasses.replace(HSTU, rel_pos_bias=rab)
    p = _random_layer(_fns(HSTU).params, 2)
    B, S, D, H = 2, 5, 32, 4
    d = D // H
    x = np.random.default_rng(3).normal(size=(B, S, D))
    mask = np.ones((B, S), bool)
    mask[1, :3] = False
    silu = lambda z: z / (1.0 + np.exp(-z))
    uvqk = silu(_np_ln(x, eps=1e-6) @ p["w_uvqk"].reshape(D, 4 * H * d))   # columns: u | v | q | k
    u, v, q, k = np.split(uvqk, 4, axis=-1)
    qk = np.einsum("bnhd,bmhd->bhnm", q.reshape(B, S, H, d), k.reshape(B, S, H, d))
    if rab:
        qk = qk + _reference_rel_bias(p["rel_bias"], cfg.max_seq_len)[:S, :S]
    allowed = np.tril(np.ones((S, S), bool))[None] & mask[:, None, :]
    attn = silu(qk) / S * allowed[:, None]
    out = np.einsum("bhnm,bmhd->bnhd", attn, v.reshape(B, S, H, d)).reshape(B, S, H * d)
    want = (u * _np_ln(out, eps=1e-6)) @ p["wo"].reshape(H * d, D) + p["bo"] + x
    got = _layer(cfg)(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p),
                      jnp.asarray(x, jnp.float32), jnp.asarray(mask), None)
    np.testing.assert_allclose(np.asarray(got)[mask], want[mask], rtol=2e-5, atol=2e-5)


def test_init_follows_reference():
    p, h = _fns(SAS).params, _fns(HSTU).params
    assert abs(np.std(p["item_emb"]) - 0.02) < 1e-3 and abs(np.std(p["layers"]["wq"]) - 0.02) < 1e-3
    assert (p["layers"]["bq"] == 0).all() and (p["layers"]["attn_norm_scale"] == 1).all()
    assert (p["in_norm_bias"] == 0).all() and p["pos_emb"].shape == (SAS.max_seq_len, SAS.hidden)
    assert abs(float(p["logit_scale"]) - math.log(1 / 0.07)) < 1e-6
    for name in ("item_emb", "proj", "pos_emb"):  # truncated at 2 std: std 0.02 * 0.88
        assert np.abs(h[name]).max() <= 0.04 + 1e-7 and abs(np.std(h[name]) - 0.0176) < 1.5e-3, name
    assert h["pos_emb"].shape == (HSTU.max_seq_len + 1, HSTU.hidden)
    bound = math.sqrt(6.0 / (32 + 32))  # Xavier-uniform W_o
    assert bound >= np.abs(h["layers"]["wo"]).max() > 0.95 * bound
    assert abs(np.std(h["layers"]["w_uvqk"]) - 0.02) < 1e-3


# Loss options --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _loss_fns(k):
    shared = jax.jit(lambda u, t, n, m, scale: info_nce(u, t, n, m, scale))
    per_position = jax.jit(lambda u, t, n, m, scale: bl.per_position_info_nce(u, t, n, m, scale, k))
    return shared, per_position


def test_per_position_negatives():
    k, b, s = 3, 4, 5
    batch = jax.tree.map(jnp.asarray, _batch())
    _, _, out = _fns(SAS).call(batch)
    emb, mask = out["item_emb"], batch.seq_mask
    negs = emb[np.random.default_rng(0).integers(0, emb.shape[0], size=b * s * k)]
    shared_fn, per_position_fn = _loss_fns(k)
    loss, metrics, logits = per_position_fn(out["user"], out["targets"], negs, mask, 1 / 0.07)
    assert logits.shape == (b, s, 1 + k)
    # Position (b, s) is scored against its own negatives[(b * S + s) * K : ... + K].
    norm = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    u, n = norm(np.asarray(out["user"])), norm(np.asarray(negs).reshape(b, s, k, -1))
    got = np.asarray(logits)[..., 1:]
    finite = np.isfinite(got)
    np.testing.assert_allclose(got[finite], (np.einsum("bsd,bskd->bsk", u, n) / 0.07)[finite], rtol=1e-5, atol=1e-5)
    # The same K negatives at every position = the shared-negative loss with those K.
    tiled = per_position_fn(out["user"], out["targets"], jnp.tile(negs[:k], (b * s, 1)), mask, 1 / 0.07)
    shared = shared_fn(out["user"], out["targets"], negs[:k], mask, 1 / 0.07)
    np.testing.assert_allclose(float(tiled[0]), float(shared[0]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(tiled[2]), np.asarray(shared[2]), rtol=1e-6)
    for key in shared[1]:
        np.testing.assert_allclose(float(tiled[1][key]), float(shared[1][key]), rtol=1e-6, err_msg=key)
    # The model routes to it by config; a wrong negative count names the field.
    model = nnx.merge(*bl.abstract_baseline(dataclasses.replace(SAS, negatives_per_position=k, temperature=0.07))[:2])
    with pytest.raises(ValueError, match=r"negatives_per_position=3 needs batch.negatives of length B \* S \* K"):
        model.loss(out["user"], out["targets"], negs[:7], mask)


def test_fixed_temperature():
    fixed = nnx.merge(*bl.abstract_baseline(dataclasses.replace(SAS, temperature=0.07))[:2])
    assert "logit_scale" not in nnx.to_pure_dict(nnx.state(fixed))
    assert float(fixed.scale()) == pytest.approx(1 / 0.07)
    hstu = nnx.merge(*bl.abstract_baseline(dataclasses.replace(HSTU, temperature=0.05))[:2])
    assert float(hstu.scale()) == pytest.approx(20.0)  # the reference's fix_temp
    # The learnable model's loss is hllm_jax.losses.info_nce at scale exp(logit_scale) = 1 / 0.07.
    batch = jax.tree.map(jnp.asarray, _batch())
    loss, _, out = _fns(SAS).call(batch)
    ref = _loss_fns(1)[0](out["user"], out["targets"], out["negatives"], batch.seq_mask, 1 / 0.07)[0]
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)


# Training on one device, then the same steps on an 8-device mesh -----------------------------------
TRAIN_CASES = {
    "sasrec": (SAS, 16),
    "hstu_fixed_temp_per_position": (dataclasses.replace(HSTU, temperature=0.05, negatives_per_position=2), 8 * 5 * 2),
}


def _train(cfg, num_negatives, steps, mesh_shape=None):
    f = _fns(cfg)
    batch = _batch(batch=8, num_negatives=num_negatives, capacity=128, rows=32)
    # No weight decay, so a parameter moves only if a gradient reaches it.
    tx = state_lib.make_optimizer(5e-3, total_steps=40, warmup=0.0, weight_decay=0.0)
    state = state_lib.create_state(f.params, tx)
    mesh = None if mesh_shape is None else sharding.make_mesh(mesh_shape)
    fns = build_train_step(f.graphdef, tx, state, f.axes, batch, mesh=mesh, donate=False, seed=7)
    state = fns.put_state(state) if mesh is not None else state
    b = fns.put_batch(batch)
    losses = []
    for _ in range(steps):
        state, m = fns.train(state, b)
        losses.append(float(m["loss"]))
    return losses, state


@functools.lru_cache(maxsize=None)
def _single_device_run(case):
    cfg, m = TRAIN_CASES[case]
    return _train(cfg, m, steps=25)


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_adamw_steps_lower_the_loss(case):
    cfg, _ = TRAIN_CASES[case]
    losses, state = _single_device_run(case)
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.6 * losses[0], losses
    # No weight decay: a parameter moved only if a gradient reached it.
    moved = jax.tree.map(lambda a, b: not np.array_equal(np.asarray(a), np.asarray(b)), state.params, _fns(cfg).params)
    assert all(jax.tree.leaves(moved)), moved
    if cfg.temperature is None:
        assert 0.0 <= float(state.params["logit_scale"]) <= math.log(100.0) + 1e-2


@needs8
@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_mesh_equals_single_device(case):
    cfg, m = TRAIN_CASES[case]
    ref = _single_device_run(case)[0][:2]
    losses, state = _train(cfg, m, steps=2, mesh_shape=(2, 2, 2))
    for a, b in zip(losses, ref):
        assert abs(a - b) <= 1e-5 * abs(b), (losses, ref)
    assert ref[0] != ref[1]  # the update (and the step's dropout key) changed the loss
    emb = state.params["item_emb"]  # vocab -> tensor, embed -> fsdp
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert emb.addressable_shards[0].data.shape == (100, emb.shape[1] // 2)


# Errors ----------------------------------------------------------------------------------------------
def test_config_errors():
    cases = [
        (lambda: bl.SASRecConfig(num_items=1), r"SASRecConfig.num_items=1"),
        (lambda: bl.SASRecConfig(num_items=10, hidden=30, heads=4), r"SASRecConfig.hidden=30: must divide by heads=4"),
        (lambda: bl.SASRecConfig(num_items=10, attn_dropout=1.0), r"SASRecConfig.attn_dropout=1.0: must be in \[0, 1\)"),
        (lambda: bl.SASRecConfig(num_items=10, act="mish"), r"SASRecConfig.act='mish'"),
        (lambda: bl.SASRecConfig(num_items=10, inner_mult=0), r"SASRecConfig.inner_mult=0"),
        (lambda: bl.SASRecConfig(num_items=10, layers=0), r"SASRecConfig.layers=0"),
        (lambda: bl.HSTUConfig(num_items=10, temperature=0.0), r"HSTUConfig.temperature=0.0"),
        (lambda: bl.HSTUConfig(num_items=10, hidden_dropout=-0.1), r"HSTUConfig.hidden_dropout=-0.1"),
        (lambda: bl.HSTUConfig(num_items=10, linear_act="gelu"), r"HSTUConfig.linear_act='gelu'"),
        (lambda: bl.HSTUConfig(num_items=10, negatives_per_position=-1), r"HSTUConfig.negatives_per_position=-1"),
        (lambda: bl.HSTUConfig(num_items=10, nce_threshold=2.0), r"HSTUConfig.nce_threshold=2.0"),
        (lambda: bl.HSTUConfig(num_items=10, item_hidden=0), r"HSTUConfig.item_hidden=0"),
        (lambda: bl.HSTUConfig(num_items=10, dtype="float16"), r"HSTUConfig.dtype='float16'"),
    ]
    for make, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            make()
    with pytest.raises(TypeError, match="no baseline for config"):
        bl.build(object(), nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"SASRecConfig.max_seq_len=6 but the sequence has 7 positions"):
        _fns(SAS).enc(_embs(0, s=7), jnp.ones((2, 7), bool))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bfloat16_compute(name):
    x, mask = _embs(4), jnp.ones((2, 6), bool).at[0, :2].set(False)
    ref = _fns(CONFIGS[name]).enc(x, mask)
    got = _fns(dataclasses.replace(CONFIGS[name], dtype="bfloat16")).enc(x, mask)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    valid = np.asarray(mask)
    assert np.abs(got - ref)[valid].max() < 0.05 * np.abs(ref)[valid].max()


def test_config_from_run_config():
    m = dict(name="sasrec", hidden=64, layers=4, heads=4, dropout=0.5, temperature="learnable",
             nce_threshold=0.99, dtype="float32", id_options={"negatives_per_position": 512})
    cfg = bl.config_from(m, num_items=1001, max_seq_len=50)
    assert cfg == bl.SASRecConfig(num_items=1001, max_seq_len=50, hidden=64, layers=4, heads=4, hidden_dropout=0.5,
                                  attn_dropout=0.5, negatives_per_position=512)
    h = bl.config_from(dict(m, name="hstu", temperature=0.05, id_options={"rel_pos_bias": True}),
                       num_items=1001, max_seq_len=55)
    assert isinstance(h, bl.HSTUConfig) and h.temperature == 0.05 and h.rel_pos_bias and h.hidden_dropout == 0.5
    with pytest.raises(ValueError, match=r"model.id_options: \['inner_mult'\] are not HSTUConfig fields"):
        bl.config_from(dict(m, name="hstu", id_options={"inner_mult": 2}), num_items=10, max_seq_len=5)
    with pytest.raises(ValueError, match="model.temperature='cold'"):
        bl.config_from(dict(m, temperature="cold"), num_items=10, max_seq_len=5)
    with pytest.raises(ValueError, match="model.name='gru4rec'"):
        bl.config_from(dict(m, name="gru4rec"), num_items=10, max_seq_len=5)
