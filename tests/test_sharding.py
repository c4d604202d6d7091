"""The fused step on 8 simulated CPU devices equals one device's, for several mesh shapes."""

import jax
import numpy as np
import pytest

from hllm_jax import sharding
from hllm_jax.data.random_batch import random_train_batch
from hllm_jax.models.hllm import HLLMConfig
from hllm_jax.models.llama import LlamaConfig
from hllm_jax.train import state as state_lib
from hllm_jax.train.step import build_train_step

# Mesh-test config: every sharded size divides 8 (heads 16 / kv 8 keeps GQA in play).
MESH_CFG = HLLMConfig(
    item=LlamaConfig(hidden=64, layers=2, heads=16, kv_heads=8, mlp=128, vocab=256),
    user=LlamaConfig(hidden=64, layers=2, heads=16, kv_heads=8, mlp=128, vocab=0))
BATCH = dict(num_items=200, vocab=256, batch=8, seq_len=5, num_negatives=16, max_text_len=12,
             row_len=64, num_rows=16, item_capacity=64)
STEPS = 2

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices: "
                            "XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py sets it)")


def _run(mesh_shape):
    graphdef, params, axes = state_lib.init_model(MESH_CFG, seed=0)
    tx = state_lib.make_optimizer(1e-3, total_steps=10, warmup=0.1)
    batches = [random_train_batch(s, **BATCH) for s in range(STEPS)]
    state = state_lib.create_state(params, tx)
    mesh = None if mesh_shape is None else sharding.make_mesh(mesh_shape)
    fns = build_train_step(graphdef, tx, state, axes, batches[0], mesh=mesh)
    state = fns.put_state(state) if mesh is not None else state
    losses = []
    for b in batches:
        state, m = fns.train(state, fns.put_batch(b))
        losses.append(float(m["loss"]))
    return losses, state


@pytest.fixture(scope="module")
def single_device():
    return _run(None)


def _err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-6)


@needs8
@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8), (1, 8, 1), (4, 1, 2)])
def test_mesh_equals_single_device(single_device, mesh_shape):
    ref_losses, ref_state = single_device
    losses, state = _run(mesh_shape)
    for a, b in zip(losses, ref_losses):
        assert abs(a - b) <= 1e-5 * abs(b), (mesh_shape, losses, ref_losses)
    worst = max(_err(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)))
    assert worst <= 1e-5, (mesh_shape, worst)
    assert ref_losses[0] != ref_losses[1]  # the update changed something


@needs8
def test_large_parameters_are_sharded():
    _, state = _run((2, 2, 2))
    p = state.params
    emb = p["item_llm"]["embed"]  # [vocab -> tensor, embed -> fsdp]
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert emb.addressable_shards[0].data.shape == (128, 32)
    wq = p["user_llm"]["layers"]["wq"]  # [layers, embed, heads, kv]
    assert wq.addressable_shards[0].data.shape == (2, 32, 8, 4)
    w_up = p["item_llm"]["layers"]["w_up"]
    assert w_up.addressable_shards[0].data.shape == (2, 32, 64)
    # AdamW moments follow the parameters.
    mu = state.opt_state[0].mu["item_llm"]["embed"]
    assert mu.sharding.spec == emb.sharding.spec
    # Nothing big is replicated.
    for leaf in jax.tree.leaves(p):
        if leaf.size >= 4096:
            assert leaf.addressable_shards[0].data.size < leaf.size


def test_impossible_mesh_is_a_clear_error():
    n = jax.device_count()
    with pytest.raises(ValueError, match=f"needs {2 * n} devices but {n} are available"):
        sharding.make_mesh((2, n, 1))
    with pytest.raises(ValueError, match="at most one entry may be -1"):
        sharding.make_mesh((-1, -1, 1))
    with pytest.raises(ValueError, match="must have 3 entries"):
        sharding.make_mesh((n, 1))


@needs8
def test_size_that_does_not_divide_names_the_dimension():
    mesh = sharding.make_mesh((1, 1, 8))
    cfg = HLLMConfig(item=LlamaConfig(hidden=64, layers=1, heads=4, kv_heads=2, mlp=128, vocab=256),
                     user=LlamaConfig(hidden=64, layers=1, heads=4, kv_heads=2, mlp=128, vocab=0))
    _, params, axes = state_lib.init_model(cfg)
    with pytest.raises(ValueError, match=r"\['wk'\]: dimension 2 \('kv_heads'\) has size 2, which does not divide.*tensor"):
        sharding.tree_shardings(axes, params, mesh, sharding.DEFAULT_RULES)
    with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
        sharding.logical_to_spec(("embed",), [("embed", "model")])
    # The same model fits once heads map to nothing.
    rules = [(k, None if k in ("heads", "kv_heads") else v) for k, v in sharding.DEFAULT_RULES]
    sh = sharding.tree_shardings(axes, params, mesh, rules)
    assert sh["item_llm"]["layers"]["wq"].spec == jax.sharding.PartitionSpec(None, None, None, None)
