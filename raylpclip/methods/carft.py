"""CAR-FT, plain fine-tuning and WiSE-FT (methods.md section 3; Mao et al., arXiv 2211.16175). Pure torch.

    context weights  w_m = normalise(mean_k normalise(T(c_m(class_k))))        (M, D), once, frozen text tower
    p_ctx(x; theta)  = softmax(scale * normalise(f_theta(x)) . W_ctx^T)         over the M contexts
    loss             = CE(head(normalise(f_theta(x))), y) + lambda * KL(p_ctx(x; theta_0) || p_ctx(x; theta))
    WiSE-FT          theta = (1 - a) theta_0 + a theta_ft                       (image tower and head)

scale is the model's logit scale s, or 1 / temperature when one is configured. theta_0 is a frozen
copy of the image encoder (eval mode, no gradients, run under no_grad); the head starts as the
zero-shot classifier (s * W_cls). The text tower runs only to build W_ctx and the head, before
training: a step is one forward of the trained encoder, plus one of the frozen copy for CAR-FT.
`ft` is the same task with lambda = 0 and no frozen copy.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from raylpclip import batch_schema
from raylpclip.engine.pretrain_task import unwrap
from raylpclip.eval.zeroshot import prompt_features
from raylpclip.methods.finetune_model import ImageEncoder
from raylpclip.models.clip import ClipTower, normalize_images
from raylpclip.parallel.fsdp_sharding import reshard


def context_weights(tower: ClipTower, tokenizer, classnames: Sequence[str], templates: Sequence[str], *,
                    context_length: int, device: str | torch.device = "cpu", batch_size: int = 256) -> Tensor:
    """(M, D) unit-norm context embeddings, one per template: w_m = normalise(mean_k normalise(T(c_m(class_k)))).

    The transpose of the zero-shot classifier's averaging (which averages templates per class), on the
    same text features."""
    if not classnames or not templates:
        raise ValueError("context_weights needs at least one class name and one template")
    text = prompt_features(tower, tokenizer, classnames, templates, context_length=context_length,
                           device=device, batch_size=batch_size)  # (C, M, D)
    return F.normalize(text.mean(dim=0), dim=-1)


def context_scale(temperature: float | None, logit_scale: float) -> float:
    """The factor on cosine similarities in p_ctx: the model's logit scale, or 1 / temperature."""
    return float(logit_scale) if temperature is None else 1.0 / temperature


def carft_loss(logits: Tensor, labels: Tensor, *, features: Tensor | None = None, frozen_features: Tensor | None = None,
               context: Tensor | None = None, kl_weight: float = 0.0, scale: float = 1.0) -> dict[str, Tensor]:
    """logits (N, C), labels (N,); for CAR-FT also unit-norm features and frozen_features (N, D) and the
    context weights (M, D) -> {"ce_loss", "kl_loss" (lambda * KL), "context_kl" (KL, a metric)}.

    KL(p_0 || p) = sum_m p_0,m (log p_0,m - log p_m), averaged over the N rows ("batchmean")."""
    out = {"ce_loss": F.cross_entropy(logits.float(), labels)}
    if features is None:
        return out
    if frozen_features is None or context is None:
        raise ValueError("the CAR-FT term needs features, frozen_features and context weights together")
    student = F.log_softmax(scale * features.float() @ context.float().T, dim=1)
    teacher = F.log_softmax(scale * frozen_features.float() @ context.float().T, dim=1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    out.update(kl_loss=kl_weight * kl, context_kl=kl.detach())
    return out


class FinetuneTask:
    """`ft` / `carft` as a task for engine.loop.run_loop: a batch in, named losses and metrics out.

    model: an ImageClassifier (possibly DDP-wrapped). frozen: theta_0's image encoder, or None for `ft`.
    """

    def __init__(self, model: torch.nn.Module, *, num_classes: int, frozen: ImageEncoder | None = None,
                 context: Tensor | None = None, kl_weight: float = 0.0, scale: float = 1.0):
        if (frozen is None) != (context is None):
            raise ValueError("CAR-FT needs both the frozen encoder and the context weights (or neither, for ft)")
        if frozen is not None and any(p.requires_grad for p in frozen.parameters()):
            raise ValueError("the frozen copy theta_0 must not take gradients")
        self.model, self.frozen, self.context = model, frozen, context
        self.num_classes, self.kl_weight, self.scale = num_classes, kl_weight, scale

    def losses(self, batch: dict[str, Tensor], *, step: int) -> dict[str, Tensor]:
        images = normalize_images(batch[batch_schema.IMAGE])
        labels = batch[batch_schema.LABEL]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"training labels span [{int(labels.min())}, {int(labels.max())}] but the head has "
                             f"{self.num_classes} classes; check eval.classnames against the shards' labels")
        out = self.model(images)
        if self.frozen is None:
            result = carft_loss(out["logits"], labels)
        else:
            with torch.no_grad():
                frozen = F.normalize(self.frozen(images).float(), dim=-1)
                reshard(self.frozen)  # sharded (train.parallelism=fsdp): no backward will free its gathered root
            result = carft_loss(out["logits"], labels, features=out["image_features"], frozen_features=frozen,
                                context=self.context.to(images.device), kl_weight=self.kl_weight, scale=self.scale)
        result["train_acc1"] = (out["logits"].detach().argmax(dim=1) == labels).float().mean()
        return result

    def after_step(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {"model": unwrap(self.model).state_dict()}

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["model"])


def check_same_model(theta_0: Mapping[str, Tensor], theta_ft: Mapping[str, Tensor]) -> None:
    """Both state dicts hold the same keys with the same shapes and dtypes, or a ValueError says what differs."""
    only_0, only_ft = sorted(set(theta_0) - set(theta_ft)), sorted(set(theta_ft) - set(theta_0))
    problems = []
    if only_0:
        problems.append(f"keys only in theta_0: {only_0[:5]}{' ...' if len(only_0) > 5 else ''}")
    if only_ft:
        problems.append(f"keys only in theta_ft: {only_ft[:5]}{' ...' if len(only_ft) > 5 else ''}")
    for key in sorted(set(theta_0) & set(theta_ft)):
        a, b = theta_0[key], theta_ft[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{key}: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}")
    if problems:
        raise ValueError("WiSE-FT needs two state dicts of the same model; " + "; ".join(problems[:6]))


def wise_ft(theta_0: Mapping[str, Tensor], theta_ft: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """(1 - alpha) theta_0 + alpha theta_ft for every floating tensor; integer tensors (ids, counters) are
    copied from theta_ft. torch.lerp returns its endpoints exactly at alpha 0 and 1."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"WiSE-FT alpha must be in [0, 1], got {alpha}")
    check_same_model(theta_0, theta_ft)
    return {key: torch.lerp(a, theta_ft[key], alpha) if a.is_floating_point() else theta_ft[key].clone()
            for key, a in theta_0.items()}
