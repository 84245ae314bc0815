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
  difference over the PSD step time.
- pipeline: shards -> Ray Data (read, decode actors) -> a TorchTrainer with 1 worker x `threads` and
  with 2 workers x `threads/2` (the same global batch), the real worker pieces (DDP wrapping, batch
  stream, RayHooks with its reports and checkpoints) with a clock around the loop's hooks. The first
  `warmup_steps` are not timed; after the timed steps a few checkpoints are saved and timed.

Rates are least-squares slopes of samples over step end times (bench/train_timing.py); the best round
of each measurement counts, every round is kept in summary.json with the load average beside it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from raylpclip.bench.ingest import pin_cpus, usable_cpus
from raylpclip.config import ConfigError, PretrainConfig, from_dict, load_config, to_dict
from raylpclip.data.shards import read_stats, resolve_shards, write_shards
from raylpclip.data.synthetic import SyntheticSpec, generate_samples
from raylpclip.summary import write_summary

# The targets on 2 CPUs; printed beside the figures, never asserted.
TARGETS = {"ratio_vs_compute_limit": 0.9, "data_wait_fraction": 0.05, "psd_overhead": 0.03, "two_worker_ratio": 0.85}


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


# ---------------------------------------------------------------------------------------------------
# Data


def needed_samples(cfg: TrainBenchConfig) -> int:
    """Rows one pipeline run consumes, plus the shuffle buffer, the pipeline's look-ahead and a margin.
    With this many the timed steps never cross an epoch end (where the pipeline restarts and the wait
    would be the data set's smallness, not the pipeline's), and the decode actors still have rows to
    decode at the last timed step, as in a long run: a data set that the look-ahead reaches the end of
    is decoded whole early, and the later steps are timed without decoding beside them."""
    consumed = (run_steps(cfg.bench) + 4) * cfg.train.batch_size + cfg.data.shuffle_buffer
    return consumed + lookahead_samples(cfg)


def lookahead_samples(cfg: TrainBenchConfig) -> int:
    """Rows Ray Data may hold decoded or being decoded ahead of the trainer: the object-store budget
    (`bench.data_buffer_batches`) and the decode actors' queued batches."""
    from raylpclip.runtime.data.decode_pool import DECODE_TASKS_PER_ACTOR

    queued = cfg.data.decode_concurrency * DECODE_TASKS_PER_ACTOR * cfg.data.decode_rows()
    return cfg.bench.data_buffer_batches * cfg.train.batch_size + queued


def synthetic_shards(cfg: TrainBenchConfig) -> str:
    """Generated once per (samples, size); later runs reuse them."""
    n = cfg.bench.synthetic_samples or -(-needed_samples(cfg) // 1000) * 1000
    size = cfg.bench.synthetic_image_size
    out = cfg.run_dir / "data" / f"synthetic-{n}x{size}px"
    if read_stats(str(out)) != n:
        t0 = time.perf_counter()
        write_shards(generate_samples(n, spec=SyntheticSpec(image_size=size), seed=0), str(out), samples_per_shard=1000)
        print(f"[raylpclip] wrote {n} synthetic samples ({size}px) to {out} ({time.perf_counter() - t0:.1f}s)", flush=True)
    return str(out)


def note_small_data(cfg: TrainBenchConfig) -> None:
    counts = [read_stats(resolve_shards(s.path, s.format)[0]) for s in cfg.data.train_sources()]
    if None not in counts and sum(counts) < needed_samples(cfg):
        print(f"[raylpclip] note: {sum(counts)} training samples < {needed_samples(cfg)} a run consumes: the timed "
              "steps cross an epoch end, and its restart counts as data wait", flush=True)


def premade_batches(cfg: PretrainConfig, *, tokenizer, micro: int, count: int) -> dict[str, np.ndarray]:
    """`count` micro-batches of rows decoded by the training pipeline itself (first source), as numpy."""
    from raylpclip.runtime.data.decode_pool import source_dataset

    ds = source_dataset(cfg.data.train_sources()[0], cfg.data, tokenizer=tokenizer)
    batch = ds.take_batch(batch_size=micro * count)
    got = len(next(iter(batch.values())))
    if got < micro * count:
        raise ValueError(f"training data gave {got} samples, the plain loop needs {micro * count} "
                         f"(bench.memory_batches={count} x micro-batch {micro})")
    return batch


# ---------------------------------------------------------------------------------------------------
# The two Ray edges: the plain loop as a task, the pipeline as a TorchTrainer


def _compute_limit_task(config: dict, tokenizer, batch: dict, bench: dict) -> dict:
    import torch

    from raylpclip.bench.train_timing import in_memory_windows

    cfg = from_dict(PretrainConfig, config)
    micro = cfg.train.batch_size // cfg.optim.accum_steps
    tensors = [{k: torch.from_numpy(np.array(v[i * micro:(i + 1) * micro])) for k, v in batch.items()}  # own, writable
               for i in range(bench["memory_batches"])]
    device = torch.device("cuda") if cfg.train.use_gpu and torch.cuda.is_available() else torch.device("cpu")
    return in_memory_windows(cfg, tokenizer=tokenizer, batches=tensors, threads=bench["threads"],
                             warmup_steps=bench["warmup_steps"], windows=bench["windows"],
                             window_steps=bench["window_steps"], device=device)


def compute_limit(cfg: TrainBenchConfig, *, tokenizer, batch_ref, threads: int) -> dict:
    import ray

    b = cfg.bench
    one = replace(pretrain_part(cfg), train=replace(cfg.train, num_workers=1, threads_per_worker=threads))
    task = ray.remote(_compute_limit_task).options(num_cpus=threads if not cfg.train.use_gpu else cfg.train.cpus_per_worker,
                                                   num_gpus=1 if cfg.train.use_gpu else 0)
    bench = {"memory_batches": b.memory_batches, "threads": threads, "warmup_steps": b.warmup_steps,
             "windows": b.windows, "window_steps": b.window_steps}
    return ray.get(task.remote(to_dict(one), tokenizer, batch_ref, bench))


def pipeline(cfg: TrainBenchConfig, *, tokenizer, data, workers: int, threads: int, label: str, counter) -> list[dict]:
    """One run of the pretraining TorchTrainer itself (runtime/pretrain.build_trainer: its datasets, its
    worker function with DDP, data streams, RayHooks reports and checkpoints), `workers` x `threads`,
    with the step clock put in (engine/clock.clocked). Returns each rank's timing, memory and report figures."""
    from raylpclip.bench.train_timing import arm_configs
    from raylpclip.runtime.train.pretrain_driver import build_trainer, fit

    b = cfg.bench
    run = replace(arm_configs(pretrain_part(cfg))["psd"], name=label, output_dir=str(cfg.run_dir / "ray"),
                  data=replace(cfg.data, eval=""), train=replace(
                      cfg.train, num_workers=workers, threads_per_worker=threads, steps=run_steps(b), eval_every=0,
                      keep_checkpoints=1, cpus_per_worker=cfg.train.cpus_per_worker if cfg.train.use_gpu else float(threads)))
    spec = {"warmup_steps": b.warmup_steps, "timed_steps": b.timed_steps,
            "save_steps": save_steps(b) if workers == 1 else []}
    trainer = build_trainer(run, tokenizer=tokenizer, classnames=[], data=data, counter=counter,
                            extra_loop_config={"bench": spec}, data_options=data_options(buffer_bytes(cfg)))
    metrics = fit(trainer, label).metrics or {}
    if "bench" not in metrics:
        raise RuntimeError(f"bench run {label} finished without its timing report; see the worker logs above")
    return metrics["bench"]


def buffer_bytes(cfg: TrainBenchConfig) -> int:
    """`bench.data_buffer_batches` global batches of decoded samples (uint8 image, int64 ids and mask)."""
    per_sample = 3 * cfg.data.image_size ** 2 + 16 * cfg.data.context_length + 16
    return cfg.bench.data_buffer_batches * cfg.train.batch_size * per_sample


def data_options(budget: int):
    """Ray Data ExecutionOptions for the bench's Train datasets: Train's defaults with an object-store
    budget of `budget` bytes (None, Train's defaults, for 0). Train resolves its default options in its
    own controller process, so a budget set in this process's DataContext would not reach the datasets."""
    if not budget:
        return None
    import ray.train

    with warnings.catch_warnings():  # Ray's own default options still carry a deprecated field
        warnings.simplefilter("ignore")
        options = ray.train.DataConfig.default_ingest_options()
        options.resource_limits = options.resource_limits.copy(object_store_memory=budget)
    return options


def storage_dir(cfg: TrainBenchConfig) -> Path:
    """Where the bench's runs keep their throwaway checkpoints without `ray.storage_path`."""
    return (cfg.run_dir / "ray").resolve()


# ---------------------------------------------------------------------------------------------------
# Figures


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def checkpoint_figures(report_s: dict[str, float], *, saves: list[int]) -> dict[str, float | None]:
    """Seconds the loop spent inside the hooks' report on checkpoint steps and on plain report steps."""
    saved = [v for k, v in report_s.items() if int(k) in saves]
    plain = [v for k, v in report_s.items() if int(k) not in saves]
    return {"checkpoint_report_s": _mean(saved), "plain_report_s": _mean(plain)}


def summarize(rounds: list[dict[str, Any]], *, batch: int, threads: int, saves: list[int], use_gpu: bool) -> dict[str, Any]:
    """Every round's figures and the headline ratios from the best round of each measurement.

    rounds[i]: {"limit": in_memory_windows(...), "one": [rank figures], "two": [rank figures] or None,
    "load": load average when the round began}."""
    from raylpclip.bench.train_timing import pooled

    limit = [pooled(r["limit"]["psd"]) for r in rounds]
    limit_rates = [batch / w["step_time_s"] for w in limit]
    one = [r["one"] for r in rounds]
    one_rates = [ranks[0]["timed"]["samples_per_s"] for ranks in one]
    best = int(np.argmax(one_rates))
    psd = pooled([w for r in rounds for w in r["limit"]["psd"]])
    clip = pooled([w for r in rounds for w in r["limit"]["clip"]])
    loss = [r["limit"]["loss"] for r in rounds]
    loss_extra = float(np.median([x["extra_s"] for x in loss]))
    s: dict[str, Any] = {
        "samples_per_s": max(one_rates),
        "compute_limit_samples_per_s": max(limit_rates),
        "ratio_vs_compute_limit": max(one_rates) / max(limit_rates),
        "data_wait_fraction": _mean([rank["timed"]["data_wait_fraction"] for rank in one[best]]),
        "psd_overhead": (psd["step_time_s"] - clip["step_time_s"]) / psd["step_time_s"],
        "psd_loss_overhead": loss_extra / psd["step_time_s"],
        "step_time_s": batch / max(one_rates),
        "compute_limit_step_time_s": batch / max(limit_rates),
        "psd_step_time_s": psd["step_time_s"],
        "clip_step_time_s": clip["step_time_s"],
        "psd_loss_s": float(np.median([x["psd_loss_s"] for x in loss])),
        "clip_loss_s": float(np.median([x["clip_loss_s"] for x in loss])),
        "peak_memory_mb": max(rank["peak_memory_mb"]["rss_mb"] for ranks in one for rank in ranks),
        "peak_memory_mb_per_worker": {
            "compute_limit": max(r["limit"]["peak_memory_mb"]["rss_mb"] for r in rounds),
            "one_worker": [max(ranks[i]["peak_memory_mb"]["rss_mb"] for ranks in one) for i in range(len(one[0]))],
        },
        "ratio_vs_compute_limit_per_round": [o / lim for o, lim in zip(one_rates, limit_rates)],
        "rounds": {"compute_limit_samples_per_s": limit_rates, "samples_per_s": one_rates,
                   "data_wait_fraction": [_mean([rk["timed"]["data_wait_fraction"] for rk in ranks]) for ranks in one],
                   "load_avg": [r["load"] for r in rounds]},
        **checkpoint_figures(one[best][0]["report_s"], saves=saves),
        "threads": threads, "batch_size": batch, "targets": TARGETS,
    }
    if use_gpu and "cuda_allocated_mb" in one[best][0]["peak_memory_mb"]:
        s["peak_cuda_memory_mb"] = max(rank["peak_memory_mb"]["cuda_allocated_mb"] for ranks in one for rank in ranks)
    two = [r["two"] for r in rounds if r.get("two")]
    if two:
        two_rates = [ranks[0]["timed"]["samples_per_s"] for ranks in two]
        # Per unit of hardware: the same threads split over two workers on CPU; one GPU each on GPU.
        units_one, units_two = (1, 2) if use_gpu else (threads, threads)
        s.update(two_worker_samples_per_s=max(two_rates),
                 two_worker_ratio=(max(two_rates) / units_two) / (max(one_rates) / units_one),
                 two_worker_step_time_s=batch / max(two_rates),
                 two_worker_data_wait_fraction=_mean([rk["timed"]["data_wait_fraction"]
                                                      for rk in two[int(np.argmax(two_rates))]]))
        s["rounds"]["two_worker_samples_per_s"] = two_rates
        s["peak_memory_mb_per_worker"]["two_workers"] = [max(ranks[i]["peak_memory_mb"]["rss_mb"] for ranks in two)
                                                         for i in range(len(two[0]))]
    return s


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_table(s: dict[str, Any]) -> str:
    lim, t = s["compute_limit_samples_per_s"], s["threads"]
    rows = [
        (f"compute limit: plain loop, PSD step, 1 x {t} threads", lim, s["compute_limit_step_time_s"], None),
        ("compute limit: plain loop, CLIP step (a_max 0)", s["batch_size"] / s["clip_step_time_s"], s["clip_step_time_s"], None),
        (f"pipeline: shards -> Ray Data -> 1 worker x {t} threads", s["samples_per_s"], s["step_time_s"], s["data_wait_fraction"]),
    ]
    if "two_worker_samples_per_s" in s:
        rows.append((f"pipeline: 2 workers x {max(1, t // 2)} thread(s)", s["two_worker_samples_per_s"],
                     s["two_worker_step_time_s"], s["two_worker_data_wait_fraction"]))
    loads = s["rounds"]["load_avg"]
    lines = [f"[raylpclip] bench train: batch {s['batch_size']}, {len(loads)} round(s), load average at each round's start "
             + ", ".join(f"{x:.1f}" for x in loads),
             f"  {'measurement':<54} {'samples/s':>9} {'step s':>7} {'vs limit':>8} {'data wait':>9}"]
    for label, rate, step, wait in rows:
        lines.append(f"  {label:<54} {rate:>9.1f} {step:>7.3f} {rate / lim:>8.2f} {_pct(wait):>9}")
    target = TARGETS
    lines.append(f"[raylpclip] ratio_vs_compute_limit {s['ratio_vs_compute_limit']:.2f} (target >= {target['ratio_vs_compute_limit']}), "
                 f"data wait {_pct(s['data_wait_fraction'])} (< {_pct(target['data_wait_fraction'])}), "
                 f"PSD overhead {_pct(s['psd_overhead'])} of the step (< {_pct(target['psd_overhead'])}; loss alone "
                 f"{_pct(s['psd_loss_overhead'])})"
                 + (f", two_worker_ratio {s['two_worker_ratio']:.2f} (>= {target['two_worker_ratio']})" if "two_worker_ratio" in s else ""))
    ckpt = s.get("checkpoint_report_s")
    lines.append(f"[raylpclip] peak memory per worker {s['peak_memory_mb']:.0f} MB (plain loop "
                 f"{s['peak_memory_mb_per_worker']['compute_limit']:.0f} MB)"
                 + (f"; a checkpoint report blocks {ckpt:.3f} s vs {s['plain_report_s'] or 0:.3f} s for a plain one"
                    if ckpt is not None else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The run


def prepare(cfg: TrainBenchConfig):
    """Shards (generated when none are given) and the tokenizer, before Ray starts."""
    from raylpclip.runtime.train.pretrain_driver import inspect_train_data, prepare_tokenizer

    if not cfg.data.train and not cfg.data.sources:
        cfg = replace(cfg, data=replace(cfg.data, train=synthetic_shards(cfg)))
    else:
        note_small_data(cfg)
    data = inspect_train_data(cfg)
    return cfg, data, prepare_tokenizer(cfg, data)


def run_train_bench(cfg: TrainBenchConfig) -> dict[str, Any]:
    import ray

    from raylpclip.data.storage import configure_s3
    from raylpclip.runtime.cluster import counters
    from raylpclip.runtime.cluster.session import ensure_ray

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
    batch_ref = ray.put(premade_batches(pretrain_part(cfg), tokenizer=tokenizer,
                                        micro=cfg.train.batch_size // cfg.optim.accum_steps, count=b.memory_batches))
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
        rounds.append(r)
        print(f"[raylpclip] round {i + 1}/{b.rounds} (samples/s, load {r['load']:.1f}): compute limit "
              f"{cfg.train.batch_size / _pooled_step(r['limit']['psd']):.1f}, 1 worker {r['one'][0]['timed']['samples_per_s']:.1f}"
              + (f", 2 workers {r['two'][0]['timed']['samples_per_s']:.1f}" if b.two_workers else ""), flush=True)
    summary = summarize(rounds, batch=cfg.train.batch_size, threads=threads, saves=save_steps(b), use_gpu=cfg.train.use_gpu)
    summary.update(raw_rounds=rounds, cpus=b.cpus or usable_cpus(), model=cfg.model.preset, image_size=cfg.data.image_size,
                   psd=to_dict(cfg.psd), precision=cfg.train.precision, skipped=counters.totals(counter),
                   switches={k: getattr(cfg.train, k) for k in ("fused_adamw", "compile", "channels_last",
                                                                "grad_checkpointing", "ddp_bucket_cap_mb", "async_checkpoint")},
                   date=time.strftime("%Y-%m-%d %H:%M"), wall_s=time.perf_counter() - start,
                   run_dir=str(cfg.run_dir.resolve()))
    write_summary(cfg.run_dir, summary)
    return summary


def _pooled_step(windows: list[dict]) -> float:
    from raylpclip.bench.train_timing import pooled

    return pooled(windows)["step_time_s"]


def cmd(args: list[str]) -> Path:
    """`raylpclip bench train [CONFIG.yaml] [key=value ...]`"""
    path, overrides = (args[0], args[1:]) if args and "=" not in args[0] else (None, args)
    cfg = load_config(TrainBenchConfig, path, overrides)
    summary = run_train_bench(cfg)
    print(format_table(summary), flush=True)
    return Path(summary["run_dir"]) / "summary.json"
