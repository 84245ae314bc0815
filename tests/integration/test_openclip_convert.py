"""An open_clip checkpoint through the normal commands on the shared local Ray instance: `raylpclip convert
open-clip` on the golden GELU fixture (../shared/data/openclip, written by open_clip 3.3.0), then pretraining
from the checkpoint file itself (converted in memory on every worker), and probing and fine-tuning the
converted directory (those two with `pytest -m slow`), a few steps each."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from raylpclip.cli import main
from raylpclip.commands.probe import ProbeConfig
from raylpclip.config import PretrainConfig, load_config
from raylpclip.models.classifier import load_classifier, load_encoder
from raylpclip.runtime.train.pretrain_driver import run_pretrain
from raylpclip.runtime.train.probe_driver import run_probe

from .conftest import small_run

pytestmark = pytest.mark.ray
os.environ["HF_HUB_OFFLINE"] = "1"  # everything must load from local files

# The fixture's shapes: 32 px images, 16-token texts (model_cfg in its open_clip_config.json).
FIXTURE_INPUTS = ["data.image_size=32", "data.context_length=16"]


@pytest.fixture(scope="module")
def converted(shared_data, tmp_path_factory):
    """(the fixture folder, the converted CLIP directory with its cut CLIP BPE tokenizer)."""
    fixture = shared_data / "openclip" / "tiny-gelu"
    bpe = shared_data / "clip" / "bpe_simple_vocab_16e6.txt.gz"
    if not fixture.is_dir() or not bpe.is_file():
        pytest.skip(f"the open_clip fixture {fixture} or the CLIP BPE {bpe} is absent")
    out = tmp_path_factory.mktemp("openclip") / "tiny-gelu"
    assert main(["convert", "open-clip", str(fixture / "open_clip_pytorch_model.bin"), str(out), "--bpe", str(bpe)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokenizer_written"] and summary["text"]["vocab_size"] == 1000
    return fixture, out


def test_converted_directory_gives_open_clips_features(converted):
    fixture, out = converted
    tower, _ = load_encoder(out)
    expected = load_file(fixture / "expected.safetensors")
    ids = expected["input_ids"]
    with torch.no_grad():
        image = tower.encode_image(expected["pixel_values"], normalize=False)
        text = tower.encode_text(ids, (ids != 0).long(), normalize=False)
    assert (image - expected["image_embeds"]).abs().max() < 1e-5
    assert (text - expected["text_embeds"]).abs().max() < 1e-5


def test_pretraining_from_the_checkpoint_file(ray_session, synthetic_shards, converted, tmp_path):
    fixture, out = converted
    overrides = small_run(synthetic_shards, tmp_path, name="oc-pretrain", steps=6) + FIXTURE_INPUTS + [
        f"model.pretrained={fixture / 'open_clip_model.safetensors'}", f"model.tokenizer={out}",
        "optim.lr=1e-4", "optim.warmup_steps=0", "train.checkpoint_every=3",
    ]
    summary = run_pretrain(load_config(PretrainConfig, None, overrides))
    assert summary["step"] == 6 and summary["samples_seen"] == 6 * 32
    assert 0.0 <= summary["acc1"] <= summary["acc5"] <= 1.0
    trained, tokenizer = load_encoder(summary["model_dir"])
    start, _ = load_encoder(out)
    assert trained.clip.config.text_config.hidden_act == "gelu" and len(tokenizer) == 1000
    moved = [k for k, v in trained.clip.state_dict().items() if not torch.equal(v, start.clip.state_dict()[k])]
    assert any(k.startswith("vision_model.") for k in moved) and any(k.startswith("text_model.") for k in moved)


@pytest.mark.slow  # ~1 min; by default the converted model pretrains (above) and is checked by unit tests
def test_probing_the_converted_directory(ray_session, synthetic_shards, converted, tmp_path):
    _, out = converted
    cfg = load_config(ProbeConfig, None, [
        f"model={out}", f"data.train={synthetic_shards['webdataset']}", f"data.eval={synthetic_shards['eval']}",
        f"output_dir={tmp_path}", "name=oc-probe", "max_train_samples=200", "lpclip.epochs=1", "lpclip.batch_size=64",
        "train.num_workers=2", "data.decode_concurrency=1", "robustness.corruptions=[gaussian_noise]",
        "robustness.severities=[1]", "robustness.max_samples=72", "inference.batch_size=128", "ray.num_cpus=8",
    ])
    summary = run_probe(cfg)
    assert {"zeroshot", "lpclip-r1", "supervised"} <= set(summary["classifiers"])
    assert load_classifier(summary["classifiers"]["lpclip-r1"]).encoder == str(out.resolve())
    assert all(0.0 <= row["clean_acc1"] <= 1.0 for row in summary["eval"]["table"].values())


@pytest.mark.slow  # ~1 min; by default the converted model pretrains (above) and is checked by unit tests
def test_finetuning_the_converted_directory(ray_session, synthetic_shards, converted, tmp_path):
    _, out = converted
    assert main([
        "finetune", f"model={out}", f"output_dir={tmp_path}", "name=oc-ft", "method=carft",
        f"data.train={synthetic_shards['webdataset']}", f"data.eval={synthetic_shards['eval']}", *FIXTURE_INPUTS,
        "data.eval_max_samples=200", "carft.templates=['a photo of a {}.', 'a blurry sketch of a {}.']",
        "train.steps=4", "train.batch_size=16", "train.checkpoint_every=2", "train.log_every=1",
        "optim.lr=1e-4", "optim.warmup_steps=0", "wise_alphas=[0.5]",
    ]) == 0
    summary = json.loads((tmp_path / "oc-ft" / "summary.json").read_text())
    assert summary["step"] == 4 and {"zeroshot", "carft", "wise-carft-0.5"} == set(summary["classifiers"])
    assert 0.0 <= summary["id"]["carft"]["acc1"] <= 1.0
