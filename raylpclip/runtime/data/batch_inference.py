"""Batch inference on Ray Data: shards -> views (CPU tasks) -> image features and head logits (an actor
pool holding one encoder per actor, on a GPU when the cluster has them).

Used by `raylpclip probe` (weak/strong features and teacher logits, written once as parquet so that
probing and relabelling never run the encoder again) and `raylpclip eval` (clean and corrupted views
through every head of an encoder in one pass).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import ray
import torch
from ray.data import Dataset

from raylpclip import batch_schema
from raylpclip.batch_schema import FEATURE_PREFIX, LOGITS_PREFIX, TEXT_FEATURES
from raylpclip.config import DataConfig, InferenceConfig, ViewsConfig
from raylpclip.data.shard_files import resolve_shards
from raylpclip.data.tokenization import text_encoder
from raylpclip.data.views import IMAGE_PREFIX, ViewDecoder
from raylpclip.engine.loop import autocast
from raylpclip.models.classifier import load_encoder
from raylpclip.models.clip import normalize_images
from raylpclip.models.head import LinearProbe
from raylpclip.runtime.data.shard_reader import read_shards


def stack_heads(heads: Sequence[LinearProbe]) -> tuple[np.ndarray, np.ndarray]:
    """Heads sharing one class list -> weight (H, C, D) and bias (H, C) arrays for the encoder actors."""
    shapes = {tuple(h.weight.shape) for h in heads}
    if len(shapes) != 1:
        raise ValueError(f"heads of one encoder must share (classes, dim); got {sorted(shapes)}")
    weight = torch.stack([h.weight.detach().float().cpu() for h in heads]).numpy()
    bias = torch.stack([h.bias.detach().float().cpu() for h in heads]).numpy()
    return weight, bias


class Encoder:
    """`map_batches` actor: every `view_<view>` column -> `feat_<view>` (N, D) unit-norm features and/or
    `logits_<view>` (N, H, C) = one logit row per head (heads act on the unit-norm features, as
    LinearProbe does); captions -> `text_feat`. Other columns pass through."""

    def __init__(self, *, encoder: str, heads: tuple[np.ndarray, np.ndarray] | None = None,
                 keep_features: bool = True, precision: str = "fp32", threads: int = 1):
        if not torch.cuda.is_available():
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        tower, _ = load_encoder(encoder)
        self.tower = tower.to(self.device).eval()
        self.heads = None if heads is None else tuple(torch.tensor(a, device=self.device) for a in heads)
        self.keep_features = keep_features
        self.precision = precision
        self.images, self.started, self.last_print = 0, time.perf_counter(), 0.0

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: v for k, v in batch.items()
               if not k.startswith(IMAGE_PREFIX) and k not in (batch_schema.INPUT_IDS, batch_schema.ATTENTION_MASK)}
        for name, images in batch.items():
            if not name.startswith(IMAGE_PREFIX):
                continue
            view = name[len(IMAGE_PREFIX):]
            feats = self._encode(images)
            if self.keep_features:
                out[FEATURE_PREFIX + view] = feats.cpu().numpy()
            if self.heads is not None:
                weight, bias = self.heads
                out[LOGITS_PREFIX + view] = (torch.einsum("nd,hcd->nhc", feats, weight) + bias).cpu().numpy()
        self._progress(len(batch[batch_schema.LABEL]) if batch_schema.LABEL in batch else 0)
        if batch_schema.INPUT_IDS in batch:
            with autocast(self.precision, self.device):
                text = self.tower.encode_text(torch.from_numpy(batch[batch_schema.INPUT_IDS]).to(self.device),
                                              torch.from_numpy(batch[batch_schema.ATTENTION_MASK]).to(self.device))
            out[TEXT_FEATURES] = text.float().cpu().numpy()
        return out

    def _progress(self, rows: int) -> None:
        """A line every 30 s per actor: batch inference over millions of images must show it is moving."""
        self.images += rows
        elapsed = time.perf_counter() - self.started
        if elapsed - self.last_print >= 30:
            self.last_print = elapsed
            print(f"[raylpclip] encoder actor: {self.images} images encoded ({self.images / elapsed:.0f}/s)", flush=True)

    def _encode(self, images: np.ndarray) -> torch.Tensor:
        pixels = normalize_images(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        with autocast(self.precision, self.device):
            return self.tower.encode_image(pixels).float()


def view_dataset(paths: str, data: DataConfig, *, views: Sequence[str], limit: int = 0, tokenizer=None,
                 counter=None, batch_size: int = 64, augment: ViewsConfig | None = None) -> Dataset:
    """Shards -> one row per usable image with an `view_<view>` column per view (CPU tasks)."""
    files, fmt = resolve_shards(paths, data.format)
    ds, _ = read_shards(files, fmt=fmt, s3=data.s3, counter=counter)
    if limit:
        ds = ds.limit(limit)
    return ds.map_batches(
        ViewDecoder, fn_constructor_kwargs=dict(
            views=list(views), image_size=data.image_size, seed=data.shuffle_seed, tokenizer=text_encoder(tokenizer),
            context_length=data.context_length, fail_after_bad=data.fail_after_bad, counter=counter,
            augment=augment),
        batch_size=batch_size, num_cpus=data.decode_cpus,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=data.decode_concurrency,
                                           initial_size=data.decode_concurrency),
    )


def encode(ds: Dataset, *, encoder: str, cfg: InferenceConfig, heads: Sequence[LinearProbe] = (),
           keep_features: bool = True) -> Dataset:
    """Append features/logits with an actor pool of encoders."""
    return ds.map_batches(
        Encoder,
        fn_constructor_kwargs=dict(encoder=encoder, heads=stack_heads(heads) if heads else None,
                                   keep_features=keep_features, precision=cfg.precision, threads=cfg.threads),
        batch_size=cfg.batch_size,
        num_cpus=0 if cfg.use_gpu else cfg.cpus_per_actor,
        num_gpus=1 if cfg.use_gpu else 0,
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
    )
