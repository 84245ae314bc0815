"""PSD pretraining as a task: a batch in, named losses and metrics out. Pure torch, no Ray."""

from __future__ import annotations

import torch

from raylpclip import batch_schema
from raylpclip.config import LossConfig, PSDConfig
from raylpclip.losses import psd_alpha, psd_loss, psd_siglip_loss
from raylpclip.models.clip import normalize_images
from raylpclip.models.ema import ModelEMA
from raylpclip.models.patch_dropout import set_patch_dropout

TEACHER_EMA = "ema"  # the task state's key of PSD's EMA teacher
EMA_WEIGHTS = "ema_weights"  # the task state's key of the EMA weights (train.ema_decay)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


class PretrainTask:
    """Contrastive pretraining with progressive self-distillation (methods.md, section 1).

    `model` is a ClipTower, possibly DDP-wrapped. With `psd.a_max == 0` the loss is CLIP's. `loss.kind`
    "siglip": SigLIP's sigmoid loss, with PSD's soft targets in its binary form (losses/psd_siglip.py); the
    tower then carries the logit bias, logged as `logit_bias`.
    """

    def __init__(self, model: torch.nn.Module, *, psd: PSDConfig, total_steps: int, seed: int, rank: int,
                 ema_decay: float = 0.0, loss: LossConfig | None = None, patch_dropout_until_step: int = 0,
                 copy_model=None):
        self.model = model
        self.patch_dropout_until_step = patch_dropout_until_step  # > 0: model.patch_dropout ends at this step
        self.psd = psd
        self.loss = loss if loss is not None else LossConfig()
        self.total_steps = total_steps
        # The teacher costs nothing by default (stop-grad of the student's own logits); the EMA
        # teacher costs one extra no-grad forward per step.
        # `copy_model`: makes the EMA copies where the model cannot be copied (a sharded one: engine/training_setup.py).
        self.ema = ModelEMA(unwrap(model), decay=psd.ema_decay, copy=copy_model) if psd.teacher == "ema" else None
        # The EMA weights (ema_decay > 0: evaluated beside the raw ones, exportable). With the EMA teacher at
        # the same decay they are the same average, updated by the same step: one copy serves both (one
        # model's memory and one update per step fewer); at another decay they are two copies.
        self.weights_ema = None
        if ema_decay > 0:
            same = self.ema is not None and self.ema.decay == ema_decay
            self.weights_ema = self.ema if same else ModelEMA(unwrap(model), decay=ema_decay, copy=copy_model)
        # Per-rank generator: each worker draws its own soft subset, reproducibly across restarts.
        self.generator = torch.Generator().manual_seed(seed * 1000 + rank)

    def alpha(self, step: int) -> float:
        return psd_alpha(step, total_steps=self.total_steps, a_max=self.psd.a_max, ramp=self.psd.ramp)

    def losses(self, batch: dict[str, torch.Tensor], *, step: int) -> dict[str, torch.Tensor]:
        if self.patch_dropout_until_step and step >= self.patch_dropout_until_step:
            set_patch_dropout(unwrap(self.model).clip, 0.0)  # the unmasked tuning phase: every patch, to the end
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
        features = (out["image_features"].float(), out["text_features"].float(), out["logit_scale"].float())
        psd_args = dict(alpha=self.alpha(step), subset_fraction=self.psd.subset_fraction,
                        teacher_temperature=self.psd.teacher_temperature, generator=self.generator, **teacher)
        if self.loss.kind == "siglip":
            result = psd_siglip_loss(*features, out["logit_bias"].float(), dist_impl=self.loss.siglip_dist,
                                     **psd_args)
            result["logit_bias"] = out["logit_bias"].detach()
        else:
            result = psd_loss(*features, **psd_args)
        result["logit_scale"] = out["logit_scale"].detach()
        return result

    def _emas(self) -> list[tuple[ModelEMA, list[str]]]:
        """Each distinct EMA copy with the state keys that hold it (a shared copy: both keys)."""
        emas: list[tuple[ModelEMA, list[str]]] = []
        for key, ema in ((TEACHER_EMA, self.ema), (EMA_WEIGHTS, self.weights_ema)):
            if ema is not None:
                held = next((keys for e, keys in emas if e is ema), None)
                if held is not None:
                    held.append(key)
                else:
                    emas.append((ema, [key]))
        return emas

    def after_step(self) -> None:
        for ema, _ in self._emas():
            ema.update(unwrap(self.model))

    def state_dict(self) -> dict:
        state = {"model": unwrap(self.model).state_dict(), "generator": self.generator.get_state()}
        # A shared copy goes under both keys; torch.save writes shared storages once, so it costs no space.
        for ema, keys in self._emas():
            state.update({key: ema.module.state_dict() for key in keys})
        return state

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.generator.set_state(state["generator"])
        for ema, keys in self._emas():
            saved = next((state[key] for key in keys if key in state), None)
            if saved is not None:
                ema.module.load_state_dict(saved)
            else:  # a checkpoint from before this EMA was configured: it starts at the restored weights
                ema.reset(unwrap(self.model))
