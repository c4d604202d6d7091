"""Ahead-of-time compilation of the fused train step for a TPU topology, on any machine (MaxText's
train_compile idea): per-chip memory, fits-in-HBM, model FLOPs, a roofline step time and MFU,
and the largest per-device batch that fits.

Batch shapes (worst case, nothing deduplicated): per device ``b`` sequences of ``S + 1`` items
and ``m`` negatives (the negatives are shared by the whole global batch: every user position is
scored against all ``M = m * devices`` of them, as the reference's all-gathered negatives);
every item has ``max_text_len`` tokens plus the [ITEM] slot, packed ``row_len // item_len`` per row.
No gradient accumulation: the global batch is ``b * devices``.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from hllm_jax import flops as flops_lib
from hllm_jax import sharding, sizes
from hllm_jax.batch import PackedItems, TrainBatch
from hllm_jax.sweep.topologies import Topology, devices
from hllm_jax.train import state as state_lib
from hllm_jax.train.step import build_train_step

# Forward passes over the weights per step: forward, backward, plus the recomputed forward.
_REMAT_RECOMPUTE = {"none": 0.0, "full": 1.0, "dots": 0.0, "dots_no_batch": 0.0}


def batch_shapes(*, per_device_batch: int, shards: int, seq_len: int, negatives_per_device: int,
                 item_len: int, row_len: int) -> dict:
    """Global static shapes of one step's batch (see the module docstring)."""
    b = per_device_batch * shards
    m = negatives_per_device * shards
    per_row = row_len // item_len
    items_per_device = per_device_batch * (seq_len + 1) + negatives_per_device
    rows = math.ceil(items_per_device / per_row) * shards
    return dict(batch=b, seq_len=seq_len, negatives=m, unique=items_per_device * shards, rows=rows,
                row_len=row_len, item_len=item_len)


def abstract_batch(shapes: dict) -> TrainBatch:
    i32, sds = jnp.int32, jax.ShapeDtypeStruct
    r, l, u = shapes["rows"], shapes["row_len"], shapes["unique"]
    items = PackedItems(tokens=sds((r, l), i32), segments=sds((r, l), i32), positions=sds((r, l), i32),
                        item_slot=sds((r, l), jnp.bool_), token_item=sds((r, l), i32), item_last=sds((u,), i32),
                        item_ids=sds((u,), i32))
    return TrainBatch(items=items, seq=sds((shapes["batch"], shapes["seq_len"] + 1), i32),
                      seq_mask=sds((shapes["batch"], shapes["seq_len"]), jnp.bool_),
                      negatives=sds((shapes["negatives"],), i32))


def _is_oom(err: Exception) -> bool:
    s = str(err)
    return "RESOURCE_EXHAUSTED" in s or "exceeds available HBM" in s or "Ran out of memory" in s


def roofline(model_cfg, shapes: dict, topology: Topology, remat: str, compute_bytes: int = 2) -> dict:
    """Model FLOPs per step and a roofline estimate of the step time and MFU on ``topology``.

    time = max(compute, HBM traffic) per chip. Compute: model FLOPs plus the rematerialised
    forward of the layers. HBM traffic: the (gathered) weights read once per pass in the compute
    dtype, the optimiser update of this chip's shard (read param, grad, 2 moments; write param,
    2 moments; f32), and each layer's saved input written and read. Communication and other
    activations are not modelled, so the MFU is an upper bound.
    """
    item, user = model_cfg.item, model_cfg.user
    n_items = shapes["unique"]
    model_flops = flops_lib.hllm_train_flops(
        item, user, item_lengths=np.full(n_items, shapes["item_len"]), batch=shapes["batch"],
        seq_len=shapes["seq_len"], num_negatives=shapes["negatives"], proj=model_cfg.item_proj)
    item_tokens, user_tokens = n_items * shapes["item_len"], shapes["batch"] * shapes["seq_len"]
    recompute = _REMAT_RECOMPUTE.get(remat, 0.0)  # an upper bound: JAX skips unread recomputation
    fwd_layers = (item_tokens * flops_lib.matmul_flops_per_token(item)
                  + user_tokens * flops_lib.matmul_flops_per_token(user))
    hw_flops = model_flops + recompute * fwd_layers
    chips = topology.chips
    counts = sizes.hllm_param_counts(model_cfg)
    weight_bytes = counts["total"] * compute_bytes * (2 + recompute)
    opt_bytes = counts["total"] / chips * 4 * 7
    act_bytes = 2 * compute_bytes * (item.layers * item_tokens * item.hidden + user.layers * user_tokens * user.hidden) / chips
    bytes_chip = weight_bytes + opt_bytes + act_bytes
    t_compute = hw_flops / chips / topology.chip.peak_flops
    t_memory = bytes_chip / topology.chip.hbm_bandwidth
    t = max(t_compute, t_memory)
    return dict(model_flops=model_flops, hardware_flops=hw_flops, model_flops_per_chip=model_flops / chips,
                roofline_compute_s=t_compute, roofline_memory_s=t_memory, roofline_step_s=t,
                roofline_bound="compute" if t_compute >= t_memory else "memory",
                roofline_mfu=model_flops / chips / (t * topology.chip.peak_flops),
                item_tokens_per_step=item_tokens)


def compile_point(run_config, topology: Topology, per_device_batch: int, *, remat: str, vocab: int,
                  negatives_per_device: int, row_len: int, mesh_shape=(1, -1, 1)) -> dict:
    """Compile one point's fused train step for ``topology``; a result row (never raises for an
    out-of-memory or a compile error: they are recorded)."""
    from hllm_jax.train import setup
    cfg = run_config.copy_and_resolve_references()
    cfg.model.remat = remat
    model_cfg = setup.model_config(cfg, vocab, 2)
    item_len = int(cfg.data.max_text_len) + model_cfg.item_emb_token_n
    mesh = sharding.make_mesh(tuple(mesh_shape), devices(topology))
    rules = setup.axis_rules(cfg)
    shards = sharding.batch_shards(mesh, rules)
    shapes = batch_shapes(per_device_batch=per_device_batch, shards=shards, seq_len=int(cfg.data.max_seq_len),
                          negatives_per_device=negatives_per_device, item_len=item_len, row_len=row_len)
    row = dict(topology=topology.jax_name, chips=topology.chips, per_device_batch=per_device_batch, remat=remat,
               mesh=dict(mesh.shape), dtype=cfg.model.dtype, hbm_per_chip=topology.chip.hbm_bytes,
               param_counts=sizes.hllm_param_counts(model_cfg), **shapes)
    row.update(roofline(model_cfg, shapes, topology, remat))
    tx = state_lib.make_optimizer(float(cfg.optim.lr), 1000, weight_decay=float(cfg.optim.weight_decay))
    t0 = time.time()
    try:
        graphdef, params, axes = state_lib.abstract_model(model_cfg)
        state = jax.eval_shape(lambda p: state_lib.create_state(p, tx), params)
        batch = abstract_batch(shapes)
        fns = build_train_step(graphdef, tx, state, axes, batch, mesh=mesh, rules=rules)
        lowered = fns.train.lower(state, batch)
        row["lower_seconds"] = time.time() - t0
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - recorded in the results, the sweep goes on
        row.update(compile_seconds=time.time() - t0, fits=False,
                   status="oom" if _is_oom(e) else "error", error=f"{type(e).__name__}: {str(e)[:1500]}")
        return row
    ma = compiled.memory_analysis()
    mem = dict(argument_bytes=ma.argument_size_in_bytes, output_bytes=ma.output_size_in_bytes,
               temp_bytes=ma.temp_size_in_bytes, alias_bytes=ma.alias_size_in_bytes,
               code_bytes=ma.generated_code_size_in_bytes)
    # Donated state: outputs alias the arguments, so the peak is arguments + temporaries + the rest.
    mem["peak_bytes"] = mem["argument_bytes"] + mem["temp_bytes"] + mem["output_bytes"] - mem["alias_bytes"]
    row.update(mem, compile_seconds=time.time() - t0, status="ok",
               fits=bool(mem["peak_bytes"] <= topology.chip.hbm_bytes))
    return row
