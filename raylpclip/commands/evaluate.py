"""`raylpclip eval CONFIG [key=value ...]`: robustness evaluation of classifiers on a clean test set and
its corrupted copies (or retrieval on a captioned test set), as a table, CSVs and plots.

Classifiers are given as paths, optionally named (`name=path`): a classifier directory written by
`raylpclip probe` or `raylpclip finetune`, or any CLIP model (a save_pretrained directory, a run
directory, a checkpoint), which is then evaluated zero-shot with `eval.classnames` (default: the test
shards' label names) and `eval.templates`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raylpclip.config import ConfigError, config_args, load_config, require
from raylpclip.config.sections import DataConfig, EvalConfig, RayConfig, RunConfig
from raylpclip.config.inference_sections import InferenceConfig, RobustnessConfig
from raylpclip.data.metadata import label_names
from raylpclip.data.shard_files import resolve_shards
from raylpclip.data.storage import configure_s3
from raylpclip.models.classifier import Classifier, is_classifier, load_classifier, load_encoder, zeroshot_head


@dataclass
class EvalRunConfig(RunConfig):
    name: str = "eval"
    classifiers: list[str] = field(default_factory=list)  # paths, or name=path
    data: DataConfig = field(default_factory=DataConfig)  # data.eval: the test shards
    eval: EvalConfig = field(default_factory=EvalConfig)  # zero-shot classes and templates for bare models
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    save_predictions: bool = False  # predictions.npz: every test image's predicted class and confidence

    def check(self) -> None:
        super().check()
        require(bool(self.classifiers), "classifiers", "required (classifier directories or CLIP model paths)")
        require(bool(self.data.eval), "data.eval", "required (the test shards)")


def _named(entries: list[str]) -> dict[str, str]:
    named: dict[str, str] = {}
    for i, entry in enumerate(entries):
        name, sep, path = entry.partition("=")
        name, path = (name, path) if sep else (Path(entry.rstrip("/")).name, entry)
        if not path or not Path(path).exists():
            raise ConfigError(f"config key 'classifiers.{i}': {path!r} does not exist (expected a classifier "
                              f"directory or a CLIP model directory, run directory or checkpoint)")
        if name in named:
            raise ConfigError(f"config key 'classifiers.{i}': the name {name!r} is used twice; write name=path")
        named[name] = path
    return named


def test_classnames(cfg: EvalRunConfig) -> list[str]:
    if cfg.eval.classnames:
        return list(cfg.eval.classnames)
    files, fmt = resolve_shards(cfg.data.eval, cfg.data.format)
    return label_names(files, fmt=fmt)


def resolve_classifiers(cfg: EvalRunConfig) -> tuple[dict[str, Classifier | str], dict[str, object]]:
    """name -> Classifier (classification), or name -> encoder path when the test set is captions only."""
    named = _named(cfg.classifiers)
    classnames = None
    out: dict[str, Classifier | str] = {}
    tokenizers: dict[str, object] = {}
    for name, path in named.items():
        if is_classifier(path):
            out[name] = load_classifier(path)
            continue
        classnames = test_classnames(cfg) if classnames is None else classnames
        tower, tokenizer = load_encoder(path)
        if classnames:
            head = zeroshot_head(tower, tokenizer, classnames, cfg.eval.templates)
            out[name] = Classifier(encoder=str(Path(path).resolve()), head=head, classnames=classnames, kind="zeroshot")
        else:
            out[name] = str(Path(path).resolve())
            tokenizers[out[name]] = tokenizer
    kinds = {isinstance(c, Classifier) for c in out.values()}
    if len(kinds) > 1:
        raise ConfigError("config key 'classifiers': the test set has no labels (retrieval) but some classifiers "
                          "are classifier directories; evaluate them on labelled test shards")
    return out, tokenizers


def cmd_eval(args: list[str]) -> Path:
    cfg = load_config(EvalRunConfig, *config_args(args))
    configure_s3(cfg.data.s3)
    classifiers, tokenizers = resolve_classifiers(cfg)  # models load before Ray starts: a bad path fails fast
    from raylpclip.runtime.data.robustness_eval import run_robustness_eval

    summary = run_robustness_eval(cfg, classifiers, tokenizers=tokenizers)
    print(f"[raylpclip] eval of {len(classifiers)} classifiers on {summary['test_samples']} test images x "
          f"{summary['views']} views, {summary['wall_s']:.0f}s; tables and plots in {cfg.run_dir}")
    return Path(summary["run_dir"]) / "summary.json"
