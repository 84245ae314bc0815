"""SigLIP's sigmoid loss and PSD-sigmoid on one process, against explicit loops; its config keys; the tower's
logit bias through build, checkpoint state, export and a training step. (Two workers: test_siglip_distributed.py.)"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from raylpclip.config import ConfigError, LossConfig, ModelConfig, PretrainConfig, TrainConfig, load_config, validate
from raylpclip.losses import psd_siglip_loss, siglip_loss

N, D = 5, 4


def _features(seed: int = 0, n: int = N, d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    v = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return u, v


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _hand_siglip(u, v, s: float, b: float) -> float:
    """-(1/n) sum_ij log sigmoid(z_ij (s u_i.v_j + b)), z = +1 on the diagonal: plain Python loops."""
    n, total = len(u), 0.0
    for i in range(n):
        for j in range(n):
            logit = s * sum(float(u[i][k]) * float(v[j][k]) for k in range(len(u[i]))) + b
            total += _log_sigmoid((1.0 if i == j else -1.0) * logit)
    return -total / n


def _hand_psd_siglip(u, v, s, b, *, alpha, rows, teacher) -> float:
    """BCE against target_ij = (1-a) y_ij + a sigmoid(teacher(i, j)) on `rows`, y_ij elsewhere; / n."""
    n, total = len(u), 0.0
    for i in range(n):
        for j in range(n):
            logit = s * sum(float(u[i][k]) * float(v[j][k]) for k in range(len(u[i]))) + b
            y = 1.0 if i == j else 0.0
            t = (1 - alpha) * y + alpha / (1 + math.exp(-teacher(i, j))) if i in rows else y
            total += t * _log_sigmoid(logit) + (1 - t) * _log_sigmoid(-logit)
    return -total / n


@pytest.mark.parametrize("dist_impl", ["gather", "ring"])
def test_siglip_loss_matches_hand_computation(dist_impl):
    u, v = _features()
    loss = siglip_loss(u, v, torch.tensor(7.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64),
                       dist_impl=dist_impl)["contrastive_loss"]
    assert loss.item() == pytest.approx(_hand_siglip(u.tolist(), v.tolist(), 7.0, -3.0), rel=1e-12)


def test_siglip_sign_and_normalisation_have_a_closed_form():
    # Orthonormal, matched features: the diagonal's logits are s + b = 5 and the rest b = -5, so every one of the
    # n * n pairs costs log(1 + e^-5) and the loss is n * log(1 + e^-5) (divided by the local image count n,
    # not by the n * n pairs). A flipped sign gives n * log(1 + e^5); a mean over pairs gives log(1 + e^-5).
    u = torch.eye(N, dtype=torch.float64)
    loss = siglip_loss(u, u.clone(), 10.0, -5.0)["contrastive_loss"].item()
    assert loss == pytest.approx(N * math.log1p(math.exp(-5.0)), rel=1e-12)
    assert loss < 0.1 < math.log1p(math.exp(5.0))
    shuffled = siglip_loss(u, u.roll(1, dims=0), 10.0, -5.0)["contrastive_loss"].item()
    assert shuffled > 10 * loss  # every caption moved one image over: the positives now score -5


def test_bias_and_scale_gradients_match_the_sigmoid_derivative():
    u, v = _features(1)
    s = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    siglip_loss(u, v, s, b)["contrastive_loss"].backward()
    cos = u @ v.T
    residual = torch.sigmoid(4.0 * cos - 2.0) - torch.eye(N, dtype=torch.float64)  # dL/dlogit * n
    torch.testing.assert_close(b.grad, residual.sum() / N, atol=1e-12, rtol=0)
    torch.testing.assert_close(s.grad, (residual * cos).sum() / N, atol=1e-12, rtol=0)


def test_ring_equals_gather_on_one_process_with_gradients():
    u, v = _features(2)
    grads = {}
    for impl in ("gather", "ring"):
        uu, vv = u.clone().requires_grad_(), v.clone().requires_grad_()
        b = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
        loss = siglip_loss(uu, vv, 10.0, b, dist_impl=impl)["contrastive_loss"]
        loss.backward()
        grads[impl] = (loss.detach(), uu.grad, vv.grad, b.grad)
    for a, b in zip(grads["gather"], grads["ring"]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="dist_impl"):
        siglip_loss(u, v, 1.0, 0.0, dist_impl="bidir")


@pytest.mark.parametrize("dist_impl", ["gather", "ring"])
def test_bf16_autocast_leaves_the_logits_in_fp32(dist_impl):
    u, v = (x.float() for x in _features(8))
    plain = siglip_loss(u, v, 10.0, -10.0, dist_impl=dist_impl)["contrastive_loss"]
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under = siglip_loss(u, v, 10.0, -10.0, dist_impl=dist_impl)["contrastive_loss"]
    assert under.dtype == torch.float32 and torch.equal(under, plain)


@pytest.mark.parametrize("dist_impl", ["gather", "ring"])
def test_psd_siglip_at_alpha_zero_is_siglip_exactly(dist_impl):
    u, v = _features(3)
    plain = siglip_loss(u, v, 9.0, -4.0, dist_impl=dist_impl)["contrastive_loss"]
    for fraction in (0.0, 0.6, 1.0):
        out = psd_siglip_loss(u, v, torch.tensor(9.0), torch.tensor(-4.0), alpha=0.0, subset_fraction=fraction,
                              dist_impl=dist_impl, generator=torch.Generator().manual_seed(0))
        assert torch.equal(out["contrastive_loss"], plain)
        assert out["psd_alpha"].item() == 0.0
    empty = psd_siglip_loss(u, v, torch.tensor(9.0), torch.tensor(-4.0), alpha=0.7, subset_fraction=0.0)
    assert torch.equal(empty["contrastive_loss"], plain)


@pytest.mark.parametrize("dist_impl", ["gather", "ring"])
def test_psd_siglip_soft_targets_match_hand_computation(dist_impl):
    u, v = _features(4)
    s, b, alpha = 6.0, -2.5, 0.4
    gen = torch.Generator().manual_seed(11)
    out = psd_siglip_loss(u, v, torch.tensor(s, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                          alpha=alpha, subset_fraction=0.6, dist_impl=dist_impl, generator=gen)
    # The same draw as the loss made: the rows with soft targets.
    mask_gen = torch.Generator().manual_seed(11)
    rows = set(torch.randperm(N, generator=mask_gen)[:round(0.6 * N)].tolist())
    cos = (u @ v.T).tolist()
    expected = _hand_psd_siglip(u.tolist(), v.tolist(), s, b, alpha=alpha, rows=rows,
                                teacher=lambda i, j: s * cos[i][j] + b)
    assert out["contrastive_loss"].item() == pytest.approx(expected, rel=1e-12)
    assert out["soft_fraction"].item() == pytest.approx(len(rows) / N)
    assert out["contrastive_loss"].item() != pytest.approx(_hand_siglip(u.tolist(), v.tolist(), s, b), rel=1e-6)


def test_psd_siglip_teacher_features_and_temperature_match_hand_computation():
    u, v = _features(5)
    tu, tv = _features(6)
    s, b, alpha, tau = 5.0, -1.0, 0.8, 0.25
    tcos = (tu @ tv.T).tolist()
    cos = (u @ v.T).tolist()
    cases = [  # (teacher kwargs, teacher logit of pair i, j)
        ({"teacher_image_features": tu, "teacher_text_features": tv}, lambda i, j: s * tcos[i][j] + b),
        ({"teacher_image_features": tu, "teacher_text_features": tv, "teacher_temperature": tau},
         lambda i, j: tcos[i][j] / tau + b),
        ({"teacher_temperature": tau}, lambda i, j: cos[i][j] / tau + b),
    ]
    for kwargs, teacher in cases:
        for impl in ("gather", "ring"):
            out = psd_siglip_loss(u, v, torch.tensor(s, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                                  alpha=alpha, subset_fraction=1.0, dist_impl=impl, **kwargs)
            expected = _hand_psd_siglip(u.tolist(), v.tolist(), s, b, alpha=alpha, rows=set(range(N)),
                                        teacher=teacher)
            assert out["contrastive_loss"].item() == pytest.approx(expected, rel=1e-12), (kwargs.keys(), impl)


def test_psd_siglip_teacher_gets_no_gradient_and_targets_are_fixed():
    # The default teacher is the stop-gradient logits: dL/dlogit_ij = (sigmoid(l_ij) - target_ij) / n.
    u, v = _features(7)
    b = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    psd_siglip_loss(u, v, torch.tensor(8.0, dtype=torch.float64), b, alpha=0.5, subset_fraction=1.0)[
        "contrastive_loss"].backward()
    logits = 8.0 * u @ v.T - 3.0
    eye = torch.eye(N, dtype=torch.float64)
    targets = 0.5 * eye + 0.5 * torch.sigmoid(logits)
    torch.testing.assert_close(b.grad, (torch.sigmoid(logits) - targets).sum() / N, atol=1e-12, rtol=0)


# ---- config ------------------------------------------------------------------------------------


def test_loss_config_defaults_and_overrides():
    cfg = load_config(PretrainConfig, None, ["loss.kind=siglip", "loss.siglip_dist=ring"])
    assert (cfg.loss.kind, cfg.loss.siglip_dist, cfg.loss.siglip_scale_init, cfg.loss.siglip_bias_init) == (
        "siglip", "ring", 10.0, -10.0)
    assert PretrainConfig().loss.kind == "clip"
    validate(cfg)


@pytest.mark.parametrize("overrides,key", [
    ({"kind": "sigmoid"}, "loss.kind"),
    ({"kind": "siglip", "siglip_dist": "bidir"}, "loss.siglip_dist"),
    ({"kind": "clip", "siglip_dist": "ring"}, "loss.siglip_dist"),
    ({"kind": "siglip", "siglip_scale_init": 0.0}, "loss.siglip_scale_init"),
    ({"kind": "siglip", "siglip_scale_init": 150.0}, "loss.siglip_scale_init"),
    ({"kind": "siglip", "siglip_bias_init": float("nan")}, "loss.siglip_bias_init"),
])
def test_loss_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        validate(PretrainConfig(loss=LossConfig(**overrides)))
    if overrides.get("siglip_dist") == "ring":
        with pytest.raises(ConfigError, match="loss.kind"):
            validate(PretrainConfig(loss=LossConfig(**overrides)))


# ---- the tower's bias: build, state, export, a training step -------------------------------------------

SMALL = {"vision.image_size": 32, "vision.num_hidden_layers": 1, "text.num_hidden_layers": 1}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from raylpclip.models.bpe_tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    return train_tokenizer(["a red circle", "a blue square", "a green star"] * 10, vocab_size=300, out_dir=str(out))


def test_siglip_tower_has_bias_and_scale_init_and_exports_them(tokenizer, tmp_path):
    from raylpclip.models.clip import export_clip
    from raylpclip.models.tower_factory import build_tower

    clip_tower = build_tower(ModelConfig(overrides=SMALL), tokenizer=tokenizer)
    assert clip_tower.logit_bias is None and "logit_bias" not in clip_tower.state_dict()
    loss = LossConfig(kind="siglip", siglip_bias_init=-7.0)
    tower = build_tower(ModelConfig(overrides=SMALL), tokenizer=tokenizer, loss=loss)
    assert tower.logit_bias.item() == -7.0 and "logit_bias" in tower.state_dict()
    assert tower.logit_scale().item() == pytest.approx(10.0, rel=1e-6)
    assert {n for n, _ in tower.named_parameters()} >= {"logit_bias", "clip.logit_scale"}
    with torch.no_grad():
        tower.logit_bias.fill_(-6.25)
    export_clip(tower.clip, str(tmp_path / "model"), logit_bias=float(tower.logit_bias.detach()))
    assert json.loads((tmp_path / "model" / "config.json").read_text())["logit_bias"] == -6.25
    # Starting from the export: its bias, not the init; a CLIP run from it has none.
    again = build_tower(ModelConfig(pretrained=str(tmp_path / "model")), tokenizer=tokenizer, loss=loss)
    assert again.logit_bias.item() == -6.25
    assert again.logit_scale().item() == pytest.approx(10.0, rel=1e-6)
    assert build_tower(ModelConfig(pretrained=str(tmp_path / "model")), tokenizer=tokenizer).logit_bias is None


@pytest.mark.parametrize("dist_impl", ["gather", "ring"])
def test_pretrain_task_trains_the_bias_and_logs_it(tokenizer, dist_impl):
    from raylpclip import batch_schema
    from raylpclip.data.tokenization import tokenize
    from raylpclip.engine.training_setup import build_training

    cfg = PretrainConfig(model=ModelConfig(overrides=SMALL), loss=LossConfig(kind="siglip", siglip_dist=dist_impl),
                         train=TrainConfig(num_workers=1, fused_adamw=False, steps=10))
    t = build_training(cfg, tokenizer=tokenizer, rank=0, device=torch.device("cpu"))
    assert any(p is t.model.logit_bias for g in t.optimizer.param_groups for p in g["params"])
    tokens = tokenize(tokenizer, ["a red circle", "a blue square", "a green star", "a red star"], context_length=16)
    batch = {batch_schema.IMAGE: torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8),
             batch_schema.INPUT_IDS: torch.from_numpy(tokens["input_ids"]),
             batch_schema.ATTENTION_MASK: torch.from_numpy(tokens["attention_mask"])}
    out = t.task.losses(batch, step=5)
    assert {"contrastive_loss", "logit_bias", "logit_scale", "psd_alpha", "soft_fraction"} <= set(out)
    assert out["logit_bias"].item() == -10.0 and out["psd_alpha"].item() > 0
    out["contrastive_loss"].backward()
    assert t.model.logit_bias.grad is not None and t.model.logit_bias.grad.item() != 0.0
    t.optimizer.step()
    assert t.model.logit_bias.item() != -10.0
    assert "logit_bias" in t.task.state_dict()["model"]
