"""Locked towers (models/tower_lock.py): which parameters a lock freezes, the optimizer without them,
locked weights bit-identical after training (one process through build_training, and two gloo processes
under DDP as Ray Train builds it), DDP's gradient buckets without them, and the config's checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from raylpclip.config import ConfigError, ModelConfig, OptimConfig, PretrainConfig, PSDConfig, TrainConfig, load_config
from raylpclip.distributed import ddp_kwargs
from raylpclip.engine.loop import LoopState, run_loop
from raylpclip.engine.optim import build_optimizer, build_scheduler
from raylpclip.engine.pretrain_task import PretrainTask
from raylpclip.engine.training_setup import build_training
from raylpclip.models.clip import ClipTower, build_clip
from raylpclip.models.tower_lock import lock_tower, lock_towers
from tests.unit.rank_spawning import spawn_ranks

TINY = {"vision.image_size": 16, "vision.patch_size": 8, "vision.hidden_size": 32, "vision.num_hidden_layers": 2,
        "vision.num_attention_heads": 2, "vision.intermediate_size": 64, "text.hidden_size": 32,
        "text.num_hidden_layers": 2, "text.num_attention_heads": 2, "text.intermediate_size": 64,
        "text.max_position_embeddings": 8, "projection_dim": 16}
STEPS, WORLD = 3, 2


def _clip():
    torch.manual_seed(0)
    return build_clip("tiny", vocab_size=300, bos_token_id=0, eos_token_id=1, pad_token_id=3, overrides=TINY)


def _trainable(module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def _image_names(clip) -> set[str]:
    return {n for n, _ in clip.named_parameters() if n.startswith(("vision_model.", "visual_projection."))}


def test_a_locked_image_tower_is_its_transformer_and_projection():
    clip = _clip()
    everything = {n for n, _ in clip.named_parameters()}
    lock_tower(clip, "image")
    assert _trainable(clip) == everything - _image_names(clip)  # text tower and logit scale train on
    assert "logit_scale" in _trainable(clip) and "visual_projection.weight" not in _trainable(clip)


def test_unlocked_layers_keep_the_top_of_the_tower_trainable():
    clip = _clip()
    lock_tower(clip, "text", unlocked_layers=1)
    text = {n for n in _trainable(clip) if n.startswith(("text_model.", "text_projection."))}
    top = ("text_model.encoder.layers.1.", "text_model.final_layer_norm.", "text_projection.")
    assert text == {n for n, _ in clip.named_parameters() if n.startswith(top)}
    with pytest.raises(ConfigError, match="'model.lock_image_unlocked_layers': got 3, expected 0 to 2"):
        lock_tower(_clip(), "image", unlocked_layers=3)


def test_unlocked_norms_keep_every_layernorm_of_the_locked_tower():
    clip = _clip()
    lock_tower(clip, "image", unlocked_norms=True)
    image = _trainable(clip) & _image_names(clip)
    # pre_layrnorm, layer_norm1/2 of both layers, post_layernorm: weight and bias each
    assert len(image) == 2 * (1 + 2 * 2 + 1) and all("norm" in n for n in image)


def _batch(seed: int, b: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 300, (b, 8), generator=g)
    ids[:, 0], ids[:, 6], ids[:, 7:] = 0, 1, 3
    mask = torch.ones_like(ids)
    mask[:, 7:] = 0
    return {"image": torch.randint(0, 256, (b, 3, 16, 16), dtype=torch.uint8, generator=g), "input_ids": ids,
            "attention_mask": mask}


class Quiet:
    def report(self, *args, **kwargs):
        pass


def _run(task, optimizer, scheduler, batches) -> None:
    run_loop(task, optimizer=optimizer, scheduler=scheduler, batches=iter(batches), state=LoopState(),
             train=TrainConfig(steps=STEPS, batch_size=8, num_workers=1, log_every=1),
             optim=OptimConfig(warmup_steps=0), hooks=Quiet())


def _changed(before: dict, model) -> dict[str, bool]:
    return {n: not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from raylpclip.models.bpe_tokenizer import train_tokenizer

    return train_tokenizer(["a red circle", "a blue square"] * 10, vocab_size=300,
                           out_dir=str(tmp_path_factory.mktemp("tok")))


def test_build_training_trains_only_the_unlocked_parameters(tokenizer):
    model = ModelConfig(overrides={**TINY, "text.max_position_embeddings": 16}, lock_image=True,
                        lock_text=True, lock_text_unlocked_layers=1)
    cfg = PretrainConfig(model=model, psd=PSDConfig(a_max=0.0), optim=OptimConfig(warmup_steps=0),
                         train=TrainConfig(steps=STEPS, batch_size=8, num_workers=1, grad_checkpointing=True))
    t = build_training(cfg, tokenizer=tokenizer, rank=0, device=torch.device("cpu"))
    assert t.model.clip.text_model.encoder.gradient_checkpointing  # locks compose with recomputed layers
    trainable = {id(p) for p in t.model.parameters() if p.requires_grad}
    in_optimizer = [id(p) for g in t.optimizer.param_groups for p in g["params"]]
    assert set(in_optimizer) == trainable and len(in_optimizer) == len(trainable)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    tokens = tokenizer(["a red circle", "a blue square"] * 2, padding="max_length", max_length=16)
    text = {k: torch.tensor(tokens[k]) for k in ("input_ids", "attention_mask")}
    batches = [{**_batch(s), **text} for s in range(STEPS)]
    _run(t.task, t.optimizer, t.scheduler, batches)
    changed = _changed(before, t.model)
    locked = [n for n, p in t.model.named_parameters() if not p.requires_grad]
    assert locked and not any(changed[n] for n in locked)  # bit-identical
    assert all(changed[n] for n, p in t.model.named_parameters() if p.requires_grad)
    assert all(p.grad is None for p in t.model.parameters() if not p.requires_grad)


# ---- two gloo workers under DDP --------------------------------------------------------------------------


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        tower = ClipTower(_clip()).train()
        lock_towers(tower.clip, ModelConfig(lock_image=True, lock_image_unlocked_layers=1, lock_text=True))
        before = {n: p.detach().clone() for n, p in tower.named_parameters()}
        model = DDP(tower, **ddp_kwargs(bucket_cap_mb=25.0))  # as Ray Train's prepare_model wraps it
        names = {p.data_ptr(): n for n, p in tower.named_parameters()}
        buckets: list[list[str]] = []

        def recording_allreduce(state, bucket):  # DDP's default averaging, with the bucket's parameters noted
            buckets.append(sorted(names[p.data_ptr()] for p in bucket.parameters()))
            buf = bucket.buffer().div_(WORLD)
            return dist.all_reduce(buf, async_op=True).get_future().then(lambda f: f.value()[0])

        model.register_comm_hook(None, recording_allreduce)
        optim = OptimConfig(warmup_steps=0)
        optimizer = build_optimizer(tower, optim)
        task = PretrainTask(model, psd=PSDConfig(a_max=0.0), total_steps=STEPS, seed=0, rank=rank)
        _run(task, optimizer, build_scheduler(optimizer, optim, total_steps=STEPS),
             [_batch(100 * rank + s) for s in range(STEPS)])
        # One more backward, without the optimizer step whose zero_grad(set_to_none) would clear every .grad.
        out = task.losses(_batch(100 * rank + STEPS), step=STEPS)
        sum(v for k, v in out.items() if k.endswith("_loss")).backward()
        torch.save({"buckets": buckets, "changed": _changed(before, tower),
                    "trainable": sorted(_trainable(tower)), "no_grad": [n for n, p in tower.named_parameters()
                                                                       if p.grad is None],
                    "weights": {n: p.detach() for n, p in tower.named_parameters()}},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()



@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return spawn_ranks(_worker, WORLD, tmp_path_factory.mktemp("ddp_lock"))


def test_ddp_buckets_hold_only_trainable_parameters(ranks):
    for r in ranks:
        bucketed = {n for bucket in r["buckets"] for n in bucket}
        assert bucketed == set(r["trainable"])  # every trainable parameter, no locked one
        assert set(r["no_grad"]) == {n for n in r["changed"] if n not in r["trainable"]}


def test_ddp_training_leaves_locked_weights_bit_identical(ranks):
    for r in ranks:
        locked = [n for n in r["changed"] if n not in r["trainable"]]
        assert locked and not any(r["changed"][n] for n in locked)
        assert all(r["changed"][n] for n in r["trainable"])
        assert "clip.vision_model.encoder.layers.1.mlp.fc1.weight" in r["trainable"]
        assert "clip.vision_model.encoder.layers.0.mlp.fc1.weight" in locked
    for name, weight in ranks[0]["weights"].items():  # the replicas agree
        assert torch.equal(weight, ranks[1]["weights"][name]), name


@pytest.mark.parametrize("overrides, key", [
    (["model.lock_image_unlocked_layers=1"], "model.lock_image_unlocked_layers"),
    (["model.lock_text_unlocked_norms=true"], "model.lock_text_unlocked_norms"),
    (["model.lock_text=true", "model.lock_text_unlocked_layers=-1"], "model.lock_text_unlocked_layers"),
    (["model.lock_image=true", "model.lock_text=true"], "model.lock_image/lock_text"),
])
def test_bad_lock_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(PretrainConfig, None, overrides)
    assert load_config(PretrainConfig, None, ["model.lock_image=true", "model.lock_text=true",
                                              "model.lock_text_unlocked_norms=true"])
