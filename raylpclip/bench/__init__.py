"""`raylpclip bench NAME [CONFIG.yaml] [key=value ...]`: measurements that answer an issue's question.

    raylpclip bench ingest [CONFIG.yaml] [key=value ...]   shards -> a Train worker's batches, samples/s
    raylpclip bench train [CONFIG.yaml] [key=value ...]    the training pipeline vs its in-memory compute limit

Each benchmark lives in its own modules (its entry module imported only when named, so torch loads only
for the one that runs), resolves a typed config like every command, writes `summary.json` and returns
its path. Nothing under bench/ imports Ray: the benchmarks reach it through functions in runtime/
(runtime/data/bench_ingest_ray.py, runtime/train/bench_train_ray.py, the cluster session), imported
inside the functions that run, so that importing a bench module loads no Ray.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from raylpclip.config import ConfigError, load_config


@dataclass(frozen=True)
class Benchmark:
    """What `raylpclip bench NAME` needs of a benchmark: the entry module's `BENCHMARK`."""

    config: type  # its config dataclass, loaded from CONFIG.yaml and key=value overrides
    run: Callable[[Any], dict[str, Any]]  # config -> summary (written to summary.json in summary["run_dir"])
    format_table: Callable[[dict[str, Any]], str]  # summary -> the table printed at the end


# name -> entry module with `BENCHMARK: Benchmark`; a new benchmark is one more line here.
BENCHMARKS = {
    "ingest": "raylpclip.bench.ingest",
    "train": "raylpclip.bench.train",
}


def cmd_bench(args: list[str]) -> Path:
    if not args or args[0] not in BENCHMARKS:
        got = f"got {args[0]!r}, " if args else ""
        raise ConfigError(f"bench: {got}expected a benchmark name, one of {sorted(BENCHMARKS)} "
                          "(raylpclip bench NAME [CONFIG.yaml] [key=value ...])")
    bench: Benchmark = importlib.import_module(BENCHMARKS[args[0]]).BENCHMARK
    rest = args[1:]
    path, overrides = (rest[0], rest[1:]) if rest and "=" not in rest[0] else (None, rest)
    summary = bench.run(load_config(bench.config, path, overrides))
    print(bench.format_table(summary), flush=True)
    return Path(summary["run_dir"]) / "summary.json"
