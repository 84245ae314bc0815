"""open_clip checkpoints into transformers' CLIPModel: open_clip's own features (golden fixtures written by
open_clip 3.3.0, ../shared/data/openclip), every file form open_clip writes, clear refusals of what HF CLIP
cannot express, `raylpclip convert open-clip` end to end, and `model.pretrained` taking the file itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from raylpclip.cli import main
from raylpclip.commands import convert as convert_command
from raylpclip.config import ConfigError, LossConfig, ModelConfig, PretrainConfig, load_config
from raylpclip.models.bpe_tokenizer import load_tokenizer
from raylpclip.models.clip import ClipTower, clip_from_config, load_clip
from raylpclip.models.openclip_config import OpenClipConfig, OpenClipConfigError, hf_clip_config
from raylpclip.models.openclip_weights import load_openclip
from raylpclip.models.tower_factory import build_tower
from tests.conftest import SHARED_DATA

GOLDEN = SHARED_DATA / "openclip"
CLIP_BPE = SHARED_DATA / "clip" / "bpe_simple_vocab_16e6.txt.gz"
# A small open_clip model_cfg for the tests that need no fixture: GELU, 2 heads of 16, a 600-token vocab.
MODEL_CFG = {"embed_dim": 24,
             "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "head_width": 16, "layers": 2, "mlp_ratio": 2.0},
             "text_cfg": {"context_length": 8, "vocab_size": 600, "width": 32, "heads": 2, "layers": 1}}


def _features(tower: ClipTower, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return (tower.encode_image(pixels, normalize=False),
                tower.encode_text(ids, (ids != 0).long(), normalize=False))


@pytest.mark.parametrize("name,act", [("tiny-gelu", "gelu"), ("tiny-quickgelu", "quick_gelu")])
@pytest.mark.parametrize("file", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_converted_fixtures_give_open_clips_features(name, act, file):
    if not GOLDEN.is_dir():
        pytest.skip(f"open_clip golden fixtures {GOLDEN} are absent")
    model, oc = load_openclip(str(GOLDEN / name / file))
    expected = load_file(GOLDEN / name / "expected.safetensors")
    image, text = _features(ClipTower(model), expected["pixel_values"], expected["input_ids"])
    assert model.config.vision_config.hidden_act == model.config.text_config.hidden_act == act
    assert (image - expected["image_embeds"]).abs().max() < 1e-5
    assert (text - expected["text_embeds"]).abs().max() < 1e-5
    torch.testing.assert_close(model.logit_scale.detach().exp().reshape(1), expected["logit_scale"])


def _openclip_state(model_cfg: dict = MODEL_CFG, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random model in open_clip's state-dict layout, written out independently of the converter's tables."""
    torch.manual_seed(seed)
    sd = {k: v + 0.02 * torch.randn_like(v) for k, v in
          clip_from_config(hf_clip_config(OpenClipConfig(model_cfg, source="test"))).state_dict().items()}
    out = {"logit_scale": sd["logit_scale"], "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
           "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
           "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
           "visual.proj": sd["visual_projection.weight"].t().contiguous(),
           "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "text_projection": sd["text_projection.weight"].t().contiguous()}
    for oc, hf in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                   ("ln_final", "text_model.final_layer_norm")):
        out.update({f"{oc}.{p}": sd[f"{hf}.{p}"] for p in ("weight", "bias")})
    for oc_tower, hf_tower, cfg in (("visual.", "vision_model", "vision_cfg"), ("", "text_model", "text_cfg")):
        for i in range(model_cfg[cfg]["layers"]):
            oc, hf = f"{oc_tower}transformer.resblocks.{i}.", f"{hf_tower}.encoder.layers.{i}."
            for p in ("weight", "bias"):
                out[f"{oc}attn.in_proj_{p}"] = torch.cat([sd[f"{hf}self_attn.{x}_proj.{p}"] for x in "qkv"])
                for oc_part, hf_part in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                         ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                    out[f"{oc}{oc_part}.{p}"] = sd[f"{hf}{hf_part}.{p}"]
    return out


def _checkpoint(folder: Path, state: dict, *, model_cfg: dict = MODEL_CFG, preprocess: dict | None = None,
                name: str = "open_clip_pytorch_model.bin") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess or {}}))
    (save_file if name.endswith(".safetensors") else torch.save)(state, str(folder / name))
    return folder / name


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(3, 8, dtype=torch.long)
    for row, n in enumerate((3, 5, 8)):  # start of text, words, end of text (the largest id), zero padding
        ids[row, :n] = torch.cat([torch.tensor([598]), torch.randint(1, 590, (n - 2,), generator=g), torch.tensor([599])])
    return torch.randn(3, 3, 16, 16, generator=g), ids


def test_training_checkpoints_safetensors_and_custom_text_give_the_same_model(tmp_path):
    state = _openclip_state()
    reference = _features(ClipTower(load_openclip(str(_checkpoint(tmp_path / "bin", state)))[0]), *_inputs())
    forms = {
        # open_clip_train's checkpoint: DDP's `module.` prefix under "state_dict", beside optimizer state
        "epoch_3.pt": {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()},
                       "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]}},
        "open_clip_model.safetensors": state,
        # CustomTextCLIP keeps the text tower under `text.`; a nonscalar logit scale has shape (1,)
        "custom.bin": {**{k if k.startswith("visual.") or k == "logit_scale" else f"text.{k}": v
                          for k, v in state.items()}, "logit_scale": state["logit_scale"].reshape(1)},
    }
    for name, content in forms.items():
        model, _ = load_openclip(str(_checkpoint(tmp_path / name.replace(".", "_"), content, name=name)))
        for got, want in zip(_features(ClipTower(model), *_inputs()), reference):
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


def test_text_tower_without_projection_gets_the_identity(tmp_path):
    cfg = json.loads(json.dumps(MODEL_CFG))
    cfg["text_cfg"].update(proj_type="none", width=24, heads=2)
    state = {k: v for k, v in _openclip_state(cfg).items() if k != "text_projection"}
    model, _ = load_openclip(str(_checkpoint(tmp_path, state, model_cfg=cfg)))
    torch.testing.assert_close(model.text_projection.weight, torch.eye(24))


@pytest.mark.parametrize("where,key,value,says", [
    ("vision_cfg", "attentional_pool", True, "attentional pooling"),
    ("vision_cfg", "pool_type", "avg", "class token"),
    ("vision_cfg", "ls_init_value", 1e-5, "layer scale"),
    ("vision_cfg", "layers", [3, 4, 6, 3], "ResNet"),
    ("vision_cfg", "timm_model_name", "convnext_base", "timm"),
    ("vision_cfg", "norm_kwargs", {"elementwise_affine": False}, "custom norms"),
    ("vision_cfg", "image_size", [32, 16], "square"),
    ("text_cfg", "pool_type", "first", "end-of-text"),
    ("text_cfg", "proj_type", "mlp", "linear or none"),
    ("text_cfg", "proj_bias", True, "bias"),
    ("text_cfg", "hf_model_name", "xlm-roberta-base", "Hugging Face text tower"),
    ("text_cfg", "qk_norm", True, "queries and keys"),
    (None, "init_logit_bias", "minus ten", "logit bias"),
    (None, "vision_tricks", 1, "unknown to this converter"),
])
def test_what_hf_clip_cannot_express_is_refused_by_name(where, key, value, says):
    cfg = json.loads(json.dumps(MODEL_CFG))
    (cfg[where] if where else cfg)[key] = value
    with pytest.raises(OpenClipConfigError) as info:
        hf_clip_config(OpenClipConfig(cfg, source="cfg.json"))
    message = str(info.value)
    assert message.startswith("cfg.json: ") and key in message and says in message, message


def test_a_siglip_checkpoint_keeps_its_logit_bias_for_loss_kind_siglip(tmp_path):
    """open_clip's init_logit_bias model: the learned bias goes into the converted config.json, and a SigLIP
    tower built from the directory (or the checkpoint file) starts from it, not from loss.siglip_bias_init."""
    cfg = dict(json.loads(json.dumps(MODEL_CFG)), init_logit_bias=-10.0)
    state = {**_openclip_state(), "logit_bias": torch.tensor([-7.25])}
    ckpt = _checkpoint(tmp_path / "siglip", state, model_cfg=cfg)
    assert main(["convert", "open-clip", str(ckpt), str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["logit_bias"] == -7.25
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["logit_bias"] == -7.25
    tower = build_tower(ModelConfig(pretrained=str(tmp_path / "out")), tokenizer=_Ids(),
                        loss=LossConfig(kind="siglip", siglip_bias_init=-10.0))
    assert float(tower.logit_bias) == -7.25
    with pytest.raises(ValueError, match="makes a logit bias .* that the checkpoint lacks"):
        load_openclip(str(_checkpoint(tmp_path / "nobias", _openclip_state(), model_cfg=cfg)))


class _Ids:
    """The tokenizer facts build_tower checks: the converted model's vocabulary and end-of-text id."""

    eos_token_id = 599

    def __len__(self) -> int:
        return 600


def test_leftover_and_misshapen_weights_are_refused(tmp_path):
    state = _openclip_state()
    gamma = {"visual.transformer.resblocks.0.ls_1.gamma": torch.ones(32)}
    with pytest.raises(ValueError, match="no place for: visual.transformer.resblocks.0.ls_1.gamma"):
        load_openclip(str(_checkpoint(tmp_path / "ls", {**state, **gamma})))
    wider = json.loads(json.dumps(MODEL_CFG))
    wider["text_cfg"]["vocab_size"] = 700
    with pytest.raises(ValueError, match=r"does not fit its model config .*token_embedding.weight \(600, 32\)"):
        load_openclip(str(_checkpoint(tmp_path / "shape", state, model_cfg=wider)))
    (tmp_path / "lonely").mkdir()
    torch.save(state, str(tmp_path / "lonely" / "model.bin"))
    with pytest.raises(FileNotFoundError, match="no open_clip model config at .*lonely/open_clip_config.json"):
        load_openclip(str(tmp_path / "lonely" / "model.bin"))
    with pytest.raises(FileNotFoundError, match="no open_clip checkpoint file at .*missing.bin"):
        load_openclip(str(tmp_path / "ls" / "missing.bin"))


def test_convert_command_end_to_end(tmp_path, capsys, monkeypatch):
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic"}
    ckpt = _checkpoint(tmp_path / "hub", _openclip_state(), preprocess=preprocess)
    bpe = ["--bpe", str(CLIP_BPE)] if CLIP_BPE.is_file() else []
    assert main(["convert", "open-clip", str(ckpt), str(tmp_path / "out"), *bpe]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "out" / "summary.json")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["hidden_act"], summary["projection_dim"], summary["text"]["eos_token_id"]) == ("gelu", 24, 599)
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert (processor["image_mean"], processor["image_std"], processor["crop_size"]) == (
        [0.5] * 3, [0.25] * 3, {"height": 16, "width": 16})
    converted = _features(ClipTower(load_clip(str(tmp_path / "out"))), *_inputs())
    for got, want in zip(converted, _features(ClipTower(load_openclip(str(ckpt))[0]), *_inputs())):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    if bpe:  # OpenAI's BPE cut to 600 tokens: start/end of text are still the two largest ids
        tokenizer = load_tokenizer(str(tmp_path / "out"))
        assert summary["tokenizer_written"] and len(tokenizer) == 600 and tokenizer.model_max_length == 8
        assert tokenizer("a photo")["input_ids"][0] == 598 and tokenizer("a photo")["input_ids"][-1] == 599

    monkeypatch.setattr(convert_command, "_installed_bpe", lambda: None)  # as on a machine without open_clip
    assert main(["convert", "open-clip", str(ckpt), str(tmp_path / "bare")]) == 0
    summary = json.loads((tmp_path / "bare" / "summary.json").read_text())
    assert not summary["tokenizer_written"] and "--bpe" in summary["tokenizer"]
    assert main(["convert", "open-clip", str(ckpt), str(tmp_path / "x"), "--config", str(tmp_path / "no.json")]) == 1
    assert "no.json" in capsys.readouterr().err


@pytest.mark.skipif(not CLIP_BPE.is_file(), reason=f"the CLIP BPE {CLIP_BPE} is absent")
def test_model_pretrained_takes_the_checkpoint_file(tmp_path):
    ckpt = _checkpoint(tmp_path / "hub", _openclip_state(), name="open_clip_model.safetensors")
    out = tmp_path / "converted"
    assert main(["convert", "open-clip", str(ckpt), str(out), "--bpe", str(CLIP_BPE)]) == 0
    tokenizer = load_tokenizer(str(out))
    from_file = build_tower(ModelConfig(pretrained=str(ckpt), tokenizer=str(out)), tokenizer=tokenizer)
    from_dir = build_tower(ModelConfig(pretrained=str(out)), tokenizer=tokenizer)
    for got, want in zip(_features(from_file, *_inputs()), _features(from_dir, *_inputs())):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="model.tokenizer.*open_clip checkpoint"):
        load_config(PretrainConfig, None, [f"model.pretrained={ckpt}"])
    with pytest.raises(ValueError, match="embeds 600"):
        build_tower(ModelConfig(pretrained=str(ckpt), tokenizer="x"), tokenizer=_TooLong(tokenizer))


class _TooLong:
    """A tokenizer with more ids than the model embeds."""

    def __init__(self, tokenizer):
        self.eos_token_id = tokenizer.eos_token_id

    def __len__(self) -> int:
        return 49408
