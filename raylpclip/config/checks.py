"""What a run config may hold: every check of a section's values, and the one error type.

`validate(cfg)` runs the checks of each section the config has (by the section's type), then the
config's own `check()` (what only that run needs: a pretraining run's batch split, a probe's required
model). Every message names the key and what it allows.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

from raylpclip.config.sections import (DataConfig, EvalConfig, ExportConfig, LossConfig, ModelConfig, OptimConfig,
                                       PSDConfig, RayConfig, TrainConfig)
from raylpclip.config.inference_sections import InferenceConfig, RobustnessConfig, ViewsConfig

# A model.pretrained path with one of these suffixes is an open_clip checkpoint file, converted when loaded
# (models/openclip_weights.py); any other path is a save_pretrained directory.
OPENCLIP_CHECKPOINT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def choice(value: Any, key: str, allowed: Sequence[Any]) -> None:
    require(value in allowed, key, f"got {value!r}, expected one of {list(allowed)}")


def is_openclip_checkpoint(path: str) -> bool:
    return Path(path).suffix in OPENCLIP_CHECKPOINT_SUFFIXES


def check_name(name: str, key: str = "name") -> None:
    """A run name becomes a directory under output_dir: a plain name, nothing that climbs out of it."""
    require(bool(name) and "/" not in name and name not in (".", ".."), key,
            f"got {name!r}, expected a plain directory name")


def validate(cfg: Any) -> None:
    """Reject impossible values before any work starts: each section's checks, then the config's own."""
    for f in dataclasses.fields(cfg):
        check = _SECTION_CHECKS.get(type(getattr(cfg, f.name)))
        if check:
            check(getattr(cfg, f.name), f.name)
    own = getattr(cfg, "check", None)
    if callable(own):
        own()


def _check_data(d: DataConfig, key: str) -> None:
    choice(d.format, f"{key}.format", ("auto", "webdataset", "parquet"))
    require(d.image_size >= 8, f"{key}.image_size", f"got {d.image_size}, expected >= 8")
    require(d.context_length >= 4, f"{key}.context_length", f"got {d.context_length}, expected >= 4")
    require(0.0 < d.aug_scale_min <= 1.0, f"{key}.aug_scale_min", f"got {d.aug_scale_min}, expected in (0, 1]")
    require(d.decode_batch_size >= 0, f"{key}.decode_batch_size", "expected >= 0 (0: automatic)")
    require(d.decode_concurrency > 0, f"{key}.decode_concurrency", "expected > 0")
    require(0 <= d.decode_nice <= 19, f"{key}.decode_nice", "expected 0 to 19 (a niceness increment)")
    require(d.shuffle_buffer >= 0, f"{key}.shuffle_buffer", "expected >= 0")
    require(d.fail_after_bad > 0, f"{key}.fail_after_bad", "expected > 0")
    require(isinstance(d.jpeg_draft, bool), f"{key}.jpeg_draft", f"got {d.jpeg_draft!r}, expected true or false")
    require(not (d.train and d.sources), f"{key}.sources", "give either data.train or data.sources, not both")
    for i, src in enumerate(d.sources):
        require(bool(src.path), f"{key}.sources.{i}.path", "required: a shard directory, glob, brace range or s3:// URL")
        require(src.weight > 0, f"{key}.sources.{i}.weight", f"got {src.weight}, expected > 0")
        choice(src.format, f"{key}.sources.{i}.format", ("auto", "webdataset", "parquet"))
    require(d.s3.connect_timeout > 0, f"{key}.s3.connect_timeout", "expected > 0")
    require(d.s3.max_attempts >= 1, f"{key}.s3.max_attempts", "expected >= 1")
    require(d.s3.read_timeout > 0, f"{key}.s3.read_timeout", "expected > 0")
    require(d.s3.read_chunk_mb * 2**20 >= 4096, f"{key}.s3.read_chunk_mb", "expected >= 1/256 (4 KiB)")


def _check_model(m: ModelConfig, key: str) -> None:
    require(m.vocab_size >= 300, f"{key}.vocab_size", f"got {m.vocab_size}, expected >= 300 (byte alphabet + merges)")
    # An open_clip checkpoint file holds no tokenizer, and one trained on the captions would not be the model's.
    require(not is_openclip_checkpoint(m.pretrained) or bool(m.tokenizer), f"{key}.tokenizer",
            f"required with an open_clip checkpoint as {key}.pretrained ({m.pretrained}): the tokenizer directory the "
            "model was trained with (`raylpclip convert open-clip` writes one beside the converted model)")
    # Above 0.9 a 7x7-patch ViT-B/32 image keeps 4 tokens or fewer: FLIP's range stops at 0.75.
    require(0.0 <= m.patch_dropout <= 0.9, f"{key}.patch_dropout", f"got {m.patch_dropout}, expected in [0, 0.9]")
    for tower in ("image", "text"):
        lock, layers = getattr(m, f"lock_{tower}"), getattr(m, f"lock_{tower}_unlocked_layers")
        require(layers >= 0, f"{key}.lock_{tower}_unlocked_layers", f"got {layers}, expected >= 0")
        for part in ("layers", "norms"):
            require(lock or not getattr(m, f"lock_{tower}_unlocked_{part}"), f"{key}.lock_{tower}_unlocked_{part}",
                    f"unlocks part of a locked tower: expected {key}.lock_{tower}: true, or leave it at its default")
    everything = all(getattr(m, f"lock_{t}") and not getattr(m, f"lock_{t}_unlocked_layers")
                     and not getattr(m, f"lock_{t}_unlocked_norms") for t in ("image", "text"))
    require(not everything, f"{key}.lock_image/lock_text", "both towers wholly locked leave only the logit scale to "
            "train; expected at most one locked tower, or some unlocked layers or norms")


def check_patch_dropout(m: ModelConfig, t: TrainConfig) -> None:
    require(t.patch_dropout_until_step == 0 or m.patch_dropout > 0, "train.patch_dropout_until_step",
            f"got {t.patch_dropout_until_step} with model.patch_dropout 0: expected 0, or set model.patch_dropout > 0")


def _check_psd(p: PSDConfig, key: str) -> None:
    require(0.0 <= p.a_max <= 1.0, f"{key}.a_max", f"got {p.a_max}, expected in [0, 1]")
    choice(p.ramp, f"{key}.ramp", ("linear", "cosine", "constant"))
    require(0.0 <= p.subset_fraction <= 1.0, f"{key}.subset_fraction", f"got {p.subset_fraction}, expected in [0, 1]")
    choice(p.teacher, f"{key}.teacher", ("self", "ema"))
    require(0.0 < p.ema_decay < 1.0, f"{key}.ema_decay", f"got {p.ema_decay}, expected in (0, 1)")
    t = p.teacher_temperature
    require(t is None or t > 0, f"{key}.teacher_temperature", f"got {t}, expected > 0 or null")


def _check_loss(c: LossConfig, key: str) -> None:
    choice(c.kind, f"{key}.kind", ("clip", "siglip"))
    choice(c.siglip_dist, f"{key}.siglip_dist", ("gather", "ring"))
    require(c.kind == "siglip" or c.siglip_dist == "gather", f"{key}.siglip_dist",
            f"got {c.siglip_dist!r} with {key}.kind 'clip': the ring form is SigLIP's, set {key}.kind=siglip")
    # The scale is clamped to <= 100 (CLIP's rule, models/clip.py) from the first step.
    require(0.0 < c.siglip_scale_init <= 100.0, f"{key}.siglip_scale_init",
            f"got {c.siglip_scale_init}, expected in (0, 100]")
    require(math.isfinite(c.siglip_bias_init), f"{key}.siglip_bias_init", f"got {c.siglip_bias_init}, expected finite")


def _check_optim(o: OptimConfig, key: str) -> None:
    require(o.lr > 0, f"{key}.lr", f"got {o.lr}, expected > 0")
    require(o.weight_decay >= 0, f"{key}.weight_decay", "expected >= 0")
    require(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, f"{key}.beta1/beta2", "expected in [0, 1)")
    require(o.warmup_steps >= 0, f"{key}.warmup_steps", "expected >= 0")
    choice(o.schedule, f"{key}.schedule", ("cosine", "constant"))
    require(0 <= o.min_lr_ratio <= 1, f"{key}.min_lr_ratio", "expected in [0, 1]")
    require(o.grad_clip >= 0, f"{key}.grad_clip", "expected >= 0 (0 disables)")
    require(o.accum_steps >= 1, f"{key}.accum_steps", f"got {o.accum_steps}, expected >= 1")


def _check_train(t: TrainConfig, key: str) -> None:
    require(t.steps > 0, f"{key}.steps", f"got {t.steps}, expected > 0")
    require(t.num_workers >= 1, f"{key}.num_workers", f"got {t.num_workers}, expected >= 1")
    require(t.checkpoint_every >= 0, f"{key}.checkpoint_every", "expected >= 0 (0: only at the end)")
    require(t.eval_every >= 0, f"{key}.eval_every", "expected >= 0")
    require(t.log_every > 0, f"{key}.log_every", "expected > 0")
    require(t.keep_checkpoints >= 1, f"{key}.keep_checkpoints", "expected >= 1")
    choice(t.precision, f"{key}.precision", ("fp32", "bf16"))
    require(t.cpus_per_worker > 0, f"{key}.cpus_per_worker", "expected > 0")
    require(t.threads_per_worker >= 1, f"{key}.threads_per_worker", "expected >= 1")
    require(t.max_failures >= -1, f"{key}.max_failures", "expected >= -1 (-1: unlimited)")
    bad = {k: v for k, v in t.worker_resources.items() if k in ("CPU", "GPU") or not v > 0}
    require(not bad, f"{key}.worker_resources", f"got {bad}, expected custom resource names with amounts > 0 "
             "(CPUs: train.cpus_per_worker, GPUs: train.use_gpu)")
    require(0 <= t.min_workers <= t.num_workers, f"{key}.min_workers",
             f"got {t.min_workers}, expected 0 (fixed) to train.num_workers = {t.num_workers}")
    require(t.ddp_bucket_cap_mb > 0, f"{key}.ddp_bucket_cap_mb", f"got {t.ddp_bucket_cap_mb}, expected > 0")
    # 1 would freeze the EMA at the initial weights: a mistake, not a setting.
    require(0.0 <= t.ema_decay < 1.0, f"{key}.ema_decay", f"got {t.ema_decay}, expected in [0, 1) (0: no EMA weights)")
    require(t.patch_dropout_until_step >= 0, f"{key}.patch_dropout_until_step",
            f"got {t.patch_dropout_until_step}, expected >= 0 (0: patch dropout on every step)")
    choice(t.parallelism, f"{key}.parallelism", ("ddp", "fsdp"))
    require(t.stop_grace_s > 0, f"{key}.stop_grace_s", f"got {t.stop_grace_s}, expected > 0 seconds")
    require(t.peak_tflops >= 0, f"{key}.peak_tflops", f"got {t.peak_tflops}, expected >= 0 (0: look up the GPU)")
    # torch.compile of a whole tower would trace across FSDP2's per-block gathers; compile-with-fsdp needs
    # per-block compilation, which raylpclip does not do yet.
    require(t.parallelism != "fsdp" or not t.compile, f"{key}.compile",
            "train.compile=true cannot combine with train.parallelism=fsdp; set one of them off")
    # Offloading moves weights between an accelerator and host memory; on CPU workers there is nowhere to move them
    # (torch's CPUOffloadPolicy then fails at its first step).
    require(not t.fsdp_cpu_offload or t.use_gpu, f"{key}.fsdp_cpu_offload",
            "train.fsdp_cpu_offload=true needs GPU workers (train.use_gpu=true): CPU workers hold everything in host "
            "memory already")
    require(t.parallelism == "fsdp" or not (t.fsdp_cpu_offload or not t.fsdp_reshard_after_forward),
            f"{key}.fsdp_cpu_offload", "train.fsdp_cpu_offload and train.fsdp_reshard_after_forward apply to "
            "train.parallelism=fsdp only; set train.parallelism=fsdp or leave them at their defaults")


def check_batch_split(t: TrainConfig, o: OptimConfig) -> None:
    # An elastic group may train with any worker count from min_workers to num_workers.
    for workers in range(t.min_workers or t.num_workers, t.num_workers + 1):
        parts = workers * o.accum_steps
        name = "train.num_workers" if workers == t.num_workers else f"{workers} workers (train.min_workers)"
        require(t.batch_size % parts == 0, "train.batch_size",
                 f"{t.batch_size} is not divisible by {name} * optim.accum_steps = {parts}")
    parts = t.num_workers * o.accum_steps
    require(t.batch_size // parts >= 2, "train.batch_size",
             f"{t.batch_size} leaves fewer than 2 samples per worker micro-batch; contrastive losses need >= 2")


def _check_export(x: ExportConfig, key: str) -> None:
    choice(x.weights, f"{key}.weights", ("raw", "ema"))


def check_export_weights(x: ExportConfig, t: TrainConfig) -> None:
    require(x.weights != "ema" or t.ema_decay > 0, "export.weights",
            "ema needs EMA weights to export: set train.ema_decay > 0 (e.g. 0.999), or export.weights=raw")


def _check_eval(e: EvalConfig, key: str) -> None:
    require(len(e.templates) > 0, f"{key}.templates", "expected at least one template")
    bad = [t for t in e.templates if "{}" not in t]
    require(not bad, f"{key}.templates", f"every template needs a '{{}}' for the class name; got {bad}")


def _check_ray(r: RayConfig, key: str) -> None:
    require(r.num_cpus >= 1, f"{key}.num_cpus", "expected >= 1")
    require(r.object_store_gb >= 0, f"{key}.object_store_gb", "expected >= 0 (0: Ray's default)")


def _check_inference(i: InferenceConfig, key: str) -> None:
    require(i.batch_size >= 1, f"{key}.batch_size", f"got {i.batch_size}, expected >= 1")
    require(i.actors >= 1, f"{key}.actors", f"got {i.actors}, expected >= 1")
    require(i.cpus_per_actor > 0, f"{key}.cpus_per_actor", "expected > 0")
    require(i.threads >= 1, f"{key}.threads", "expected >= 1")
    choice(i.precision, f"{key}.precision", ("fp32", "bf16"))
    require(i.decode_batch_size >= 1, f"{key}.decode_batch_size", "expected >= 1")


def _check_robustness(r: RobustnessConfig, key: str) -> None:
    from raylpclip.eval.corruptions import CORRUPTIONS, SEVERITIES

    for name in r.corruptions:
        if name not in CORRUPTIONS:
            raise ConfigError(f"config key '{key}.corruptions': unknown {name!r}, expected some of {sorted(CORRUPTIONS)}")
    for severity in r.severities:
        if severity not in SEVERITIES:
            raise ConfigError(f"config key '{key}.severities': got {severity}, expected values in {list(SEVERITIES)}")
    if r.max_samples < 0 or r.n_bins < 1:
        raise ConfigError(f"config key '{key}.max_samples/n_bins': expected max_samples >= 0 and n_bins >= 1")


def _check_views(v: ViewsConfig, key: str) -> None:
    require(0.0 < v.weak_scale_min <= 1.0, f"{key}.weak_scale_min", f"got {v.weak_scale_min}, expected in (0, 1]")
    require(0.0 < v.strong_scale_min <= 1.0, f"{key}.strong_scale_min", f"got {v.strong_scale_min}, expected in (0, 1]")
    require(0.0 <= v.strong_jitter < 1.0, f"{key}.strong_jitter", f"got {v.strong_jitter}, expected in [0, 1)")
    require(0.0 <= v.strong_grayscale_p <= 1.0, f"{key}.strong_grayscale_p", "expected in [0, 1]")


_SECTION_CHECKS = {
    DataConfig: _check_data,
    ModelConfig: _check_model,
    PSDConfig: _check_psd,
    LossConfig: _check_loss,
    OptimConfig: _check_optim,
    TrainConfig: _check_train,
    EvalConfig: _check_eval,
    ExportConfig: _check_export,
    RayConfig: _check_ray,
    InferenceConfig: _check_inference,
    RobustnessConfig: _check_robustness,
    ViewsConfig: _check_views,
}
