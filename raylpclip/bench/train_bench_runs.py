"""The two measurements `raylpclip bench train` compares, each one run: the compute limit (the plain loop
of bench/train_timing.py as a Ray task with the 1-worker run's threads) and the pipeline (the pretraining
TorchTrainer itself with the step clock put in). Ray does both through runtime/ (runtime/train/)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from raylpclip.bench.train_bench_config import TrainBenchConfig, pretrain_part, run_steps, save_steps
from raylpclip.bench.train_timing import arm_configs, compute_limit_task
from raylpclip.config import to_dict


def compute_limit(cfg: TrainBenchConfig, *, tokenizer, batch_ref, threads: int) -> dict:
    """One round of the plain loop on the in-memory batches of `batch_ref` (bench_support.premade_batch_ref),
    in a task that gets the workers' kind of process and, with `train.use_gpu`, a GPU."""
    # runtime/ loads Ray: imported when a run calls this, never when the bench is imported.
    from raylpclip.runtime.train.bench_support import run_as_task

    b = cfg.bench
    one = replace(pretrain_part(cfg), train=replace(cfg.train, num_workers=1, threads_per_worker=threads))
    bench = {"memory_batches": b.memory_batches, "threads": threads, "warmup_steps": b.warmup_steps,
             "windows": b.windows, "window_steps": b.window_steps, "patch_dropout": b.patch_dropout}
    return run_as_task(compute_limit_task, to_dict(one), tokenizer, batch_ref, bench,
                       num_cpus=threads if not cfg.train.use_gpu else cfg.train.cpus_per_worker,
                       num_gpus=1 if cfg.train.use_gpu else 0)


def pipeline(cfg: TrainBenchConfig, *, tokenizer, data, workers: int, threads: int, label: str, counter) -> list[dict]:
    """One run of the pretraining TorchTrainer itself (runtime/train/pretrain_driver.build_trainer: its
    datasets, its worker function with DDP, data streams, worker hooks' reports and checkpoints), `workers` x
    `threads`, with the step clock put in (engine/clock.clocked). Returns each rank's timing, memory and
    report figures."""
    from raylpclip.runtime.train.bench_support import data_options
    from raylpclip.runtime.train.pretrain_driver import build_trainer
    from raylpclip.runtime.train.trainer_factory import fit

    b = cfg.bench
    run = replace(arm_configs(pretrain_part(cfg))["psd"], name=label, output_dir=str(cfg.run_dir / "ray"),
                  data=replace(cfg.data, eval=""), train=replace(
                      cfg.train, num_workers=workers, threads_per_worker=threads, steps=run_steps(b), eval_every=0,
                      keep_checkpoints=1, cpus_per_worker=cfg.train.cpus_per_worker if cfg.train.use_gpu else float(threads)))
    spec = {"warmup_steps": b.warmup_steps, "timed_steps": b.timed_steps,
            "save_steps": save_steps(b) if workers == 1 else []}
    trainer = build_trainer(run, tokenizer=tokenizer, classnames=[], data=data, counter=counter,
                            bench=spec, data_options=data_options(buffer_bytes(cfg)))
    metrics = fit(trainer, label).metrics or {}
    if "bench" not in metrics:
        raise RuntimeError(f"bench run {label} finished without its timing report; see the worker logs above")
    return metrics["bench"]


def buffer_bytes(cfg: TrainBenchConfig) -> int:
    """`bench.data_buffer_batches` global batches of decoded samples (uint8 image, int64 ids and mask)."""
    per_sample = 3 * cfg.data.image_size ** 2 + 16 * cfg.data.context_length + 16
    return cfg.bench.data_buffer_batches * cfg.train.batch_size * per_sample


def storage_dir(cfg: TrainBenchConfig) -> Path:
    """Where the bench's runs keep their throwaway checkpoints without `ray.storage_path`."""
    return (cfg.run_dir / "ray").resolve()
