"""Typed run configs: dataclass defaults <- YAML file <- `key=value` overrides, via OmegaConf.

One override path serves the command line, recipes and (later) Tune search spaces: every caller goes
through `load_config`. The driver resolves a config once, validates it before Ray starts, saves it into
the run directory and ships `to_dict(cfg)` to workers, which rebuild it with `from_dict`.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Type, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


@dataclass
class S3Config:
    """How s3:// shards are reached (through s3fs). Credentials are never config values: they come from
    the standard AWS environment variables or profile of the machine that starts the run."""

    endpoint_url: str = ""  # empty: AWS; e.g. http://127.0.0.1:9000 for MinIO/moto
    region: str = ""
    anon: bool = False  # public buckets
    profile: str = ""  # a named AWS profile
    connect_timeout: float = 5.0  # seconds; an unreachable endpoint fails fast instead of hanging
    max_attempts: int = 5  # botocore retries (exponential backoff) for transient errors


@dataclass
class SourceConfig:
    path: str = ""  # shards: dir, glob, brace range or s3:// URL
    weight: float = 1.0  # share of each batch drawn from this source
    format: str = "auto"


DECODE_BATCH_BYTES = 12 << 20  # an automatic decode call's decoded images (DataConfig.decode_rows)


@dataclass
class DataConfig:
    train: str = ""  # shards: dir, glob, brace range or s3:// URL
    sources: list[SourceConfig] = field(default_factory=list)  # several training sources mixed by weight
    eval: str = ""  # labelled eval shards (label in the .json metadata)
    format: str = "auto"  # auto | webdataset | parquet (img2dataset output formats); auto: per source
    image_size: int = 64
    context_length: int = 32
    aug_scale_min: float = 0.9  # random-resized-crop lower scale bound; 1.0 disables cropping
    shuffle_seed: int = 0
    shuffle_buffer: int = 1024  # rows in each worker's local shuffle buffer; 0 disables
    decode_batch_size: int = 0  # rows per Ray Data map_batches call; 0: auto (`decode_rows`)
    decode_concurrency: int = 2  # decode actors, a fixed pool (each holds a tokenizer)
    decode_cpus: float = 1.0  # logical CPUs each decode actor reserves
    # The decode actors read the shards themselves (one shard per actor task) when a source has at least
    # 2 shards per actor; false: separate Ray Data read tasks (runtime/datasets.ReadPlan: why the actors).
    read_in_decoders: bool = True
    # Niceness added to decode actors (0: none). Where training and decoding share cores, the trainer's
    # threads then get them first. Off by default: it made no measurable change to `bench train`, and it
    # slowed data-bound runs (the test suite's demo run: 95 s -> 103-115 s), where niced decoders lose the
    # cores to every other process.
    decode_nice: int = 0
    eval_max_samples: int = 2000
    fail_after_bad: int = 1000  # a decode actor that has seen this many samples and none usable stops the run
    s3: S3Config = field(default_factory=S3Config)

    def decode_rows(self) -> int:
        """Rows per decode call: `decode_batch_size`, or for 0 about DECODE_BATCH_BYTES of decoded images
        (1024 rows at 64 px, 256 from 128 px up). Ray Data's cost per call does not shrink with the
        call: `bench ingest` on 2 CPUs at 64 px spent 378-436 us of CPU per sample with 256-row calls and
        292-323 us with 1024 (docs/benchmarks.md, "Decode calls sized by the image"); at 224 px, where a
        sample's decoding costs 7x more, 256 and 1024 rows were alike (1,869 vs 1,893 us), so there the
        smaller call (39 MB, not 154) wins."""
        if self.decode_batch_size:
            return self.decode_batch_size
        return min(1024, max(256, DECODE_BATCH_BYTES // (3 * self.image_size ** 2)))

    def train_sources(self) -> list[SourceConfig]:
        """`data.sources`, or `data.train` as the one source."""
        if self.sources:
            return list(self.sources)
        return [SourceConfig(path=self.train, weight=1.0, format=self.format)] if self.train else []


@dataclass
class ModelConfig:
    preset: str = "tiny"  # tiny | vit-b-32
    pretrained: str = ""  # local HF CLIP directory; overrides preset when set
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"vision.image_size": 32}
    tokenizer: str = ""  # local tokenizer directory; empty: train a BPE on the training captions
    vocab_size: int = 1024  # for the trained BPE tokenizer
    tokenizer_samples: int = 20000  # captions read to train it


@dataclass
class PSDConfig:
    a_max: float = 0.5  # 0 reproduces the CLIP loss exactly
    ramp: str = "linear"  # linear | cosine | constant
    subset_fraction: float = 0.5  # rows of each worker's batch that get soft targets
    teacher: str = "self"  # self: stop-grad of the current logits | ema: an EMA copy of the model
    ema_decay: float = 0.999
    teacher_temperature: Optional[float] = None  # None: the model's own logit scale


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # 0 disables
    accum_steps: int = 1


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps
    batch_size: int = 128  # global batch (all workers, all accumulation micro-steps)
    checkpoint_every: int = 200
    eval_every: int = 0  # 0: evaluate at the end only
    log_every: int = 10
    keep_checkpoints: int = 2
    precision: str = "fp32"  # fp32 | bf16 (autocast on CPU and GPU)
    seed: int = 0
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 1  # torch intra-op threads in each worker
    max_failures: int = 0
    # > 0: elastic worker group. After losing nodes the run goes on with as many workers as fit, at
    # least this many (Ray Train restarts it from the latest checkpoint); 0: always num_workers (waits).
    min_workers: int = 0
    # Extra Ray resources each Train worker needs beside train.cpus_per_worker, e.g. {trainer: 1} to keep
    # the workers on the nodes that offer a `trainer` resource (data decoding still runs anywhere).
    worker_resources: dict[str, float] = field(default_factory=dict)
    # Speed/memory switches (engine/setup.py). Each works on CPU or falls back with a logged note.
    fused_adamw: bool = True  # torch's fused AdamW kernel (CUDA; CPU since torch 2.4); else the foreach one
    compile: bool = False  # torch.compile the vision and text towers in place (checkpoint keys unchanged)
    channels_last: bool = False  # channels-last images into the conv patch embedding (cuDNN convs on GPU)
    grad_checkpointing: bool = False  # recompute tower activations in backward: memory for ~1/3 more compute
    ddp_bucket_cap_mb: float = 25.0  # DDP gradient bucket size (all-reduce granularity), as torch's default
    async_checkpoint: bool = True  # checkpoint upload to storage runs in the background (Ray Train ASYNC)


@dataclass
class EvalConfig:
    classnames: list[str] = field(default_factory=list)  # empty: taken from the eval shards' label_name
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    batch_size: int = 256


@dataclass
class RayConfig:
    address: str = ""  # empty: start a local instance (or join RAY_ADDRESS when set)
    num_cpus: int = 8  # logical CPUs of a local instance: more than cores so Ray Data keeps a budget
    storage_path: str = ""  # empty: <output_dir>; a shared path or s3:// URL on clusters
    dashboard: bool = True  # local instance: dashboard on 127.0.0.1 (Ray Train's state queries need it)
    object_store_gb: float = 0.0  # local instance: object store size; 0: Ray's default (30% of memory)
    # Local instance: take the object store's whole memory at start (Ray's RAY_preallocate_plasma_memory),
    # rather than page by page as objects first land on it (what that costs: docs/benchmarks.md, "The
    # object store's first pages").
    preallocate_object_store: bool = False


@dataclass
class PretrainConfig:
    name: str = "pretrain"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    psd: PSDConfig = field(default_factory=PSDConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def load_config(cls: Type[T], path: str | None = None, overrides: Sequence[str] = ()) -> T:
    """Merge defaults <- YAML <- dotlist overrides into a validated `cls` instance.

    Unknown keys and wrong types raise ConfigError naming the key (OmegaConf's structured mode).
    """
    try:
        merged = OmegaConf.structured(cls)
        if path:
            if not Path(path).is_file():
                raise ConfigError(f"config file not found: {path}")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc, cls)) from None
    validate(cfg)
    return cfg


def _describe(exc: OmegaConfBaseException, cls: Type = object) -> str:
    """OmegaConf's first line, plus what the key allows: the section's keys for an unknown key, the
    field's type for a value of the wrong type."""
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    reason = str(exc).splitlines()[0].rstrip(".")
    whole = re.search(r"(\w+) is not a subclass of (\w+)", reason)
    if not key and whole and dataclasses.is_dataclass(cls):  # `train=3`: a whole section replaced
        hints = typing.get_type_hints(cls)
        key = next((f.name for f in dataclasses.fields(cls) if getattr(hints[f.name], "__name__", "") == whole.group(2)), None)
        if key:
            return f"config key '{key}': got a {whole.group(1)}; expected {_type_words(hints[key])}"
    if not key:
        return f"config: {reason}"
    # The dataclass the failing key belongs to (inside a list, e.g. data.sources, full_key is only the
    # last part, so say which kind of entry it is).
    section = getattr(exc, "object_type", None)
    name = str(key).rsplit(".", 1)[-1]
    if not dataclasses.is_dataclass(section):
        return f"config key '{key}': {reason}"
    where = str(key).rsplit(".", 1)[0] if "." in str(key) else ("top level" if section is cls else f"a {section.__name__} entry")
    fields = {f.name for f in dataclasses.fields(section)}
    if name not in fields:
        allowed = ", ".join(f.name for f in dataclasses.fields(section))
        return f"config key '{key}': unknown key; allowed keys ({where}): {allowed}"
    expected = _type_words(typing.get_type_hints(section)[name])
    return f"config key '{key}'{'' if '.' in str(key) or section is cls else f' ({where})'}: {reason}; expected {expected}"


def _type_words(annotation: Any) -> str:
    """A field's type in words (`Optional[float]` -> "a number or null")."""
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if annotation in words:
        return words[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union and type(None) in args:
        return " or ".join(_type_words(a) for a in args if a is not type(None)) + " or null"
    if origin in (list, tuple):
        return "a list, e.g. [a, b]"
    if origin is dict:
        return "a mapping, e.g. {key: value}"
    if dataclasses.is_dataclass(annotation):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(annotation))
    return getattr(annotation, "__name__", str(annotation))


def to_dict(cfg: Any) -> dict:
    """A plain dict (what travels to Ray workers and what is saved beside a run)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def from_dict(cls: Type[T], data: dict) -> T:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), data))


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(cfg), str(path))


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def _choice(value: str, key: str, allowed: Sequence[str]) -> None:
    _require(value in allowed, key, f"got {value!r}, expected one of {list(allowed)}")


def validate(cfg: Any) -> None:
    """Reject impossible values before any work starts. Dispatches on the config's sections."""
    for f in dataclasses.fields(cfg):
        check = _SECTION_CHECKS.get(type(getattr(cfg, f.name)))
        if check:
            check(getattr(cfg, f.name), f.name)
    if isinstance(cfg, PretrainConfig):
        _check_batch_split(cfg.train, cfg.optim)
        _require(bool(cfg.name) and "/" not in cfg.name and cfg.name not in (".", ".."),
                 "name", f"got {cfg.name!r}, expected a plain directory name")


def _check_data(d: DataConfig, key: str) -> None:
    _choice(d.format, f"{key}.format", ("auto", "webdataset", "parquet"))
    _require(d.image_size >= 8, f"{key}.image_size", f"got {d.image_size}, expected >= 8")
    _require(d.context_length >= 4, f"{key}.context_length", f"got {d.context_length}, expected >= 4")
    _require(0.0 < d.aug_scale_min <= 1.0, f"{key}.aug_scale_min", f"got {d.aug_scale_min}, expected in (0, 1]")
    _require(d.decode_batch_size >= 0, f"{key}.decode_batch_size", "expected >= 0 (0: automatic)")
    _require(d.decode_concurrency > 0, f"{key}.decode_concurrency", "expected > 0")
    _require(0 <= d.decode_nice <= 19, f"{key}.decode_nice", "expected 0 to 19 (a niceness increment)")
    _require(d.shuffle_buffer >= 0, f"{key}.shuffle_buffer", "expected >= 0")
    _require(d.fail_after_bad > 0, f"{key}.fail_after_bad", "expected > 0")
    _require(not (d.train and d.sources), f"{key}.sources", "give either data.train or data.sources, not both")
    for i, src in enumerate(d.sources):
        _require(bool(src.path), f"{key}.sources.{i}.path", "required: a shard directory, glob, brace range or s3:// URL")
        _require(src.weight > 0, f"{key}.sources.{i}.weight", f"got {src.weight}, expected > 0")
        _choice(src.format, f"{key}.sources.{i}.format", ("auto", "webdataset", "parquet"))
    _require(d.s3.connect_timeout > 0, f"{key}.s3.connect_timeout", "expected > 0")
    _require(d.s3.max_attempts >= 1, f"{key}.s3.max_attempts", "expected >= 1")


def _check_model(m: ModelConfig, key: str) -> None:
    _require(m.vocab_size >= 300, f"{key}.vocab_size", f"got {m.vocab_size}, expected >= 300 (byte alphabet + merges)")


def _check_psd(p: PSDConfig, key: str) -> None:
    _require(0.0 <= p.a_max <= 1.0, f"{key}.a_max", f"got {p.a_max}, expected in [0, 1]")
    _choice(p.ramp, f"{key}.ramp", ("linear", "cosine", "constant"))
    _require(0.0 <= p.subset_fraction <= 1.0, f"{key}.subset_fraction", f"got {p.subset_fraction}, expected in [0, 1]")
    _choice(p.teacher, f"{key}.teacher", ("self", "ema"))
    _require(0.0 < p.ema_decay < 1.0, f"{key}.ema_decay", f"got {p.ema_decay}, expected in (0, 1)")
    t = p.teacher_temperature
    _require(t is None or t > 0, f"{key}.teacher_temperature", f"got {t}, expected > 0 or null")


def _check_optim(o: OptimConfig, key: str) -> None:
    _require(o.lr > 0, f"{key}.lr", f"got {o.lr}, expected > 0")
    _require(o.weight_decay >= 0, f"{key}.weight_decay", "expected >= 0")
    _require(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, f"{key}.beta1/beta2", "expected in [0, 1)")
    _require(o.warmup_steps >= 0, f"{key}.warmup_steps", "expected >= 0")
    _choice(o.schedule, f"{key}.schedule", ("cosine", "constant"))
    _require(0 <= o.min_lr_ratio <= 1, f"{key}.min_lr_ratio", "expected in [0, 1]")
    _require(o.grad_clip >= 0, f"{key}.grad_clip", "expected >= 0 (0 disables)")
    _require(o.accum_steps >= 1, f"{key}.accum_steps", f"got {o.accum_steps}, expected >= 1")


def _check_train(t: TrainConfig, key: str) -> None:
    _require(t.steps > 0, f"{key}.steps", f"got {t.steps}, expected > 0")
    _require(t.num_workers >= 1, f"{key}.num_workers", f"got {t.num_workers}, expected >= 1")
    _require(t.checkpoint_every >= 0, f"{key}.checkpoint_every", "expected >= 0 (0: only at the end)")
    _require(t.eval_every >= 0, f"{key}.eval_every", "expected >= 0")
    _require(t.log_every > 0, f"{key}.log_every", "expected > 0")
    _require(t.keep_checkpoints >= 1, f"{key}.keep_checkpoints", "expected >= 1")
    _choice(t.precision, f"{key}.precision", ("fp32", "bf16"))
    _require(t.cpus_per_worker > 0, f"{key}.cpus_per_worker", "expected > 0")
    _require(t.threads_per_worker >= 1, f"{key}.threads_per_worker", "expected >= 1")
    _require(t.max_failures >= -1, f"{key}.max_failures", "expected >= -1 (-1: unlimited)")
    bad = {k: v for k, v in t.worker_resources.items() if k in ("CPU", "GPU") or not v > 0}
    _require(not bad, f"{key}.worker_resources", f"got {bad}, expected custom resource names with amounts > 0 "
             "(CPUs: train.cpus_per_worker, GPUs: train.use_gpu)")
    _require(0 <= t.min_workers <= t.num_workers, f"{key}.min_workers",
             f"got {t.min_workers}, expected 0 (fixed) to train.num_workers = {t.num_workers}")
    _require(t.ddp_bucket_cap_mb > 0, f"{key}.ddp_bucket_cap_mb", f"got {t.ddp_bucket_cap_mb}, expected > 0")


def _check_batch_split(t: TrainConfig, o: OptimConfig) -> None:
    # An elastic group may train with any worker count from min_workers to num_workers.
    for workers in range(t.min_workers or t.num_workers, t.num_workers + 1):
        parts = workers * o.accum_steps
        name = "train.num_workers" if workers == t.num_workers else f"{workers} workers (train.min_workers)"
        _require(t.batch_size % parts == 0, "train.batch_size",
                 f"{t.batch_size} is not divisible by {name} * optim.accum_steps = {parts}")
    parts = t.num_workers * o.accum_steps
    _require(t.batch_size // parts >= 2, "train.batch_size",
             f"{t.batch_size} leaves fewer than 2 samples per worker micro-batch; contrastive losses need >= 2")


def _check_eval(e: EvalConfig, key: str) -> None:
    _require(len(e.templates) > 0, f"{key}.templates", "expected at least one template")
    bad = [t for t in e.templates if "{}" not in t]
    _require(not bad, f"{key}.templates", f"every template needs a '{{}}' for the class name; got {bad}")


def _check_ray(r: RayConfig, key: str) -> None:
    _require(r.num_cpus >= 1, f"{key}.num_cpus", "expected >= 1")
    _require(r.object_store_gb >= 0, f"{key}.object_store_gb", "expected >= 0 (0: Ray's default)")


_SECTION_CHECKS = {
    DataConfig: _check_data,
    ModelConfig: _check_model,
    PSDConfig: _check_psd,
    OptimConfig: _check_optim,
    TrainConfig: _check_train,
    EvalConfig: _check_eval,
    RayConfig: _check_ray,
}
