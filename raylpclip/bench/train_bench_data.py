"""The data `raylpclip bench train` runs on: shards generated when none are given, as many as a run
consumes with the pipeline's look-ahead, and the tokenizer."""

from __future__ import annotations

import time
from dataclasses import replace

from raylpclip.bench.train_bench_config import TrainBenchConfig, run_steps
from raylpclip.data.shard_files import read_stats, resolve_shards
from raylpclip.data.shard_writer import write_shards
from raylpclip.data.synthetic import SyntheticSpec, generate_samples


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
    # runtime/ loads Ray: imported when called, never when the bench is imported.
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


def prepare(cfg: TrainBenchConfig):
    """Shards (generated when none are given) and the tokenizer, before Ray starts."""
    from raylpclip.runtime.train.pretrain_driver import prepare_tokenizer
    from raylpclip.runtime.train.trainer_factory import inspect_train_data

    if not cfg.data.train and not cfg.data.sources:
        cfg = replace(cfg, data=replace(cfg.data, train=synthetic_shards(cfg)))
    else:
        note_small_data(cfg)
    data = inspect_train_data(cfg)
    return cfg, data, prepare_tokenizer(cfg, data)
