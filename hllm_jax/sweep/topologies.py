"""TPU topologies by Cloud name (``v5p-128``) or JAX topology string (``v5p:4x4x4``), with chip specs.

Cloud names count TensorCores for v4 and v5p (2 per chip: ``v5p-128`` = 64 chips) and chips for
v5e and v6e (``v5e-16`` = 16 chips). Chip specs are the public per-chip figures (bf16 peak,
HBM capacity and bandwidth) used for the roofline estimate.
"""

from __future__ import annotations

import dataclasses
import math
import re

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
    generation: str
    peak_flops: float     # dense bf16 FLOP/s per chip
    hbm_bytes: float      # HBM per chip
    hbm_bandwidth: float  # bytes/s per chip
    dims: int             # topology dimensions (3 = torus x*y*z, 2 = x*y)


CHIPS = {
    "v4": Chip("v4", 275e12, 32 * GiB, 1.2e12, 3),
    "v5e": Chip("v5e", 197e12, 16 * GiB, 8.1e11, 2),
    "v5p": Chip("v5p", 459e12, 95e9, 2.765e12, 3),
    "v6e": Chip("v6e", 918e12, 32 * GiB, 1.64e12, 2),
}

# Cloud name -> JAX topology string (the shapes Cloud provisions for these slice sizes).
CLOUD_NAMES = {
    "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4", "v4-64": "v4:2x4x4", "v4-128": "v4:4x4x4",
    "v4-256": "v4:4x4x8", "v4-512": "v4:4x8x8",
    "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4", "v5p-64": "v5p:2x4x4",
    "v5p-128": "v5p:4x4x4", "v5p-256": "v5p:4x4x8", "v5p-512": "v5p:4x8x8",
    "v5e-1": "v5e:1x1", "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4", "v5e-32": "v5e:4x8",
    "v5e-64": "v5e:8x8", "v5e-128": "v5e:8x16", "v5e-256": "v5e:16x16",
    "v6e-1": "v6e:1x1", "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4", "v6e-32": "v6e:4x8",
    "v6e-64": "v6e:8x8", "v6e-128": "v6e:8x16", "v6e-256": "v6e:16x16",
}
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+)+)$")


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str        # as given
    jax_name: str    # v5p:4x4x4
    chip: Chip
    chips: int


def resolve(name: str) -> Topology:
    """A Topology for a Cloud name or a JAX topology string; unknown names list the valid ones."""
    key = name.strip().lower()
    jax_name = CLOUD_NAMES.get(key, key)
    m = _TOPOLOGY.match(jax_name)
    if not m:
        raise ValueError(f"unknown TPU topology {name!r}. Cloud names: {', '.join(CLOUD_NAMES)}; or a JAX "
                         f"topology string GEN:AxB[xC] with GEN in {', '.join(CHIPS)} (e.g. v5p:4x4x4, v5e:4x4)")
    gen, shape = m.group(1), [int(s) for s in m.group(2).split("x")]
    chip = CHIPS[gen]
    if len(shape) != chip.dims:
        raise ValueError(f"TPU topology {name!r}: {gen} topologies have {chip.dims} dimensions "
                         f"(e.g. {next(v for v in CLOUD_NAMES.values() if v.startswith(gen + ':'))}), got {len(shape)}")
    return Topology(name=name, jax_name=jax_name, chip=chip, chips=math.prod(shape))


def devices(topology: Topology):
    """Abstract devices of a topology (needs libtpu: ``pip install -r requirements-tpu.txt``)."""
    import os
    # Compiling for a topology loads libtpu without a TPU; allow it beside other JAX processes.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.jax_name)
    except Exception as e:  # noqa: BLE001 - libtpu missing or refusing: say what to do
        raise RuntimeError(f"cannot describe TPU topology {topology.jax_name}: {e}. AOT compilation needs libtpu: "
                           f"pip install -r requirements-tpu.txt") from e
    return desc.devices
