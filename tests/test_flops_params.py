"""Parameter and FLOP formulas against the real models: counted parameters and counted matmuls."""

import jax
import numpy as np
import pytest

from hllm_jax import flops, sizes
from hllm_jax.data.random_batch import random_train_batch
from hllm_jax.models.hllm import HLLMConfig
from hllm_jax.train import state as state_lib
from hllm_jax.train.step import loss_fn


def _count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _hllm(item, user, vocab=500, **kw):
    i = sizes.decode_variant(item, vocab=vocab, **kw)
    u = sizes.decode_variant(user, vocab=0, **kw)
    return HLLMConfig(item=i, user=u, item_emb_token_n=1, item_proj=i.hidden != u.hidden)


@pytest.mark.parametrize("name", [n for n in sizes.SIZES if n.startswith("cpu-")])
def test_cpu_size_names_match_their_non_embedding_parameters(name):
    n = sizes.non_embedding_params(sizes.decode_variant(name))
    target = float(name[len("cpu-"):-1]) * 1e6
    assert abs(n - target) / target < 0.1, (name, n)


@pytest.mark.parametrize("item,user", [("ref64", "ref64"), ("cpu-1m", "cpu-0.3m"), ("smollm2-135m", "cpu-1m"),
                                       ("7b", "1b"), ("baichuan2-7b", "llama-3.2-3b")])
def test_param_counts_equal_the_models(item, user):
    cfg = _hllm(item, user, vocab=sizes.PUBLIC_VOCAB.get(sizes.canonical(item), 500))
    _, params, _ = state_lib.abstract_model(cfg)  # shapes only: no 7B allocation
    counts = sizes.hllm_param_counts(cfg)
    assert counts["total"] == _count(params)
    assert counts["item_non_embedding"] == _count(params["item_llm"]) - cfg.item.vocab * cfg.item.hidden
    assert counts["user_non_embedding"] == _count(params["user_llm"])
    assert ("proj" in params) == cfg.item_proj


def test_public_shapes_have_their_published_sizes():
    # TinyLlama-1.1B: 1.1B with embeddings and untied head; our decoder has no LM head.
    tiny = sizes.decode_variant("1b", vocab=32000)
    assert sizes.non_embedding_params(tiny) + 2 * 32000 * 2048 == pytest.approx(1.1e9, rel=0.01)
    llama7 = sizes.decode_variant("7b", vocab=32000)
    assert sizes.non_embedding_params(llama7) + 2 * 32000 * 4096 == pytest.approx(6.74e9, rel=0.01)


@pytest.mark.parametrize("item,user", [("ref64", "ref64"), ("cpu-0.3m", "cpu-0.1m")])
def test_flop_formula_equals_counted_matmuls(item, user):
    """Forward and forward+backward dot_general FLOPs of the real fused step's loss equal the
    formula with ``attention="computed"`` (dense kernels, remat off)."""
    cfg = _hllm(item, user, attention="dense")
    graphdef, params, _ = state_lib.init_model(cfg)
    B, S, M, L, R, U = 4, 5, 24, 40, 12, 48
    batch = random_train_batch(0, num_items=60, vocab=500, batch=B, seq_len=S, num_negatives=M, max_text_len=12,
                               row_len=L, num_rows=R, item_capacity=U)
    batch = jax.tree.map(np.asarray, batch)
    # Dense kernels compute every row position (R*L tokens) and the projection all U slots: U
    # "items" of R*L/U tokens each, attention as computed over whole rows.
    kw = dict(item_lengths=np.full(U, R * L / U), batch=B, seq_len=S, num_negatives=M, proj=cfg.item_proj,
              attention="computed", rows=(R, L))
    fwd = flops.count_matmul_flops(lambda p: loss_fn(graphdef, p, batch)[0], params)
    assert fwd == pytest.approx(flops.hllm_flops(cfg.item, cfg.user, train=False, **kw), rel=1e-9)
    train = flops.count_matmul_flops(jax.grad(lambda p: loss_fn(graphdef, p, batch)[0]), params)
    assert train == pytest.approx(flops.hllm_flops(cfg.item, cfg.user, train=True, **kw), rel=1e-9)


def test_full_remat_adds_at_most_one_forward_of_the_layers():
    """The roofline charges full remat one more forward of the layers: an upper bound (JAX drops
    recomputed values the backward does not read, e.g. the output projections)."""
    cfg = _hllm("ref64", "ref64", attention="dense")
    remat = _hllm("ref64", "ref64", attention="dense", remat="full")
    batch = jax.tree.map(np.asarray, random_train_batch(0, num_items=40, vocab=500, batch=2, seq_len=4, num_negatives=8,
                                                        max_text_len=10, row_len=24, num_rows=8, item_capacity=24))
    counted = []
    for c in (cfg, remat):
        g, p, _ = state_lib.init_model(c)
        counted.append(flops.count_matmul_flops(jax.grad(lambda q: loss_fn(g, q, batch)[0]), p))
    layers_fwd = (8 * 24 * flops.matmul_flops_per_token(cfg.item) + flops.attention_flops(cfg.item, 8 * 24 ** 2)
                  + 2 * 4 * flops.matmul_flops_per_token(cfg.user) + flops.attention_flops(cfg.user, 2 * 4 ** 2))
    assert 0.5 * layers_fwd < counted[1] - counted[0] <= layers_fwd


def test_model_flops_count_causal_segments_not_padding():
    cfg = _hllm("ref64", "ref64")
    a = flops.hllm_flops(cfg.item, cfg.user, item_lengths=[10, 10], batch=1, seq_len=2, num_negatives=4)
    b = flops.hllm_flops(cfg.item, cfg.user, item_lengths=[20], batch=1, seq_len=2, num_negatives=4)
    per_tok = flops.matmul_flops_per_token(cfg.item)
    assert a < b  # same tokens, shorter segments: fewer attention FLOPs
    assert b - a == pytest.approx(3 * flops.attention_flops(cfg.item, (400 - 200) / 2))
    assert flops.hllm_train_flops(cfg.item, cfg.user, item_lengths=[20], batch=1, seq_len=2, num_negatives=4) == b
    assert per_tok > 0


@pytest.mark.parametrize("name,options", [("sasrec", {}), ("sasrec", {"inner_mult": 2, "negatives_per_position": 3}),
                                          ("hstu", {}), ("hstu", {"item_hidden": 48, "negatives_per_position": 2})])
def test_baseline_flop_formula_equals_counted_matmuls(name, options):
    """SASRec/HSTU: forward and forward+backward dot_general FLOPs of the real loss equal
    ``baseline_flops(attention="computed")``, shared and per-position negatives, HSTU's projection."""
    from hllm_jax.models import baselines as bl

    cfg = bl.config_from({"name": name, "hidden": 32, "layers": 2, "heads": 2, "id_options": options},
                         num_items=60, max_seq_len=5)
    graphdef, params, _ = bl.init_baseline(cfg)
    B, S, U = 4, 5, 64
    k = cfg.negatives_per_position
    m = B * S * k if k else 24
    batch = jax.tree.map(np.asarray, random_train_batch(0, num_items=60, vocab=50, batch=B, seq_len=S, num_negatives=m,
                                                        max_text_len=2, row_len=16, num_rows=12, item_capacity=U))
    kw = dict(unique_items=U, batch=B, seq_len=S, num_negatives=k or m, attention="computed")
    fwd = flops.count_matmul_flops(lambda p: loss_fn(graphdef, p, batch)[0], params)
    assert fwd == pytest.approx(flops.baseline_flops(cfg, train=False, **kw), rel=1e-9)
    train = flops.count_matmul_flops(jax.grad(lambda p: loss_fn(graphdef, p, batch)[0]), params)
    assert train == pytest.approx(flops.baseline_flops(cfg, train=True, **kw), rel=1e-9)
    model = flops.baseline_flops(cfg, unique_items=U, batch=B, seq_len=S, num_negatives=k or m)
    assert 0 < model < train  # causal model FLOPs: half the dense kernel's attention
