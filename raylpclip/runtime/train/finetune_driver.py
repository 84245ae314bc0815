"""The fine-tuning driver: theta_0, the zero-shot head and the context weights are built once here
(the only text-tower forwards of a run), workers train, then the classifiers are written and evaluated.

Outputs in <output_dir>/<name>/: config.yaml, Ray Train checkpoints, classifiers/zeroshot (the origin,
encoder referenced), classifiers/<method> (the fine-tuned tower saved inside), classifiers/wise-<method>-<a>
for each WiSE-FT mixing weight, and summary.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from ray.train.torch import TorchTrainer

from raylpclip.commands.finetune import FinetuneConfig
from raylpclip.commands.plot import draw_run_curves
from raylpclip.config import ConfigError, save_config
from raylpclip.data.metadata import label_names
from raylpclip.data.shard_files import resolve_shards
from raylpclip.data.storage import configure_s3
from raylpclip.engine.checkpoint_state import load_state
from raylpclip.methods.carft import context_scale, context_weights, wise_ft
from raylpclip.methods.finetune_model import ImageClassifier, ImageEncoder, evaluate_classifier
from raylpclip.models.classifier import context_length, load_classifier, load_encoder, save_classifier, zeroshot_head
from raylpclip.models.head import LinearProbe
from raylpclip.runtime.cluster import counters
from raylpclip.runtime.cluster.session import ensure_ray
from raylpclip.runtime.cluster.stop_notice import new_notice
from raylpclip.runtime.data.decode_pool import eval_dataset
from raylpclip.runtime.train.finetune_worker import FinetuneWorkerArgs, finetune_worker
from raylpclip.runtime.train.trainer_factory import (TrainData, checkpoint_place, fit, inspect_train_data, make_trainer,
                                                     must_have_checkpoint, run_path, run_storage, train_inputs)
from raylpclip.summary import write_summary

TRAIN_KEYS = ("step", "samples_seen", "loss", "ce_loss", "kl_loss", "context_kl", "train_acc1", "epoch",
              "data_wait_fraction")


def classnames_of(cfg: FinetuneConfig) -> list[str]:
    """eval.classnames, else the label names of the eval shards (smaller), else of the training shards."""
    if cfg.eval.classnames:
        return list(cfg.eval.classnames)
    path = cfg.data.eval or cfg.data.train_sources()[0].path
    files, fmt = resolve_shards(path, cfg.data.format)
    names = label_names(files, fmt=fmt)
    if not names:
        raise ValueError(f"shards {path} carry no class labels (`label` and `label_name` in the .json metadata or "
                         "parquet columns); fine-tuning needs labelled shards, or set eval.classnames")
    return names


def prepare_start(cfg: FinetuneConfig, tower, tokenizer, classnames: list[str]) -> dict:
    """theta_0 as an ImageClassifier with the zero-shot head, and CAR-FT's context weights and scale."""
    head = zeroshot_head(tower, tokenizer, classnames, cfg.eval.templates)
    logit_scale = float(tower.logit_scale().detach())
    context = None
    if cfg.method == "carft":
        context = context_weights(tower, tokenizer, classnames, cfg.carft.templates,
                                  context_length=context_length(tower))
    return {"model": ImageClassifier(ImageEncoder.of(tower), head), "context": context,
            "scale": context_scale(cfg.carft.temperature, logit_scale), "logit_scale": logit_scale}


def build_trainer(cfg: FinetuneConfig, *, start_ref, tokenizer, num_classes: int, data: TrainData,
                  counter, notice=None) -> TorchTrainer:
    inputs = train_inputs(cfg, data, tokenizer=tokenizer, counter=counter, with_eval=cfg.train.eval_every > 0)
    storage, filesystem = run_storage(cfg)
    args = FinetuneWorkerArgs(config=cfg, start=start_ref, num_classes=num_classes, tokenizer=tokenizer,
                              train_files=inputs.files, train_formats=inputs.formats,
                              train_filesystems=inputs.filesystems, run_storage=(filesystem, run_path(cfg, storage)),
                              train_samples=data.samples, counter=counter, notice=notice)
    return make_trainer(finetune_worker, args, name=cfg.name, storage=storage, filesystem=filesystem,
                        num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                        resources={"CPU": cfg.train.cpus_per_worker}, datasets=inputs.datasets,
                        train_names=inputs.train_names, keep_checkpoints=cfg.train.keep_checkpoints,
                        max_failures=cfg.train.max_failures)


def write_classifiers(cfg: FinetuneConfig, *, theta_0: dict, theta_ft: dict, classnames: list[str],
                      info: dict) -> dict[str, Path]:
    """classifiers/<method> and classifiers/wise-<method>-<alpha> (tower saved inside each)."""
    tower, tokenizer = load_encoder(cfg.model)
    dim, num_classes = theta_0["head.weight"].shape[1], theta_0["head.weight"].shape[0]
    model = ImageClassifier(ImageEncoder.of(tower), LinearProbe(dim, num_classes))
    out = cfg.run_dir / "classifiers"
    mixes = [(cfg.method, cfg.method, theta_ft, {})]
    mixes += [(f"wise-{cfg.method}-{alpha:g}", "wise-ft", wise_ft(theta_0, theta_ft, alpha), {"alpha": alpha})
              for alpha in cfg.wise_alphas]
    written = {}
    for name, kind, state, extra in mixes:
        model.load_state_dict(state)
        written[name] = save_classifier(out / name, head=model.head, classnames=classnames, kind=kind, model=tower,
                                        tokenizer=tokenizer, info={**info, **extra, "method": cfg.method})
    return written


def evaluate_dirs(cfg: FinetuneConfig, dirs: dict[str, Path], *, tokenizer, counter) -> dict[str, dict]:
    """ID (clean eval set) metrics of each classifier directory, loaded back as `raylpclip eval` would."""
    data = eval_dataset(cfg.data, tokenizer=tokenizer, counter=counter).materialize()
    results = {}
    for name, path in dirs.items():
        classifier = load_classifier(path)
        tower, _ = load_encoder(classifier.encoder)
        head = classifier.head

        def predict(images, tower=tower, head=head):
            return head(tower.encode_image(images, normalize=False))

        batches = data.iter_torch_batches(batch_size=cfg.eval.batch_size)
        results[name] = evaluate_classifier(predict, batches, device=torch.device("cpu"),
                                            precision=cfg.train.precision)
        m = results[name]
        print(f"[raylpclip] {name}: ID acc1 {m['acc1']:.4f} acc5 {m['acc5']:.4f} ece {m['ece']:.4f} "
              f"nll {m['nll']:.4f} ({int(m['eval_samples'])} samples)", flush=True)
    return results


def _check_image_size(cfg: FinetuneConfig, tower) -> None:
    size = int(tower.clip.config.vision_config.image_size)
    if cfg.data.image_size != size:
        raise ConfigError(f"config key 'data.image_size': got {cfg.data.image_size} but the model {cfg.model} "
                          f"takes {size} px images")


@dataclass
class Resolved:
    """A fine-tuning run's inputs, known before Ray starts."""

    data: TrainData
    tower: object
    tokenizer: object
    classnames: list[str]


def resolve(cfg: FinetuneConfig) -> Resolved:
    configure_s3(cfg.data.s3)
    data = inspect_train_data(cfg)
    tower, tokenizer = load_encoder(cfg.model)
    _check_image_size(cfg, tower)
    return Resolved(data, tower, tokenizer, classnames_of(cfg))


def report(cfg: FinetuneConfig, result, resolved: Resolved, *, theta_0: dict, zeroshot_dir: Path, counter,
           start: float) -> dict:
    """The classifier directories (fine-tuned, WiSE-FT mixtures), their ID metrics and summary.json."""
    checkpoint = must_have_checkpoint(result, cfg.name)
    with checkpoint.as_directory() as directory:
        theta_ft = load_state(directory)["task"]["model"]
    classnames = resolved.classnames
    info = {"kl_weight": cfg.carft.kl_weight if cfg.method == "carft" else 0.0, "steps": cfg.train.steps,
            "trainable": cfg.trainable, "train_head": cfg.train_head, "origin": str(Path(cfg.model).resolve())}
    dirs = {"zeroshot": zeroshot_dir, **write_classifiers(cfg, theta_0=theta_0, theta_ft=theta_ft,
                                                           classnames=classnames, info=info)}
    ident = evaluate_dirs(cfg, dirs, tokenizer=resolved.tokenizer, counter=counter) if cfg.data.eval else {}
    metrics = result.metrics or {}
    summary = {k: metrics[k] for k in TRAIN_KEYS if k in metrics}
    summary.update(
        method=cfg.method, kl_weight=info["kl_weight"], num_classes=len(classnames),
        chance_acc1=1.0 / len(classnames), classifiers={k: str(v.resolve()) for k, v in dirs.items()},
        id={name: {k: m[k] for k in ("acc1", "acc5", "mean_per_class_recall", "ece", "nll", "auroc", "eval_samples")}
            for name, m in ident.items()},
        samples_per_s=metrics.get("train_samples_per_s"), wall_s=time.perf_counter() - start,
        run_dir=str(cfg.run_dir.resolve()), checkpoint=checkpoint.path, train_samples=resolved.data.samples,
        **counters.report(counter),  # skipped: distinct bad samples by reason; skipped_sightings: reads of them
    )
    for name, m in ident.items():
        summary[f"{name}_acc1"] = m["acc1"]
    if cfg.method in ident:
        summary["acc1"] = ident[cfg.method]["acc1"]
    write_summary(cfg.run_dir, summary)
    return summary


def run_finetune(cfg: FinetuneConfig) -> dict:
    start_time = time.perf_counter()
    resolved = resolve(cfg)
    classnames, data = resolved.classnames, resolved.data
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.run_dir / "config.yaml")
    start = prepare_start(cfg, resolved.tower, resolved.tokenizer, classnames)
    theta_0 = {k: v.detach().clone() for k, v in start["model"].state_dict().items()}
    zeroshot_dir = save_classifier(cfg.run_dir / "classifiers" / "zeroshot", head=start["model"].head,
                                   classnames=classnames, kind="zeroshot", encoder=cfg.model,
                                   info={"templates": list(cfg.eval.templates)})
    kl = (f" lambda {cfg.carft.kl_weight}, {len(cfg.carft.templates)} contexts, scale {start['scale']:.2f};"
          if cfg.method == "carft" else ";")
    size = f"{data.samples} samples in " if data.samples else ""
    print(f"[raylpclip] finetune {cfg.name}: {cfg.method}{kl} {len(classnames)} classes, {size}"
          f"{sum(map(len, data.files.values()))} shards, {cfg.train.num_workers} workers, {cfg.train.steps} steps "
          f"of {cfg.train.batch_size}, trainable {cfg.trainable}{' + head' if cfg.train_head else ''}", flush=True)
    ensure_ray(cfg.ray)
    counter = counters.new_counter()
    notice = new_notice()
    trainer = build_trainer(cfg, start_ref=ray.put(start), tokenizer=resolved.tokenizer, num_classes=len(classnames),
                            data=data, counter=counter, notice=notice)
    result = fit(trainer, cfg.name, notice=notice, steps=cfg.train.steps, grace_s=cfg.train.stop_grace_s,
                 checkpoints=checkpoint_place(cfg))
    draw_run_curves(cfg.run_dir)  # curves.png from rank 0's metrics.jsonl
    return report(cfg, result, resolved, theta_0=theta_0, zeroshot_dir=zeroshot_dir, counter=counter,
                  start=start_time)
