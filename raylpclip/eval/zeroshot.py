"""Zero-shot classifier weights from class names and prompt templates (methods.md, LP-CLIP teacher)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from raylpclip.data.tokenization import tokenize
from raylpclip.models.clip import ClipTower


def prompt_features(tower: ClipTower, tokenizer, classnames: Sequence[str], templates: Sequence[str], *,
                    context_length: int, device: str | torch.device = "cpu", batch_size: int = 256) -> torch.Tensor:
    """(C, M, D) unit-norm text features of every template m filled with every class name k, class-major.

    The zero-shot classifier averages them over templates; CAR-FT's context weights (methods/carft.py)
    over classes. Runs under no_grad with the tower in eval mode (no dropout) and restores its training
    mode after.
    """
    texts = [template.format(name) for name in classnames for template in templates]  # class-major
    was_training = tower.training
    tower.eval()
    try:
        with torch.no_grad():
            chunks = []
            for start in range(0, len(texts), batch_size):
                tokens = tokenize(tokenizer, texts[start : start + batch_size], context_length=context_length)
                ids = torch.from_numpy(tokens["input_ids"]).to(device)
                mask = torch.from_numpy(tokens["attention_mask"]).to(device)
                chunks.append(tower.encode_text(ids, mask, normalize=True).float())
            return torch.cat(chunks).view(len(classnames), len(templates), -1)
    finally:
        tower.train(was_training)


def zeroshot_classifier(
    tower: ClipTower,
    tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    context_length: int,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """(C, D) unit-norm class embeddings: W_k = normalise(mean_m normalise(T(template_m.format(class_k)))).

    The tower runs in eval mode under no_grad (`prompt_features`). Logits for images are then
    `s * image_features @ W.T`.
    """
    if not classnames or not templates:
        raise ValueError("zeroshot_classifier needs at least one class name and one template")
    per_template = prompt_features(tower, tokenizer, classnames, templates, context_length=context_length,
                                   device=device, batch_size=batch_size)  # (C, M, D)
    return F.normalize(per_template.mean(dim=1), dim=-1)
