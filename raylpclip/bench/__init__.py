"""`raylpclip bench NAME [CONFIG.yaml] [key=value ...]`: measurements that answer an issue's question.

    raylpclip bench ingest [CONFIG.yaml] [key=value ...]   shards -> a Train worker's batches, samples/s
    raylpclip bench train [CONFIG.yaml] [key=value ...]    the training pipeline vs its in-memory compute limit

Each benchmark lives in its own module (imported only when named, so Ray and torch load only for the
one that runs), resolves a typed config like every command, writes `summary.json` and returns its path.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from raylpclip.config import ConfigError

# name -> module with `cmd(args: list[str]) -> Path`; a new benchmark is one more line here.
BENCHMARKS = {
    "ingest": "raylpclip.bench.ingest",
    "train": "raylpclip.bench.train",
}


def cmd_bench(args: list[str]) -> Path:
    if not args or args[0] not in BENCHMARKS:
        got = f"got {args[0]!r}, " if args else ""
        raise ConfigError(f"bench: {got}expected a benchmark name, one of {sorted(BENCHMARKS)} "
                          "(raylpclip bench NAME [CONFIG.yaml] [key=value ...])")
    return importlib.import_module(BENCHMARKS[args[0]]).cmd(args[1:])
