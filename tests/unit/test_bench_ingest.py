"""The ingest benchmark's Ray-free parts on a tiny shard set: the DataLoader route and the plain loops
decode every sample into the same tensors the Ray pipeline's BatchDecoder makes, in as many batches."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from raylpclip import batch_schema
from raylpclip.bench import rate_meter
from raylpclip.bench.cpu_accounting import TreeCpu
from raylpclip.bench.cpu_pinning import usable_cpus
from raylpclip.bench.dataloader_route import _shuffled, dataloader
from raylpclip.bench.decode_limits import batch_decoder_limit, decode_limit
from raylpclip.bench.ingest_bench_config import IngestBenchConfig, check, timed_batches_for
from raylpclip.bench.ingest_inputs import bench_shards, count_samples, decoder_kwargs
from raylpclip.bench.ingest_report import format_table, summarize
from raylpclip.bench.rate_meter import Meter, Rate
from raylpclip.bench.tar_rows import first_rows, image_bytes, rows_to_batch, tar_rows
from raylpclip.commands.bench import cmd_bench
from raylpclip.config import ConfigError, DataConfig, load_config
from raylpclip.data.decode import BatchDecoder
from raylpclip.data.shard_writer import sample_key, write_shards
from raylpclip.data.synthetic import SyntheticSpec, generate_samples
from raylpclip.models.bpe_tokenizer import train_tokenizer

SAMPLES, PER_SHARD, BATCH = 128, 32, 16
DATA = DataConfig(image_size=16, context_length=12, shuffle_buffer=32, decode_batch_size=20)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    samples = list(generate_samples(SAMPLES, spec=SyntheticSpec(image_size=24), seed=0))
    files = write_shards(samples, str(tmp_path_factory.mktemp("shards")), samples_per_shard=PER_SHARD)
    return files, samples


@pytest.fixture(scope="module")
def tokenizer(shards, tmp_path_factory):
    captions = [s.caption for s in shards[1]]
    return train_tokenizer(captions, vocab_size=300, out_dir=str(tmp_path_factory.mktemp("tok")))


def _shapes(batch) -> dict:
    return {name: (tuple(col.shape[1:]), str(col.dtype).replace("torch.", "")) for name, col in batch.items()}


def test_tar_rows_are_the_written_samples(shards):
    files, samples = shards
    rows = [row for path in files for row in tar_rows(path)]
    assert len(rows) == SAMPLES == count_samples(files)
    assert rows[33]["__key__"] == sample_key(1, 1, samples_per_shard=PER_SHARD)
    assert rows[33]["jpg"] == samples[33].jpg and rows[33]["txt"].decode() == samples[33].caption
    assert rows[33]["__url__"] == files[1] and {"json"} <= set(rows[0])


def test_dataloader_batches_equal_the_pipelines(shards, tokenizer):
    files, _ = shards
    loader = dataloader(files, data=DATA, tokenizer=tokenizer, batch_size=BATCH, workers=2, start_method="fork")
    batches = list(loader)
    # Ray's Train worker: every full batch of the one stream; here 2 workers of 2 shards (64 rows) each.
    assert len(batches) == SAMPLES // BATCH
    assert sum(len(b[batch_schema.IMAGE]) for b in batches) == SAMPLES
    rows = [row for path in files for row in tar_rows(path)]
    ours = BatchDecoder(**decoder_kwargs(DATA, tokenizer))(rows_to_batch(rows[:BATCH]))
    assert all(isinstance(col, torch.Tensor) for col in batches[0].values())
    assert _shapes(batches[0]) == _shapes(ours)
    assert tuple(batches[0][batch_schema.IMAGE].shape) == (BATCH, 3, 16, 16)
    # Every sample once: the workers split the shards, the shuffle buffers only reorder.
    assert sorted(torch.cat([b[batch_schema.IMAGE_ID] for b in batches]).tolist()) == sorted(
        BatchDecoder(**decoder_kwargs(DATA, tokenizer))(rows_to_batch(rows))[batch_schema.IMAGE_ID].tolist())


def test_shuffle_buffer_reorders_without_losing_rows():
    rows = [{"i": i} for i in range(50)]
    out = list(_shuffled(iter(rows), 8, np.random.default_rng(0)))
    assert sorted(r["i"] for r in out) == list(range(50)) and [r["i"] for r in out] != list(range(50))
    assert list(_shuffled(iter(rows), 0, np.random.default_rng(0))) == rows


def test_plain_loops_decode_every_sample(shards, tokenizer):
    files, _ = shards
    rows = first_rows(files, 100)
    images = image_bytes(rows)
    assert len(rows) == len(images) == 100
    limit = decode_limit(images, DATA, warmup=10)
    assert limit.samples == 90 and limit.per_s > 0 and limit.cpu_s > 0
    decoder_limit = batch_decoder_limit(rows, DATA, tokenizer)
    assert decoder_limit.samples == 80 and decoder_limit.per_s > 0  # 5 batches of 20, the first not timed


def test_meter_times_only_the_window(monkeypatch):
    clock = iter(range(100))
    monkeypatch.setattr(rate_meter.time, "perf_counter", lambda: float(next(clock)))
    meter = Meter(warmup=2, last=5)
    for n in (10, 10, 8, 8, 8, 3, 3):
        meter.add(n)
    rate = meter.rate()
    assert (rate.samples, rate.seconds) == (24, 3.0) and rate.per_s == pytest.approx(8.0)
    assert rate.window[0] <= rate.window[1]
    with pytest.raises(ValueError, match="only 3 batches"):
        short = Meter(warmup=2, last=4)
        for n in (1, 1, 1):
            short.add(n)
        short.rate()


def test_summary_ratios_and_table():
    cfg = IngestBenchConfig()
    rounds = {"decode_limit": [Rate(100, 100, 1.0, cpu_s=1.0), Rate(200, 100, 0.5, cpu_s=0.5)],
              "batch_decoder_limit": [Rate(160, 80, 0.5)] * 2,
              "dataloader": [Rate(150, 150, 1.0, cpu_s=2.0, machine_cpu_s=2.0)] * 2,
              "ours": [Rate(150, 300, 2.0), Rate(160, 320, 2.0, cpu_s=3.2, machine_cpu_s=4.0)]}
    s = summarize(cfg, cpus=2, samples=1000, files=["a.tar"], rounds=rounds)
    assert s["decode_limit_per_cpu_samples_per_s"] == 200 and s["decode_limit_samples_per_s"] == 400
    assert s["samples_per_s"] == s["ours_samples_per_s"] == 160
    assert s["ratio_vs_decode_limit"] == pytest.approx(0.4) and s["ratio_vs_dataloader"] == pytest.approx(160 / 150)
    assert s["ratio_vs_batch_decoder_limit"] == pytest.approx(160 / 320)
    assert s["rounds"]["decode_limit"] == [200, 400] and (s["cpus"], s["samples"], s["image_size"]) == (2, 1000, 64)
    assert s["cpu_us_per_sample"]["ours"] == pytest.approx(1e4) and s["cores_used"]["ours"] == pytest.approx(1.6)
    assert s["machine_cores_busy"]["ours"] == pytest.approx(2.0) and s["cores_used"]["batch_decoder_limit"] is None
    assert s["cpu_ratio_vs_decode_limit"] == pytest.approx(0.5e-2 / 1e-2)  # 5 ms vs 10 ms of CPU per sample
    assert s["cpu_ratio_vs_dataloader"] == pytest.approx((2.0 / 150) / 1e-2)
    table = format_table(s)
    assert "DataLoader" in table and "150-160" in table and "0.40x" in table and "1.60/2.00" in table
    assert "by CPU per sample" in table


def test_config_is_checked_before_any_work(tmp_path):
    cfg = load_config(IngestBenchConfig, None, ["synthetic.samples=100", "batch_size=64"])
    with pytest.raises(ConfigError, match="batch_size"):
        check(cfg)
    with pytest.raises(ConfigError, match="'cpus'"):
        check(load_config(IngestBenchConfig, None, [f"cpus={usable_cpus() + 1}"]))
    with pytest.raises(ConfigError, match="expected a benchmark name"):
        cmd_bench(["nope"])
    with pytest.raises(ConfigError, match="webdataset"):
        write_shards(generate_samples(4, spec=SyntheticSpec(image_size=16), seed=0), str(tmp_path), fmt="parquet")
        bench_shards(load_config(IngestBenchConfig, None, [f"data.train={tmp_path}"]))


def test_timing_stops_before_the_untimed_tail_and_the_shuffle_buffer():
    """10,000 samples in batches of 100: 30 batches of tail (0.3), 3 of a 250-row shuffle buffer."""
    cfg = load_config(IngestBenchConfig, None, ["batch_size=100", "data.shuffle_buffer=250"])
    assert timed_batches_for(10_000, cfg) == 100 - 30 - 3
    cfg.untimed_tail = 0.0
    assert timed_batches_for(10_000, cfg) == 100 - 3
    for bad in (1.0, -0.1):
        cfg.untimed_tail = bad
        with pytest.raises(ConfigError, match="untimed_tail"):
            check(cfg)
    cfg.untimed_tail = 0.9
    with pytest.raises(ConfigError, match="untimed tail"):
        timed_batches_for(5_000, cfg)


def test_tree_cpu_keeps_the_cpu_of_a_process_that_ended_in_the_window():
    """A child burns ~0.3 s of CPU and exits inside the window: its CPU stays in the tree's total."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    with TreeCpu(interval_s=0.05) as cpu:
        child = subprocess.Popen([sys.executable, "-c", burn])
        time.sleep(0.2)  # scanned while it runs
        child.wait()
        time.sleep(0.2)  # and after it has gone
    totals = [total for _, total in cpu.samples]
    assert totals == sorted(totals)  # never falls when a process goes
    assert totals[-1] - totals[0] >= 0.2
