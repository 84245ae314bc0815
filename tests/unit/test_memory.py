"""Memory and the speed switches.

- The gathered losses compute this rank's b x N rows of the logits, never N x N: every tensor that any
  op makes in forward and backward is recorded under a fake 3-rank gather (this process as rank 1).
- Gradient checkpointing gives the same loss and gradients as without, and really recomputes.
- fused AdamW, channels-last and torch.compile give the eager/foreach results; where unsupported
  they fall back with a logged note.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from raylpclip.config import ModelConfig, OptimConfig, PretrainConfig, TrainConfig
from raylpclip.engine import training_setup as setup
from raylpclip.engine.optim import build_optimizer
from raylpclip.losses import clip_loss, contrastive, psd_loss
from raylpclip.models.clip import ClipTower, build_clip

WORLD, RANK, B, D = 3, 1, 4, 3  # D < B: the gathered (N, D) features stay smaller than b x N
N = WORLD * B


class Shapes(TorchDispatchMode):
    """Records the shape of every tensor an aten op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.fixture
def fake_three_ranks(monkeypatch):
    """This process plays rank 1 of 3: the gather puts fixed features of ranks 0 and 2 around ours."""
    g = torch.Generator().manual_seed(0)
    others = {r: torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1) for r in (0, 2)}

    def gather(x):
        return torch.cat([others[0], x, others[2]], dim=0)

    monkeypatch.setattr(contrastive, "all_gather_with_grad", gather)
    monkeypatch.setattr(contrastive, "get_rank", lambda: RANK)
    seen = []
    real = contrastive.local_logits

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(tuple(tuple(t.shape) for t in out))
        return out

    monkeypatch.setattr(contrastive, "local_logits", recording)
    monkeypatch.setattr("raylpclip.losses.psd.local_logits", recording)
    return seen


@pytest.mark.parametrize("loss", ["clip", "psd"])
def test_each_rank_makes_b_by_n_logits_never_n_by_n(fake_three_ranks, loss):
    g = torch.Generator().manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1).requires_grad_()
    v = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1).requires_grad_()
    scale = torch.tensor(10.0, requires_grad=True)
    with Shapes() as mode:
        if loss == "clip":
            out = clip_loss(u, v, scale)
        else:  # every row soft: the soft-target path with its softmax and one-hot tensors
            out = psd_loss(u, v, scale, alpha=0.5, subset_fraction=1.0, generator=torch.Generator().manual_seed(0))
        out["contrastive_loss"].backward()
    assert fake_three_ranks == [((B, N), (B, N))]
    assert (B, N) in mode.shapes
    # Nothing of the global N x N size (or bigger than the local rows) is ever made, forward or backward.
    assert max(torch.Size(s).numel() for s in mode.shapes) == B * N
    assert u.grad.shape == (B, D) and torch.isfinite(u.grad).all()


def test_labels_point_at_this_ranks_columns(fake_three_ranks):
    assert contrastive.local_labels(B).tolist() == [4, 5, 6, 7]


# ---- towers -------------------------------------------------------------------------------------

SPECIAL = dict(vocab_size=300, bos_token_id=0, eos_token_id=1, pad_token_id=3)
SMALL = {"vision.image_size": 32, "vision.num_hidden_layers": 2, "text.num_hidden_layers": 2}


MINIMAL = {"vision.image_size": 16, "vision.num_hidden_layers": 1, "text.num_hidden_layers": 1,
           "vision.hidden_size": 32, "text.hidden_size": 32, "vision.intermediate_size": 64,
           "text.intermediate_size": 64, "projection_dim": 16}


def _tower(**overrides) -> ClipTower:
    torch.manual_seed(0)
    return ClipTower(build_clip("tiny", **SPECIAL, overrides={**SMALL, **overrides})).train()


def _inputs(size: int = 32):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(4, 300, (4, 10), generator=g)
    ids[:, 0], ids[:, 7], ids[:, 8:] = 0, 1, 3
    mask = (torch.arange(10) < 8).long().expand(4, 10)
    return torch.randn(4, 3, size, size, generator=g), ids, mask


def _loss_and_grads(tower: ClipTower, size: int = 32):
    out = tower(*_inputs(size))
    loss = clip_loss(out["image_features"], out["text_features"], out["logit_scale"])["contrastive_loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}


def _count_layer_calls(tower: ClipTower) -> list[int]:
    """Calls into the first vision layer's MLP (inside the checkpointed layer forward, whose own hooks
    transformers keeps outside the checkpoint; a pre-hook, since the recompute stops as soon as it has
    what backward needs, before the MLP returns)."""
    calls = [0]
    tower.clip.vision_model.encoder.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_grad_checkpointing_gives_the_same_loss_and_grads_and_recomputes():
    plain, ckpt = _tower(), _tower()
    plain_calls, ckpt_calls = _count_layer_calls(plain), _count_layer_calls(ckpt)
    setup.prepare_tower(ckpt, TrainConfig(grad_checkpointing=True))
    loss_a, grads_a = _loss_and_grads(plain)
    loss_b, grads_b = _loss_and_grads(ckpt)
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)
    assert plain_calls == [1] and ckpt_calls == [2]  # the checkpointed layer ran again in backward


def test_channels_last_keeps_the_outputs():
    plain, cl = _tower(), _tower()
    setup.prepare_tower(cl, TrainConfig(channels_last=True))
    w = cl.clip.vision_model.embeddings.patch_embedding.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    image = _inputs()[0]
    torch.testing.assert_close(cl.encode_image(image), plain.encode_image(image), rtol=1e-4, atol=1e-5)


def test_fused_adamw_matches_foreach_on_cpu():
    runs = {}
    for fused in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 2))
        opt = build_optimizer(model, OptimConfig(lr=0.1), fused=fused)
        assert bool(opt.defaults.get("fused")) is fused
        for i in range(3):
            model(torch.randn(8, 6, generator=torch.Generator().manual_seed(i))).square().mean().backward()
            opt.step()
            opt.zero_grad()
        runs[fused] = [p.detach().clone() for p in model.parameters()]
    for a, b in zip(runs[False], runs[True]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_fused_adamw_falls_back_with_a_note(monkeypatch, caplog):
    real = torch.optim.AdamW

    def no_fused(params, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be on a supported device")
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    with caplog.at_level(logging.WARNING):
        opt = build_optimizer(torch.nn.Linear(2, 2), OptimConfig(), fused=True)
    assert not opt.defaults.get("fused") and "fused AdamW unavailable here" in caplog.text


def test_compile_falls_back_to_eager_with_a_note(monkeypatch, caplog):
    monkeypatch.setattr(setup, "compile_unavailable", lambda: "RuntimeError: no C++ compiler")
    tower = _tower()
    with caplog.at_level(logging.WARNING):
        setup.prepare_tower(tower, TrainConfig(compile=True))
    assert "train.compile: torch.compile does not work here (RuntimeError: no C++ compiler)" in caplog.text
    assert tower.clip.vision_model._compiled_call_impl is None  # left eager


def test_compile_switch_trains_like_eager():
    reason = setup.compile_unavailable()
    if reason is not None:
        pytest.skip(f"torch.compile does not work on this machine: {reason}")
    # The smallest tower (compile time grows with the graph: ~1 min for this one on 2 quiet cores).
    eager, compiled = _tower(**MINIMAL), _tower(**MINIMAL)
    setup.prepare_tower(compiled, TrainConfig(compile=True))
    assert compiled.clip.vision_model._compiled_call_impl is not None
    loss_a, grads_a = _loss_and_grads(eager, size=16)
    loss_b, grads_b = _loss_and_grads(compiled, size=16)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-4, atol=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-3, atol=1e-5, msg=name)
    assert set(compiled.state_dict()) == set(eager.state_dict())  # checkpoints do not see the compile


def test_build_training_applies_the_switches(tmp_path):
    from raylpclip.models.bpe_tokenizer import train_tokenizer

    tok = train_tokenizer(["a red circle", "a blue square"] * 10, vocab_size=300, out_dir=str(tmp_path))
    cfg = PretrainConfig(model=ModelConfig(overrides=SMALL), train=TrainConfig(
        num_workers=1, grad_checkpointing=True, channels_last=True, fused_adamw=True))
    t = setup.build_training(cfg, tokenizer=tok, rank=0, device=torch.device("cpu"))
    assert t.model.clip.vision_model.encoder.gradient_checkpointing and t.model.channels_last
    assert t.optimizer.defaults["fused"] and t.task.model is t.model and t.model.training
