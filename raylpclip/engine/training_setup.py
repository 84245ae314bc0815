"""Model, optimizer, schedule and task for PSD pretraining, with the speed/memory switches of TrainConfig.

One builder for the Ray worker (runtime/train/pretrain_worker.py), the train benchmark's plain loop and
tests, so that "the same model and step" means the same code. Pure torch: the caller passes `wrap`
(Ray Train's DDP `prepare_model`) when it trains distributed with DDP; train.parallelism=fsdp shards here
(parallel/fsdp_sharding.py), in the process group the caller started.
"""

from __future__ import annotations

import copy
import functools
import logging
from dataclasses import dataclass
from typing import Callable

import torch

from raylpclip.config import PretrainConfig, TrainConfig
from raylpclip.engine.optim import build_optimizer, build_scheduler
from raylpclip.engine.pretrain_task import PretrainTask, unwrap
from raylpclip.models.clip import ClipTower
from raylpclip.models.patch_dropout import set_patch_dropout
from raylpclip.models.tower_factory import build_tower
from raylpclip.models.tower_lock import lock_towers
from raylpclip.parallel.fsdp_sharding import FsdpSettings, shard_tower

log = logging.getLogger(__name__)


@dataclass
class Training:
    model: torch.nn.Module  # the ClipTower, DDP-wrapped when `wrap` was given
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    task: PretrainTask


@functools.lru_cache(maxsize=1)
def compile_unavailable() -> str | None:
    """None when torch.compile works here, else why not. Compiles a one-line function once per process:
    inductor on CPU needs a C++ compiler, on GPU triton; a missing one only shows at the first call."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(2))
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means: run eager
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def prepare_tower(tower: ClipTower, train: TrainConfig) -> ClipTower:
    """Apply the tower switches of `train` in place (before DDP wraps it) and return the tower."""
    tower.train()  # HF checkpoints layers only in train mode
    if train.grad_checkpointing:
        tower.enable_grad_checkpointing()
    if train.channels_last:
        tower.use_channels_last()
    if train.compile:
        reason = compile_unavailable()
        if reason is None:
            tower.compile_towers()
        else:
            log.warning("train.compile: torch.compile does not work here (%s); training runs eager", reason)
    return tower


def build_training(cfg: PretrainConfig, *, tokenizer, rank: int, device: torch.device,
                   wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> Training:
    """The tower (seeded: identical initial weights on every rank), switches applied, moved or wrapped,
    then AdamW, the lr schedule and the PSD task."""
    torch.manual_seed(cfg.train.seed)
    tower = build_tower(cfg.model, tokenizer=tokenizer, loss=cfg.loss)
    # Before compile (it guards on requires_grad), the optimizer and DDP (both read requires_grad once, when made).
    lock_towers(tower.clip, cfg.model)
    set_patch_dropout(tower.clip, cfg.model.patch_dropout)
    tower = prepare_tower(tower, cfg.train)
    # The weights are made, identical on every rank; from here each rank draws its own random numbers (patch
    # dropout's kept patches), as open_clip reseeds with seed + rank once its model is built.
    torch.manual_seed(cfg.train.seed + rank)
    copy_model, built = None, []
    if cfg.train.parallelism == "fsdp":
        wrap = fsdp_wrap(cfg.train, device)
        # An EMA (PSD's teacher, the EMA weights) is a copy of the model sharded like it; a sharded model cannot
        # be copied, so the copies come from the tower as built, taken before it is sharded.
        needs_copy = cfg.psd.teacher == "ema" or cfg.train.ema_decay > 0
        built = [copy.deepcopy(tower)] if needs_copy else []
        # A copy never runs a backward, which is what frees ZeRO-2's gathered blocks: copies always reshard.
        wrap_copy = fsdp_wrap(cfg.train, device, frozen=True)
        copy_model = (lambda: wrap_copy(copy.deepcopy(built[0]))) if needs_copy else None
    model = wrap(tower) if wrap is not None else tower.to(device)
    optimizer = build_optimizer(unwrap(model), cfg.optim, fused=cfg.train.fused_adamw)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps=cfg.train.steps)
    task = PretrainTask(model, psd=cfg.psd, total_steps=cfg.train.steps, seed=cfg.train.seed, rank=rank,
                        ema_decay=cfg.train.ema_decay, loss=cfg.loss, copy_model=copy_model,
                        patch_dropout_until_step=cfg.train.patch_dropout_until_step)
    built.clear()  # the unsharded copy's memory back, once the EMA copies are made and sharded
    return Training(model, optimizer, scheduler, task)


def transformer_blocks(tower: ClipTower) -> list[torch.nn.Module]:
    """The encoder layers of both towers: FSDP's units."""
    return [*tower.clip.vision_model.encoder.layers, *tower.clip.text_model.encoder.layers]


def fsdp_wrap(train: TrainConfig, device: torch.device, blocks: Callable[[torch.nn.Module], list] = transformer_blocks,
              *, frozen: bool = False) -> Callable[[torch.nn.Module], torch.nn.Module]:
    """train.parallelism=fsdp: move a model to `device` and shard it over the process group's ranks, one unit per
    module of `blocks(model)` (a tower's transformer blocks); train.precision=bf16: bf16 weights in compute, fp32
    gradient reduction. `frozen`: a copy that only runs forwards (an EMA, theta_0), which always reshards after
    them: ZeRO-2 keeps blocks gathered for a backward that such a copy never runs."""
    settings = FsdpSettings(device_type=device.type,
                            reshard_after_forward=frozen or train.fsdp_reshard_after_forward,
                            bf16=train.precision == "bf16", cpu_offload=train.fsdp_cpu_offload)
    return lambda model: shard_tower(model.to(device), blocks(model), settings)
