"""`raylpclip bench ingest`'s config, its limits, and where each route's timing window ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raylpclip.bench.cpu_pinning import usable_cpus
from raylpclip.config import ConfigError, DataConfig, RayConfig


@dataclass
class SyntheticShardsConfig:
    """Shards generated when `data.train` is empty (reused on the next run with the same values)."""

    # ~8 s of timed steady flow per route at 64 px, after the warm-up and the untimed tail.
    samples: int = 80000
    samples_per_shard: int = 2500
    # Side of the stored JPEGs; `data.image_size` is what the routes resize to. Web images are several
    # times the training size (512: where `data.jpeg_draft` decodes at 1/4 or 1/8 scale for 64 px).
    image_size: int = 64
    seed: int = 0


@dataclass
class IngestBenchConfig:
    name: str = "bench-ingest"
    output_dir: str = "runs"
    cpus: int = 0  # CPUs every route gets (DataLoader workers, decode-limit multiplier); 0: all usable cores
    batch_size: int = 128  # one Train worker's batch
    warmup_batches: int = 4  # per route, not timed; timing starts when the last of them arrives
    untimed_tail: float = 0.3  # the epoch's last part, untimed: Ray Data's read-ahead drains there (bench/ingest.py)
    rounds: int = 2  # each route this many times, interleaved; the best of each counts (one round varies by ~10%)
    reference_samples: int = 4000  # samples (the first, in shard order) the in-memory plain loops decode
    tokenizer: str = ""  # local tokenizer directory; empty: a BPE trained on the shards' captions
    vocab_size: int = 1024
    synthetic: SyntheticShardsConfig = field(default_factory=SyntheticShardsConfig)
    data: DataConfig = field(default_factory=DataConfig)  # the training pipeline's settings, as in pretrain
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def check(cfg: IngestBenchConfig) -> None:
    """Bench-specific limits (load_config has checked the shared sections)."""
    if cfg.cpus < 0 or cfg.cpus > usable_cpus():
        raise ConfigError(f"config key 'cpus': got {cfg.cpus}, expected 0 (all) to {usable_cpus()} (usable cores here)")
    counts = {"batch_size": cfg.batch_size, "warmup_batches": cfg.warmup_batches, "rounds": cfg.rounds,
              "reference_samples": cfg.reference_samples, "synthetic.image_size": cfg.synthetic.image_size,
              "synthetic.samples": cfg.synthetic.samples, "synthetic.samples_per_shard": cfg.synthetic.samples_per_shard}
    for key, value in counts.items():
        if value < 1:
            raise ConfigError(f"config key '{key}': got {value}, expected >= 1")
    if not 0 <= cfg.untimed_tail < 1:
        raise ConfigError(f"config key 'untimed_tail': got {cfg.untimed_tail}, expected a fraction in [0, 1)")
    if not cfg.data.train:
        timed_batches_for(cfg.synthetic.samples, cfg)


def timed_batches_for(samples: int, cfg: IngestBenchConfig) -> int:
    """The last timed batch of the Train-worker routes: the full batches of an epoch, less the untimed
    tail (Ray Data's decoded read-ahead drains there) and the batches the shuffle buffer hands out at
    the end without waiting for decoding."""
    shuffle_tail = -(-cfg.data.shuffle_buffer // cfg.batch_size)
    drain_tail = int(samples * cfg.untimed_tail) // cfg.batch_size
    last = samples // cfg.batch_size - drain_tail - shuffle_tail
    if last <= cfg.warmup_batches:
        raise ConfigError(f"config key 'batch_size': {samples} samples in batches of {cfg.batch_size} leave no timed "
                          f"batch after {cfg.warmup_batches} warm-up batches, {drain_tail} batches of untimed tail "
                          f"(untimed_tail={cfg.untimed_tail}) and {shuffle_tail} batches of shuffle buffer "
                          f"(data.shuffle_buffer={cfg.data.shuffle_buffer})")
    return last
