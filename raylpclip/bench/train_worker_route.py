"""`bench ingest`'s route `ours`: the training pipeline itself (runtime/data/shard_reader.train_source, as
`raylpclip pretrain` builds it: Ray Data reads the tars, an actor pool decodes, augments and tokenizes;
the actors read the tars themselves where runtime/data/decode_pool.read_plan says so), consumed inside a
real 1-worker TorchTrainer through the trainer's own `batch_stream`. Ray runs it
(runtime/data/ingest_measure.py); the timing here runs inside the Train worker."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from raylpclip.bench.ingest_bench_config import IngestBenchConfig
from raylpclip.bench.rate_meter import Rate, timed_batches


def worker_figures(batches: Iterable[dict], *, warmup: int, last: int) -> dict[str, Any]:
    """In the Train worker: the rate over its batches and the columns' shapes, as report metrics."""
    shapes: dict[str, list[int]] = {}

    def record_shapes(batch: dict) -> None:
        if not shapes:
            shapes.update({name: list(t.shape) for name, t in batch.items()})

    rate = timed_batches(batches, warmup=warmup, last=last, on_batch=record_shapes)
    return {"per_s": rate.per_s, "samples": rate.samples, "seconds": rate.seconds, "window": list(rate.window),
            "machine_cpu_s": rate.machine_cpu_s,
            "shapes": {k: ",".join(map(str, v)) for k, v in shapes.items()}}


def ours_rate(files: Sequence[str], *, cfg: IngestBenchConfig, tokenizer, samples: int, last: int,
              round_: int) -> Rate:
    # Imported here: importing a bench module must not load Ray (bench/__init__.py).
    from raylpclip.runtime.data.ingest_measure import train_worker_metrics

    metrics = train_worker_metrics(files, data=cfg.data, tokenizer=tokenizer, batch_size=cfg.batch_size,
                                   epoch_batches=samples // cfg.batch_size, measure=worker_figures,
                                   measure_kwargs={"warmup": cfg.warmup_batches, "last": last},
                                   name=f"ours-{round_}", storage_path=str((cfg.run_dir / "ray").resolve()))
    return Rate(float(metrics["per_s"]), int(metrics["samples"]), float(metrics["seconds"]), tuple(metrics["window"]),
                machine_cpu_s=metrics["machine_cpu_s"])
