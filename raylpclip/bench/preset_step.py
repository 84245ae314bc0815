"""The training step of a model preset on batches already in device memory, timed: samples/s, step time,
model FLOPs utilisation and peak memory (the GPU check's tier 1, bench/gpu_check.py).

A real step as the training loop runs it (engine/loop.py): forward and CLIP loss under autocast, backward,
gradient clipping, fused AdamW over the no-decay groups (engine/optim.py), at the optimizer defaults of a
pretraining run. No data pipeline, no Ray, no omegaconf: only torch, transformers and the pure-torch core,
so that it runs on a bare GPU machine. The batches are random (uint8 images, captions of random length
padded to the context), which costs what real ones cost.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch

from raylpclip.engine.model_flops import forward_flops_per_sample, mfu, peak_flops, train_flops_per_sample
from raylpclip.engine.optim import param_groups
from raylpclip.losses.contrastive import clip_loss
from raylpclip.models.clip import PRESETS, ClipTower, build_clip, normalize_images

# engine/optim's AdamW settings at OptimConfig's defaults (kept here as numbers: the config module loads
# omegaconf); grad clipping at optim.grad_clip's default.
ADAMW = dict(lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
DISTINCT_BATCHES = 2  # cycled, so that no step reads the very tensors of the step before


def build_preset(preset: str, device: torch.device, *, compile_towers: bool = False) -> ClipTower:
    """A randomly initialised tower of `preset`, sized to its own text vocabulary (tiny: 1024 tokens)."""
    vocab = PRESETS[preset]["text"].get("vocab_size", 1024)
    clip = build_clip(preset, vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                      pad_token_id=vocab - 1)
    tower = ClipTower(clip).to(device)
    if compile_towers:
        tower.compile_towers()
    return tower.train()


def random_batches(tower: ClipTower, batch: int, device: torch.device, *, count: int = DISTINCT_BATCHES,
                   seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`count` batches of (uint8 images, ids, mask) at the tower's image size and text context: each caption
    ends in EOS at a random position, padding after it, as the tokenizer pads real ones."""
    vision, text = tower.clip.config.vision_config, tower.clip.config.text_config
    size, context, eos = vision.image_size, text.max_position_embeddings, text.eos_token_id
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)
        ids = torch.randint(0, eos - 1, (batch, context), generator=gen)
        length = torch.randint(2, context + 1, (batch, 1), generator=gen)  # EOS included
        positions = torch.arange(context).unsqueeze(0)
        ids = torch.where(positions == length - 1, eos, ids)
        ids = torch.where(positions >= length, text.pad_token_id, ids)
        mask = (positions < length).long()
        out.append((images.to(device), ids.to(device), mask.to(device)))
    return out


def make_optimizer(tower: ClipTower, *, fused: bool) -> torch.optim.AdamW:
    """AdamW over the tower's no-decay groups: fused (one kernel) or torch's foreach implementation."""
    groups = param_groups(tower, weight_decay=WEIGHT_DECAY)
    return torch.optim.AdamW(groups, fused=True, **ADAMW) if fused else torch.optim.AdamW(groups, foreach=True, **ADAMW)


def autocast_for(precision: str, device: torch.device):
    """engine/loop.autocast's rule (that module imports the config, so it is not imported here)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(tower: ClipTower, optimizer: torch.optim.Optimizer, batch, *, precision: str) -> torch.Tensor:
    """One optimizer step on `batch`; returns the loss (a tensor: reading it would stall the device)."""
    images, ids, mask = batch
    with autocast_for(precision, images.device):
        out = tower(normalize_images(images), ids, mask)
        # fp32 features into the loss, as PretrainTask passes them (a 100x-scaled bf16 logit loses digits).
        loss = clip_loss(out["image_features"].float(), out["text_features"].float(),
                         out["logit_scale"].float())["contrastive_loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_preset(preset: str, batch: int, device: torch.device, *, warmup: int, steps: int,
                precision: str = "bf16", compile_towers: bool = False, peak_tflops: float = 0.0) -> dict[str, Any]:
    """Build `preset`, run `warmup` untimed steps then `steps` timed ones at `batch`, and report the figures.
    The clock starts after a device synchronise that follows the warm-up and stops after one that follows
    the last timed step, so queued kernels are all inside the window."""
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    tower = build_preset(preset, device, compile_towers=compile_towers)
    optimizer = make_optimizer(tower, fused=device.type == "cuda")
    batches = random_batches(tower, batch, device)
    context = tower.clip.config.text_config.max_position_embeddings
    losses = []
    for i in range(warmup):
        losses.append(train_step(tower, optimizer, batches[i % len(batches)], precision=precision))
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        losses.append(train_step(tower, optimizer, batches[i % len(batches)], precision=precision))
    _sync(device)
    wall = time.perf_counter() - start
    losses = [float(v) for v in losses]
    flops = train_flops_per_sample(tower.clip.config, context_length=context)["total"]
    forward = forward_flops_per_sample(tower.clip.config, context_length=context)
    samples_per_s = batch * steps / wall
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(name, override_tflops=peak_tflops)
    result = {
        "preset": preset, "batch_size": batch, "precision": precision, "compile": compile_towers,
        "image_size": tower.clip.config.vision_config.image_size, "context_length": context,
        "warmup_steps": warmup, "timed_steps": steps, "step_time_s": wall / steps, "samples_per_s": samples_per_s,
        "forward_gflops_per_sample": {k: v / 1e9 for k, v in forward.items()},
        "train_gflops_per_sample": flops / 1e9, "achieved_tflops": samples_per_s * flops / 1e12,
        "mfu": mfu(samples_per_s, flops, peak_flops_per_device=peak, devices=1) if peak else None,
        "losses": losses, "loss_finite": all(map(math.isfinite, losses)),
        "parameters": sum(p.numel() for p in tower.parameters()),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    del tower, optimizer, batches
    return result

