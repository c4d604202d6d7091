"""Device mesh, logical-axis rules and shardings: the only module that knows mesh axis names.

Model code names logical axes only (``embed``, ``mlp``, ``heads``, ``act_batch`` ...). A config
maps each logical name to zero or more mesh axes (``data``, ``fsdp``, ``tensor``); this module
turns those names into ``NamedSharding``s for parameters and batches, and into
``with_sharding_constraint`` calls for activations (MaxText style, Auto axis types: XLA's
partitioner propagates shardings between the constraints).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axes. Parameters: vocab, embed, mlp, heads, kv_heads, kv (head dim),
# layers, norm. Activations / inputs: batch, act_batch, act_length, act_embed, act_heads, act_mlp.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("layers", None),
    ("norm", None),
)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh with axes (data, fsdp, tensor) and Auto axis types.

    One entry of ``shape`` may be -1: it takes whatever the device count leaves.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh_shape {tuple(shape)} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh_shape {tuple(shape)}: at most one entry may be -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if known <= 0 or len(devices) % known:
            raise ValueError(
                f"mesh_shape {tuple(shape)}: {len(devices)} devices are not divisible by {known}; "
                f"choose sizes whose product divides the device count")
        shape[shape.index(-1)] = len(devices) // known
    if any(s < 1 for s in shape):
        raise ValueError(f"mesh_shape {tuple(shape)}: every axis size must be >= 1 (or -1 to fill)")
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh_shape {tuple(shape)} (axes {MESH_AXES}) needs {math.prod(shape)} devices but "
            f"{len(devices)} are available; set mesh_shape so that its product is {len(devices)} "
            f"(one entry may be -1), or on CPU simulate devices with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count=N")
    dev = np.asarray(devices).reshape(shape)
    return Mesh(dev, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _rules_dict(rules: Sequence[tuple[str, Any]] | Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    items = rules.items() if isinstance(rules, Mapping) else rules
    out = {}
    for name, axes in items:
        if axes is None:
            axes = ()
        elif isinstance(axes, str):
            axes = (axes,)
        axes = tuple(axes)
        for a in axes:
            if a not in MESH_AXES:
                raise ValueError(f"logical axis rule {name!r} -> {axes}: unknown mesh axis {a!r}; "
                                 f"mesh axes are {MESH_AXES}")
        out[name] = axes
    return out


def _free_axes(name: str | None, rules: dict, used: set[str], mesh: Mesh | None) -> tuple[str, ...]:
    """Mesh axes a logical name maps to, minus those already used in this array and (with a mesh)
    those of size 1."""
    if name is None:
        return ()
    axes = tuple(a for a in rules[name] if a not in used)
    return axes if mesh is None else tuple(a for a in axes if mesh.shape[a] > 1)


def _entry(axes: tuple[str, ...]):
    """One PartitionSpec entry: None, an axis name, or a tuple of names."""
    return None if not axes else axes[0] if len(axes) == 1 else axes


def batch_shards(mesh: Mesh, rules=DEFAULT_RULES) -> int:
    """Into how many blocks the rules split the batch dimension on ``mesh``."""
    return math.prod(mesh.shape[a] for a in _free_axes("batch", _rules_dict(rules), set(), mesh))


def logical_to_spec(logical_axes: Sequence[str | None], rules, mesh: Mesh | None = None,
                    shape: Sequence[int] | None = None, what: str = "array") -> P:
    """PartitionSpec for an array whose dimensions carry ``logical_axes``.

    A mesh axis is used at most once per array (later dimensions that map to an axis already used
    stay unsharded). With ``mesh`` and ``shape`` given, every sharded dimension must divide by the
    size of its mesh axes; otherwise a ValueError names the array, dimension and rule.
    """
    rules = _rules_dict(rules)
    used: set[str] = set()
    spec = []
    for i, name in enumerate(logical_axes):
        if name is not None and name not in rules:
            raise ValueError(f"{what}: logical axis {name!r} has no rule; add ({name!r}, mesh axes or None) "
                             f"to logical_axis_rules (known: {sorted(rules)})")
        axes = _free_axes(name, rules, used, mesh)
        if mesh is not None and shape is not None and axes:
            size = math.prod(mesh.shape[a] for a in axes)
            if shape[i] % size:
                raise ValueError(
                    f"{what}: dimension {i} ({name!r}) has size {shape[i]}, which does not divide by "
                    f"mesh axes {axes} of total size {size} (mesh {dict(mesh.shape)}); change the mesh "
                    f"shape, the model size, or the rule for {name!r}")
        used.update(axes)
        spec.append(_entry(axes))
    return P(*spec)


def tree_shardings(axes_tree, shapes_tree, mesh: Mesh, rules):
    """NamedShardings for a pytree of arrays given a same-structured tree of logical-axis tuples."""
    def one(path, axes, x):
        name = jax.tree_util.keystr(path)
        if len(axes) != len(x.shape):
            raise ValueError(f"{name}: logical axes {axes} do not match shape {x.shape}")
        return NamedSharding(mesh, logical_to_spec(axes, rules, mesh, x.shape, what=name))
    return jax.tree_util.tree_map_with_path(one, axes_tree, shapes_tree,
                                            is_leaf=lambda a: isinstance(a, tuple))


# Activation constraints ------------------------------------------------------------------------
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("hllm_jax_sharding", default=None)


@contextlib.contextmanager
def use_rules(mesh: Mesh | None, rules):
    """Within this context (entered inside a traced function), ``constrain`` is active."""
    token = _ACTIVE.set(None if mesh is None else (mesh, _rules_dict(rules)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` from logical names; a no-op outside ``use_rules``.

    Dimensions that do not divide their mesh axes are left unconstrained (activations such as a
    batch of 4 sequences on an 8-way data axis are legal; XLA pads them).
    """
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    spec = []
    used: set[str] = set()
    for dim, name in zip(x.shape, logical_axes):
        axes = _free_axes(name if name in rules else None, rules, used, mesh)
        if axes and dim % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            spec.append(_entry(axes))
        else:
            spec.append(None)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))
