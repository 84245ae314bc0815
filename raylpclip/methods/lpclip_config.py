"""LP-CLIP's settings (`lpclip:` in a probe config) and their checks; the method is raylpclip.methods.lpclip."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from raylpclip.config import ConfigError

LABEL_MODES = ("hard", "soft")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class LPCLIPConfig:
    labels: str = "hard"  # hard: CE on argmax p_T | soft: KL(p_T || softmax(g / temperature))
    confidence_threshold: float = 0.0  # relabelling keeps samples with max p >= this; 0 keeps all
    threshold_zeroshot: bool = False  # methods.md filters only the relabelling rounds; True filters round 1 too
    rounds: int = 2  # self-training rounds; round 1's teacher is zero-shot CLIP, round k's the probe of k - 1
    temperature: float = 1.0  # T of the student in the soft loss (methods.md: KL(p_T || softmax(g / T)))
    # s of the zero-shot teacher and of the probe's init: CLIP's clamp value, or None for "the CLIP model's
    # own learned scale", which the runtime (raylpclip probe) reads from the model before training.
    logit_scale: Optional[float] = 100.0
    init_from_zeroshot: bool = True  # A starts at s * W, so the untrained probe *is* the zero-shot classifier
    optimizer: str = "adamw"  # adamw | sgd (with momentum)
    epochs: int = 10
    lr: float = 5e-2
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    batch_size: int = 256
    seed: int = 0  # shuffling order of every round


def check_config(cfg: LPCLIPConfig, key: str = "lpclip") -> None:
    """Reject values that cannot work, naming the key (same ConfigError as raylpclip.config)."""

    def require(ok: bool, name: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"config key '{key}.{name}': {message}")

    require(cfg.labels in LABEL_MODES, "labels", f"got {cfg.labels!r}, expected one of {list(LABEL_MODES)}")
    require(0.0 <= cfg.confidence_threshold <= 1.0, "confidence_threshold",
            f"got {cfg.confidence_threshold}, expected in [0, 1]")
    require(cfg.rounds >= 1, "rounds", f"got {cfg.rounds}, expected >= 1")
    require(cfg.temperature > 0, "temperature", f"got {cfg.temperature}, expected > 0")
    require(cfg.logit_scale is None or cfg.logit_scale > 0, "logit_scale", f"got {cfg.logit_scale}, expected > 0 or null")
    require(cfg.optimizer in OPTIMIZERS, "optimizer", f"got {cfg.optimizer!r}, expected one of {list(OPTIMIZERS)}")
    require(cfg.epochs >= 1, "epochs", f"got {cfg.epochs}, expected >= 1")
    require(cfg.lr > 0, "lr", f"got {cfg.lr}, expected > 0")
    require(cfg.weight_decay >= 0, "weight_decay", f"got {cfg.weight_decay}, expected >= 0")
    require(0 <= cfg.momentum < 1, "momentum", f"got {cfg.momentum}, expected in [0, 1)")
    require(cfg.batch_size >= 1, "batch_size", f"got {cfg.batch_size}, expected >= 1")
