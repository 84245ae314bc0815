"""`raylpclip bench ingest`: samples/s from shards to a Train worker's batches, against references.

Routes over the same webdataset shards and the same number of CPUs, timed in one run:

- ours: the training pipeline itself, as `raylpclip pretrain` builds it, consumed inside a real
  1-worker TorchTrainer through the trainer's own `batch_stream` (bench/train_worker_route.py).
- decode limit: decode + resize/augment of each image in a plain loop on one core, times the CPU
  count: the issue's per-core limit. No pipeline can beat it on the same cores; the gap to it is all
  the rest of the work (tar parsing, tokenizing, batching) plus the cost of moving batches (Ray itself).
  A second reference, `BatchDecoder` in a plain loop over in-memory row batches, adds tokenizing and
  batching, so the gap from it to ours is what reading and moving the rows costs (bench/decode_limits.py).
- DataLoader: the standard PyTorch route. A `torch.utils.data.DataLoader` with one worker process per
  CPU; each worker reads its share of the tar files with `tarfile` and turns batches of rows into
  tensors with the very same `BatchDecoder` the Ray actors run, so the two produce identical columns
  and differ only in how rows travel (bench/dataloader_route.py).

Every route discards its first `warmup_batches` batches: process, actor and Ray start-up and the
pipeline's fill-up are never timed. Timing also stops `untimed_tail` of the epoch (plus the Train
worker's `shuffle_buffer` rows) before its end. Ray Data decodes ahead of the Train worker as far as its
memory budget allows (measured: ~5,000 samples at 224 px, ~11,000 at 64 px), and once the decoders have
finished the epoch those rows, and then the shuffle buffer's, arrive at memory speed; a window that
reached them would time the drain of a buffer, not the pipeline (on 12,000 samples at 224 px it made
ours look 13% faster than its steady rate). The DataLoader route's window ends at the same batch.

Next to samples/s, each route's CPU seconds per sample (all its processes, all cores) and the cores the
whole machine kept busy meanwhile are reported: on a machine shared with others the rates move, the
CPU per sample much less, and busy cores above the route's own show who else was running.
Only the `ours` route and the cluster session reach Ray, through runtime/.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from raylpclip.bench.benchmark import Benchmark
from raylpclip.bench.cpu_accounting import TreeCpu
from raylpclip.bench.cpu_pinning import pin_cpus, usable_cpus
from raylpclip.bench.dataloader_route import dataloader_rate
from raylpclip.bench.decode_limits import batch_decoder_limit, decode_limit
from raylpclip.bench.ingest_bench_config import IngestBenchConfig, check, timed_batches_for
from raylpclip.bench.ingest_inputs import bench_shards, bench_tokenizer, count_samples
from raylpclip.bench.ingest_report import PER_CORE, ROUTES, format_table, summarize
from raylpclip.bench.rate_meter import Rate
from raylpclip.bench.tar_rows import first_rows, image_bytes
from raylpclip.bench.train_worker_route import ours_rate
from raylpclip.data.storage import configure_s3
from raylpclip.summary import write_summary


def run_ingest(cfg: IngestBenchConfig) -> dict[str, Any]:
    from raylpclip.runtime.cluster.session import ensure_ray  # Ray is imported only when the bench runs

    start = time.perf_counter()
    check(cfg)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    cpus = cfg.cpus or usable_cpus()
    pin_cpus(cpus)
    configure_s3(cfg.data.s3)  # s3:// shards: as pretrain reaches them (DataLoader workers: s3fs's defaults)
    files = bench_shards(cfg)
    samples = count_samples(files)
    last = timed_batches_for(samples, cfg)
    tokenizer = bench_tokenizer(cfg, files)
    rows = first_rows(files, cfg.reference_samples)
    images = image_bytes(rows)
    # A local instance runs below this process, where TreeCpu counts; a joined cluster's CPUs do not.
    local_ray = not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    ensure_ray(cfg.ray)
    rounds: dict[str, list[Rate]] = {name: [] for name in ROUTES if name != "full_decode_limit" or cfg.data.jpeg_draft}
    for round_ in range(cfg.rounds):
        # Interleaved, so that a burst of someone else's work does not land on one route only.
        rounds["decode_limit"].append(decode_limit(images, cfg.data))
        if "full_decode_limit" in rounds:  # what JPEG draft decoding saves, measured in the same run
            rounds["full_decode_limit"].append(decode_limit(images, dataclasses.replace(cfg.data, jpeg_draft=False)))
        rounds["batch_decoder_limit"].append(batch_decoder_limit(rows, cfg.data, tokenizer))
        with TreeCpu() as cpu:
            loader = dataloader_rate(files, data=cfg.data, tokenizer=tokenizer, batch_size=cfg.batch_size,
                                     workers=cpus, warmup=cfg.warmup_batches, last=last)
        rounds["dataloader"].append(cpu.charge(loader))
        with TreeCpu() as cpu:
            ours = ours_rate(files, cfg=cfg, tokenizer=tokenizer, samples=samples, last=last, round_=round_)
        rounds["ours"].append(cpu.charge(ours) if local_ray else dataclasses.replace(ours, cpu_s=None))
        done = ", ".join(f"{name} {rates[-1].per_s * (cpus if name in PER_CORE else 1):.0f}"
                         for name, rates in rounds.items())
        print(f"[raylpclip] round {round_ + 1}/{cfg.rounds} (samples/s): {done}", flush=True)
    summary = summarize(cfg, cpus=cpus, samples=samples, files=files, rounds=rounds)
    summary.update(wall_s=time.perf_counter() - start, run_dir=str(cfg.run_dir.resolve()))
    write_summary(cfg.run_dir, summary)
    return summary


BENCHMARK = Benchmark(config=IngestBenchConfig, run=run_ingest, format_table=format_table)
