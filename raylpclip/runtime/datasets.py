"""Ray Data pipelines: shards -> decoded, augmented, tokenized batches, streamed, never materialised."""

from __future__ import annotations

import ray
from ray.data import Dataset, FileShuffleConfig

from raylpclip.config import DataConfig
from raylpclip.data.decode import BatchDecoder
from raylpclip.data.shards import resolve_shards


def read_shards(paths: list[str], *, fmt: str, shuffle_seed: int | None = None) -> Dataset:
    """Stream img2dataset shards. Shard order is reshuffled every epoch when a seed is given."""
    shuffle = FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True) if shuffle_seed is not None else None
    if fmt == "webdataset":
        # decoder=None: members stay bytes; nothing from a shard is ever unpickled or torch.loaded.
        return ray.data.read_webdataset(paths, decoder=None, shuffle=shuffle)
    return ray.data.read_parquet(paths, shuffle=shuffle)


def decoded(ds: Dataset, *, cfg: DataConfig, tokenizer, train: bool, with_keys: bool = False) -> Dataset:
    """Decode/augment/tokenize in an autoscaling pool of CPU actors (one tokenizer per actor)."""
    return ds.map_batches(
        BatchDecoder,
        fn_constructor_kwargs=dict(
            tokenizer=tokenizer, image_size=cfg.image_size, context_length=cfg.context_length,
            train=train, aug_scale_min=cfg.aug_scale_min, seed=cfg.shuffle_seed, with_keys=with_keys,
        ),
        batch_size=cfg.decode_batch_size,
        num_cpus=cfg.decode_cpus,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.decode_concurrency),
    )


def train_dataset(cfg: DataConfig, *, tokenizer) -> Dataset:
    files, fmt = resolve_shards(cfg.train, cfg.format)
    return decoded(read_shards(files, fmt=fmt, shuffle_seed=cfg.shuffle_seed), cfg=cfg, tokenizer=tokenizer, train=True)


def eval_dataset(cfg: DataConfig, *, tokenizer) -> Dataset:
    files, fmt = resolve_shards(cfg.eval, cfg.format)
    ds = read_shards(files, fmt=fmt).limit(cfg.eval_max_samples)
    return decoded(ds, cfg=cfg, tokenizer=tokenizer, train=False)
