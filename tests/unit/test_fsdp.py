"""train.parallelism=fsdp on two gloo processes, through the same builder, loop and checkpoint code the Ray
workers run (engine/training_setup.py, engine/loop.py, engine/run_state.py):

- fsdp and ddp give the same losses and the same weights (raw and EMA) after 4 AdamW steps with gradient
  accumulation, clipping, PSD with an EMA teacher and EMA weights, from the same start;
- each fsdp rank holds about half of the parameter and optimizer bytes;
- a run stopped after a sharded checkpoint at step 2 resumes from it and ends at step 4 with the uninterrupted
  run's weights: with 2 fsdp workers, with 1 fsdp worker, with 1 ddp worker, and 2 fsdp workers resume from a
  ddp checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from raylpclip.config import ConfigError, PretrainConfig, load_config
from raylpclip.distributed import ddp_kwargs
from raylpclip.engine.checkpoint_state import check_checkpoint, load_state
from raylpclip.engine.loop import LoopState, run_loop
from raylpclip.engine.run_state import load_into, save_run_state
from raylpclip.engine.training_setup import build_training
from raylpclip.models.tower_factory import build_tower
from raylpclip.parallel.fsdp_sharding import gather_whole_state, local_bytes, optimizer_tensors
from raylpclip.parallel.sharded_checkpoint import ShardedCheckpointError, load_whole
from tests.unit.rank_spawning import spawn_ranks

TINY = {"vision.image_size": 16, "vision.patch_size": 8, "vision.num_hidden_layers": 2, "text.num_hidden_layers": 2,
        "vision.hidden_size": 32, "text.hidden_size": 32, "vision.intermediate_size": 64,
        "text.intermediate_size": 64, "projection_dim": 16, "text.max_position_embeddings": 8}
STEPS, GLOBAL, ACCUM = 4, 8, 2
TOL = 2e-5  # fp32: the two strategies sum gradients in different orders


class _Losses:
    def __init__(self):
        self.losses = []

    def report(self, state, metrics, *, save, evaluate, final):
        self.losses.append(metrics["loss"])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from raylpclip.models.bpe_tokenizer import train_tokenizer

    return train_tokenizer(["a red circle", "a blue square", "a green triangle"] * 10, vocab_size=300,
                           out_dir=str(tmp_path_factory.mktemp("tok")))


def _cfg(parallelism: str, world: int, extra: tuple = ()) -> PretrainConfig:
    # subset_fraction 1: PSD's soft rows are all rows, so no per-rank random draw differs between world sizes.
    cfg = load_config(PretrainConfig, None, [*extra, 
        f"train.steps={STEPS}", f"train.batch_size={GLOBAL}", f"train.num_workers={world}", "train.log_every=1",
        f"train.parallelism={parallelism}", "train.ema_decay=0.95", "train.fused_adamw=false",
        "optim.lr=0.01", "optim.warmup_steps=0", f"optim.accum_steps={ACCUM}", "optim.grad_clip=1.0",
        "psd.a_max=0.5", "psd.teacher=ema", "psd.ema_decay=0.9", "psd.subset_fraction=1.0", "psd.ramp=constant"])
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, overrides=TINY))


def _micro_batches(tokenizer, rank: int, world: int):
    """Step s, micro-step i: the same 4 samples in every world size (rank r holds its 4/world of them, gathered in
    rank order), so that each micro-step's contrastive loss sees the same batch."""
    ids = torch.tensor(tokenizer(["a red circle", "a blue square", "a green triangle", "a red square"] * 2,
                                 padding="max_length", max_length=8)["input_ids"])
    per = GLOBAL // ACCUM // world
    out = []
    for step in range(STEPS):
        g = torch.Generator().manual_seed(step)
        images = torch.randint(0, 255, (GLOBAL, 3, 16, 16), dtype=torch.uint8, generator=g)
        for i in range(ACCUM):
            rows = slice(i * GLOBAL // ACCUM + rank * per, i * GLOBAL // ACCUM + (rank + 1) * per)
            out.append({"image": images[rows], "input_ids": ids[rows], "attention_mask": torch.ones_like(ids[rows])})
    return out


def _whole(module) -> dict:
    state = gather_whole_state(module) if dist.is_initialized() and hasattr(module, "reshard") else module.state_dict()
    return {k: v.detach().clone() for k, v in state.items()}


def _worker(rank: int, world: int, job: dict, tokenizer, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = _cfg(job["mode"], world, job.get("extra", ()))
        wrap = (lambda t: DDP(t, **ddp_kwargs(bucket_cap_mb=25.0))) if job["mode"] == "ddp" and world > 1 else None
        t = build_training(cfg, tokenizer=tokenizer, rank=rank, device=torch.device("cpu"), wrap=wrap)
        state = LoopState()
        if job.get("resume"):
            saved = load_into(job["resume"], t.task, t.optimizer)
            t.scheduler.load_state_dict(saved["scheduler"])
            state = LoopState(step=int(saved["step"]), samples_seen=int(saved["samples_seen"]))
        batches = _micro_batches(tokenizer, rank, world)[state.step * ACCUM:]
        hooks = _Losses()
        until = job.get("until", STEPS)
        run_loop(t.task, optimizer=t.optimizer, scheduler=t.scheduler, batches=iter(batches), state=state,
                 train=dataclasses.replace(cfg.train, steps=until), optim=cfg.optim, hooks=hooks)
        if job.get("save"):
            directory = Path(job["save"]) / f"rank{rank}"
            directory.mkdir(parents=True)
            save_run_state(str(directory), task=t.task, optimizer=t.optimizer, scheduler=t.scheduler, state=state,
                           meta={"name": "fsdp-test"}, rank=rank, world=world)
        model = getattr(t.model, "module", t.model)
        result = {"losses": hooks.losses, "step": state.step, "model": _whole(model),
                  "ema": _whole(t.task.weights_ema.module),
                  "param_bytes": local_bytes(model.parameters()), "optim_bytes": local_bytes(optimizer_tensors(t.optimizer))}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run(tmp_path: Path, name: str, world: int, job: dict, tokenizer) -> list[dict]:
    out = tmp_path / name
    out.mkdir()
    return spawn_ranks(_worker, world, out, leading=(world, job, tokenizer))


def _merged(save_dir: Path) -> str:
    """The rank directories merged into one, as Ray Train merges the workers' checkpoint uploads in storage."""
    merged = save_dir / "merged"
    merged.mkdir()
    for rank_dir in sorted(save_dir.glob("rank*")):
        for f in rank_dir.iterdir():
            shutil.copy(f, merged / f.name)
    return str(merged)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tokenizer):
    tmp = tmp_path_factory.mktemp("fsdp")
    return {mode: _run(tmp, mode, 2, {"mode": mode}, tokenizer) for mode in ("ddp", "fsdp")}


def test_fsdp_and_ddp_train_the_same_weights(uninterrupted):
    ddp, fsdp = uninterrupted["ddp"][0], uninterrupted["fsdp"][0]
    assert len(fsdp["losses"]) == STEPS and fsdp["step"] == STEPS
    assert max(abs(a - b) for a, b in zip(ddp["losses"], fsdp["losses"])) < TOL, (ddp["losses"], fsdp["losses"])
    # The EMA weights (decay 0.95) trail the trained ones: their distance shows that the 4 steps moved the weights.
    assert _max_diff(ddp["model"], ddp["ema"]) > 1e-3
    assert _max_diff(ddp["model"], fsdp["model"]) < TOL
    assert _max_diff(ddp["ema"], fsdp["ema"]) < TOL


def test_each_fsdp_rank_holds_half_of_the_parameter_and_optimizer_bytes(uninterrupted):
    ddp = uninterrupted["ddp"][0]
    for rank in uninterrupted["fsdp"]:
        param_share = rank["param_bytes"] / ddp["param_bytes"]
        optim_share = rank["optim_bytes"] / ddp["optim_bytes"]
        # A little over 1/2: shards are padded to a multiple of the world size, scalars stay whole on every rank.
        assert 0.45 < param_share < 0.56, param_share
        assert 0.45 < optim_share < 0.56, optim_share


@pytest.fixture(scope="module")
def sharded_checkpoint(tmp_path_factory, tokenizer) -> str:
    """Two fsdp workers stopped after the checkpoint of step 2."""
    tmp = tmp_path_factory.mktemp("sharded")
    _run(tmp, "first", 2, {"mode": "fsdp", "until": 2, "save": str(tmp / "ckpt")}, tokenizer)
    merged = _merged(tmp / "ckpt")
    assert sorted(os.listdir(merged)) == [".metadata", "__0_0.distcp", "__1_0.distcp", "manifest.json",
                                         "manifest.rank1.json", "meta.json", "state.pt"]
    return merged


@pytest.mark.parametrize("resume_world, resume_mode", [(2, "fsdp"), (1, "fsdp"), (1, "ddp")])
def test_a_sharded_checkpoint_resumes_at_any_world_size_and_in_ddp(tmp_path, tokenizer, uninterrupted,
                                                                   sharded_checkpoint, resume_world, resume_mode):
    merged = sharded_checkpoint
    resumed = _run(tmp_path, "resumed", resume_world, {"mode": resume_mode, "resume": merged}, tokenizer)[0]
    whole = uninterrupted["fsdp"][0]
    assert resumed["step"] == STEPS and len(resumed["losses"]) == 2
    if resume_world == 2:  # the logged loss is rank 0's local loss: comparable at the same world size only
        assert max(abs(a - b) for a, b in zip(resumed["losses"], whole["losses"][2:])) < TOL
    assert _max_diff(resumed["model"], whole["model"]) < TOL
    assert _max_diff(resumed["ema"], whole["ema"]) < TOL


def test_two_fsdp_workers_resume_from_a_ddp_checkpoint(tmp_path, tokenizer, uninterrupted):
    _run(tmp_path, "first", 2, {"mode": "ddp", "until": 2, "save": str(tmp_path / "ckpt")}, tokenizer)
    ckpt = str(tmp_path / "ckpt" / "rank0")  # ddp: rank 0 writes the whole state (state.pt)
    assert "state.pt" in os.listdir(ckpt) and ".metadata" not in os.listdir(ckpt)
    resumed = _run(tmp_path, "resumed", 2, {"mode": "fsdp", "resume": ckpt}, tokenizer)[0]
    assert resumed["step"] == STEPS
    assert _max_diff(resumed["model"], uninterrupted["ddp"][0]["model"]) < TOL
    assert _max_diff(resumed["ema"], uninterrupted["ddp"][0]["ema"]) < TOL


def test_a_sharded_checkpoint_loads_whole_and_names_what_is_damaged(sharded_checkpoint, tmp_path, tokenizer):
    state = load_state(sharded_checkpoint)  # what export and the fine-tuning driver read, in one process
    assert state["step"] == 2 and set(state["task"]) == {"model", "generator", "ema", "ema_weights"}
    tower = build_tower(_cfg("ddp", 1).model, tokenizer=tokenizer)
    tower.load_state_dict(state["task"]["model"])  # strict: every key, whole shapes
    assert set(state["optimizer"]["state"]) == {n for n, p in tower.named_parameters() if p.requires_grad}

    lost = Path(shutil.copytree(sharded_checkpoint, tmp_path / "lost"))
    (lost / "manifest.rank1.json").unlink()  # rank 1's upload never finished
    assert check_checkpoint(lost) == "manifest.rank1.json (rank 1's shards) is missing or unreadable"
    cut = Path(shutil.copytree(sharded_checkpoint, tmp_path / "cut"))
    with open(cut / "__1_0.distcp", "r+b") as f:
        f.truncate(100)
    assert "__1_0.distcp has 100 bytes" in check_checkpoint(cut)


def test_an_index_that_would_run_code_is_refused(sharded_checkpoint, tmp_path):
    evil = Path(shutil.copytree(sharded_checkpoint, tmp_path / "evil"))
    (evil / ".metadata").write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(ShardedCheckpointError, match="posix.system is not part of a checkpoint index"):
        load_whole(evil)


class _Exploit:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def test_fsdp_with_siglip_a_locked_image_tower_and_fused_adamw_matches_ddp(tmp_path, tokenizer):
    """SigLIP (a second scalar outside FSDP: the bias), the image tower locked but its last layer, fused AdamW."""
    extra = ("loss.kind=siglip", "model.lock_image=true", "model.lock_image_unlocked_layers=1",
             "train.fused_adamw=true")
    ddp, fsdp = (_run(tmp_path, mode, 2, {"mode": mode, "extra": extra}, tokenizer)[0] for mode in ("ddp", "fsdp"))
    assert max(abs(a - b) for a, b in zip(ddp["losses"], fsdp["losses"])) < TOL
    assert _max_diff(ddp["model"], fsdp["model"]) < TOL
    start = _run(tmp_path, "start", 1, {"mode": "ddp", "extra": extra, "until": 0}, tokenizer)[0]["model"]
    locked = [k for k in start if k.startswith("clip.vision_model.encoder.layers.0.")]
    assert locked and all(torch.equal(start[k], fsdp["model"][k]) for k in locked)  # bit-identical under fsdp
    assert "logit_bias" in fsdp["model"] and fsdp["model"]["logit_bias"] != start["logit_bias"]


def test_fsdp_zero2_with_grad_checkpointing_and_bf16_train_like_ddp(tmp_path, tokenizer, uninterrupted):
    """The other fsdp switches. ZeRO-2 (no resharding after forward; accumulation skips the first micro-step's
    reduce-scatter) with gradient checkpointing, fp32: the uninterrupted ddp run's weights (2e-5); its EMA copies
    reshard after their forwards all the same. bf16 (MixedPrecisionPolicy: bf16 weights in compute, fp32
    reduction) against ddp under bf16 autocast: they round differently, and AdamW turns tiny gradient
    differences into whole steps, so only the losses compare (within 2%). CPU offload needs GPU workers: refused
    here by name."""
    with pytest.raises(ConfigError, match="train.fsdp_cpu_offload.*train.use_gpu=true"):
        _cfg("fsdp", 2, ("train.fsdp_cpu_offload=true",))
    zero2 = _run(tmp_path, "zero2", 2, {"mode": "fsdp", "extra": ("train.grad_checkpointing=true",
                                                                  "train.fsdp_reshard_after_forward=false")}, tokenizer)[0]
    assert _max_diff(zero2["model"], uninterrupted["ddp"][0]["model"]) < TOL
    assert _max_diff(zero2["ema"], uninterrupted["ddp"][0]["ema"]) < TOL
    bf16 = ("train.precision=bf16",)
    fsdp = _run(tmp_path, "fsdp-bf16", 2, {"mode": "fsdp", "extra": bf16}, tokenizer)[0]
    ddp = _run(tmp_path, "ddp-bf16", 2, {"mode": "ddp", "extra": bf16}, tokenizer)[0]
    assert all(abs(a - b) <= 0.02 * abs(b) for a, b in zip(fsdp["losses"], ddp["losses"])), (fsdp["losses"], ddp["losses"])
    assert all(torch.isfinite(v).all() for v in fsdp["model"].values() if v.is_floating_point())
