"""The public PyTorch HLLM's parameter layout <-> ours: a name table plus per-tensor transforms.

Reference names (PyTorch ``Linear`` weights are [out, in]):
  item_llm.model.embed_tokens.weight                        -> item_llm/embed
  {item,user}_llm.model.layers.N.self_attn.{q,k,v,o}_proj.weight -> {...}/layers/w{q,k,v,o}[N]
  {item,user}_llm.model.layers.N.mlp.{gate,up,down}_proj.weight  -> {...}/layers/w_{gate,up,down}[N]
  {item,user}_llm.model.layers.N.{input,post_attention}_layernorm.weight -> attn_norm / mlp_norm
  {item,user}_llm.model.norm.weight                         -> {...}/final_norm
  item_emb_tokens [1, 1, D]                                 -> item_token [D]
  logit_scale []                                            -> logit_scale
Reference-only keys (no counterpart here; skipped on load and reported, written back on export):
  item_llm.lm_head.weight, user_llm.lm_head.weight, user_llm.model.embed_tokens.weight.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np

REFERENCE_ONLY = ("item_llm.lm_head.weight", "user_llm.lm_head.weight", "user_llm.model.embed_tokens.weight")

_LAYER = re.compile(r"^(item_llm|user_llm)\.model\.layers\.(\d+)\.(.+)$")
# reference suffix -> (our layer key, kind)
_LAYER_KEYS = {
    "self_attn.q_proj.weight": ("wq", "q"),
    "self_attn.k_proj.weight": ("wk", "kv"),
    "self_attn.v_proj.weight": ("wv", "kv"),
    "self_attn.o_proj.weight": ("wo", "o"),
    "mlp.gate_proj.weight": ("w_gate", "in"),
    "mlp.up_proj.weight": ("w_up", "in"),
    "mlp.down_proj.weight": ("w_down", "out"),
    "input_layernorm.weight": ("attn_norm", "vec"),
    "post_attention_layernorm.weight": ("mlp_norm", "vec"),
}


class ConversionError(ValueError):
    """Missing, unexpected or mis-shaped parameters."""


def _to_ours(kind: str, w: np.ndarray, heads: int, head_dim: int) -> np.ndarray:
    if kind in ("q", "kv"):      # [H*hd, D] -> [D, H, hd]
        return w.T.reshape(w.shape[1], heads, head_dim)
    if kind == "o":              # [D, H*hd] -> [H, hd, D]
        return w.T.reshape(heads, head_dim, w.shape[0])
    if kind in ("in", "out"):    # [out, in] -> [in, out]
        return w.T
    return w


def _to_ref(kind: str, w: np.ndarray) -> np.ndarray:
    if kind in ("q", "kv"):      # [D, H, hd] -> [H*hd, D]
        return w.reshape(w.shape[0], -1).T
    if kind == "o":              # [H, hd, D] -> [D, H*hd]
        return w.reshape(-1, w.shape[-1]).T
    if kind in ("in", "out"):
        return w.T
    return w


def _heads(params_like: Mapping, llm: str, key: str) -> tuple[int, int]:
    shape = np.shape(params_like[llm]["layers"][key])
    return (shape[2], shape[3]) if key in ("wq", "wk", "wv") else (shape[1], shape[2])


def from_reference(state_dict: Mapping[str, np.ndarray], like: Mapping, source: str = "state_dict"):
    """Our params (nested dict of float32 numpy arrays, shaped like ``like``) from reference names.

    Returns (params, skipped reference-only keys). Any other missing, unexpected or mis-shaped
    key raises ConversionError naming it.
    """
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    skipped = sorted(k for k in sd if k in REFERENCE_ONLY)
    layers: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    out: dict = {}
    unexpected, errors = [], []

    def put(path: tuple[str, ...], value, ref_key):
        node, exp = out, like
        for p in path[:-1]:
            node = node.setdefault(p, {})
            exp = exp.get(p, {}) if isinstance(exp, Mapping) else {}
        want = exp.get(path[-1]) if isinstance(exp, Mapping) else None
        if want is None:
            unexpected.append(ref_key)
            return
        if tuple(np.shape(want)) != tuple(value.shape):
            errors.append(f"{ref_key}: shape {tuple(value.shape)} (as {'/'.join(path)}) but the model "
                          f"expects {tuple(np.shape(want))}")
            return
        node[path[-1]] = value.astype(np.float32)

    for k, w in sd.items():
        if k in REFERENCE_ONLY:
            continue
        m = _LAYER.match(k)
        if m:
            llm, idx, suffix = m.group(1), int(m.group(2)), m.group(3)
            if suffix not in _LAYER_KEYS or llm not in like:
                unexpected.append(k)
                continue
            ours, kind = _LAYER_KEYS[suffix]
            want = tuple(np.shape(like[llm]["layers"][ours])[1:])
            heads, hd = _heads(like, llm, ours) if kind in ("q", "kv", "o") else (0, 0)
            try:
                v = _to_ours(kind, w, heads, hd)
            except ValueError:
                v = None
            if v is None or tuple(v.shape) != want:
                errors.append(f"{k}: shape {tuple(w.shape)} does not match the model "
                              f"(expects {tuple(_to_ref(kind, np.zeros(want)).shape)})")
                continue
            layers.setdefault((llm, ours), {})[idx] = v
        elif k == "item_llm.model.embed_tokens.weight":
            put(("item_llm", "embed"), w, k)
        elif k in ("item_llm.model.norm.weight", "user_llm.model.norm.weight"):
            put((k.split(".")[0], "final_norm"), w, k)
        elif k == "item_emb_tokens":
            put(("item_token",), w.reshape(-1) if w.ndim == 3 and w.shape[:2] == (1, 1) else w, k)
        elif k == "logit_scale":
            put(("logit_scale",), w.reshape(()) if w.size == 1 else w, k)
        else:
            unexpected.append(k)

    for (llm, ours), by_idx in layers.items():
        n = np.shape(like[llm]["layers"][ours])[0]
        missing_layers = sorted(set(range(n)) - set(by_idx))
        extra = sorted(set(by_idx) - set(range(n)))
        if extra:
            unexpected += [f"{llm}.model.layers.{i}.* ({ours})" for i in extra]
        if missing_layers:
            errors.append(f"{llm}: layers {missing_layers} missing for {ours}")
            continue
        put((llm, "layers", ours), np.stack([by_idx[i] for i in range(n)]), f"{llm}.model.layers.*.{ours}")

    missing = []

    def check(exp, got, prefix):
        for key, v in exp.items():
            if isinstance(v, Mapping):
                check(v, got.get(key, {}) if isinstance(got, Mapping) else {}, prefix + (key,))
            elif not (isinstance(got, Mapping) and key in got):
                missing.append("/".join(prefix + (key,)))
    check(like, out, ())
    problems = []
    if missing:
        problems.append(f"missing (no source key): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(sorted(unexpected))}")
    problems += errors
    if problems:
        raise ConversionError(f"{source}: cannot load into the model:\n  " + "\n  ".join(problems))
    return out, skipped


def to_reference(params: Mapping, *, vocab: int | None = None) -> dict[str, np.ndarray]:
    """Reference names from our params; reference-only keys are written back (zeros) for a strict load."""
    sd: dict[str, np.ndarray] = {}
    inv = {ours: (suffix, kind) for suffix, (ours, kind) in _LAYER_KEYS.items()}
    for llm in ("item_llm", "user_llm"):
        p = params[llm]
        for ours, stacked in p["layers"].items():
            suffix, kind = inv[ours]
            for i in range(np.shape(stacked)[0]):
                sd[f"{llm}.model.layers.{i}.{suffix}"] = _to_ref(kind, np.asarray(stacked[i]))
        sd[f"{llm}.model.norm.weight"] = np.asarray(p["final_norm"])
    emb = np.asarray(params["item_llm"]["embed"])
    sd["item_llm.model.embed_tokens.weight"] = emb
    v = vocab or emb.shape[0]
    d_user = np.shape(params["user_llm"]["final_norm"])[0]
    sd["item_llm.lm_head.weight"] = np.zeros((v, emb.shape[1]), np.float32)
    sd["user_llm.lm_head.weight"] = np.zeros((v, d_user), np.float32)
    sd["user_llm.model.embed_tokens.weight"] = np.zeros((v, d_user), np.float32)
    if "item_token" in params:
        sd["item_emb_tokens"] = np.asarray(params["item_token"]).reshape(1, 1, -1)
    sd["logit_scale"] = np.asarray(params["logit_scale"])
    return sd


def load_state_dict_file(path: str | Path, prefix: str = "state_dict/") -> dict[str, np.ndarray]:
    """Reference-layout tensors from a golden ``.npz`` (keys under ``prefix``), a ``.safetensors``
    file, or a PyTorch ``state_dict`` file (``.bin`` / ``.pt``, loaded with weights_only=True)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"state_dict file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = [k for k in z.files if k.startswith(prefix)]
            if not keys:
                raise ConversionError(f"{path}: no arrays under {prefix!r}")
            return {k[len(prefix):]: z[k] for k in keys}
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        return load_file(str(path))
    import torch  # conversion-only dependency
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, Mapping):
        raise ConversionError(f"{path}: expected a state_dict (mapping of names to tensors), got {type(sd)}")
    return {k: v.detach().float().numpy() for k, v in sd.items()}
