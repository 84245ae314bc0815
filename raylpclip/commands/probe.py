"""`raylpclip probe CONFIG [key=value ...]`: LP-CLIP on a frozen CLIP (the run: runtime/train/probe_driver.py).

The run config lives here, so that a bad key is reported before Ray is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raylpclip.config import config_args, load_config, require
from raylpclip.config.sections import DataConfig, EvalConfig, RayConfig, RunConfig
from raylpclip.config.inference_sections import InferenceConfig, RobustnessConfig, ViewsConfig
from raylpclip.methods.lpclip_config import LPCLIPConfig
from raylpclip.methods.lpclip_config import check_config as check_lpclip


@dataclass
class ProbeWorkersConfig:
    num_workers: int = 1  # Ray Train workers sharing the feature rows (a probe on 1M x 512 features wants several)
    cpus_per_worker: float = 1.0
    threads: int = 1
    use_gpu: bool = False
    max_failures: int = 0


@dataclass
class ProbeConfig(RunConfig):
    name: str = "probe"
    model: str = ""  # the frozen CLIP: a save_pretrained dir, a raylpclip run dir or checkpoint
    data: DataConfig = field(default_factory=DataConfig)  # data.train: images to probe (labels optional), data.eval: test
    eval: EvalConfig = field(default_factory=EvalConfig)  # class names (default: the shards' label names) and templates
    lpclip: LPCLIPConfig = field(default_factory=lambda: LPCLIPConfig(logit_scale=None))  # None: the model's own s
    supervised: bool = True  # also train the labelled reference probe when the training shards carry labels
    max_train_samples: int = 0  # 0: every training image
    views: ViewsConfig = field(default_factory=ViewsConfig)  # the weak (teacher) and strong (student) views
    train: ProbeWorkersConfig = field(default_factory=ProbeWorkersConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    evaluate: bool = True  # run the robustness evaluation on data.eval after training
    ray: RayConfig = field(default_factory=RayConfig)

    def check(self) -> None:
        """Required inputs and the LP-CLIP section (the shared sections are checked by type)."""
        super().check()
        require(bool(self.model), "model", "required (a CLIP model directory, run directory or checkpoint)")
        require(bool(self.data.train), "data.train", "required (the images to probe, as shards)")
        require(not self.evaluate or bool(self.data.eval), "data.eval",
                "required when evaluate is true (the labelled test shards)")
        require(self.train.num_workers >= 1, "train.num_workers", f"got {self.train.num_workers}, expected >= 1")
        check_lpclip(self.lpclip)


def cmd_probe(args: list[str]) -> Path:
    cfg = load_config(ProbeConfig, *config_args(args))
    from raylpclip.runtime.train.probe_driver import run_probe  # Ray is imported only once the config is good

    summary = run_probe(cfg)
    if "pseudo_label_acc_r1" in summary:
        print(f"[raylpclip] round-1 pseudo-labels agree with the true labels on {summary['pseudo_label_acc_r1']:.3f} "
              f"of the training images (a diagnostic; training never reads them)")
    print(f"[raylpclip] probe finished in {summary['wall_s']:.0f}s; classifiers in {summary['run_dir']}/classifiers")
    return Path(summary["run_dir"]) / "summary.json"
