"""Retrieval evaluation groups the rows of one image (several captions) into one candidate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raylpclip import batch_schema
from raylpclip.eval.batch_eval import retrieval_evaluate


class _Tower(torch.nn.Module):
    """Hand-made embeddings: image v -> e_v; a text -> sum of e_token weighted by its mask value."""

    def encode_image(self, images):
        return F.one_hot(images[:, 0, 0, 0].long(), 8).float()

    def encode_text(self, ids, mask):
        return (F.one_hot(ids, 8).float() * mask.unsqueeze(-1)).sum(1)


def _batch(image_values, tokens, weights, image_ids):
    n = len(image_values)
    images = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(image_values, dtype=torch.uint8)
    return {batch_schema.IMAGE: images, batch_schema.INPUT_IDS: torch.tensor(tokens),
            batch_schema.ATTENTION_MASK: torch.tensor(weights), batch_schema.IMAGE_ID: torch.tensor(image_ids)}


def test_rows_sharing_an_image_id_are_one_image(monkeypatch):
    monkeypatch.setattr("raylpclip.eval.batch_eval.normalize_images", lambda x: x)
    # Images 1 and 2 with two captions each, image 3 with one, spread over two batches. Image 3's
    # caption reads mostly like image 1 (0.5 e1 + 0.3 e3): wrong for image retrieval, yet still the
    # caption closest to image 3.
    batches = [_batch([1, 1, 2], [[1, 0], [1, 0], [2, 0]], [[1.0, 0.0]] * 3, [10, 10, 20]),
               _batch([2, 3], [[2, 0], [1, 3]], [[1.0, 0.0], [0.5, 0.3]], [20, 30])]
    m = retrieval_evaluate(_Tower(), batches, device=torch.device("cpu"), ks=(1, 5))
    assert m["eval_images"] == 3 and m["eval_texts"] == 5
    assert m["image_retrieval_recall@1"] == pytest.approx(4 / 5)
    assert m["text_retrieval_recall@1"] == pytest.approx(1.0)
    assert m["image_retrieval_recall@5"] == pytest.approx(1.0)  # k capped at the 3 images
