"""`raylpclip finetune CONFIG.yaml [key=value ...]`: ft or CAR-FT on labelled shards, then WiSE-FT mixtures.

The run config: the shared data, optim, train, eval and ray sections (raylpclip/config), plus what only
fine-tuning needs (the method, CAR-FT's context term, what trains, the WiSE-FT mixing weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from raylpclip.config import config_args, load_config, require
from raylpclip.config.sections import DataConfig, EvalConfig, OptimConfig, RayConfig, RunConfig, TrainConfig
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
class FinetuneConfig(RunConfig):
    name: str = "finetune"
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

    def check(self) -> None:
        """What the shared sections' checks (config/checks.py) do not know about."""
        super().check()
        require(self.method in METHODS, "method", f"got {self.method!r}, expected one of {list(METHODS)}")
        require(self.trainable in TRAINABLE, "trainable", f"got {self.trainable!r}, expected one of {list(TRAINABLE)}")
        require(self.carft.kl_weight >= 0, "carft.kl_weight", f"got {self.carft.kl_weight}, expected >= 0")
        t = self.carft.temperature
        require(t is None or t > 0, "carft.temperature", f"got {t}, expected > 0 or null (the model's logit scale)")
        require(len(self.carft.templates) > 0, "carft.templates", "expected at least one context template")
        bad = [x for x in self.carft.templates if "{}" not in x]
        require(not bad, "carft.templates", f"every template needs a '{{}}' for the class name; got {bad[:3]}")
        bad_alphas = [a for a in self.wise_alphas if not 0.0 <= a <= 1.0]
        require(not bad_alphas, "wise_alphas", f"got {bad_alphas}, expected mixing weights in [0, 1]")
        parts = self.train.num_workers * self.optim.accum_steps
        require(self.train.batch_size % parts == 0, "train.batch_size",
                f"{self.train.batch_size} is not divisible by train.num_workers * optim.accum_steps = {parts}")
        require(not self.data.sources or not self.data.train, "data.sources", "give either data.train or data.sources")
        # Fine-tuning keeps no EMA: its weight average is WiSE-FT's (wise_alphas), taken against theta_0.
        require(self.train.ema_decay == 0, "train.ema_decay",
                f"got {self.train.ema_decay}, expected 0: EMA weights are a pretraining switch; fine-tuning "
                "averages weights with WiSE-FT (wise_alphas)")


def require_inputs(cfg: FinetuneConfig) -> None:
    """The keys a run cannot start without (left empty by the defaults so recipes stay portable)."""
    require(bool(cfg.model), "model", "required: a CLIP directory, a raylpclip run directory or checkpoint directory")
    require(bool(cfg.data.train_sources()), "data.train",
            "required: labelled shards (a directory, glob, brace range or s3:// URL), or data.sources")


def print_table(summary: dict) -> None:
    """One line per classifier directory: its ID (clean eval set) metrics and where it is."""
    rows = summary.get("id") or {}
    if rows:
        print(f"[raylpclip] {'classifier':<22} {'ID acc1':>8} {'acc5':>7} {'ece':>7} {'nll':>7}")
        for name, m in rows.items():
            print(f"[raylpclip] {name:<22} {m['acc1']:>8.4f} {m['acc5']:>7.4f} {m['ece']:>7.4f} {m['nll']:>7.4f}")
    for name, path in summary["classifiers"].items():
        print(f"[raylpclip] classifier {name}: {path}")
    if summary.get("skipped"):
        print(f"[raylpclip] skipped (bad or unlabelled input): {summary['skipped']}")
    print(f"[raylpclip] {summary.get('samples_per_s') or 0:.0f} samples/s, {summary['wall_s']:.0f}s wall")
    print(f"[raylpclip] run directory: {summary['run_dir']}")


def cmd_finetune(args: list[str]) -> Path:
    cfg = load_config(FinetuneConfig, *config_args(args))
    require_inputs(cfg)
    from raylpclip.runtime.train.finetune_driver import run_finetune  # Ray is imported only once the config is good

    summary = run_finetune(cfg)
    print_table(summary)
    return Path(summary["run_dir"]) / "summary.json"
