"""The linear classification head shared by LP-CLIP probes, zero-shot classifiers and fine-tuned models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LinearProbe(nn.Module):
    """g(h) = A normalise(h) + b, A (C, D), b (C,).

    The probe normalises its input itself: the zero-shot teacher sees unit-norm CLIP embeddings, and
    a probe that did not would see a differently scaled h whenever callers pass raw encoder outputs,
    breaking the "untrained probe = zero-shot classifier" identity that the init relies on.
    """

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        # Zeros, not nn.Linear's random init: softmax regression is convex, so zeros lose nothing and
        # keep the probe a deterministic function of the data and the shuffling seed.
        self.weight = nn.Parameter(torch.zeros(num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))

    @classmethod
    def from_zeroshot(cls, weights: Tensor, *, logit_scale: float) -> "LinearProbe":
        """A = s * W from a (C, D) zero-shot classifier, b = 0."""
        probe = cls(weights.shape[1], weights.shape[0]).to(weights.device)
        with torch.no_grad():
            probe.weight.copy_(logit_scale * weights.float())
        return probe

    def forward(self, features: Tensor) -> Tensor:
        """features (N, D) -> logits (N, C)."""
        return F.linear(F.normalize(features.to(self.weight.dtype), dim=-1), self.weight, self.bias)
