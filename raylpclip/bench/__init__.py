"""Benchmarks, run by `raylpclip bench NAME` (commands/bench.py): measurements that answer an issue's question.

Each benchmark lives in its own modules (its entry module imported only when named, so torch loads only
for the one that runs), resolves a typed config like every command, writes `summary.json` and returns
its path. Nothing under bench/ imports Ray: the benchmarks reach it through functions in runtime/
(runtime/data/ingest_measure.py, runtime/train/bench_support.py, the cluster session), imported
inside the functions that run, so that importing a bench module loads no Ray.
"""
