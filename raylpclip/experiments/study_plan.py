"""A study's cells, planned before anything runs: every pretraining, headroom, probe, fine-tuning and
evaluation run of the design, each with its typed config checked through `load_config` (so a typo in the
last cell fails before the first one trains), where it writes, and which cells it reads from.

Layout under `<output_dir>/<name>/`: data/ (the world's splits, runtime/tune/study_world.py),
pretrain/<method>-f<size>-s<seed>, headroom/<method>-s<seed>, probe/<variant>-s<seed>,
finetune/<ft|carft>-s<seed>, eval/<probe-<variant>|finetune>-s<seed>-<split>, then report.md, results.csv,
claims.json and the plots.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raylpclip.commands.evaluate import EvalRunConfig
from raylpclip.commands.finetune import FinetuneConfig
from raylpclip.commands.probe import ProbeConfig
from raylpclip.commands.study import StudyConfig
from raylpclip.config import PretrainConfig, load_config, to_dict
from raylpclip.experiments.scaling_plan import point_name

SPLITS = ("pretrain", "downstream", "test-id", "test-ood", "test-clean", "train-clean")
EVAL_SPLITS = ("test-clean", "test-id", "test-ood")  # clean + corrupted views, ID contexts, held-out contexts
FINETUNE_METHODS = ("ft", "carft")


@dataclass
class Cell:
    id: str  # "<kind>/<name>": also its directory under the study
    kind: str  # pretrain | headroom | probe | finetune | eval
    config: Any  # the run's typed config (PretrainConfig, ProbeConfig, FinetuneConfig, EvalRunConfig, HeadroomSpec)
    needs: list[str] = field(default_factory=list)  # cells whose outputs it reads
    tags: dict[str, Any] = field(default_factory=dict)  # method, size, seed, split: the tables' columns


@dataclass
class HeadroomSpec:
    """The headroom measure of one pretrained model: a supervised logistic regression on image features
    against the zero-shot head, on clean images and on the ID distribution, and the cosines between the
    contexts' text embeddings."""

    name: str
    output_dir: str
    model: str  # the pretrained run directory
    pairs: dict[str, list[str]]  # measure -> [training shards the probe fits, test shards]
    train_samples: int
    templates: list[str]
    contexts: list[str]  # one template per context of the world ("a blurry photo of a {}."): their embeddings

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


@dataclass
class StudyPlan:
    cfg: StudyConfig
    dir: Path
    design_file: str | None
    design_hash: str  # of the resolved design (what the cells are made from)
    cells: list[Cell]

    def split(self, name: str) -> Path:
        return self.dir / "data" / name

    def cell(self, cell_id: str) -> Cell:
        return next(c for c in self.cells if c.id == cell_id)


def design_hash(cfg: StudyConfig) -> str:
    """What the study is, without where it runs: a changed design gives another hash."""
    plain = {k: v for k, v in to_dict(cfg).items() if k not in ("output_dir", "ray", "parallel", "parts")}
    return hashlib.sha256(repr(sorted(plain.items())).encode()).hexdigest()[:16]


def _pretrain(cfg: StudyConfig, study: Path, method: str, size: float, seed: int) -> Cell:
    name = f"{point_name(method, size)}-s{seed}"
    overrides = {**cfg.methods[method], "name": name, "output_dir": str(study / "pretrain"),
                 "data.train": str(study / "data" / "pretrain"), "data.eval": str(study / "data" / "test-id"),
                 "data.format": "webdataset", "data.image_size": cfg.world.image_size, "data.shuffle_seed": seed,
                 "train.seed": seed, "eval.templates": list(cfg.zeroshot_templates), "eval.retrieval": True,
                 "ray": to_dict(cfg.ray)}
    run = load_config(PretrainConfig, [cfg.pretrain], overrides, where=f"pretrain ({method}).")
    return Cell(f"pretrain/{name}", "pretrain", run, tags={"method": method, "size": size, "seed": seed})


def _common(cfg: StudyConfig, study: Path, name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "output_dir": str(study / kind), "data.format": "webdataset",
            "data.image_size": cfg.world.image_size, "ray": to_dict(cfg.ray)}


def plan_study(cfg: StudyConfig, *, design_file: str | None = None) -> StudyPlan:
    """Every cell of the design, smallest data size first, then the downstream cells per seed."""
    study = cfg.run_dir.resolve()
    top = max(cfg.sizes)
    cells = [_pretrain(cfg, study, m, size, seed) for size in sorted(cfg.sizes) for seed in cfg.seeds for m in cfg.methods]
    for seed in cfg.seeds:
        models = {m: cells_of(cells, "pretrain", method=m, size=top, seed=seed)[0] for m in cfg.methods}
        for method, source in models.items():
            pairs = {"clean": [str(study / "data" / "train-clean"), str(study / "data" / "test-clean")],
                     "id": [str(study / "data" / "downstream"), str(study / "data" / "test-id")]}
            spec = HeadroomSpec(f"{method}-s{seed}", str(study / "headroom"), str(source.config.run_dir), pairs,
                                cfg.headroom_train_samples, list(cfg.zeroshot_templates), [])
            cells.append(Cell(f"headroom/{spec.name}", "headroom", spec, [source.id], {"method": method, "seed": seed}))
        model = models[cfg.downstream_model]
        probes = []
        for variant, keys in cfg.probe_variants.items():
            probe = load_config(ProbeConfig, [cfg.probe, keys or {}], {
                **_common(cfg, study, f"{variant}-s{seed}", "probe"), "model": str(model.config.run_dir),
                "data.train": str(study / "data" / "downstream"), "data.eval": str(study / "data" / "test-id"),
                "eval.templates": list(cfg.zeroshot_templates), "evaluate": False,
                "inference": to_dict(cfg.inference), "lpclip.seed": seed}, where=f"probe ({variant}).")
            probes.append(Cell(f"probe/{probe.name}", "probe", probe, [model.id], {"seed": seed, "variant": variant}))
        cells += probes
        tuned = []
        for method in FINETUNE_METHODS:
            ft = load_config(FinetuneConfig, [cfg.finetune], {
                **_common(cfg, study, f"{method}-s{seed}", "finetune"), "method": method,
                "model": str(model.config.run_dir), "data.train": str(study / "data" / "downstream"),
                "data.eval": str(study / "data" / "test-id"), "eval.templates": list(cfg.zeroshot_templates),
                "train.seed": seed, "data.shuffle_seed": seed}, where="finetune.")
            tuned.append(Cell(f"finetune/{ft.name}", "finetune", ft, [model.id], {"method": method, "seed": seed}))
        cells += tuned
        for split in EVAL_SPLITS:
            for probe in probes:
                variant = probe.tags["variant"]
                cells.append(_eval(cfg, study, f"probe-{variant}-s{seed}-{split}", split,
                                   _probe_classifiers(probe.config), [probe.id], seed, group=f"probe-{variant}"))
            cells.append(_eval(cfg, study, f"finetune-s{seed}-{split}", split, _finetune_classifiers(cfg, tuned),
                               [c.id for c in tuned], seed, group="finetune"))
    # Parts left out: their cells (and the evaluations of their classifiers) are not run. Pretraining is
    # planned regardless, since every other part starts from it.
    parts = set(cfg.parts) | {"pretrain"}
    cells = [c for c in cells if (c.tags.get("group") or c.kind).split("-")[0] in parts]
    return StudyPlan(cfg, study, design_file, design_hash(cfg), cells)


def cells_of(cells: list[Cell], kind: str, **tags: Any) -> list[Cell]:
    return [c for c in cells if c.kind == kind and all(c.tags.get(k) == v for k, v in tags.items())]


def _probe_classifiers(probe: ProbeConfig) -> list[str]:
    rounds = [f"lpclip-r{r}" for r in range(1, probe.lpclip.rounds + 1)]
    return [f"{n}={probe.run_dir / 'classifiers' / n}" for n in ["zeroshot", *rounds, "supervised"]]


def _finetune_classifiers(cfg: StudyConfig, tuned: list[Cell]) -> list[str]:
    first = tuned[0].config
    out = [f"zeroshot={first.run_dir / 'classifiers' / 'zeroshot'}"]
    for cell in tuned:
        ft = cell.config
        out.append(f"{ft.method}={ft.run_dir / 'classifiers' / ft.method}")
        out += [f"wise-{ft.method}-{a:g}={ft.run_dir / 'classifiers' / f'wise-{ft.method}-{a:g}'}" for a in ft.wise_alphas]
    return out


def _eval(cfg: StudyConfig, study: Path, name: str, split: str, classifiers: list[str], needs: list[str],
          seed: int, *, group: str) -> Cell:
    robustness = to_dict(cfg.robustness)
    if split != "test-clean":  # contexts are the shift there: clean views only
        robustness["corruptions"] = []
    run = load_config(EvalRunConfig, None, {
        **_common(cfg, study, name, "eval"), "classifiers": classifiers, "data.eval": str(study / "data" / split),
        "eval.templates": list(cfg.zeroshot_templates), "robustness": robustness,
        "inference": to_dict(cfg.inference), "save_predictions": True}, where=f"eval ({split}).")
    return Cell(f"eval/{name}", "eval", run, needs, {"group": group, "split": split, "seed": seed})


def with_subset(cell: Cell, train: str) -> Cell:
    """A pretraining cell whose `data.train` names its subset of the training shards."""
    run = dataclasses.replace(cell.config, data=dataclasses.replace(cell.config.data, train=train))
    return dataclasses.replace(cell, config=run)
