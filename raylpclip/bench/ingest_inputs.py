"""What every `bench ingest` route starts from: the shards (generated when none are given), their sample
count, the tokenizer, and the `BatchDecoder` arguments all routes share."""

from __future__ import annotations

import time
from typing import Any, Sequence

from raylpclip.bench.ingest_bench_config import IngestBenchConfig
from raylpclip.config import ConfigError, DataConfig
from raylpclip.data.metadata import iter_records, sample_captions
from raylpclip.data.shard_files import read_stats, resolve_shards
from raylpclip.data.shard_writer import write_shards
from raylpclip.data.synthetic import SyntheticSpec, generate_samples
from raylpclip.models.bpe_tokenizer import load_tokenizer, train_tokenizer


def synthetic_shards(cfg: IngestBenchConfig) -> list[str]:
    """Generate the synthetic shards once per (samples, size, seed); later runs reuse them."""
    syn = cfg.synthetic
    out = cfg.run_dir / "data" / f"synthetic-{syn.samples}x{syn.image_size}px-seed{syn.seed}"
    if read_stats(str(out)) == syn.samples:
        return resolve_shards(str(out), "webdataset")[0]
    t0 = time.perf_counter()
    samples = generate_samples(syn.samples, spec=SyntheticSpec(image_size=syn.image_size), seed=syn.seed)
    paths = write_shards(samples, str(out), samples_per_shard=syn.samples_per_shard)
    print(f"[raylpclip] wrote {syn.samples} synthetic samples ({syn.image_size}px) in {len(paths)} shards to {out} "
          f"({time.perf_counter() - t0:.1f}s)", flush=True)
    return paths


def bench_shards(cfg: IngestBenchConfig) -> list[str]:
    if not cfg.data.train:
        return synthetic_shards(cfg)
    files, fmt = resolve_shards(cfg.data.train, cfg.data.format)
    if fmt != "webdataset":
        # The DataLoader route reads tars with tarfile, the standard route this benchmark compares with.
        raise ConfigError(f"config key 'data.train': bench ingest needs webdataset (.tar) shards, got {fmt}")
    return files


def count_samples(files: Sequence[str]) -> int:
    """From the `_stats.json` files img2dataset writes; a scan of the tars when they are missing."""
    counted = read_stats(list(files))
    return counted if counted is not None else sum(1 for _ in iter_records(files, fmt="webdataset"))


def bench_tokenizer(cfg: IngestBenchConfig, files: Sequence[str]):
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    captions = sample_captions(files, fmt="webdataset", limit=20000)
    if not captions:
        raise ValueError(f"no captions in the shards {list(files)[:3]}... to train a tokenizer on")
    return train_tokenizer(captions, vocab_size=cfg.vocab_size, out_dir=str(cfg.run_dir / "tokenizer"))


def decoder_kwargs(data: DataConfig, tokenizer) -> dict[str, Any]:
    """BatchDecoder's arguments for training batches, exactly as `runtime/data/decode_pool.decoded` passes them."""
    return dict(tokenizer=tokenizer, image_size=data.image_size, context_length=data.context_length, train=True,
                aug_scale_min=data.aug_scale_min, seed=data.shuffle_seed, jpeg_draft=data.jpeg_draft)
