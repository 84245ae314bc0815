"""Read the fuzzed shard corpus (shard_fuzz.py) with the product's code, as a decode actor reads a shard,
and check every shard against what a correct reader must do with it (the invariants in shard_fuzz.py).

`python -m tests.drills.fuzz_run REPORT.json [PROGRESS]` writes the figures and the violations found;
tests/unit/test_shard_fuzz.py runs it in a process of its own, so that a crash or a hang in C code (a
decoder, pyarrow) fails that test, naming the shard from PROGRESS, instead of taking pytest down.

The path, without Ray: a tar through data/tarstream (readable_members, group_samples) into Arrow blocks
by runtime/data/webdataset_source.to_block; a parquet file through data/parquet_blocks; rows positioned
as for training (runtime/data/row_positions); each block turned into the numpy batch that Ray Data's
map_batches hands a decode actor (BlockAccessor), then one long-lived BatchDecoder for the whole
corpus, as in an actor. Evaluation transforms (no random crop) and no JPEG draft: pixels can be compared.
"""

from __future__ import annotations

import io
import json
import signal
import sys
import time
from collections import Counter
from functools import cache

from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from raylpclip import batch_schema
from raylpclip.data.decode import BatchDecoder, _keys, _skip_names, skip_id
from raylpclip.data.parquet_blocks import parquet_blocks
from raylpclip.data.tarstream import group_samples, readable_members
from raylpclip.data.tokenization import TextEncoder, tokenize
from raylpclip.data.transforms import eval_transform
from raylpclip.engine.clock import peak_memory_mb
from raylpclip.runtime.data.row_positions import RowPositions
from tests.drills.fuzz_payloads import WORDS, Item
from tests.drills.shard_fuzz import Case, corpus

IMAGE_SIZE, CONTEXT = 16, 16
SHARD_LIMIT_S = 60  # a shard read for longer hangs (the slowest take 0.3-0.7 s, 8 s on a machine at load 30)
MEMORY_GROWTH_LIMIT_MB = 256  # what one shard may add to the peak: a decoded bomb adds ~400


class ShardTimeout(BaseException):
    """(not an Exception: the product's `except Exception` must not take it for damage)"""


def text_encoder() -> TextEncoder:
    """A byte-level BPE as models/bpe_tokenizer.train_tokenizer makes one, without transformers."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.train_from_iterator([" ".join(WORDS)] * 5, trainer=trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)])
    return TextEncoder(tok, eos_token_id=1, pad_token_id=2)


class _Positions(RowPositions):
    def __init__(self, path: str):
        self._init_positions([path], None)


def read(case: Case, decoder: BatchDecoder) -> dict:
    """What the product did with one shard: rows read, samples delivered, skips by reason, damage."""
    from ray.data.block import BlockAccessor  # (here: checks and the corpus need no Ray; Ray is not started)

    from raylpclip.runtime.data.webdataset_source import ROWS_PER_BLOCK, to_block
    damage, path = [], f"/fuzz/{case.name}"
    if case.fmt == "webdataset":
        rows = [{**sample, "__url__": path} for sample in
                group_samples(readable_members(io.BytesIO(case.data), path, on_damage=damage.append))]
        blocks = [to_block(rows[i:i + ROWS_PER_BLOCK]) for i in range(0, len(rows), ROWS_PER_BLOCK)]
    else:
        blocks = parquet_blocks(io.BytesIO(case.data), path, rows_per_block=ROWS_PER_BLOCK, on_damage=damage.append)
    seen, delivered, counted, unnamed = 0, [], {}, 0
    decoder.take_skipped_ids()  # (none left by an earlier shard that crashed)
    for block in _Positions(path)._positioned(iter(blocks), path):
        batch = BlockAccessor.for_block(block).to_batch_format("numpy")
        keys = _keys(batch, block.num_rows)
        names = {skip_id(*name): key for name, key in zip(_skip_names(batch, keys), keys)}
        before = sum(decoder.skipped.values())
        out = decoder(batch)
        seen += block.num_rows
        taken = decoder.take_skipped_ids()
        for reason, ids in taken.items():
            counted.setdefault(reason, []).extend(names.get(i, "?") for i in ids)
        unnamed += sum(decoder.skipped.values()) - before - sum(map(len, taken.values()))
        delivered += zip(out[batch_schema.KEY].tolist(), out[batch_schema.IMAGE], out[batch_schema.INPUT_IDS],
                         out[batch_schema.LABEL].tolist())
    return {"seen": seen, "delivered": delivered, "counted": counted, "damaged": len(damage), "unnamed": unnamed}


LONG_CAPTION = 1 << 16


def token_maker(encoder: TextEncoder):
    """caption -> the token ids a decoder must deliver for it (each caption tokenized once). Of a 1 MB
    caption, its first 64 KB: the whole costs this tokenizer 1-20 s, and the decoder, which cuts it far
    shorter (data/caption_text.clip_caption), must still give the same first tokens."""
    return cache(lambda caption: tuple(
        tokenize(encoder, [caption[:LONG_CAPTION]], context_length=CONTEXT)["input_ids"][0].tolist()))


@cache
def _pixels(ref: bytes) -> bytes:
    return eval_transform(Image.open(io.BytesIO(ref)).convert("RGB"), size=IMAGE_SIZE).tobytes()


def check(case: Case, got: dict, tokens) -> list[str]:
    """The invariants the case's ground truth states, broken."""
    v, delivered = [], Counter(key for key, *_ in got["delivered"])
    counted = {key for keys in got["counted"].values() for key in keys}
    if got["seen"] != len(got["delivered"]) + sum(map(len, got["counted"].values())) or got["unnamed"]:
        v.append(f"rows read {got['seen']} != delivered {len(got['delivered'])} + counted {dict(got['counted'])}")
    for key, n in delivered.items():
        if not case.foreign and (n > 1 or (key not in case.good and key not in case.either)):
            v.append(f"{key!r} delivered {n}x, {'a bad sample' if key in case.bad else 'not a sample of the shard'}")
    for key in case.good:
        if delivered[key] != 1:
            v.append(f"good {key!r} delivered {delivered[key]}x (counted: {key in counted})")
    v += [f"bad {key!r} not counted" for key in sorted(case.bad) if key not in counted]
    v += [f"{key!r} neither delivered nor counted, and the shard not counted as damaged" for key in case.either
          if not delivered[key] and key not in counted and not got["damaged"]]
    for key, image, ids, label in got["delivered"]:
        item: Item | None = case.good.get(key) or case.either.get(key)
        if item is None:
            continue
        if item.caption is not None and tuple(ids.tolist()) != tokens(item.caption):
            v.append(f"{key!r} delivered with another caption's tokens")
        if item.ref is not None and image.tobytes() != _pixels(item.ref):
            v.append(f"{key!r} delivered with other pixels")
        if item.label is not None and label != item.label:
            v.append(f"{key!r} delivered with label {label}, not {item.label}")
    if case.damaged is not None and bool(got["damaged"]) != case.damaged:
        v.append("damaged, not counted as a bad shard" if case.damaged else "counted as a bad shard, undamaged")
    return [f"{case.name} ({case.kind}): {line}" for line in v]


def _alarm(_signum, _frame):
    raise ShardTimeout()


def run(cases: list[Case], progress: str | None = None) -> dict:
    encoder, start = text_encoder(), time.perf_counter()
    tokens = token_maker(encoder)
    decoder = BatchDecoder(tokenizer=encoder, image_size=IMAGE_SIZE, context_length=CONTEXT, train=False,
                           with_keys=True, fail_after_bad=1000, jpeg_draft=False)
    signal.signal(signal.SIGALRM, _alarm)
    violations, figures, slowest = [], Counter(), (0.0, "")
    for case in cases:
        if progress:
            with open(progress, "w") as f:
                f.write(case.name)
        peak, t0 = _peak_kb(), time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, SHARD_LIMIT_S)
        try:
            got = read(case, decoder)
        except ShardTimeout:
            violations.append(f"{case.name} ({case.kind}): no answer within {SHARD_LIMIT_S} s (hang)")
            continue
        except Exception as exc:  # noqa: BLE001 - every crash is a finding
            violations.append(f"{case.name} ({case.kind}): crashed: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        grown, slowest = (_peak_kb() - peak) / 1024, max(
            slowest, (time.perf_counter() - t0, case.name))
        if grown > MEMORY_GROWTH_LIMIT_MB:
            violations.append(f"{case.name} ({case.kind}): peak memory grew {grown:.0f} MB")
        violations += check(case, got, tokens)
        figures.update(shards=1, **{f"shards_{case.fmt}": 1}, good=len(case.good), bad=len(case.bad),
                       either=len(case.either), read=got["seen"], delivered=len(got["delivered"]),
                       damaged_shards_expected=int(bool(case.damaged)), damaged_shards_either=int(case.damaged is None),
                       damaged_shards_counted=int(bool(got["damaged"])),
                       **{f"counted_{r}": len(keys) for r, keys in got["counted"].items()})
    figures["counted"] = sum(n for k, n in figures.items() if k.startswith("counted_"))
    return {"figures": dict(figures), "violations": violations, "kinds": sorted({c.kind for c in cases}),
            "wall_s": round(time.perf_counter() - start, 2), "slowest_shard": [round(slowest[0], 3), slowest[1]],
            "peak_rss_mb": round(_peak_kb() / 1024)}


def _peak_kb() -> float:
    """This process's peak resident memory in kB, as the product measures it (engine/clock.py: the address
    space's own high-water mark; getrusage's ru_maxrss would report pytest's peak in this child)."""
    return peak_memory_mb()["rss_mb"] * 1024


def summary(report: dict) -> str:
    """The one line of figures for the closing note."""
    f = report["figures"]
    counted = ", ".join(f"{k[8:]} {n}" for k, n in sorted(f.items()) if k.startswith("counted_"))
    return (f"fuzz: {f['shards']} shards ({f.get('shards_webdataset', 0)} tar, {f.get('shards_parquet', 0)} parquet), "
            f"samples good {f['good']} / bad {f['bad']} / either {f['either']}, rows read {f['read']}, "
            f"counted {f['counted']} ({counted}), delivered {f['delivered']}, "
            f"bad shards counted {f['damaged_shards_counted']} ({f['damaged_shards_expected']} damaged, "
            f"{f['damaged_shards_either']} either), violations {len(report['violations'])}, "
            f"wall {report['wall_s']} s (+ corpus {report.get('corpus_s', '?')} s), "
            f"slowest shard {report['slowest_shard'][0]} s, "
            f"peak RSS {report['peak_rss_mb']} MB")


def main(argv: list[str]) -> None:
    t0 = time.perf_counter()
    cases = corpus()
    corpus_s = round(time.perf_counter() - t0, 2)
    report = {**run(cases, argv[1] if len(argv) > 1 else None), "corpus_s": corpus_s}
    with open(argv[0], "w") as f:
        json.dump(report, f)
    print(summary(report))


if __name__ == "__main__":
    main(sys.argv[1:])
