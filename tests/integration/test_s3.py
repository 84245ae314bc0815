"""Training from a real S3 API: shards written to a bucket on a local moto_server, read through s3fs,
mixed with a local parquet source by weight."""

from __future__ import annotations

import pytest
import s3fs

from raylpclip.config import PretrainConfig, S3Config, load_config
from raylpclip.data.shard_files import read_stats, resolve_shards
from raylpclip.data.shard_writer import write_shards
from raylpclip.data.storage import configure_s3
from raylpclip.data.synthetic import SyntheticSpec, generate_samples
from raylpclip.runtime.train.pretrain_driver import run_pretrain

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_server}).mkdir("shards")
    configure_s3(S3Config(endpoint_url=s3_server))
    # 4 shards: 2 for each of the 2 decode actors, which then read them from S3 themselves (ReadPlan)
    write_shards(generate_samples(600, spec=SyntheticSpec(), seed=11), "s3://shards/wds", samples_per_shard=150)
    return "s3://shards/wds"


def test_listing_and_stats_over_s3(bucket):
    files, fmt = resolve_shards(bucket + "/{00000..00002}.tar")
    assert fmt == "webdataset" and files == [f"{bucket}/0000{i}.tar" for i in range(3)]
    assert read_stats(files) == 450 and read_stats(bucket) == 600
    with pytest.raises(FileNotFoundError, match="s3://shards/nothing"):
        resolve_shards("s3://shards/nothing")


@pytest.mark.slow  # ~45 s; by default test_faults_reads.py trains from S3 (through failing GETs)
def test_train_from_s3_mixed_with_local_parquet(ray_session, s3_server, bucket, synthetic_shards, tmp_path):
    overrides = [
        f"data.sources=[{{path: '{bucket}', weight: 3}}, {{path: '{synthetic_shards['parquet']}', weight: 1}}]",
        f"data.s3.endpoint_url={s3_server}", f"data.eval={synthetic_shards['eval']}", "data.eval_max_samples=360",
        f"output_dir={tmp_path}", "name=s3", "train.steps=10", "train.checkpoint_every=5", "train.log_every=5",
        "train.batch_size=32", "model.vocab_size=400",
    ]
    summary = run_pretrain(load_config(PretrainConfig, None, overrides))
    assert summary["step"] == 10 and summary["samples_seen"] == 320
    assert summary["train_samples"] == 600 + 1500  # both sources' _stats.json, one of them on S3
    assert summary["skipped"] == {} and summary["num_classes"] == 36
