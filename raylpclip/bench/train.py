"""`raylpclip bench train [CONFIG.yaml] [key=value ...]`: the training pipeline against its compute limit.

The config is a pretraining config (`raylpclip bench train jobs/pretrain.yaml` measures that run's
model, batch and data) plus a `bench` section. Measured in one run, on the same CPUs, interleaved
round by round (compute limit, 1 worker, 2 workers; again) so that someone else's burst of work does
not land on one measurement only:

- compute limit: the very model, optimizer and PSD step (engine/setup.build_training, engine/loop
  run_loop, PretrainTask) in a plain torch loop over batches already in memory as tensors, in one
  process with the 1-worker run's threads (a Ray task, so it gets the workers' kind of process and,
  with `train.use_gpu`, a GPU; the loop itself uses no Ray). Windows of PSD (at full weight, ramp
  constant) alternate with windows of plain CLIP loss (a_max 0): `psd_overhead` is their step-time
  difference over the PSD step time. With `bench.patch_dropout=P`, windows of the PSD step at patch dropout
  P join them and the vision tower is timed alone at both settings (bench/vision_timing.py): the step's
  and the tower's speed-ups, `patch_dropout_step_ratio` and `patch_dropout_vision_ratio`.
- pipeline: shards -> Ray Data (read, decode actors) -> a TorchTrainer with 1 worker x `threads` and
  with 2 workers x `threads/2` (the same global batch), the real worker pieces (DDP wrapping, batch
  stream, RayHooks with its reports and checkpoints) with a clock around the loop's hooks. The first
  `warmup_steps` are not timed; after the timed steps a few checkpoints are saved and timed.

Rates are least-squares slopes of samples over step end times (bench/train_timing.py); the best round
of each measurement counts, every round is kept in summary.json with the load average beside it
(bench/train_bench_report.py). Ray is reached only through runtime/ (bench/train_bench_runs.py).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from typing import Any

from raylpclip.bench.benchmark import Benchmark
from raylpclip.bench.cpu_pinning import pin_cpus, usable_cpus
from raylpclip.bench.train_bench_config import TrainBenchConfig, bench_threads, check, pretrain_part, save_steps
from raylpclip.bench.train_bench_data import prepare
from raylpclip.bench.train_bench_report import format_table, summarize
from raylpclip.bench.train_bench_runs import compute_limit, pipeline, storage_dir
from raylpclip.bench.train_timing import pooled
from raylpclip.config import to_dict
from raylpclip.data.storage import configure_s3
from raylpclip.summary import write_summary


def run_train_bench(cfg: TrainBenchConfig) -> dict[str, Any]:
    # runtime/ loads Ray: imported when the bench runs, never when it is imported.
    from raylpclip.runtime.cluster import counters
    from raylpclip.runtime.cluster.session import ensure_ray
    from raylpclip.runtime.train.bench_support import premade_batch_ref

    start = time.perf_counter()
    check(cfg)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.ray.storage_path:
        shutil.rmtree(storage_dir(cfg), ignore_errors=True)  # earlier bench runs' throwaway checkpoints
    pin_cpus(cfg.bench.cpus)
    configure_s3(cfg.data.s3)
    cfg, data, tokenizer = prepare(cfg)
    threads, b = bench_threads(cfg), cfg.bench
    ensure_ray(cfg.ray)
    counter = counters.new_counter()
    batch_ref = premade_batch_ref(pretrain_part(cfg), tokenizer=tokenizer,
                                  micro=cfg.train.batch_size // cfg.optim.accum_steps, count=b.memory_batches)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rounds = []
    for i in range(b.rounds):
        # Interleaved: a burst of others' work on a shared machine hits one round, not one measurement.
        r: dict[str, Any] = {"load": os.getloadavg()[0]}
        r["limit"] = compute_limit(cfg, tokenizer=tokenizer, batch_ref=batch_ref, threads=threads)
        r["one"] = pipeline(cfg, tokenizer=tokenizer, data=data, workers=1, threads=threads,
                            label=f"{cfg.name}-{stamp}-r{i}-1w", counter=counter)
        if b.two_workers:
            r["two"] = pipeline(cfg, tokenizer=tokenizer, data=data, workers=2, threads=max(1, threads // 2),
                                label=f"{cfg.name}-{stamp}-r{i}-2w", counter=counter)
        if b.fsdp:
            sharded = replace(cfg, train=replace(cfg.train, parallelism="fsdp"))
            r["two_fsdp"] = pipeline(sharded, tokenizer=tokenizer, data=data, workers=2, threads=max(1, threads // 2),
                                     label=f"{cfg.name}-{stamp}-r{i}-2w-fsdp", counter=counter)
        rounds.append(r)
        print(f"[raylpclip] round {i + 1}/{b.rounds} (samples/s, load {r['load']:.1f}): compute limit "
              f"{cfg.train.batch_size / _pooled_step(r['limit']['psd']):.1f}, 1 worker {r['one'][0]['timed']['samples_per_s']:.1f}"
              + (f", 2 workers {r['two'][0]['timed']['samples_per_s']:.1f}" if b.two_workers else "")
              + (f", 2 fsdp workers {r['two_fsdp'][0]['timed']['samples_per_s']:.1f}" if b.fsdp else ""), flush=True)
    summary = summarize(rounds, batch=cfg.train.batch_size, threads=threads, saves=save_steps(b), use_gpu=cfg.train.use_gpu)
    summary.update(raw_rounds=rounds, cpus=b.cpus or usable_cpus(), model=cfg.model.preset, image_size=cfg.data.image_size,
                   psd=to_dict(cfg.psd), precision=cfg.train.precision, skipped=counters.totals(counter),
                   switches={k: getattr(cfg.train, k) for k in ("fused_adamw", "compile", "channels_last",
                                                                "grad_checkpointing", "ddp_bucket_cap_mb", "async_checkpoint",
                                                                "fsdp_reshard_after_forward", "fsdp_cpu_offload")},
                   date=time.strftime("%Y-%m-%d %H:%M"), wall_s=time.perf_counter() - start,
                   run_dir=str(cfg.run_dir.resolve()))
    write_summary(cfg.run_dir, summary)
    return summary


def _pooled_step(windows: list[dict]) -> float:
    return pooled(windows)["step_time_s"]


BENCHMARK = Benchmark(config=TrainBenchConfig, run=run_train_bench, format_table=format_table)
