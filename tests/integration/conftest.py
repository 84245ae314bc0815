"""Small synthetic shard sets shared by the Ray integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylpclip.data.shards import write_shards
from raylpclip.data.synthetic import SyntheticSpec, class_names, generate_samples

SPEC = SyntheticSpec()


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> dict[str, Path]:
    """Train shards in both img2dataset formats, and a labelled eval set covering all 36 classes."""
    root = tmp_path_factory.mktemp("shards")
    write_shards(generate_samples(1500, spec=SPEC, seed=0), str(root / "wds"), samples_per_shard=500)
    write_shards(generate_samples(1500, spec=SPEC, seed=0), str(root / "parquet"), fmt="parquet", samples_per_shard=500)
    write_shards(generate_samples(720, spec=SPEC, seed=9), str(root / "eval"), samples_per_shard=720)
    return {"webdataset": root / "wds", "parquet": root / "parquet", "eval": root / "eval"}


@pytest.fixture(scope="session")
def classnames() -> list[str]:
    return class_names(SPEC)


def small_run(shards: dict[str, Path], out: Path, *, name: str, fmt: str = "webdataset", steps: int = 20) -> list[str]:
    """Overrides for a short 2-worker run on the synthetic shards."""
    return [
        f"data.train={shards[fmt]}", f"data.eval={shards['eval']}", f"output_dir={out}",
        f"name={name}", f"train.steps={steps}", "train.checkpoint_every=10", "train.log_every=5",
        "train.batch_size=32", "model.vocab_size=400", "data.eval_max_samples=720",
    ]
