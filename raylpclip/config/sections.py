"""The sections of a run config and the pretraining run config they make up.

Plain dataclasses with their defaults: `load_config` (config/loader.py) fills them from YAML and
`key=value` overrides, `validate` (config/checks.py) rejects what cannot work. The driver resolves a
config once and hands the typed dataclass to its Ray workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


@dataclass
class S3Config:
    """How s3:// shards are reached (through s3fs). Credentials are never config values: they come from
    the standard AWS environment variables or profile of the machine that starts the run."""

    endpoint_url: str = ""  # empty: AWS; e.g. http://127.0.0.1:9000 for MinIO/moto
    region: str = ""
    anon: bool = False  # public buckets
    profile: str = ""  # a named AWS profile
    connect_timeout: float = 5.0  # seconds; an unreachable endpoint fails fast instead of hanging
    max_attempts: int = 5  # attempts of a request that fails transiently (503, reset, timeout), with backoff
    read_timeout: float = 60.0  # seconds without a byte of an answer before a GET is given up (and retried)
    read_chunk_mb: float = 16.0  # bytes of a shard per ranged GET: what a failed GET re-sends at most


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
    # JPEGs larger than the crop and resize need are decoded at 1/2, 1/4 or 1/8 scale by libjpeg
    # (data/transforms.decode_image); false: every pixel is decoded, as before. Pixels differ slightly.
    jpeg_draft: bool = True
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
    preset: str = "tiny"  # tiny | vit-b-32 | vit-b-16
    pretrained: str = ""  # overrides preset: a local HF CLIP dir, or an open_clip checkpoint file (converted)
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"vision.image_size": 32}
    tokenizer: str = ""  # local tokenizer directory; empty: train a BPE on the training captions
    vocab_size: int = 1024  # for the trained BPE tokenizer
    tokenizer_samples: int = 20000  # captions read to train it
    patch_dropout: float = 0.0  # training only: share of each image's patch tokens dropped (FLIP, models/)
    # LiT (models/tower_lock.py): a locked tower (transformer + projection) is frozen but for its last N encoder
    # layers (with the final norm and the projection) and, with *_unlocked_norms, its LayerNorms.
    lock_image: bool = False
    lock_image_unlocked_layers: int = 0
    lock_image_unlocked_norms: bool = False
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    lock_text_unlocked_norms: bool = False


@dataclass
class PSDConfig:
    a_max: float = 0.5  # 0 reproduces the CLIP loss exactly
    ramp: str = "linear"  # linear | cosine | constant
    subset_fraction: float = 0.5  # rows of each worker's batch that get soft targets
    teacher: str = "self"  # self: stop-grad of the current logits | ema: an EMA copy of the model
    ema_decay: float = 0.999
    teacher_temperature: Optional[float] = None  # None: the model's own logit scale


@dataclass
class LossConfig:
    """The pretraining loss (losses/): CLIP's softmax contrastive loss or SigLIP's pairwise sigmoid loss."""

    kind: str = "clip"  # clip | siglip; PSD (psd.*) works with either
    siglip_dist: str = "gather"  # gather: all-gather the texts (b x N logits) | ring: pass them around (b x b blocks)
    siglip_scale_init: float = 10.0  # initial s = exp(t') of a new model (SigLIP: 10); a pretrained one keeps its own
    siglip_bias_init: float = -10.0  # initial logit bias b (a pretrained export's config.json logit_bias wins)


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
    # Speed/memory switches (engine/training_setup.py). Each works on CPU or falls back with a logged note.
    fused_adamw: bool = True  # torch's fused AdamW kernel (CUDA; CPU since torch 2.4); else the foreach one
    compile: bool = False  # torch.compile the vision and text towers in place (checkpoint keys unchanged)
    channels_last: bool = False  # channels-last images into the conv patch embedding (cuDNN convs on GPU)
    grad_checkpointing: bool = False  # recompute tower activations in backward: memory for ~1/3 more compute
    ddp_bucket_cap_mb: float = 25.0  # DDP gradient bucket size (all-reduce granularity), as torch's default
    async_checkpoint: bool = True  # checkpoint upload to storage runs in the background (Ray Train ASYNC)
    # > 0: keep an EMA of the weights (w <- d * w + (1 - d) * w_model after every optimizer step), evaluated
    # beside the raw weights (ema_* metrics), checkpointed, exportable (export.weights=ema). 0: off.
    ema_decay: float = 0.0
    patch_dropout_until_step: int = 0  # > 0: model.patch_dropout off from this step on (unmasked tuning); 0: all steps
    # ddp: every worker holds the whole model, gradients and AdamW state. fsdp: FSDP2 shards them over the workers
    # (each transformer block, then the rest), checkpoints become sharded (torch.distributed.checkpoint): README,
    # "Sharded training".
    parallelism: str = "ddp"  # ddp | fsdp
    fsdp_reshard_after_forward: bool = True  # True: ZeRO-3 (least memory); False: ZeRO-2 (no re-gather in backward)
    fsdp_cpu_offload: bool = False  # fsdp: parameters, gradients and AdamW state live in host memory between uses
    # SIGTERM to the driver (or a node's preemption notice): checkpoint after the current step and stop; the driver
    # exits anyway this many seconds after SIGTERM (runtime/cluster/stop_notice.py).
    stop_grace_s: float = 120.0
    peak_tflops: float = 0.0  # the accelerator's dense peak for `mfu`; 0: looked up by GPU name (none on CPU)


@dataclass
class ExportConfig:
    """What a pretraining run exports to <run>/model at its end."""

    weights: str = "raw"  # raw: the trained weights | ema: their EMA (needs train.ema_decay > 0)


@dataclass
class EvalConfig:
    classnames: list[str] = field(default_factory=list)  # empty: taken from the eval shards' label_name
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    batch_size: int = 256
    # With labelled eval shards, also image<->text retrieval recall@k on their captions (two passes).
    retrieval: bool = False


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
class RunConfig:
    """What every run config starts with: the run's directory `<output_dir>/<name>` (running the same name
    again resumes it, or reuses what it finished)."""

    name: str = "run"
    output_dir: str = "runs"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def check(self) -> None:
        """The checks of the config as a whole (config/checks.validate runs them after the sections')."""
        from raylpclip.config.checks import check_name

        check_name(self.name)


@dataclass
class PretrainConfig(RunConfig):
    name: str = "pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    psd: PSDConfig = field(default_factory=PSDConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def check(self) -> None:
        """What the sections cannot check alone: the batch split over workers, EMA weights to export, patch
        dropout's tuning phase (and the run's name)."""
        from raylpclip.config.checks import check_batch_split, check_export_weights, check_patch_dropout

        check_batch_split(self.train, self.optim)
        check_export_weights(self.export, self.train)
        check_patch_dropout(self.model, self.train)
        super().check()
