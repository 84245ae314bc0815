"""`raylpclip study CONFIG.yaml [key=value ...]`: a preregistered design (seeds x data sizes x methods) on
Ray, decided by its own statistics: report.md, results.csv and plots in `<output_dir>/<name>/`.

The design file (e.g. jobs/study-cifar10.yaml) names a captioned world (raylpclip/data/context_world.py:
real images from a class folder with contexts applied and named in noisy, partial captions; or the
procedural world), the recipes of the three methods (pretrain: CLIP vs PSD; probe: LP-CLIP vs its
zero-shot teacher and the supervised probe; finetune: FT vs CAR-FT and WiSE-FT), and the claims' tests.
A re-run skips the cells that finished (each cell is an ordinary pretrain/probe/finetune/eval run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raylpclip.config import config_args, load_config, require
from raylpclip.config.sections import RayConfig, RunConfig
from raylpclip.config.inference_sections import InferenceConfig, RobustnessConfig


PARTS = ("pretrain", "headroom", "probe", "finetune")
DEFAULT_METHODS = {"clip": {"psd.a_max": 0.0}, "psd": {"psd.a_max": 0.5}}


@dataclass
class StudyWorld:
    """The captioned world the study's data comes from (data/context_world.py, data/synthetic.py)."""

    kind: str = "contexts"  # contexts: real images of a class folder | procedural: drawn shapes (fast tests)
    train_folder: str = ""  # contexts: one subfolder per class (e.g. CIFAR-10's train/)
    test_folder: str = ""  # contexts: the held-out images, same classes
    # ID contexts: in pretraining, the downstream data and the ID test (empty: every context not held out).
    contexts: list[str] = field(default_factory=list)
    # Held-out contexts: in pretraining only, as web data covers more than a downstream task: the OOD test's.
    heldout_contexts: list[str] = field(default_factory=lambda: ["sketch", "upside-down"])
    contexts_per_image: list[float] = field(default_factory=lambda: [0.3, 0.45, 0.25])  # P(0), P(1), P(2) ...
    mention_p: float = 0.8  # each applied context is named in the caption with this probability
    mismatch_fraction: float = 0.2  # captions of another image of another class
    styles: list[str] = field(default_factory=lambda: ["plain", "outline", "pixel"])  # procedural: the ID styles
    heldout_styles: list[str] = field(default_factory=lambda: ["noisy"])  # procedural: pretraining only, the OOD test's
    train_samples: int = 20000  # procedural: training images (contexts: every image of train_folder)
    image_size: int = 32
    samples_per_shard: int = 1000  # whole shards are the unit of the data sizes
    test_samples: int = 2000  # images per test split (0: all)
    seed: int = 0  # the world is the same for every study seed


@dataclass
class StudyClaims:
    """How the claims are decided (experiments/study_stats.py)."""

    level: float = 0.95  # two-sided interval level
    id_margin: float = 0.02  # claim 3: "similar ID accuracy" = the ID difference's interval within +-margin
    bootstrap_resamples: int = 2000


@dataclass
class StudyConfig(RunConfig):
    name: str = "study"
    world: StudyWorld = field(default_factory=StudyWorld)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    sizes: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0])  # fractions of the training shards
    # Pretraining methods (name: pretrain keys); empty: DEFAULT_METHODS. (A default a YAML merges into could
    # not be replaced by a file that names other methods.)
    methods: dict[str, Any] = field(default_factory=dict)
    baseline: str = "clip"
    treatment: str = "psd"
    downstream_model: str = "psd"  # the pretrained model (largest size, each seed) that claims 2 and 3 start from
    pretrain: dict[str, Any] = field(default_factory=dict)  # pretrain config keys (the recipe), as in pretrain YAMLs
    probe: dict[str, Any] = field(default_factory=dict)  # probe config keys
    # LP-CLIP variants (name: probe keys on top of `probe`), each its own probe run; the first is the one claim 2
    # is decided with, the others are reported beside it. Empty: one variant, `lpclip`.
    probe_variants: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)  # finetune config keys (method is set per cell)
    zeroshot_templates: list[str] = field(default_factory=lambda: ["an image of a {}.", "this is a {}."])
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    claims: StudyClaims = field(default_factory=StudyClaims)
    headroom_train_samples: int = 5000  # training images whose clean features fit the headroom probe
    # Which parts of the design run (the claims of parts left out are reported as not run): a world can be
    # checked for headroom with [pretrain, headroom] before any method is compared.
    parts: list[str] = field(default_factory=lambda: ["pretrain", "headroom", "probe", "finetune"])
    parallel: int = 1  # cells run at once (Ray tasks); 1 on a small machine, more on a cluster
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if not self.methods:
            self.methods = {name: dict(keys) for name, keys in DEFAULT_METHODS.items()}
        if not self.probe_variants:
            self.probe_variants = {"lpclip": {}}

    def check(self) -> None:
        super().check()
        w = self.world
        require(w.kind in ("contexts", "procedural"), "world.kind", f"got {w.kind!r}, expected contexts or procedural")
        if w.kind == "contexts":
            require(bool(w.train_folder) and bool(w.test_folder), "world.train_folder",
                    "required with world.kind=contexts: folders with one subfolder per class (train and test)")
        require(0.0 <= w.mention_p <= 1.0, "world.mention_p", f"got {w.mention_p}, expected in [0, 1]")
        require(0.0 <= w.mismatch_fraction < 1.0, "world.mismatch_fraction", "expected in [0, 1)")
        require(len(self.seeds) >= 2 and len(set(self.seeds)) == len(self.seeds), "seeds",
                f"got {self.seeds}, expected at least 2 distinct seeds (intervals over seeds need 2)")
        require(len(self.sizes) >= 1 and all(0 < s <= 1 for s in self.sizes) and len(set(self.sizes)) == len(self.sizes),
                "sizes", f"got {self.sizes}, expected distinct fractions in (0, 1]")
        for role in ("baseline", "treatment", "downstream_model"):
            require(getattr(self, role) in self.methods, role,
                    f"got {getattr(self, role)!r}, expected one of the methods {list(self.methods)}")
        require(self.parallel >= 1, "parallel", "expected >= 1")
        bad = [v for v in self.probe_variants if not v or "-" in v or "/" in v]
        require(not bad, "probe_variants", f"got {bad}, expected names without '-' or '/'")
        unknown = [p for p in self.parts if p not in PARTS]
        require(bool(self.parts) and not unknown, "parts", f"got {self.parts}, expected some of {list(PARTS)}")
        require(0.5 < self.claims.level < 1.0, "claims.level", "expected in (0.5, 1)")
        bad = [t for t in self.zeroshot_templates if "{}" not in t]
        require(bool(self.zeroshot_templates) and not bad, "zeroshot_templates",
                f"expected templates with a '{{}}' for the class name; got {bad or 'none'}")


def cmd_study(args: list[str]) -> Path:
    path, overrides = config_args(args)
    cfg = load_config(StudyConfig, path, overrides)
    from raylpclip.experiments.study_plan import plan_study  # every cell's config checked before Ray starts

    plan = plan_study(cfg, design_file=path)
    from raylpclip.runtime.tune.study_runner import run_study

    summary = run_study(plan)
    print(f"[raylpclip] study {cfg.name}: {summary['cells_run']} cells run, {summary['cells_skipped']} reused, "
          f"{summary['wall_s']:.0f}s; report: {summary['report']}")
    for claim in summary["claims"]:
        print(f"[raylpclip] claim {claim['id']} ({claim['title']}): {claim['verdict']}")
    return Path(summary["run_dir"]) / "summary.json"
