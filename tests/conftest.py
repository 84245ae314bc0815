"""Shared fixtures: one Ray instance for the whole session (each start costs 5-60 s here), the real
data folder beside the repo (skipped cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Ray Train's controller polls its workers every 2 s, and a worker's report waits for that poll: short
# test runs that report often spend much of their time waiting. Set before any Ray process starts, so
# that every instance the tests start (in-process or in a subprocess) polls faster.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
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
    from raylpclip.runtime.cluster.session import ensure_ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    ensure_ray(RayConfig(num_cpus=8))
    yield ray
    ray.shutdown()


TINY_CLASSES = ["red circle", "green square", "blue triangle"]


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A randomly initialised 1-layer CLIP (32 px) and a BPE tokenizer, saved with save_pretrained: what
    `load_encoder` and every classifier command take as a local model directory."""
    import torch

    from raylpclip.models.bpe_tokenizer import train_tokenizer
    from raylpclip.models.clip import build_clip, export_clip

    out = tmp_path_factory.mktemp("tiny_clip")
    captions = [f"a photo of a {name}." for name in TINY_CLASSES] * 20 + ["a blurry sketch of it."] * 20
    tokenizer = train_tokenizer(captions, vocab_size=300, out_dir=str(out / "tok"))
    torch.manual_seed(0)
    model = build_clip("tiny", vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       overrides={"vision.image_size": 32, "vision.patch_size": 8, "vision.num_hidden_layers": 1,
                                  "text.num_hidden_layers": 1})
    export_clip(model, str(out / "model"), tokenizer=tokenizer)
    return out / "model"
