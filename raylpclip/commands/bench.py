"""`raylpclip bench NAME [CONFIG.yaml] [key=value ...]`: the benchmarks (raylpclip/bench/).

    raylpclip bench ingest [CONFIG.yaml] [key=value ...]   shards -> a Train worker's batches, samples/s
    raylpclip bench train [CONFIG.yaml] [key=value ...]    the training pipeline vs its in-memory compute limit
"""

from __future__ import annotations

import importlib
from pathlib import Path

from raylpclip.bench.benchmark import Benchmark
from raylpclip.config import ConfigError, config_args, load_config

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
    summary = bench.run(load_config(bench.config, *config_args(args[1:])))
    print(bench.format_table(summary), flush=True)
    return Path(summary["run_dir"]) / "summary.json"
