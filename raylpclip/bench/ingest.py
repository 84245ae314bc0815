"""`raylpclip bench ingest`: samples/s from shards to a Train worker's batches, against references.

Routes over the same webdataset shards and the same number of CPUs, timed in one run:

- ours: the training pipeline itself (`runtime.positioned.train_source`, as `raylpclip pretrain` builds
  it: Ray Data reads the tars, an actor pool decodes, augments and tokenizes; the actors read the tars
  themselves where `runtime.datasets.read_plan` says so), consumed inside a real 1-worker TorchTrainer
  through `ray.train.get_dataset_shard` and the trainer's own `batch_stream`.
- decode limit: decode + resize/augment of each image in a plain loop on one core, times the CPU
  count: the issue's per-core limit. No pipeline can beat it on the same cores; the gap to it is all
  the rest of the work (tar parsing, tokenizing, batching) plus the cost of moving batches (Ray itself).
  A second reference, `BatchDecoder` in a plain loop over in-memory row batches, adds tokenizing and
  batching, so the gap from it to ours is what reading and moving the rows costs.
- DataLoader: the standard PyTorch route. A `torch.utils.data.DataLoader` with one worker process per
  CPU; each worker reads its share of the tar files with `tarfile` and turns batches of rows into
  tensors with the very same `BatchDecoder` the Ray actors run, so the two produce identical columns
  and differ only in how rows travel.

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
Nothing here imports Ray except the `ours` route.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import fsspec
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from raylpclip import batch_schema
from raylpclip.config import (ConfigError, DataConfig, PretrainConfig, RayConfig, TrainConfig, from_dict,
                              load_config, to_dict)
from raylpclip.data.decode import IMAGE_KEYS, BatchDecoder
from raylpclip.data.metadata import iter_records, sample_captions
from raylpclip.data.shards import read_stats, resolve_shards, write_shards
from raylpclip.data.storage import configure_s3
from raylpclip.data.synthetic import SyntheticSpec, generate_samples
from raylpclip.data.tarstream import group_samples
from raylpclip.data.transforms import decode_image, train_transform
from raylpclip.models.bpe_tokenizer import load_tokenizer, train_tokenizer
from raylpclip.summary import write_summary

# The targets on 2 CPUs; printed next to the ratios, never asserted.
TARGET_VS_DECODE_LIMIT = 0.8
TARGET_VS_DATALOADER = 1.0


@dataclass
class SyntheticShardsConfig:
    """Shards generated when `data.train` is empty (reused on the next run with the same values)."""

    # ~8 s of timed steady flow per route at 64 px, after the warm-up and the untimed tail.
    samples: int = 80000
    samples_per_shard: int = 2500
    image_size: int = 64  # side of the stored JPEGs; `data.image_size` is what the routes resize to
    seed: int = 0


@dataclass
class IngestBenchConfig:
    name: str = "bench-ingest"
    output_dir: str = "runs"
    cpus: int = 0  # CPUs every route gets (DataLoader workers, decode-limit multiplier); 0: all usable cores
    batch_size: int = 128  # one Train worker's batch
    warmup_batches: int = 4  # per route, not timed; timing starts when the last of them arrives
    untimed_tail: float = 0.3  # the epoch's last fraction, not timed: Ray Data's read-ahead drains there (module doc)
    rounds: int = 2  # each route this many times, interleaved; the best of each counts (one round varies by ~10%)
    reference_samples: int = 4000  # samples (the first, in shard order) the in-memory plain loops decode
    tokenizer: str = ""  # local tokenizer directory; empty: a BPE trained on the shards' captions
    vocab_size: int = 1024
    synthetic: SyntheticShardsConfig = field(default_factory=SyntheticShardsConfig)
    data: DataConfig = field(default_factory=DataConfig)  # the training pipeline's settings, as in pretrain
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def check(cfg: IngestBenchConfig) -> None:
    """Bench-specific limits (load_config has checked the shared sections)."""
    if cfg.cpus < 0 or cfg.cpus > usable_cpus():
        raise ConfigError(f"config key 'cpus': got {cfg.cpus}, expected 0 (all) to {usable_cpus()} (usable cores here)")
    counts = {"batch_size": cfg.batch_size, "warmup_batches": cfg.warmup_batches, "rounds": cfg.rounds,
              "reference_samples": cfg.reference_samples,
              "synthetic.samples": cfg.synthetic.samples, "synthetic.samples_per_shard": cfg.synthetic.samples_per_shard}
    for key, value in counts.items():
        if value < 1:
            raise ConfigError(f"config key '{key}': got {value}, expected >= 1")
    if not 0 <= cfg.untimed_tail < 1:
        raise ConfigError(f"config key 'untimed_tail': got {cfg.untimed_tail}, expected a fraction in [0, 1)")
    if not cfg.data.train:
        timed_batches_for(cfg.synthetic.samples, cfg)


def timed_batches_for(samples: int, cfg: IngestBenchConfig) -> int:
    """The last timed batch of the Train-worker routes: the full batches of an epoch, less the untimed
    tail (Ray Data's decoded read-ahead drains there) and the batches the shuffle buffer hands out at
    the end without waiting for decoding."""
    shuffle_tail = -(-cfg.data.shuffle_buffer // cfg.batch_size)
    drain_tail = int(samples * cfg.untimed_tail) // cfg.batch_size
    last = samples // cfg.batch_size - drain_tail - shuffle_tail
    if last <= cfg.warmup_batches:
        raise ConfigError(f"config key 'batch_size': {samples} samples in batches of {cfg.batch_size} leave no timed "
                          f"batch after {cfg.warmup_batches} warm-up batches, {drain_tail} batches of untimed tail "
                          f"(untimed_tail={cfg.untimed_tail}) and {shuffle_tail} batches of shuffle buffer "
                          f"(data.shuffle_buffer={cfg.data.shuffle_buffer})")
    return last


# ---------------------------------------------------------------------------------------------------
# CPUs, shards, tokenizer


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pin_cpus(n: int) -> None:
    """Keep this process, and every process it starts from now on (DataLoader workers, a local Ray
    instance), on `n` cores, so that all routes get the same CPUs on a bigger machine."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if 0 < n < len(allowed):
        os.sched_setaffinity(0, allowed[:n])


def synthetic_shards(cfg: IngestBenchConfig) -> list[str]:
    """Generate the synthetic shards once per (samples, size, seed); later runs reuse them."""
    syn = cfg.synthetic
    out = cfg.run_dir / "data" / f"synthetic-{syn.samples}x{syn.image_size}px-seed{syn.seed}"
    if read_stats(str(out)) == syn.samples:
        return resolve_shards(str(out), "webdataset")[0]
    t0 = time.perf_counter()
    samples = generate_samples(syn.samples, spec=SyntheticSpec(image_size=syn.image_size), seed=syn.seed)
    paths = write_shards(samples, str(out), samples_per_shard=syn.samples_per_shard)
    print(f"[raylpclip] wrote {syn.samples} synthetic samples ({syn.image_size}px) in {len(paths)} shards to {out} "
          f"({time.perf_counter() - t0:.1f}s)", flush=True)
    return paths


def bench_shards(cfg: IngestBenchConfig) -> list[str]:
    if not cfg.data.train:
        return synthetic_shards(cfg)
    files, fmt = resolve_shards(cfg.data.train, cfg.data.format)
    if fmt != "webdataset":
        # The DataLoader route reads tars with tarfile, the standard route this benchmark compares with.
        raise ConfigError(f"config key 'data.train': bench ingest needs webdataset (.tar) shards, got {fmt}")
    return files


def count_samples(files: Sequence[str]) -> int:
    """From the `_stats.json` files img2dataset writes; a scan of the tars when they are missing."""
    counted = read_stats(list(files))
    return counted if counted is not None else sum(1 for _ in iter_records(files, fmt="webdataset"))


def bench_tokenizer(cfg: IngestBenchConfig, files: Sequence[str]):
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    captions = sample_captions(files, fmt="webdataset", limit=20000)
    if not captions:
        raise ValueError(f"no captions in the shards {list(files)[:3]}... to train a tokenizer on")
    return train_tokenizer(captions, vocab_size=cfg.vocab_size, out_dir=str(cfg.run_dir / "tokenizer"))


def decoder_kwargs(data: DataConfig, tokenizer) -> dict[str, Any]:
    """BatchDecoder's arguments for training batches, exactly as `runtime.datasets.decoded` passes them."""
    return dict(tokenizer=tokenizer, image_size=data.image_size, context_length=data.context_length, train=True,
                aug_scale_min=data.aug_scale_min, seed=data.shuffle_seed)


# ---------------------------------------------------------------------------------------------------
# Timing


@dataclass
class Rate:
    per_s: float  # samples/s: the slope of samples over time across the timed batches
    samples: int  # timed samples (after warm-up)
    seconds: float
    window: tuple[float, float] = (0.0, 0.0)  # time.time() at its start and end, to line up with CPU counters
    cpu_s: float | None = None  # CPU seconds the route used in the window: the timing thread's, or (TreeCpu) all
    machine_cpu_s: float | None = None  # CPU seconds every process on the machine used, ours and anyone else's


class Meter:
    """Samples/s over batches warmup+1 .. last. The clock starts when batch `warmup` arrives, so start-up
    and the pipeline's fill-up are left out, and stops at batch `last`, before the end of the data.

    The rate is the least-squares slope of samples against arrival time, not (samples / seconds):
    a pipeline hands out batches in bursts of a block, and where the two ends fall within a burst
    would otherwise move the rate by a block's worth of samples."""

    def __init__(self, warmup: int, last: int):
        self.warmup, self.last, self.seen, self.samples = warmup, last, 0, 0
        self.times: list[float] = []
        self.counts: list[int] = []
        self.window, self.thread_cpu, self.machine_cpu = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]

    def add(self, n: int) -> None:
        self.seen += 1
        if self.seen == self.warmup or self.warmup < self.seen <= self.last:
            if self.seen > self.warmup:
                self.samples += n
            self.times.append(time.perf_counter())
            self.counts.append(self.samples)
            if self.seen in (self.warmup, self.last):
                end = int(self.seen == self.last)
                self.window[end], self.thread_cpu[end] = time.time(), time.thread_time()
                self.machine_cpu[end] = machine_busy_seconds()

    def rate(self) -> Rate:
        if self.seen < self.last:
            raise ValueError(f"only {self.seen} batches arrived; the timed ones are {self.warmup + 1} to {self.last}")
        t = np.asarray(self.times) - self.times[0]
        slope = float(np.polyfit(t, self.counts, 1)[0]) if t[-1] > 0 else 0.0
        return Rate(slope, self.samples, float(t[-1]), tuple(self.window), cpu_s=self.thread_cpu[1] - self.thread_cpu[0],
                    machine_cpu_s=self.machine_cpu[1] - self.machine_cpu[0])


def _proc_cpu() -> tuple[dict[int, int], dict[int, float]]:
    """Parent and user+system CPU seconds of every process (Linux /proc; empty elsewhere)."""
    parents, cpu = {}, {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        pid = int(entry.name)
        parents[pid], cpu[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
    return parents, cpu


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat), whoever ran."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already in user


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds used so far by `root` and by every process below it (DataLoader workers, a local Ray
    instance's daemons, workers and actors), by pid."""
    parents, cpu = _proc_cpu()
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, stack = {}, [root]
    while stack:
        pid = stack.pop()
        found[pid] = cpu.get(pid, 0.0)
        stack.extend(children.get(pid, ()))
    return found


class TreeCpu:
    """Samples `tree_cpu` of this process twice a second, in the background, so that the timed
    window of a route that runs in many processes can be charged the CPU it used on every core. (A
    joined cluster's processes are not below this one: not counted.) Next to what the whole machine
    used in the window, it shows how much of the machine others took. One scan of /proc costs a few
    ms: the single-threaded plain loops run without this and count their own thread's CPU instead."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s, self.samples = interval_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-cpu", daemon=True)
        # Each process's latest figure, kept after it exits: a process that ends inside the window (Ray
        # Data's decode actors end with their dataset, before the Train worker has drained its buffer)
        # would otherwise take all its CPU out of the total and make the window's difference too small.
        self._seen: dict[int, float] = {}

    def _run(self) -> None:
        while not self._stop.is_set():
            self._seen.update(tree_cpu(os.getpid()))
            self.samples.append((time.time(), sum(self._seen.values())))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "TreeCpu":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def charge(self, rate: Rate) -> Rate:
        """`rate` with the CPU seconds of this process tree within its window, interpolated."""
        if len(self.samples) < 2 or rate.window[1] <= rate.window[0]:
            return dataclasses.replace(rate, cpu_s=None)
        times, totals = zip(*self.samples)
        used = np.interp(rate.window[1], times, totals) - np.interp(rate.window[0], times, totals)
        return dataclasses.replace(rate, cpu_s=float(used))


# ---------------------------------------------------------------------------------------------------
# Tar rows, as the readers see them


def tar_rows(path: str) -> Iterator[dict[str, Any]]:
    """One dict per sample, `__key__`, `__url__` and one bytes entry per member extension, the members
    read with `tarfile` as webdataset's own loader does (the standard route's reader, on purpose)."""
    with fsspec.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        members = ((info.name, tar.extractfile(info).read()) for info in tar if info.isreg())
        for row in group_samples(members):
            row["__url__"] = path
            yield row


def rows_to_batch(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows -> the column batch Ray Data hands `map_batches` (object arrays, None for a missing member)."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    batch = {}
    for name in names:
        col = np.empty(len(rows), dtype=object)
        col[:] = [row.get(name) for row in rows]
        batch[name] = col
    return batch


def first_rows(files: Sequence[str], n: int) -> list[dict[str, Any]]:
    """The first `n` sample rows in shard order, in memory, for the plain loops."""
    return list(itertools.islice((row for path in files for row in tar_rows(path)), n))


def image_bytes(rows: Sequence[dict[str, Any]]) -> list[bytes]:
    found = (next((row[k] for k in IMAGE_KEYS if row.get(k)), None) for row in rows)
    return [data for data in found if data is not None]


# ---------------------------------------------------------------------------------------------------
# Route 1: the decode limit


def decode_limit(images: Sequence[bytes], data: DataConfig, *, warmup: int = 32) -> Rate:
    """Decode + random-resized-crop/resize of each image in a plain loop on this one core: what
    `BatchDecoder` does per image, with no reading, tokenizing or batching around it. The bytes are
    in memory already; the first `warmup` images warm caches and are not timed."""
    rng = np.random.default_rng(data.shuffle_seed)
    scale = (data.aug_scale_min, 1.0)
    meter = Meter(warmup=min(warmup, len(images) - 1), last=len(images))
    for jpg in images:
        train_transform(decode_image(jpg), size=data.image_size, rng=rng, scale=scale)
        meter.add(1)
    return meter.rate()


def batch_decoder_limit(rows: Sequence[dict[str, Any]], data: DataConfig, tokenizer) -> Rate:
    """`BatchDecoder` over in-memory row batches of `decode_batch_size` on this one core: all the work of
    a decode actor (decode, augment, tokenize, batch) and none of the reading or moving. The first
    batch is not timed."""
    decoder = BatchDecoder(**decoder_kwargs(data, tokenizer))
    size = min(data.decode_rows(), max(1, len(rows) // 2))  # a tiny shard set still gives a timed batch
    batches = [rows_to_batch(rows[i:i + size]) for i in range(0, len(rows), size)]
    meter = Meter(warmup=1, last=len(batches))
    for batch in batches:
        meter.add(len(decoder(batch)[batch_schema.IMAGE]))
    return meter.rate()


# ---------------------------------------------------------------------------------------------------
# Route 2: the standard PyTorch DataLoader


def _shuffled(rows: Iterable[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """webdataset's `.shuffle(size)`: a buffer of rows, each new row replacing a randomly drawn one."""
    if size <= 1:
        yield from rows
        return
    buffer: list[dict] = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        i = int(rng.integers(size))
        yield buffer[i]
        buffer[i] = row
    rng.shuffle(buffer)
    yield from buffer


class TarRows(IterableDataset):
    """Raw sample rows; each DataLoader worker reads every n-th tar of a seeded file order (the split
    webdataset's `split_by_worker` makes) and shuffles rows in its own buffer."""

    def __init__(self, files: Sequence[str], *, shuffle_buffer: int, seed: int):
        self.files, self.shuffle_buffer, self.seed = list(files), shuffle_buffer, seed

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = np.random.default_rng(self.seed).permutation(len(self.files))
        mine = [self.files[i] for i in order[worker::workers]]
        rows = (row for path in mine for row in tar_rows(path))
        # Each worker holds a share of the buffer: together they hold what the Train worker's buffer does.
        yield from _shuffled(rows, self.shuffle_buffer // workers, np.random.default_rng([self.seed, worker]))


class DecodeCollate:
    """collate_fn: a batch of rows -> BatchDecoder's columns as tensors. Runs in the DataLoader worker;
    each worker builds its own decoder (and augmentation stream) on first use."""

    def __init__(self, **decoder_kwargs):
        self.kwargs = decoder_kwargs
        self.decoder: BatchDecoder | None = None

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        if self.decoder is None:
            info = get_worker_info()
            self.decoder = BatchDecoder(**dict(self.kwargs, seed=self.kwargs["seed"] + (info.id if info else 0)))
        return {name: torch.from_numpy(col) for name, col in self.decoder(rows_to_batch(rows)).items()}


def dataloader(files: Sequence[str], *, data: DataConfig, tokenizer, batch_size: int, workers: int,
               start_method: str = "spawn") -> DataLoader:
    """spawn by default: once Ray runs in this process (the second round on), fork could copy its
    threads' locks mid-use."""
    return DataLoader(
        TarRows(files, shuffle_buffer=data.shuffle_buffer, seed=data.shuffle_seed),
        batch_size=batch_size, drop_last=True, num_workers=workers,
        collate_fn=DecodeCollate(**decoder_kwargs(data, tokenizer)),
        multiprocessing_context=start_method if workers > 0 else None,
    )


def timed_batches(batches: Iterable[dict], *, warmup: int, last: int,
                  on_batch: Callable[[dict], None] | None = None) -> Rate:
    """Rate over batches warmup+1 .. last. All batches are consumed: a DataLoader whose iterator is
    dropped half-way kills its workers mid-batch."""
    meter = Meter(warmup, last)
    for batch in batches:
        meter.add(len(batch[batch_schema.IMAGE]))
        if on_batch is not None:
            on_batch(batch)
    return meter.rate()


def dataloader_rate(files: Sequence[str], *, data: DataConfig, tokenizer, batch_size: int, workers: int,
                    warmup: int, last: int) -> Rate:
    loader = dataloader(files, data=data, tokenizer=tokenizer, batch_size=batch_size, workers=workers)
    return timed_batches(loader, warmup=warmup, last=last)


# ---------------------------------------------------------------------------------------------------
# Route 3: ours, inside a Ray Train worker


def _ours_worker(loop_config: dict) -> None:
    """Train worker: the trainer's own `batch_stream` over its dataset shard, timed, reported once.
    (`batch_stream` goes on epoch after epoch; `last` is within the first.)"""
    import ray.train

    from raylpclip.runtime.train.pretrain_worker import batch_stream

    cfg = from_dict(PretrainConfig, loop_config["config"])
    stream = batch_stream(ray.train.get_dataset_shard("train"), micro_batch=cfg.train.batch_size, cfg=cfg)
    shapes: dict[str, list[int]] = {}

    def record_shapes(batch: dict) -> None:
        if not shapes:
            shapes.update({name: list(t.shape) for name, t in batch.items()})

    epoch = itertools.islice(stream, loop_config["epoch_batches"])
    rate = timed_batches(epoch, warmup=loop_config["warmup"], last=loop_config["last"], on_batch=record_shapes)
    metrics = {"per_s": rate.per_s, "samples": rate.samples, "seconds": rate.seconds, "window": list(rate.window),
               "machine_cpu_s": rate.machine_cpu_s,
               "shapes": {k: ",".join(map(str, v)) for k, v in shapes.items()}}
    # Train v2 keeps only the metrics of reports that carry a checkpoint: an empty one carries these.
    with tempfile.TemporaryDirectory() as tmp:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def ours_rate(files: Sequence[str], *, cfg: IngestBenchConfig, tokenizer, samples: int, last: int,
              round_: int) -> Rate:
    import ray.train
    from ray.train.torch import TorchTrainer

    from raylpclip.runtime.data.shard_reader import train_source

    data = cfg.data
    ds = train_source(list(files), fmt="webdataset", cfg=data, tokenizer=tokenizer)
    pretrain = PretrainConfig(data=data, train=TrainConfig(batch_size=cfg.batch_size, num_workers=1))
    trainer = TorchTrainer(
        _ours_worker,
        train_loop_config={"config": to_dict(pretrain), "warmup": cfg.warmup_batches, "last": last,
                           "epoch_batches": samples // cfg.batch_size},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"ours-{round_}", storage_path=str((cfg.run_dir / "ray").resolve()),
                                       logging_config=ray.train.LoggingConfig(log_level="WARNING")),
        datasets={"train": ds},
    )
    metrics = trainer.fit().metrics or {}
    return Rate(float(metrics["per_s"]), int(metrics["samples"]), float(metrics["seconds"]), tuple(metrics["window"]),
                machine_cpu_s=metrics["machine_cpu_s"])


# ---------------------------------------------------------------------------------------------------
# The run

ROUTES = {  # name -> what the table calls it; the two limits are per core, multiplied by the CPU count
    "decode_limit": "decode limit: decode + resize, 1 core x {cpus}",
    "batch_decoder_limit": "BatchDecoder limit: + tokenize, batch, 1 core x {cpus}",
    "dataloader": "DataLoader: {cpus} workers reading with tarfile",
    "ours": "ours: Ray Data -> a 1-worker TorchTrainer",
}
PER_CORE = ("decode_limit", "batch_decoder_limit")


def _per(value: float | None, over: float, scale: float = 1.0) -> float | None:
    return value / over * scale if value is not None and over > 0 else None


def _ratio(reference: Rate, route: Rate) -> float | None:
    """reference's CPU per sample over route's."""
    if reference.cpu_s is None or route.cpu_s is None or not route.cpu_s:
        return None
    return (reference.cpu_s / reference.samples) / (route.cpu_s / route.samples)


def summarize(cfg: IngestBenchConfig, *, cpus: int, samples: int, files: Sequence[str],
              rounds: dict[str, list[Rate]]) -> dict[str, Any]:
    """Best round of each route (the least disturbed by whatever else ran), every round, the ratios."""
    scale = {name: cpus if name in PER_CORE else 1 for name in rounds}
    all_rates = {name: [r.per_s * scale[name] for r in rates] for name, rates in rounds.items()}
    best = {name: max(rates) for name, rates in all_rates.items()}
    ours = best["ours"]
    summary: dict[str, Any] = {
        "samples_per_s": ours,
        "ratio_vs_decode_limit": ours / best["decode_limit"] if best["decode_limit"] else None,
        "ratio_vs_dataloader": ours / best["dataloader"] if best["dataloader"] else None,
        "ratio_vs_batch_decoder_limit": ours / best["batch_decoder_limit"] if best["batch_decoder_limit"] else None,
    }
    for name in PER_CORE:
        summary[f"{name}_per_cpu_samples_per_s"] = best[name] / cpus
    summary.update({f"{name}_samples_per_s": rate for name, rate in best.items()})
    best_rounds = {name: max(rates, key=lambda r: r.per_s) for name, rates in rounds.items()}
    summary.update(
        rounds=all_rates,
        timed_samples={name: r.samples for name, r in best_rounds.items()},
        # CPU per sample does not depend on who else used the machine (much): the figure to compare
        # routes by when the rates were disturbed. Cores: what the route used / what all processes used.
        cpu_us_per_sample={name: _per(r.cpu_s, r.samples, 1e6) for name, r in best_rounds.items()},
        cores_used={name: _per(r.cpu_s, r.seconds) for name, r in best_rounds.items()},
        machine_cores_busy={name: _per(r.machine_cpu_s, r.seconds) for name, r in best_rounds.items()},
        # The ratios again from CPU per sample: what they would be on dedicated cores kept busy.
        cpu_ratio_vs_decode_limit=_ratio(best_rounds["decode_limit"], best_rounds["ours"]),
        cpu_ratio_vs_dataloader=_ratio(best_rounds["dataloader"], best_rounds["ours"]),
        targets={"ratio_vs_decode_limit": TARGET_VS_DECODE_LIMIT, "ratio_vs_dataloader": TARGET_VS_DATALOADER},
        cpus=cpus, samples=samples, shards=len(files), image_size=cfg.data.image_size, batch_size=cfg.batch_size,
        warmup_batches=cfg.warmup_batches, untimed_tail=cfg.untimed_tail, decode_batch_size=cfg.data.decode_rows(),
        decode_concurrency=cfg.data.decode_concurrency, decode_cpus=cfg.data.decode_cpus,
        ray_num_cpus=cfg.ray.num_cpus, shuffle_buffer=cfg.data.shuffle_buffer,
    )
    return summary


def format_table(s: dict[str, Any]) -> str:
    limit, cpus = s["decode_limit_samples_per_s"], s["cpus"]
    lines = [
        f"[raylpclip] ingest: {s['samples']} samples in {s['shards']} shards -> {s['image_size']}px batches of "
        f"{s['batch_size']}, {cpus} CPUs; the first {s['warmup_batches']} batches of each route are not timed",
        f"  {'route':<56} {'samples/s':>9} {'vs limit':>8} {'CPU us/sample':>13} {'cores used/busy':>15}  rounds",
    ]
    for name, label in ROUTES.items():
        rate, every = s[f"{name}_samples_per_s"], s["rounds"][name]
        spread = f"{min(every):.0f}-{max(every):.0f}" if len(every) > 1 else ""
        cpu, used, busy = s["cpu_us_per_sample"][name], s["cores_used"][name], s["machine_cores_busy"][name]
        cores = f"{used:.2f}/{busy:.2f}" if used is not None and busy is not None else "-"
        lines.append(f"  {label.format(cpus=cpus):<56} {rate:>9.0f} {rate / limit if limit else 0:>8.2f} "
                     f"{cpu if cpu is not None else float('nan'):>13.0f} {cores:>15}  {spread}")
    lines.append(f"[raylpclip] ours / decode limit {s['ratio_vs_decode_limit']:.2f}x (target >= {TARGET_VS_DECODE_LIMIT}), "
                 f"ours / DataLoader {s['ratio_vs_dataloader']:.2f}x (target >= {TARGET_VS_DATALOADER}), "
                 f"ours / BatchDecoder limit {s['ratio_vs_batch_decoder_limit']:.2f}x")
    if s["cpu_ratio_vs_decode_limit"] is not None and s["cpu_ratio_vs_dataloader"] is not None:
        lines.append(f"[raylpclip] by CPU per sample (dedicated cores kept busy): ours / decode limit "
                     f"{s['cpu_ratio_vs_decode_limit']:.2f}x, ours / DataLoader {s['cpu_ratio_vs_dataloader']:.2f}x")
    return "\n".join(lines)


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
    rounds: dict[str, list[Rate]] = {name: [] for name in ROUTES}
    for round_ in range(cfg.rounds):
        # Interleaved, so that a burst of someone else's work does not land on one route only.
        rounds["decode_limit"].append(decode_limit(images, cfg.data))
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


def cmd(args: list[str]) -> Path:
    """`raylpclip bench ingest [CONFIG.yaml] [key=value ...]`"""
    path, overrides = (args[0], args[1:]) if args and "=" not in args[0] else (None, args)
    cfg = load_config(IngestBenchConfig, path, overrides)
    summary = run_ingest(cfg)
    print(format_table(summary), flush=True)
    return Path(summary["run_dir"]) / "summary.json"
