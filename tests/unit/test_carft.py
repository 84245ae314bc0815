"""CAR-FT, plain fine-tuning and WiSE-FT (methods.md section 3): the pure-torch core, no Ray."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from raylpclip import batch_schema
from raylpclip.cli import main
from raylpclip.commands.finetune import FinetuneConfig
from raylpclip.config import ConfigError, OptimConfig, TrainConfig, load_config
from raylpclip.data.decode import DataError
from raylpclip.data.tokenization import tokenize
from raylpclip.engine.loop import LoopState, run_loop
from raylpclip.engine.optim import build_optimizer, build_scheduler
from raylpclip.eval.templates import OPENAI_IMAGENET_TEMPLATES
from raylpclip.methods.carft import FinetuneTask, carft_loss, context_scale, context_weights, wise_ft
from raylpclip.methods.finetune_model import (ImageClassifier, ImageEncoder, evaluate_classifier, frozen_copy,
                                              labelled_only, set_trainable)
from raylpclip.models.classifier import context_length, load_encoder, zeroshot_head
from tests.conftest import TINY_CLASSES

CONTEXTS = ["a photo of a {}.", "a blurry sketch of a {}.", "a {} in the dark."]


def _batches(n: int, size: int = 6, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{batch_schema.IMAGE: torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=g),
             batch_schema.LABEL: torch.randint(0, len(TINY_CLASSES), (size,), generator=g)} for _ in range(n)]


def _setup(tiny_clip_dir, *, method: str = "carft", kl_weight: float = 1.0, trainable: str = "image",
           train_head: bool = True):
    """(tower, ImageClassifier theta (trainable), FinetuneTask) from the tiny CLIP, as a worker builds them."""
    tower, tokenizer = load_encoder(tiny_clip_dir)
    head = zeroshot_head(tower, tokenizer, TINY_CLASSES, ["a photo of a {}."])
    model = set_trainable(ImageClassifier(ImageEncoder.of(tower), head), trainable=trainable, train_head=train_head)
    frozen = context = None
    if method == "carft":
        frozen = frozen_copy(model.encoder)
        context = context_weights(tower, tokenizer, TINY_CLASSES, CONTEXTS, context_length=context_length(tower))
    task = FinetuneTask(model, num_classes=len(TINY_CLASSES), frozen=frozen, context=context, kl_weight=kl_weight,
                        scale=context_scale(None, float(tower.logit_scale().detach())))
    return tower, model, task


class _Recorder:
    def __init__(self):
        self.metrics = []

    def report(self, state, metrics, *, save, evaluate, final):
        self.metrics.append(dict(metrics))


def _train(task, model, batches, *, lr: float = 1e-3) -> _Recorder:
    optim = OptimConfig(lr=lr, warmup_steps=0, schedule="constant", weight_decay=0.0)
    optimizer = build_optimizer(model, optim)
    hooks = _Recorder()
    run_loop(task, optimizer=optimizer, scheduler=build_scheduler(optimizer, optim, total_steps=len(batches)),
             batches=iter(batches), state=LoopState(), train=TrainConfig(steps=len(batches), batch_size=6, log_every=1),
             optim=optim, hooks=hooks)
    return hooks


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_kl_is_exactly_zero_while_the_encoder_equals_the_frozen_copy(tiny_clip_dir):
    _, model, task = _setup(tiny_clip_dir)
    out = task.losses(_batches(1)[0], step=0)
    assert out["context_kl"].item() == 0.0 and out["kl_loss"].item() == 0.0
    assert out["ce_loss"].item() > 0


def test_gradients_never_reach_the_frozen_copy(tiny_clip_dir):
    _, model, task = _setup(tiny_clip_dir, kl_weight=10.0)
    frozen_before, trained_before = _snapshot(task.frozen), _snapshot(model.encoder)
    hooks = _train(task, model, _batches(3))
    assert all(not p.requires_grad and p.grad is None for p in task.frozen.parameters())
    assert not task.frozen.training
    for key, value in _snapshot(task.frozen).items():
        assert torch.equal(value, frozen_before[key]), key
    moved = [k for k, v in _snapshot(model.encoder).items() if not torch.equal(v, trained_before[k])]
    assert len(moved) > 10  # the trained tower did move ...
    assert hooks.metrics[-1]["context_kl"] > 0  # ... and so its contexts drifted from the frozen copy's


def test_loss_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.5]])
    labels = torch.tensor([0, 0])
    r = 1 / math.sqrt(2)
    feats = torch.tensor([[1.0, 0.0], [r, r]])  # unit norm
    frozen = torch.tensor([[0.0, 1.0], [r, r]])
    context = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scale, lam = 2.0, 0.5
    out = carft_loss(logits, labels, features=feats, frozen_features=frozen, context=context, kl_weight=lam, scale=scale)

    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    ce = (-math.log(softmax([2.0, 0.0])[0]) - math.log(softmax([0.5, 1.5])[0])) / 2
    # row 0: student cos (1, 0) -> logits (2, 0); teacher cos (0, 1) -> (0, 2); row 1: identical, KL 0
    p, q = softmax([0.0, 2.0]), softmax([2.0, 0.0])
    kl = (sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) + 0.0) / 2
    assert out["ce_loss"].item() == pytest.approx(ce, rel=1e-6)
    assert out["context_kl"].item() == pytest.approx(kl, rel=1e-6)
    assert out["kl_loss"].item() == pytest.approx(lam * kl, rel=1e-6)
    assert set(carft_loss(logits, labels)) == {"ce_loss"}  # ft: no context term at all


def test_temperature_sets_the_context_scale():
    assert context_scale(None, 13.5) == 13.5  # default: the model's logit scale
    assert context_scale(0.01, 13.5) == pytest.approx(100.0)


def test_context_weights_average_classes_per_template(tiny_clip_dir):
    tower, tokenizer = load_encoder(tiny_clip_dir)
    weights = context_weights(tower, tokenizer, TINY_CLASSES, CONTEXTS, context_length=context_length(tower))
    assert weights.shape == (len(CONTEXTS), 128)
    tokens = tokenize(tokenizer, [CONTEXTS[1].format(c) for c in TINY_CLASSES], context_length=context_length(tower))
    with torch.no_grad():
        text = tower.encode_text(torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"]))
    torch.testing.assert_close(weights[1], torch.nn.functional.normalize(text.mean(dim=0), dim=0))


def test_no_text_tower_forward_during_training(tiny_clip_dir):
    tower, tokenizer = load_encoder(tiny_clip_dir)
    calls = []
    tower.clip.text_model.register_forward_hook(lambda *a: calls.append(1))
    head = zeroshot_head(tower, tokenizer, TINY_CLASSES, ["a photo of a {}."])
    context = context_weights(tower, tokenizer, TINY_CLASSES, CONTEXTS, context_length=context_length(tower))
    assert calls  # the hook does see text forwards: the head and the contexts used the text tower once
    model = ImageClassifier(ImageEncoder.of(tower), head)
    task = FinetuneTask(model, num_classes=3, frozen=frozen_copy(model.encoder), context=context, kl_weight=1.0,
                        scale=10.0)
    before = len(calls)
    _train(task, model, _batches(2))
    assert len(calls) == before


def test_ft_holds_no_frozen_copy_and_trains_on_ce_only(tiny_clip_dir):
    _, model, task = _setup(tiny_clip_dir, method="ft")
    assert task.frozen is None
    hooks = _train(task, model, _batches(2))
    assert "context_kl" not in hooks.metrics[-1]
    assert hooks.metrics[-1]["loss"] == pytest.approx(hooks.metrics[-1]["ce_loss"])


def test_frozen_embeddings_and_head_stay_put(tiny_clip_dir):
    _, model, task = _setup(tiny_clip_dir, trainable="image_no_embed", train_head=False)
    embed, head = _snapshot(model.encoder.vision.embeddings), _snapshot(model.head)
    layers = _snapshot(model.encoder.vision.encoder)
    _train(task, model, _batches(2))
    assert all(torch.equal(v, embed[k]) for k, v in _snapshot(model.encoder.vision.embeddings).items())
    assert all(torch.equal(v, head[k]) for k, v in _snapshot(model.head).items())
    assert any(not torch.equal(v, layers[k]) for k, v in _snapshot(model.encoder.vision.encoder).items())


def test_labels_outside_the_head_are_refused(tiny_clip_dir):
    _, _, task = _setup(tiny_clip_dir)
    batch = _batches(1)[0]
    batch[batch_schema.LABEL][0] = len(TINY_CLASSES)
    with pytest.raises(ValueError, match="head has 3 classes"):
        task.losses(batch, step=0)


def _two_states(tiny_clip_dir):
    _, model, _ = _setup(tiny_clip_dir, method="ft")
    theta_0 = _snapshot(model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return theta_0, _snapshot(model)


def test_wise_ft_endpoints_are_exact_and_half_is_the_midpoint(tiny_clip_dir):
    theta_0, theta_ft = _two_states(tiny_clip_dir)
    theta_0["counter"], theta_ft["counter"] = torch.tensor(5), torch.tensor(7)  # an integer buffer
    for alpha, expected in ((0.0, theta_0), (1.0, theta_ft)):
        mixed = wise_ft(theta_0, theta_ft, alpha)
        for key, value in mixed.items():
            if key == "counter":
                continue
            assert value.dtype == expected[key].dtype
            assert torch.equal(value.view(torch.int32), expected[key].view(torch.int32)), (alpha, key)  # bitwise
    half = wise_ft(theta_0, theta_ft, 0.5)
    for key in theta_0:
        if key != "counter":
            torch.testing.assert_close(half[key], (theta_0[key] + theta_ft[key]) / 2)
    assert half["counter"].item() == 7 and half["counter"].dtype == torch.int64  # copied, not interpolated
    assert {k for k in half if k.startswith("head.")} == {"head.weight", "head.bias"}  # the head is mixed too


def test_wise_ft_refuses_different_models(tiny_clip_dir):
    theta_0, theta_ft = _two_states(tiny_clip_dir)
    missing = dict(theta_ft)
    missing.pop("head.bias")
    with pytest.raises(ValueError, match=r"keys only in theta_0: \['head.bias'\]"):
        wise_ft(theta_0, missing, 0.5)
    reshaped = dict(theta_ft, **{"head.weight": torch.zeros(4, 128)})
    with pytest.raises(ValueError, match=r"head.weight: \(3, 128\) torch.float32 vs \(4, 128\)"):
        wise_ft(theta_0, reshaped, 0.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        wise_ft(theta_0, theta_ft, 1.5)


def test_labelled_only_drops_counts_and_refills_batches():
    def batch(labels):
        return {batch_schema.LABEL: torch.tensor(labels), batch_schema.IMAGE: torch.arange(len(labels))}

    dropped = []
    out = list(labelled_only(iter([batch([0, -1, 1]), batch([-1, -1, 2, 3]), batch([4, -1])]), batch_size=2,
                             on_skip=dropped.append))
    assert [b[batch_schema.LABEL].tolist() for b in out] == [[0, 1], [2, 3]]  # label 4 is left over: no full batch
    assert [b[batch_schema.IMAGE].tolist() for b in out] == [[0, 2], [2, 3]]  # images travel with their labels
    assert sum(dropped) == 4
    with pytest.raises(DataError, match="none with a class label"):
        list(labelled_only(iter([batch([-1] * 5)] * 3), batch_size=2, on_skip=lambda n: None, fail_after=10,
                           source="caption-shards"))


def test_evaluate_classifier_by_hand():
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [1.0, 0.0]])
    batch = {batch_schema.IMAGE: torch.zeros(4, 3, 2, 2, dtype=torch.uint8), batch_schema.LABEL: torch.tensor([0, 1, 1, -1])}
    metrics = evaluate_classifier(lambda images: logits[: images.shape[0]], [batch], device=torch.device("cpu"))
    assert metrics["acc1"] == pytest.approx(2 / 3) and metrics["eval_samples"] == 3
    assert metrics["eval_unlabelled"] == 1 and "ece" in metrics


def test_config_defaults_follow_methods_md():
    cfg = FinetuneConfig()
    assert cfg.method == "carft" and cfg.carft.kl_weight == 1.0 and cfg.carft.temperature is None
    assert cfg.carft.templates == list(OPENAI_IMAGENET_TEMPLATES) and len(cfg.carft.templates) == 80
    assert cfg.wise_alphas == [0.5] and cfg.train_head and cfg.trainable == "image"


@pytest.mark.parametrize("override, key", [
    ("method=lora", "'method'"), ("wise_alphas=[0.5,1.2]", "'wise_alphas'"), ("carft.temperature=0", "'carft.temperature'"),
    ("trainable=text", "'trainable'"), ("carft.kl_weight=-1", "'carft.kl_weight'"),
    ("carft.templates=[a photo]", "'carft.templates'"), ("carft.lambda=2", "carft.lambda"),
])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        load_config(FinetuneConfig, None, [override])


def test_cli_refuses_a_run_without_model_before_ray(capsys):
    assert main(["finetune", "data.train=/somewhere"]) == 2
    assert "'model'" in capsys.readouterr().err


def test_core_imports_without_ray():
    code = ("import sys; import raylpclip.methods.carft, raylpclip.methods.finetune_model, "
            "raylpclip.commands.finetune; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
