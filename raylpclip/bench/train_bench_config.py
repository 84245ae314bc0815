"""`raylpclip bench train`'s config (a pretraining config plus a `bench` section), its limits, and the
step layout of a pipeline run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from raylpclip.bench.cpu_pinning import usable_cpus
from raylpclip.config import ConfigError, PretrainConfig


@dataclass
class TrainBenchSection:
    cpus: int = 0  # cores the bench (and a local Ray it starts) is pinned to; 0: all usable cores
    threads: int = 0  # torch threads of the 1-worker run and of the plain loop (2 workers: half each); 0: cpus
    rounds: int = 2  # each measurement this many times, interleaved; the best counts
    warmup_steps: int = 5  # pipeline runs: steps not timed (actors start, buffers fill)
    timed_steps: int = 20  # pipeline runs: steps timed
    windows: int = 3  # plain loop: PSD/CLIP window pairs per round
    window_steps: int = 6  # plain loop: steps per window, the first of which is its untimed anchor
    memory_batches: int = 4  # distinct in-memory batches the plain loop cycles through
    checkpoints: int = 2  # checkpoints saved and timed after the 1-worker run's timed steps
    two_workers: bool = True  # also the 2-worker pipeline (two_worker_ratio)
    # Ray Data's object-store budget in the pipeline runs, in global batches of decoded samples (0: Ray's
    # default). It bounds the read-ahead, so that the timed steps see the steady state of a long run,
    # decoding at the pace of training, not a small data set decoded whole before timing began (what
    # Ray's default budget does with the few thousand samples a bench run consumes).
    data_buffer_batches: int = 16
    # > 0: the plain loop also times windows of the PSD step with model.patch_dropout at this value (beside the
    # config's own, usually 0) and the vision tower alone at both: patch_dropout_step_ratio, _vision_ratio.
    patch_dropout: float = 0.0
    # True: every round also runs the 2-worker pipeline with train.parallelism=fsdp (the config's own run is the
    # ddp one): fsdp_vs_ddp_ratio (samples/s) and the peak memory and parameter + optimizer bytes per worker of each.
    fsdp: bool = False
    synthetic_samples: int = 0  # shards generated when data.train is empty; 0: enough for every run's steps
    synthetic_image_size: int = 64


@dataclass
class TrainBenchConfig(PretrainConfig):
    name: str = "bench-train"
    bench: TrainBenchSection = field(default_factory=TrainBenchSection)


def check(cfg: TrainBenchConfig) -> None:
    """Bench limits (load_config has checked the pretraining sections)."""
    b = cfg.bench
    if b.cpus < 0 or b.cpus > usable_cpus():
        raise ConfigError(f"config key 'bench.cpus': got {b.cpus}, expected 0 (all) to {usable_cpus()} (usable cores here)")
    for key in ("rounds", "timed_steps", "windows", "memory_batches"):
        if getattr(b, key) < 1:
            raise ConfigError(f"config key 'bench.{key}': got {getattr(b, key)}, expected >= 1")
    for key in ("threads", "warmup_steps", "checkpoints", "synthetic_samples", "data_buffer_batches"):
        if getattr(b, key) < 0:
            raise ConfigError(f"config key 'bench.{key}': got {getattr(b, key)}, expected >= 0")
    if not 0.0 <= b.patch_dropout <= 0.9:
        raise ConfigError(f"config key 'bench.patch_dropout': got {b.patch_dropout}, expected 0 (off) to 0.9")
    if b.fsdp and (not b.two_workers or cfg.train.parallelism != "ddp"):
        raise ConfigError("config key 'bench.fsdp': compares a 2-worker fsdp run with the 2-worker ddp run; it needs "
                          "bench.two_workers=true and train.parallelism=ddp")
    if b.window_steps < 2:
        raise ConfigError(f"config key 'bench.window_steps': got {b.window_steps}, expected >= 2 (an anchor and a timed step)")
    if b.warmup_steps < 1:
        raise ConfigError("config key 'bench.warmup_steps': expected >= 1 (the first step anchors the timing)")
    threads = bench_threads(cfg)
    if b.two_workers and not cfg.train.use_gpu and threads < 2:
        raise ConfigError(f"config key 'bench.threads': 2 workers need >= 2 threads to share, got {threads}")
    for workers in (1, 2) if b.two_workers else (1,):
        parts = workers * cfg.optim.accum_steps
        if cfg.train.batch_size % parts or cfg.train.batch_size // parts < 2:
            raise ConfigError(f"config key 'train.batch_size': {cfg.train.batch_size} must split into >= 2 samples per "
                              f"micro-batch over {workers} worker(s) x optim.accum_steps={cfg.optim.accum_steps}")


def bench_threads(cfg: TrainBenchConfig) -> int:
    return cfg.bench.threads or cfg.bench.cpus or usable_cpus()


def run_steps(b: TrainBenchSection) -> int:
    """Steps of a pipeline run: warm-up, timed, then two per timed checkpoint and the final step."""
    return b.warmup_steps + b.timed_steps + 2 * b.checkpoints + 1


def save_steps(b: TrainBenchSection) -> list[int]:
    end = b.warmup_steps + b.timed_steps
    return [end + 2 * (i + 1) for i in range(b.checkpoints)]


def pretrain_part(cfg: TrainBenchConfig) -> PretrainConfig:
    return PretrainConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(PretrainConfig)})
