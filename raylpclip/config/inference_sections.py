"""The sections of the runs that encode images with a trained model rather than train one: batch
inference (`probe`, `eval`), the robustness evaluation's corrupted views, and LP-CLIP's weak and strong
views. Plain dataclasses, filled by `load_config` like config/sections.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class InferenceConfig:
    """How the encoder actors of batch inference run (`probe` and `eval`)."""

    batch_size: int = 256  # images per encoder call
    actors: int = 1  # encoder actors (one model each); on GPUs, one per GPU
    cpus_per_actor: float = 1.0
    threads: int = 2  # torch intra-op threads per CPU actor
    use_gpu: bool = False
    precision: str = "fp32"  # fp32 | bf16
    decode_batch_size: int = 64  # rows per view-making task (corruptions multiply the work per row)


def _every_corruption() -> list[str]:
    from raylpclip.eval.corruptions import CORRUPTIONS

    return list(CORRUPTIONS)


def _every_severity() -> list[int]:
    from raylpclip.eval.corruptions import SEVERITIES

    return list(SEVERITIES)


@dataclass
class RobustnessConfig:
    """Which corrupted copies of the test set the robustness evaluation makes, and how it bins ECE."""

    corruptions: list[str] = field(default_factory=_every_corruption)  # all 16 by default
    severities: list[int] = field(default_factory=_every_severity)
    max_samples: int = 2000  # test images evaluated (each x every view); 0: all
    n_bins: int = 15  # ECE bins


@dataclass
class ViewsConfig:
    """LP-CLIP's weak and strong augmentations (methods.md section 2): the teacher labels the weak view,
    the student learns from the strong one. Each is a random-resized crop over `*_scale` of the area, an
    optional horizontal flip, and for the strong view colour jitter and random grayscale."""

    weak_scale_min: float = 0.8
    weak_hflip: bool = True
    strong_scale_min: float = 0.35
    strong_hflip: bool = True
    strong_jitter: float = 0.4  # brightness, contrast, saturation factors in [1 - jitter, 1 + jitter]
    strong_grayscale_p: float = 0.2
