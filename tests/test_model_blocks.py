"""Building blocks: segment-causal attention, RoPE, GQA, RMSNorm, packed item encoding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hllm_jax.data.packing import PackingOverflow, dedup, pack_items, pad_rows
from hllm_jax.models import attention as attn_lib
from hllm_jax.models.hllm import HLLMConfig
from hllm_jax.models.llama import LlamaConfig, rms_norm, rope
from hllm_jax.train.state import init_model
from flax import nnx


def _qkv(seed, b=2, l=24, h=4, k=2, d=8):
    r = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
    return f(b, l, h, d), f(b, l, k, d), f(b, l, k, d)


def _segments():
    # Row 0: items of 5, 7, 3 tokens then padding; row 1: 8 tokens, padding, 6 tokens.
    s = np.zeros((2, 24), np.int32)
    s[0, :5], s[0, 5:12], s[0, 12:15] = 1, 2, 3
    s[1, :8], s[1, 10:16] = 1, 2
    return jnp.asarray(s)


def _reference_attention(q, k, v, seg):
    """Loop over rows and segments: plain causal softmax attention on each segment alone."""
    q, k, v, seg = map(np.asarray, (q, k, v, seg))
    b, l, h, d = q.shape
    g = h // k.shape[2]
    out = np.zeros_like(q)
    for r in range(b):
        for sid in set(seg[r].tolist()) - {0}:
            idx = np.where(seg[r] == sid)[0]
            for hh in range(h):
                qs, ks, vs = q[r, idx, hh], k[r, idx, hh // g], v[r, idx, hh // g]
                s = qs @ ks.T / np.sqrt(d)
                s = np.where(np.tril(np.ones_like(s, bool)), s, -np.inf)
                p = np.exp(s - s.max(-1, keepdims=True))
                out[r, idx, hh] = (p / p.sum(-1, keepdims=True)) @ vs
    return out


@pytest.mark.parametrize("impl", ["dense", "dot_product", "local"])
def test_attention_matches_per_segment_loop(impl):
    q, k, v = _qkv(0)
    seg = _segments()
    got = attn_lib.attention(q, k, v, seg, impl=impl, window=8)
    ref = _reference_attention(q, k, v, seg)
    valid = np.asarray(seg) != 0
    np.testing.assert_allclose(np.asarray(got)[valid], ref[valid], rtol=1e-5, atol=1e-5)
    assert np.isfinite(np.asarray(got)).all()  # padding rows stay finite


def test_attention_never_crosses_segments():
    q, k, v = _qkv(1)
    seg = _segments()
    base = np.asarray(attn_lib.attention(q, k, v, seg, impl="dense"))
    # Change every token of row 0's segment 2; segments 1 and 3 must be bit-identical.
    noise = jnp.where((seg == 2)[..., None, None], 5.0, 0.0)
    moved = np.asarray(attn_lib.attention(q + noise, k + noise[:, :, :2], v + noise[:, :, :2], seg, impl="dense"))
    for sid in (1, 3):
        m = np.asarray(seg[0]) == sid
        assert np.array_equal(base[0, m], moved[0, m])
    assert not np.allclose(base[0, np.asarray(seg[0]) == 2], moved[0, np.asarray(seg[0]) == 2])


def test_gqa_equals_mha_with_repeated_kv_heads():
    q, k, v = _qkv(2, h=6, k=2)
    seg = _segments()
    got = attn_lib.attention(q, k, v, seg, impl="dense")
    rep = lambda x: jnp.repeat(x, 3, axis=2)  # head h uses kv head h // 3
    mha = attn_lib.attention(q, rep(k), rep(v), seg, impl="dense")
    np.testing.assert_allclose(np.asarray(got), np.asarray(mha), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="do not divide"):
        attn_lib.attention(q[:, :, :5], k, v, seg)


def test_rope_matches_complex_rotation_and_is_relative():
    r = np.random.default_rng(3)
    x = r.normal(size=(1, 5, 2, 8)).astype(np.float32)
    pos = np.array([[0, 1, 2, 7, 30]])
    got = np.asarray(rope(jnp.asarray(x), jnp.asarray(pos), 1e4))
    # Half-rotation layout: pair (i, i + d/2) rotates by pos * theta^(-2i/d).
    d = 8
    freq = 1e4 ** (-np.arange(0, d, 2) / d)
    z = (x[..., : d // 2] + 1j * x[..., d // 2:]) * np.exp(1j * pos[..., None, None] * freq)
    np.testing.assert_allclose(got, np.concatenate([z.real, z.imag], -1), rtol=1e-5, atol=1e-5)
    # Dot products depend only on position differences.
    q, k = jnp.asarray(x[:, :1]), jnp.asarray(x[:, 1:2])
    dot = lambda p, s: float(jnp.sum(rope(q, jnp.array([[p]]), 1e4) * rope(k, jnp.array([[s]]), 1e4)))
    assert abs(dot(3, 1) - dot(13, 11)) < 1e-4
    assert abs(dot(3, 1) - dot(3, 2)) > 1e-3


def test_rms_norm():
    x = jnp.asarray([[3.0, 4.0]])
    got = rms_norm(x, jnp.asarray([1.0, 2.0]), 0.0)
    np.testing.assert_allclose(np.asarray(got), [[3 / np.sqrt(12.5), 8 / np.sqrt(12.5)]], rtol=1e-6)


def test_pack_items_layout_and_overflow():
    toks = [np.array([1, 5, 6]), np.array([1, 7]), np.array([1, 8, 9, 10])]
    p = pack_items(toks, row_len=8, item_slot=True, max_text_len=6, item_ids=[11, 12, 13])
    # first-fit decreasing: item 2 (5 slots) then item 0 (4 slots, no room: new row), item 1 (3) fits row 0
    assert p.tokens.shape == (2, 8)
    for i, t in enumerate(toks):
        last = p.item_last[i]
        r, c = divmod(int(last), 8)
        k = len(t)
        assert p.item_slot[r, c] and p.tokens[r, c] == 0
        assert list(p.tokens[r, c - k:c]) == list(t)
        assert list(p.positions[r, c - k:c + 1]) == list(range(6 - k, 7))  # right-aligned, ITEM at 6
        assert (p.token_item[r, c - k:c + 1] == i).all()
        assert len(set(p.segments[r, c - k:c + 1].tolist())) == 1 and p.segments[r, c] > 0
    assert (p.token_item[p.segments == 0] == 3).all()
    # Padding rows afterwards is the same as packing into more rows.
    wide = pack_items(toks, row_len=8, num_rows=4, item_slot=True, max_text_len=6, item_ids=[11, 12, 13])
    for a, b in zip(jax.tree.leaves(wide), jax.tree.leaves(pad_rows(p, 4))):
        assert np.array_equal(a, b) and a.dtype == b.dtype
    with pytest.raises(PackingOverflow, match="row_len"):
        pack_items(toks, row_len=4, max_text_len=6)
    with pytest.raises(PackingOverflow, match="num_rows=1"):
        pack_items(toks, row_len=8, num_rows=1, max_text_len=6)
    with pytest.raises(PackingOverflow, match="item_capacity=2"):
        pack_items(toks, row_len=8, item_capacity=2, max_text_len=6)


def test_dedup():
    u, idx = dedup(np.array([[5, 3, 5], [0, 3, 9]]))
    assert list(u) == [5, 3, 0, 9]
    assert idx.tolist() == [[0, 1, 0], [2, 1, 3]]


def _encode(cfg, params, graphdef, token_lists, row_len=32):
    packed = pack_items(token_lists, row_len=row_len, item_slot=cfg.item_emb_token_n == 1, max_text_len=10)
    model = nnx.merge(graphdef, params)
    return np.asarray(model.encode_items(jax.tree.map(jnp.asarray, packed)))


@pytest.mark.parametrize("n_tok", [1, 0])
def test_item_embedding_independent_of_packed_neighbours(n_tok):
    cfg = HLLMConfig(item=LlamaConfig(hidden=32, layers=2, heads=4, kv_heads=2, mlp=64, vocab=50),
                     user=LlamaConfig(hidden=32, layers=1, heads=4, kv_heads=2, mlp=64, vocab=0),
                     item_emb_token_n=n_tok)
    graphdef, params, _ = init_model(cfg, seed=0)
    items = [np.array([1, 4, 5, 6]), np.array([1, 7, 8]), np.array([1, 9, 10, 11, 12])]
    a = _encode(cfg, params, graphdef, items)
    changed = [items[0], np.array([1, 20, 21, 22, 23, 24, 25]), items[2]]
    b = _encode(cfg, params, graphdef, changed)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[2], b[2])
    assert not np.allclose(a[1], b[1])
    # Packing alone (one item per row) gives the same vectors up to rounding.
    solo = np.stack([_encode(cfg, params, graphdef, [t], row_len=12)[0] for t in items])
    np.testing.assert_allclose(a, solo, rtol=1e-5, atol=1e-6)


def test_mean_pooling_is_mean_of_hidden_states():
    cfg = HLLMConfig(item=LlamaConfig(hidden=16, layers=1, heads=2, kv_heads=1, mlp=32, vocab=30),
                     user=LlamaConfig(hidden=16, layers=1, heads=2, kv_heads=1, mlp=32, vocab=0),
                     item_emb_token_n=0)
    graphdef, params, _ = init_model(cfg, seed=1)
    toks = np.array([1, 4, 5, 6])
    packed = pack_items([toks], row_len=8, item_slot=False, max_text_len=10)
    model = nnx.merge(graphdef, params)
    x = model.item_llm.embed_tokens(jnp.asarray(packed.tokens))
    h = np.asarray(model.item_llm(x, jnp.asarray(packed.segments), jnp.asarray(packed.positions)))
    emb = np.asarray(model.encode_items(jax.tree.map(jnp.asarray, packed)))
    np.testing.assert_allclose(emb[0], h[0, :4].mean(0), rtol=1e-5, atol=1e-6)
    assert "item_token" not in params


def test_width_mismatch_needs_projection():
    item = LlamaConfig(hidden=32, layers=1, heads=4, kv_heads=2, mlp=64, vocab=50)
    user = LlamaConfig(hidden=16, layers=1, heads=2, kv_heads=1, mlp=32, vocab=0)
    with pytest.raises(ValueError, match="item_proj=True"):
        HLLMConfig(item=item, user=user)
    cfg = HLLMConfig(item=item, user=user, item_proj=True)
    graphdef, params, _ = init_model(cfg)
    assert params["proj"].shape == (32, 16)
    out = _encode(cfg, params, graphdef, [np.array([1, 2, 3])])
    assert out.shape == (1, 16)


def test_config_errors():
    with pytest.raises(ValueError, match="kv_heads"):
        LlamaConfig(heads=4, kv_heads=3)
    with pytest.raises(ValueError, match="remat"):
        LlamaConfig(remat="sometimes")
    with pytest.raises(ValueError, match="unknown attention impl"):
        attn_lib.attention(*_qkv(0), _segments(), impl="nope")
    with pytest.raises(ValueError, match="vocab = 0"):
        HLLMConfig(user=LlamaConfig(vocab=10))


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_policies_give_same_gradients(remat):
    from hllm_jax.data.random_batch import random_train_batch
    from hllm_jax.train.step import loss_fn
    base = HLLMConfig(item=LlamaConfig(hidden=32, layers=2, heads=4, kv_heads=2, mlp=64, vocab=64),
                      user=LlamaConfig(hidden=32, layers=2, heads=4, kv_heads=2, mlp=64, vocab=0))
    batch = jax.tree.map(jnp.asarray, random_train_batch(
        0, num_items=40, vocab=64, batch=4, seq_len=4, num_negatives=8, max_text_len=6, row_len=28,
        num_rows=8, item_capacity=32))
    grads = []
    for cfg in (base, dataclasses.replace(base, item=dataclasses.replace(base.item, remat=remat),
                                          user=dataclasses.replace(base.user, remat=remat))):
        graphdef, params, _ = init_model(cfg, seed=0)
        g = jax.grad(lambda p: loss_fn(graphdef, p, batch)[0])(params)
        grads.append(g)
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 1e-5 * max(np.abs(b).max(), 1e-6)  # rounding only
