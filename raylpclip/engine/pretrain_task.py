"""PSD pretraining as a task: a batch in, named losses and metrics out. Pure torch, no Ray."""

from __future__ import annotations

import torch

from raylpclip import batch_schema
from raylpclip.config import PSDConfig
from raylpclip.losses import psd_alpha, psd_loss
from raylpclip.models.clip import normalize_images
from raylpclip.models.ema import ModelEMA


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


class PretrainTask:
    """Contrastive pretraining with progressive self-distillation (methods.md, section 1).

    `model` is a ClipTower, possibly DDP-wrapped. With `psd.a_max == 0` the loss is CLIP's.
    """

    def __init__(self, model: torch.nn.Module, *, psd: PSDConfig, total_steps: int, seed: int, rank: int):
        self.model = model
        self.psd = psd
        self.total_steps = total_steps
        # The teacher costs nothing by default (stop-grad of the student's own logits); the EMA
        # teacher costs one extra no-grad forward per step.
        self.ema = ModelEMA(unwrap(model), decay=psd.ema_decay) if psd.teacher == "ema" else None
        # Per-rank generator: each worker draws its own soft subset, reproducibly across restarts.
        self.generator = torch.Generator().manual_seed(seed * 1000 + rank)

    def alpha(self, step: int) -> float:
        return psd_alpha(step, total_steps=self.total_steps, a_max=self.psd.a_max, ramp=self.psd.ramp)

    def losses(self, batch: dict[str, torch.Tensor], *, step: int) -> dict[str, torch.Tensor]:
        images = normalize_images(batch[batch_schema.IMAGE])
        ids, mask = batch[batch_schema.INPUT_IDS], batch[batch_schema.ATTENTION_MASK]
        out = self.model(images, ids, mask)
        teacher = {}
        if self.ema is not None:
            with torch.no_grad():
                t_out = self.ema(images, ids, mask)
            teacher = {"teacher_image_features": t_out["image_features"].float(),
                       "teacher_text_features": t_out["text_features"].float()}
        # Logits and softmax in fp32 even under bf16 autocast: a 100x-scaled bf16 logit loses digits.
        result = psd_loss(
            out["image_features"].float(), out["text_features"].float(), out["logit_scale"].float(),
            alpha=self.alpha(step), subset_fraction=self.psd.subset_fraction,
            teacher_temperature=self.psd.teacher_temperature, generator=self.generator, **teacher,
        )
        result["logit_scale"] = out["logit_scale"].detach()
        return result

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update(unwrap(self.model))

    def state_dict(self) -> dict:
        state = {"model": unwrap(self.model).state_dict(), "generator": self.generator.get_state()}
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.generator.set_state(state["generator"])
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"])
