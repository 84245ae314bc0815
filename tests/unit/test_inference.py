"""The encoder actor's arithmetic (no Ray): features, and every head's logits in one pass."""

from __future__ import annotations

import numpy as np
import torch

from raylpclip.models.classifier import load_encoder, zeroshot_head
from raylpclip.models.clip import normalize_images
from raylpclip.runtime.data.batch_inference import Encoder, stack_heads
from tests.conftest import TINY_CLASSES


def test_encoder_heads_match_the_probes(tiny_clip_dir):
    tower, tokenizer = load_encoder(tiny_clip_dir)
    zeroshot = zeroshot_head(tower, tokenizer, TINY_CLASSES, ["a photo of a {}."])
    other = zeroshot_head(tower, tokenizer, TINY_CLASSES, ["a blurry sketch of a {}."], logit_scale=3.0)
    with torch.no_grad():
        other.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    encoder = Encoder(encoder=str(tiny_clip_dir), heads=stack_heads([zeroshot, other]))
    out = encoder({"view_clean": images, "view_fog@1": images[::-1].copy(), "label": np.arange(5)})
    with torch.no_grad():
        feats = tower.encode_image(normalize_images(torch.from_numpy(images)))
        expected = torch.stack([zeroshot(feats), other(feats)], dim=1)
    assert out["logits_clean"].shape == (5, 2, 3) and out["feat_clean"].shape == (5, feats.shape[1])
    torch.testing.assert_close(torch.from_numpy(out["logits_clean"]), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(out["logits_fog@1"]), expected.flip(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(out["feat_clean"], axis=1), 1.0, rtol=1e-5)
    assert list(out["label"]) == list(range(5)) and "view_clean" not in out
