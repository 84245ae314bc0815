"""LP-CLIP: a linear probe on frozen CLIP image features, trained on CLIP's own zero-shot pseudo-labels
with self-training, without annotations (methods.md section 2; Laroudie et al. 2023, arXiv 2309.10361).

    teacher (round 1):  p_T(y|x) = softmax(s * h_weak . W^T),  h = normalise(f(x)),  W (C, D) unit-norm
    student:            g(h) = A h + b,  A initialised from s * W (or zeros), b from 0
    hard labels:        y = argmax p_T(y | weak view);  loss CE(g(h_strong), y)
    soft labels:        loss KL(p_T || softmax(g(h_strong) / T))
    round k > 1:        relabel the weak views with the previous student, optionally keep only samples
                        with max p >= threshold, and train a fresh student again

This module is the pure-torch core and works on precomputed features: the weak and strong views'
image features, row i of both being the same image. Extracting those features (and the augmentations
that make the views) is batch inference and belongs to Ray Data in raylpclip.runtime, not here.

No function on the self-training path takes a labels argument, so none of them can read true labels;
`supervised_probe`, the labelled upper reference, is the only function here that sees them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from raylpclip.distributed import Collective
from raylpclip.engine.optim import lr_factor, param_groups
from raylpclip.methods.lpclip_config import LPCLIPConfig, check_config
from raylpclip.models.head import LinearProbe  # noqa: F401  (the probe; re-exported for callers)

# One process, the default: `_fit` is then plain mini-batch training (see raylpclip.distributed.Collective).
LOCAL = Collective()


def _require_scale(cfg: LPCLIPConfig) -> float:
    if cfg.logit_scale is None:
        raise ValueError("lpclip.logit_scale is null (the model's own scale): resolve it from the CLIP model "
                         "before training, as raylpclip probe does")
    return cfg.logit_scale


def zeroshot_logits(features: Tensor, weights: Tensor, *, logit_scale: float) -> Tensor:
    """features (N, D) raw or unit-norm image features, weights (C, D) unit-norm zero-shot classifier
    -> (N, C) logits s * normalise(h) . W^T.

    Computed as F.linear(normalise(h), s * W), the very operation `LinearProbe.from_zeroshot` performs
    before training, so the round-1 teacher and the untrained student agree bit for bit.
    """
    return F.linear(F.normalize(features.float(), dim=-1), logit_scale * weights.float())


def student_logits(probe: LinearProbe, features: Tensor, cfg: LPCLIPConfig) -> Tensor:
    """The logits whose softmax is the probe's predictive distribution: g(h) / T for soft labels (the
    distribution the KL loss fitted to p_T), g(h) for hard labels (the CE loss has no temperature).
    Used both to relabel in the next round and to evaluate the probe."""
    with torch.no_grad():
        logits = probe(features)
    return logits / cfg.temperature if cfg.labels == "soft" else logits


def pseudo_labels(teacher_logits: Tensor, cfg: LPCLIPConfig, *, apply_threshold: bool = True) -> tuple[Tensor, Tensor]:
    """teacher_logits (N, C) on the weak views -> (targets, mask).

    targets: (N,) long argmax p_T for hard labels, (N, C) float p_T = softmax(teacher_logits) for soft.
    mask: (N,) bool, max p_T >= cfg.confidence_threshold (all True when `apply_threshold` is False or
    the threshold is 0). There is deliberately no labels argument: pseudo-labels come from the teacher only.
    """
    if teacher_logits.ndim != 2:
        raise ValueError(f"teacher_logits must be (N, C), got {tuple(teacher_logits.shape)}")
    probs = teacher_logits.detach().float().softmax(dim=1)
    confidence, hard = probs.max(dim=1)
    if apply_threshold:
        mask = confidence >= cfg.confidence_threshold
    else:
        mask = torch.ones_like(confidence, dtype=torch.bool)
    return (hard if cfg.labels == "hard" else probs), mask


def _hard_loss(logits: Tensor, targets: Tensor, cfg: LPCLIPConfig) -> Tensor:
    return F.cross_entropy(logits, targets)


def _soft_loss(logits: Tensor, targets: Tensor, cfg: LPCLIPConfig) -> Tensor:
    # KL(p_T || q) with q = softmax(g / T); "batchmean" is the true per-sample KL, averaged.
    return F.kl_div(F.log_softmax(logits / cfg.temperature, dim=1), targets, reduction="batchmean")


def _build_optimizer(probe: LinearProbe, cfg: LPCLIPConfig) -> torch.optim.Optimizer:
    # engine.optim's groups keep the bias out of weight decay, as for every other model here.
    groups = param_groups(probe, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _epoch_batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[Tensor]:
    """`steps` index batches: a permutation of range(n) cut into batches (the last one partial), topped up
    from further permutations when another worker's larger shard needs more steps than this one has."""
    chunks = list(torch.randperm(n, generator=generator).split(batch_size))
    while len(chunks) < steps:
        chunks += list(torch.randperm(n, generator=generator).split(batch_size))
    return chunks[:steps]


def _fit(
    probe: LinearProbe,
    features: Tensor,
    targets: Tensor,
    loss_fn: Callable[[Tensor, Tensor, LPCLIPConfig], Tensor],
    cfg: LPCLIPConfig,
    generator: torch.Generator,
    collective: Collective = LOCAL,
) -> LinearProbe:
    """Mini-batch training for cfg.epochs epochs, cosine lr decay to 0 over all steps, no warmup (the
    probe starts from a working classifier, not from noise). The last partial batch is kept."""
    n = features.shape[0]
    steps_per_epoch = collective.max_int(math.ceil(n / cfg.batch_size))
    total_steps = cfg.epochs * steps_per_epoch
    optimizer = _build_optimizer(probe, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps=total_steps, warmup_steps=0, schedule="cosine", min_ratio=0.0),
    )
    probe.train()
    for _ in range(cfg.epochs):
        for index in _epoch_batches(n, cfg.batch_size, steps_per_epoch, generator):
            index = index.to(features.device)
            loss = loss_fn(probe(features[index]), targets[index], cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            collective.average_gradients(probe)
            optimizer.step()
            scheduler.step()
    probe.eval()
    return probe


def train_probe(
    features_strong: Tensor,
    targets: Tensor,
    mask: Tensor,
    init_weights: Tensor,
    cfg: LPCLIPConfig,
    generator: torch.Generator,
    collective: Collective = LOCAL,
) -> LinearProbe:
    """Train a fresh probe on the strong views' features (N, D) against pseudo-label `targets` ((N,)
    long or (N, C) float, per cfg.labels), using only rows where `mask` (N,) is True.

    init_weights (C, D): the zero-shot classifier; the probe starts at s * W when
    cfg.init_from_zeroshot, else at zeros (W then only gives the shape). `generator` drives the
    shuffling, so a seeded generator makes the result reproducible.
    """
    check_config(cfg)
    n, dim = features_strong.shape
    num_classes = init_weights.shape[0]
    if init_weights.shape[1] != dim or mask.shape != (n,) or targets.shape[0] != n:
        raise ValueError(f"shape mismatch: features {tuple(features_strong.shape)}, targets {tuple(targets.shape)}, "
                         f"mask {tuple(mask.shape)}, init_weights {tuple(init_weights.shape)}")
    expected = (n,) if cfg.labels == "hard" else (n, num_classes)
    if targets.shape != expected:
        raise ValueError(f"{cfg.labels} targets must have shape {expected}, got {tuple(targets.shape)}")
    keep = mask.to(features_strong.device).nonzero().squeeze(1)
    if keep.numel() == 0:
        raise ValueError(f"no sample passes confidence_threshold={cfg.confidence_threshold}; lower it")
    if cfg.init_from_zeroshot:
        probe = LinearProbe.from_zeroshot(init_weights, logit_scale=_require_scale(cfg))
    else:
        probe = LinearProbe(dim, num_classes).to(features_strong.device)
    loss_fn = _hard_loss if cfg.labels == "hard" else _soft_loss
    return _fit(probe, features_strong[keep], targets.to(features_strong.device)[keep], loss_fn, cfg, generator,
                collective)


@dataclass
class RoundResult:
    round: int  # 1-based
    teacher: str  # "zeroshot" or "probe" (the previous round's)
    probe: LinearProbe  # the student trained in this round
    targets: Tensor  # the pseudo-labels it was trained on: (N,) long or (N, C) float
    mask: Tensor  # (N,) bool, the samples it was trained on

    @property
    def coverage(self) -> float:
        """Share of samples kept by the confidence threshold."""
        return self.mask.float().mean().item()


def self_train(weak_feats: Tensor, strong_feats: Tensor, zeroshot_weights: Tensor, cfg: LPCLIPConfig, *,
               collective: Collective = LOCAL) -> list[RoundResult]:
    """LP-CLIP self-training on precomputed features, no labels anywhere.

    weak_feats, strong_feats (N, D): features of a weak and a strong augmentation of the same N images
    (row i = image i in both). zeroshot_weights (C, D): the unit-norm zero-shot classifier W. Round 1
    pseudo-labels the weak views with zero-shot CLIP; round k > 1 with the probe of round k - 1 (the
    confidence threshold applies from round 2, or from round 1 with cfg.threshold_zeroshot). Every
    round trains a fresh probe on the strong views. Returns one RoundResult per round.
    """
    check_config(cfg)
    if weak_feats.shape != strong_feats.shape or weak_feats.ndim != 2:
        raise ValueError(f"weak and strong features must both be (N, D), got {tuple(weak_feats.shape)} "
                         f"and {tuple(strong_feats.shape)}")
    generator = torch.Generator().manual_seed(cfg.seed)
    teacher_logits = zeroshot_logits(weak_feats, zeroshot_weights, logit_scale=_require_scale(cfg))
    results = []
    for round_ in range(1, cfg.rounds + 1):
        targets, mask = pseudo_labels(teacher_logits, cfg, apply_threshold=round_ > 1 or cfg.threshold_zeroshot)
        probe = train_probe(strong_feats, targets, mask, zeroshot_weights, cfg, generator, collective)
        results.append(RoundResult(round_, "zeroshot" if round_ == 1 else "probe", probe, targets, mask))
        teacher_logits = student_logits(probe, weak_feats, cfg)
    return results


def supervised_probe(
    features: Tensor,
    labels: Tensor,
    cfg: LPCLIPConfig,
    *,
    num_classes: int | None = None,
    init_weights: Tensor | None = None,
    collective: Collective = LOCAL,
) -> LinearProbe:
    """The labelled upper reference: the same probe, optimizer and schedule, trained with CE on the
    true labels (N,) of all N samples (cfg.labels, threshold and rounds do not apply).

    Starts at s * init_weights when given and cfg.init_from_zeroshot (the same start as LP-CLIP, for a
    like-for-like comparison), else at zeros with `num_classes` (default labels.max() + 1) classes.
    """
    check_config(cfg)
    if labels.shape != (features.shape[0],):
        raise ValueError(f"labels must be (N,) for features {tuple(features.shape)}, got {tuple(labels.shape)}")
    if init_weights is not None and cfg.init_from_zeroshot:
        probe = LinearProbe.from_zeroshot(init_weights, logit_scale=_require_scale(cfg))
    else:
        classes = num_classes if num_classes is not None else int(labels.max()) + 1
        probe = LinearProbe(features.shape[1], classes).to(features.device)
    generator = torch.Generator().manual_seed(cfg.seed)
    return _fit(probe, features, labels.to(features.device).long(), _hard_loss, cfg, generator, collective)
