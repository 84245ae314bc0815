"""How much a CLIP's image features know beyond its zero-shot head, measured before any method is compared:
a supervised linear probe (multinomial logistic regression with the true labels) on clean image features
against the zero-shot classifier on the same test images, and how distinct the text embeddings of the
world's contexts are (pairwise cosines). LP-CLIP can only gain where the first margin exists; CAR-FT's
context term only constrains where the second cosines are well below 1. Pure torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, weight_decay: float = 1e-4,
                     steps: int = 200) -> torch.nn.Linear:
    """Multinomial logistic regression on L2-normalised features (N, D), full batch, L-BFGS: a deterministic,
    well-converged probe (the same normalisation as LinearProbe and the zero-shot head)."""
    x = F.normalize(features.float(), dim=1)
    probe = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=steps, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x * 10.0), labels) + weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


def probe_accuracy(probe: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((probe(F.normalize(features.float(), dim=1) * 10.0).argmax(1) == labels).float().mean())


def zeroshot_accuracy(weights: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> float:
    """weights: (C, D) unit-norm class embeddings; features: (N, D)."""
    with torch.no_grad():
        return float(((F.normalize(features.float(), dim=1) @ weights.float().T).argmax(1) == labels).float().mean())


def cosine_summary(embeddings: torch.Tensor) -> dict[str, float]:
    """Off-diagonal pairwise cosines of (M, D) embeddings: their mean, min and max."""
    e = F.normalize(embeddings.float(), dim=1)
    sims = e @ e.T
    off = sims[~torch.eye(len(e), dtype=torch.bool)]
    return {"mean": float(off.mean()), "min": float(off.min()), "max": float(off.max())}


def headroom(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
             test_labels: torch.Tensor, zeroshot_weights: torch.Tensor) -> dict[str, float]:
    """The supervised probe's and the zero-shot head's test accuracy on the same clean test images."""
    num_classes = int(zeroshot_weights.shape[0])
    probe = fit_linear_probe(train_features, train_labels, num_classes)
    supervised = probe_accuracy(probe, test_features, test_labels)
    zeroshot = zeroshot_accuracy(zeroshot_weights, test_features, test_labels)
    return {"zeroshot_acc1": zeroshot, "supervised_probe_acc1": supervised, "margin": supervised - zeroshot,
            "probe_train_acc1": probe_accuracy(probe, train_features, train_labels),
            "train_images": float(len(train_labels)), "test_images": float(len(test_labels))}
