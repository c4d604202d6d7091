"""Loading the public HLLM's PyTorch parameter layout: round trip, torch files, every bad key."""

import numpy as np
import pytest

from hllm_jax.convert.reference import (REFERENCE_ONLY, ConversionError, from_reference,
                                        load_state_dict_file, to_reference)
from hllm_jax.models.hllm import HLLMConfig
from hllm_jax.models.llama import LlamaConfig
from hllm_jax.train import state as state_lib

CFG = HLLMConfig(item=LlamaConfig(hidden=32, layers=2, heads=4, kv_heads=2, mlp=48, vocab=40),
                 user=LlamaConfig(hidden=32, layers=3, heads=4, kv_heads=1, mlp=40, vocab=0))


@pytest.fixture(scope="module")
def params():
    _, p, _ = state_lib.init_model(CFG, seed=3)
    return {k: v for k, v in p.items()}


def _np(tree):
    import jax
    return jax.tree.map(np.asarray, tree)


def test_round_trip_and_reference_shapes(params):
    sd = to_reference(_np(params))
    assert sd["item_llm.model.layers.0.self_attn.q_proj.weight"].shape == (32, 32)
    assert sd["user_llm.model.layers.2.self_attn.k_proj.weight"].shape == (8, 32)   # 1 kv head x 8
    assert sd["item_llm.model.layers.1.mlp.down_proj.weight"].shape == (32, 48)
    assert sd["item_emb_tokens"].shape == (1, 1, 32)
    assert set(REFERENCE_ONLY) <= set(sd)
    back, skipped = from_reference(sd, params)
    assert skipped == sorted(REFERENCE_ONLY)
    import jax
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(_np(params))):
        assert np.array_equal(a, b)
    # q_proj rows are heads x head_dim in order: row h*hd + j is our wq[:, h, j]
    wq = np.asarray(params["item_llm"]["layers"]["wq"][0])
    assert np.array_equal(sd["item_llm.model.layers.0.self_attn.q_proj.weight"][2 * 8 + 5], wq[:, 2, 5])


def test_torch_and_safetensors_files(params, tmp_path):
    torch = pytest.importorskip("torch")
    sd = to_reference(_np(params))
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, tmp_path / "m.bin")
    loaded = load_state_dict_file(tmp_path / "m.bin")
    back, _ = from_reference(loaded, params, source="m.bin")
    assert np.array_equal(back["user_llm"]["layers"]["wv"], np.asarray(params["user_llm"]["layers"]["wv"]))
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    back2, _ = from_reference(load_state_dict_file(tmp_path / "m.safetensors"), params)
    assert np.array_equal(back2["item_llm"]["embed"], np.asarray(params["item_llm"]["embed"]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state_dict_file(tmp_path / "nope.bin")


@pytest.mark.parametrize("mutate, message", [
    (lambda sd: sd.pop("item_llm.model.norm.weight"), r"missing \(no source key\): item_llm/final_norm"),
    (lambda sd: sd.pop("user_llm.model.layers.1.mlp.up_proj.weight"), r"user_llm: layers \[1\] missing for w_up"),
    (lambda sd: sd.__setitem__("user_llm.model.extra.weight", np.zeros(3)), "unexpected keys: user_llm.model.extra.weight"),
    (lambda sd: sd.__setitem__("item_llm.model.layers.5.mlp.up_proj.weight", np.zeros((48, 32))),
     r"unexpected keys: item_llm.model.layers.5"),
    (lambda sd: sd.__setitem__("item_llm.model.embed_tokens.weight", np.zeros((41, 32))),
     r"item_llm.model.embed_tokens.weight: shape \(41, 32\).*expects \(40, 32\)"),
    (lambda sd: sd.__setitem__("item_llm.model.layers.0.mlp.gate_proj.weight", np.zeros((32, 48))),
     r"item_llm.model.layers.0.mlp.gate_proj.weight: shape \(32, 48\) does not match the model \(expects \(48, 32\)\)"),
])
def test_bad_state_dict_is_a_clear_error(params, mutate, message):
    sd = to_reference(_np(params))
    mutate(sd)
    with pytest.raises(ConversionError, match=message):
        from_reference(sd, params, source="test.bin")


def test_reference_only_keys_are_optional(params):
    sd = to_reference(_np(params))
    for k in REFERENCE_ONLY:
        sd.pop(k)
    _, skipped = from_reference(sd, params)
    assert skipped == []
