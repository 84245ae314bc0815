"""`bench ingest`'s two per-core references, plain loops over samples already in memory on this one
core (the run multiplies them by the CPU count):

- the decode limit: decode + resize/augment of each image, the issue's per-core limit. No pipeline can
  beat it on the same cores; the gap to it is all the rest of the work plus the cost of moving batches.
- the BatchDecoder limit: adds tokenizing and batching, so the gap from it to the pipeline is what
  reading and moving the rows costs.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from raylpclip import batch_schema
from raylpclip.bench.ingest_inputs import decoder_kwargs
from raylpclip.bench.rate_meter import Meter, Rate
from raylpclip.bench.tar_rows import rows_to_batch
from raylpclip.config import DataConfig
from raylpclip.data.decode import BatchDecoder
from raylpclip.data.transforms import decode_image, train_draft_side, train_transform


def decode_limit(images: Sequence[bytes], data: DataConfig, *, warmup: int = 32) -> Rate:
    """Decode + random-resized-crop/resize of each image in a plain loop on this one core: what
    `BatchDecoder` does per image (in JPEG draft too with `data.jpeg_draft`, or the limit would be
    another decode's), with no reading, tokenizing or batching around it. The bytes are in memory
    already; the first `warmup` images warm caches and are not timed."""
    rng = np.random.default_rng(data.shuffle_seed)
    scale = (data.aug_scale_min, 1.0)
    draft = train_draft_side(data.image_size, scale=scale) if data.jpeg_draft else None
    meter = Meter(warmup=min(warmup, len(images) - 1), last=len(images))
    for jpg in images:
        train_transform(decode_image(jpg, draft=draft), size=data.image_size, rng=rng, scale=scale)
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
