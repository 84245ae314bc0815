"""Shared fixtures: one Ray instance for the whole session (each start costs 5-60 s here), the real
data folder beside the repo (skipped cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every integration test, loopback only, token auth left on."""
    import ray

    from raylpclip.config import RayConfig
    from raylpclip.runtime.session import ensure_ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    ensure_ray(RayConfig(num_cpus=8))
    yield ray
    ray.shutdown()
