"""`raylpclip finetune` config: plain fine-tuning (`ft`) and CAR-FT (`carft`), then WiSE-FT mixtures.

Same stack as raylpclip/config.py (dataclass defaults <- YAML <- `key=value`), reusing its data,
optim, train, eval and ray sections; the checks below add what only fine-tuning needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from raylpclip.config import (ConfigError, DataConfig, EvalConfig, OptimConfig, RayConfig, TrainConfig,
                              load_config)
from raylpclip.eval.templates import OPENAI_IMAGENET_TEMPLATES

METHODS = ("ft", "carft")
# What trains beside the head: the whole image tower (transformer + projection), or the same with its
# input embeddings (patch embedding, class token, positions) frozen.
TRAINABLE = ("image", "image_no_embed")


@dataclass
class CarftConfig:
    """CAR-FT's context term (methods.md section 3): lambda * KL(p_ctx(x; theta_0) || p_ctx(x; theta))."""

    kl_weight: float = 1.0  # lambda; 0 makes carft plain fine-tuning (and costs a frozen-copy forward)
    templates: list[str] = field(default_factory=lambda: list(OPENAI_IMAGENET_TEMPLATES))  # the contexts c_m
    # Context logits are cos / temperature; null uses the model's own logit scale s (logits s * cos),
    # as PSD's teacher_temperature does.
    temperature: Optional[float] = None


def _finetune_optim() -> OptimConfig:
    # Fine-tuning a pretrained tower wants a far smaller lr than pretraining from scratch.
    return OptimConfig(lr=1e-5, warmup_steps=20, weight_decay=0.1)


@dataclass
class FinetuneConfig:
    name: str = "finetune"
    output_dir: str = "runs"
    model: str = ""  # a CLIP directory, a raylpclip run directory or checkpoint directory (load_encoder)
    method: str = "carft"  # ft | carft
    carft: CarftConfig = field(default_factory=CarftConfig)
    train_head: bool = True  # the head starts as the zero-shot classifier; False keeps it fixed
    trainable: str = "image"  # image | image_no_embed
    wise_alphas: list[float] = field(default_factory=lambda: [0.5])  # theta = (1 - a) theta_0 + a theta_ft
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=_finetune_optim)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, checkpoint_every=100, log_every=10))
    eval: EvalConfig = field(default_factory=EvalConfig)  # classnames and the zero-shot head's templates
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def check_finetune(cfg: FinetuneConfig) -> None:
    """What raylpclip.config.validate (the shared sections) does not know about."""
    _require(bool(cfg.name) and "/" not in cfg.name and cfg.name not in (".", ".."),
             "name", f"got {cfg.name!r}, expected a plain directory name")
    _require(cfg.method in METHODS, "method", f"got {cfg.method!r}, expected one of {list(METHODS)}")
    _require(cfg.trainable in TRAINABLE, "trainable", f"got {cfg.trainable!r}, expected one of {list(TRAINABLE)}")
    _require(cfg.carft.kl_weight >= 0, "carft.kl_weight", f"got {cfg.carft.kl_weight}, expected >= 0")
    t = cfg.carft.temperature
    _require(t is None or t > 0, "carft.temperature", f"got {t}, expected > 0 or null (the model's logit scale)")
    _require(len(cfg.carft.templates) > 0, "carft.templates", "expected at least one context template")
    bad = [x for x in cfg.carft.templates if "{}" not in x]
    _require(not bad, "carft.templates", f"every template needs a '{{}}' for the class name; got {bad[:3]}")
    bad_alphas = [a for a in cfg.wise_alphas if not 0.0 <= a <= 1.0]
    _require(not bad_alphas, "wise_alphas", f"got {bad_alphas}, expected mixing weights in [0, 1]")
    parts = cfg.train.num_workers * cfg.optim.accum_steps
    _require(cfg.train.batch_size % parts == 0, "train.batch_size",
             f"{cfg.train.batch_size} is not divisible by train.num_workers * optim.accum_steps = {parts}")
    _require(not cfg.data.sources or not cfg.data.train, "data.sources", "give either data.train or data.sources")


def load_finetune_config(path: str | None = None, overrides: Sequence[str] = ()) -> FinetuneConfig:
    cfg = load_config(FinetuneConfig, path, overrides)
    check_finetune(cfg)
    return cfg


def require_inputs(cfg: FinetuneConfig) -> None:
    """The keys a run cannot start without (left empty by the defaults so recipes stay portable)."""
    _require(bool(cfg.model), "model", "required: a CLIP directory, a raylpclip run directory or checkpoint directory")
    _require(bool(cfg.data.train_sources()), "data.train",
             "required: labelled shards (a directory, glob, brace range or s3:// URL), or data.sources")
