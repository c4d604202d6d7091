"""Test setup: 8 simulated CPU devices (before JAX is imported) and the shared-data locations."""

import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE_TINY = SHARED / "reference" / "tiny"
sys.path.insert(0, str(REPO))


@pytest.fixture
def tiny_case():
    if not (REFERENCE_TINY / "arrays.npz").exists():
        pytest.skip(f"golden case not found at {REFERENCE_TINY} (needs ../shared beside the repo)")
    return REFERENCE_TINY
