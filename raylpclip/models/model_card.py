"""The model card (`README.md`) of a pretraining run's exported model, written from the run itself: its
data, its settings, the exported model's shapes and the run's final eval, and how to load the directory.

Pure Python: the model's shapes come from the export's config.json and its parameter count from the
safetensors headers (JSON), so the card needs neither torch nor transformers.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raylpclip.config import PretrainConfig

CARD_FILE = "README.md"
_RECALL_KS = (1, 5, 10)
_CLASSES_LISTED = 100  # a card lists at most this many class names, then says how many more


def write_model_card(model_dir: str | Path, *, cfg: PretrainConfig, summary: dict[str, Any],
                     shards: dict[str, list[str]], formats: dict[str, str], classnames: Sequence[str]) -> Path:
    """Write `<model_dir>/README.md`. `shards`/`formats`: each training source's shard files and format
    as the run resolved them; `summary`: the run's summary.json (final metrics, sample counts)."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    path = model_dir / CARD_FILE
    path.write_text(model_card(cfg, summary=summary, config=config, params=parameter_count(model_dir),
                               shards=shards, formats=formats, classnames=classnames))
    return path


def model_card(cfg: PretrainConfig, *, summary: dict[str, Any], config: dict[str, Any], params: int | None,
               shards: dict[str, list[str]], formats: dict[str, str], classnames: Sequence[str]) -> str:
    """The card's Markdown text (see `write_model_card`)."""
    vision, text = config["vision_config"], config["text_config"]
    sections = [
        _front_matter(cfg),
        (f"# {cfg.name}\n\nA CLIP {_shape(vision, text)} pretrained by `raylpclip pretrain` with "
        f"{_method_name(cfg)} on {_count(summary.get('train_samples'), 'image-caption pairs')}."),
        _data(cfg, summary, shards, formats, classnames, config_vocab=int(text['vocab_size'])),
        _training(cfg, summary),
        _model(cfg, config, params),
        _results(cfg, summary, classnames),
        _preprocessing(vision, text),
        _usage(cfg, classnames),
    ]
    return "\n\n".join(sections) + "\n"


def parameter_count(model_dir: str | Path) -> int | None:
    """Elements of every tensor in the directory's safetensors files (each starts with an 8-byte
    little-endian header length, then a JSON header of shapes); None when there are none."""
    total, found = 0, False
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
        found = True
    return total if found else None


def _front_matter(cfg: PretrainConfig) -> str:
    method = "psd" if cfg.psd.a_max > 0 else "contrastive"
    return ("---\nlibrary_name: transformers\npipeline_tag: zero-shot-image-classification\n"
            f"tags:\n- clip\n- raylpclip\n- {method}\n---")


def _shape(vision: dict, text: dict) -> str:
    return (f"(ViT {vision['image_size']}px/{vision['patch_size']}, {vision['num_hidden_layers']} layers of width "
            f"{vision['hidden_size']}; text {text['num_hidden_layers']} layers of width {text['hidden_size']})")


def _method_name(cfg: PretrainConfig) -> str:
    if cfg.psd.a_max > 0:
        return f"progressive self-distillation (PSD, a_max {cfg.psd.a_max:g}, {cfg.psd.teacher} teacher)"
    return "the plain CLIP contrastive loss (`psd.a_max=0`)"


def _data(cfg: PretrainConfig, summary: dict, shards: dict[str, list[str]], formats: dict[str, str],
          classnames: Sequence[str], *, config_vocab: int) -> str:
    lines = ["## Training data", "", "| source | format | shards | first shard | last shard | weight |",
             "|---|---|---|---|---|---|"]
    weights = {source.path: source.weight for source in cfg.data.train_sources()}
    for source, files in shards.items():
        first, last = (Path(files[0]).name, Path(files[-1]).name) if files else ("-", "-")
        lines.append(f"| `{source}` | {formats.get(source, cfg.data.format)} | {len(files)} | `{first}` | `{last}` | "
                     f"{weights.get(source, 1.0):g} |")
    samples = summary.get("train_samples")
    counted = (_count(samples, "image-caption pairs") if samples is not None
               else "unknown (not every shard has an img2dataset `_stats.json`)")
    lines += ["", f"- samples: {counted} in {sum(map(len, shards.values()))} shards",
              (f"- images at {cfg.data.image_size}px (training crops: random-resized, area >= "
              f"{cfg.data.aug_scale_min:g}), captions cut to {cfg.data.context_length} tokens"),
              f"- tokenizer: {_tokenizer(cfg, vocab=config_vocab)}",
              f"- eval set: {_eval_set(cfg, summary, classnames)}"]
    return "\n".join(lines)


def _tokenizer(cfg: PretrainConfig, *, vocab: int) -> str:
    if cfg.model.tokenizer:
        return f"`{cfg.model.tokenizer}`"
    if cfg.model.pretrained:
        return f"the one of `{cfg.model.pretrained}`"
    # BPE training stops early when the captions run out of pairs to merge: state what it reached.
    return (f"a byte-level BPE of {vocab} tokens ({cfg.model.vocab_size} asked for) trained on up to "
            f"{cfg.model.tokenizer_samples} captions of the training shards")


def _eval_set(cfg: PretrainConfig, summary: dict, classnames: Sequence[str]) -> str:
    if not cfg.data.eval:
        return "none"
    if classnames:
        return (f"`{cfg.data.eval}`, {_count(summary.get('eval_samples'), 'labelled images')} of "
                f"{len(classnames)} classes (zero-shot classification)")
    return (f"`{cfg.data.eval}`, {_count(summary.get('eval_images'), 'images')} and "
            f"{_count(summary.get('eval_texts'), 'captions')} (retrieval)")


def _training(cfg: PretrainConfig, summary: dict) -> str:
    train, optim, psd = cfg.train, cfg.optim, cfg.psd
    lines = ["## Training", "",
             (f"- {train.steps} steps of a global batch of {train.batch_size} on {train.num_workers} Ray Train workers"
             f"{f' ({optim.accum_steps} accumulation steps)' if optim.accum_steps > 1 else ''}, "
             f"{train.precision}, seed {train.seed}; {_count(summary.get('samples_seen'), 'samples seen')}"
             f"{_epochs(summary.get('epoch'))}"),
             (f"- AdamW: lr {optim.lr:g}, weight decay {optim.weight_decay:g}, {optim.warmup_steps} warmup steps, "
             f"{optim.schedule} schedule, gradient clip {optim.grad_clip:g}")]
    if psd.a_max > 0:
        teacher = f"EMA teacher (decay {psd.ema_decay:g})" if psd.teacher == "ema" else "self teacher (stop-grad logits)"
        temperature = (f"{psd.teacher_temperature:g}" if psd.teacher_temperature is not None
                       else "the model's logit scale")
        lines.append(f"- method: PSD, soft targets weighted by a_t rising to a_max {psd.a_max:g} ({psd.ramp} ramp), on "
                     f"{psd.subset_fraction:g} of each worker's batch, {teacher}, teacher temperature {temperature}")
    elif cfg.loss.kind == "clip":
        lines.append("- method: plain CLIP (symmetric InfoNCE over the gathered batch; `psd.a_max=0`)")
    if cfg.loss.kind == "siglip":
        soft = " with PSD's soft binary targets" if psd.a_max > 0 else " (`psd.a_max=0`)"
        lines.append(f"- loss: SigLIP's pairwise sigmoid loss{soft}, other workers' texts reached by "
                     f"`{cfg.loss.siglip_dist}`; its learnable logit bias, {_num(summary.get('logit_bias'), 2)} at "
                     "the end, is in config.json as `logit_bias` (CLIPModel has no weight for it)")
    lines.append(f"- at the end: loss {_num(summary.get('loss'))}, logit scale {_num(summary.get('logit_scale'), 2)}, "
                 f"{_num(summary.get('samples_per_s'), 0)} samples/s, {_num(summary.get('wall_s'), 0)} s wall")
    return "\n".join(lines)


def _model(cfg: PretrainConfig, config: dict, params: int | None) -> str:
    vision, text = config["vision_config"], config["text_config"]
    origin = f"initialised from `{cfg.model.pretrained}`" if cfg.model.pretrained else f"preset `{cfg.model.preset}`"
    overrides = f", overrides {json.dumps(cfg.model.overrides, sort_keys=True)}" if cfg.model.overrides else ""
    return "\n".join([
        "## Model", "", f"`CLIPModel`, {origin}{overrides}; {_count(params, 'parameters')}. {_weights(cfg)}", "",
        "| tower | layers | width | heads | MLP | input |", "|---|---|---|---|---|---|",
        (f"| vision | {vision['num_hidden_layers']} | {vision['hidden_size']} | {vision['num_attention_heads']} | "
        f"{vision['intermediate_size']} | {vision['image_size']}px in {vision['patch_size']}px patches |"),
        (f"| text | {text['num_hidden_layers']} | {text['hidden_size']} | {text['num_attention_heads']} | "
        f"{text['intermediate_size']} | {text['max_position_embeddings']} tokens, vocabulary {text['vocab_size']} |"),
        "", f"Both project to {config['projection_dim']} dimensions."])


def _weights(cfg: PretrainConfig) -> str:
    """Which weights the directory holds (export.weights)."""
    decay = cfg.train.ema_decay
    if cfg.export.weights == "ema":
        return (f"Its weights are the exponential moving average of the training weights (decay {decay:g}, "
                "`export.weights=ema`), not the last step's raw weights.")
    if decay > 0:
        return (f"Its weights are the last step's raw weights (`export.weights=raw`); the run also kept their EMA "
                f"(decay {decay:g}), evaluated under Results.")
    return "Its weights are the last training step's."


def _results(cfg: PretrainConfig, summary: dict, classnames: Sequence[str]) -> str:
    lines = ["## Results", "", f"The run's final eval, at step {summary.get('step', '?')}:", ""]
    if summary.get("acc1") is not None:
        chance = summary.get("chance_acc1")
        lines += ["| metric | value |", "|---|---|",
                  f"| zero-shot top-1 accuracy | {_num(summary['acc1'])} (chance {_num(chance)}) |",
                  f"| zero-shot top-5 accuracy | {_num(summary.get('acc5'))} |",
                  f"| mean per-class recall | {_num(summary.get('mean_per_class_recall'))} |"]
        if summary.get("ema_acc1") is not None:
            lines += [f"| zero-shot top-1 accuracy, EMA weights | {_num(summary['ema_acc1'])} |",
                      f"| zero-shot top-5 accuracy, EMA weights | {_num(summary.get('ema_acc5'))} |",
                      f"| mean per-class recall, EMA weights | {_num(summary.get('ema_mean_per_class_recall'))} |"]
        lines += ["",
                  f"Class embeddings average {len(cfg.eval.templates)} prompt template(s): "
                  + ", ".join(f'"{t}"' for t in cfg.eval.templates) + ".", "",
                  f"Classes: {_listed(classnames)}."]
        if len(cfg.eval.templates) > 1:
            lines += ["", ("transformers' zero-shot pipeline fills one template (`hypothesis_template`), so its "
                           "scores are not those of this eval's template-averaged classifier.")]
    elif summary.get("image_retrieval_recall@1") is not None:
        lines += ["| recall | @1 | @5 | @10 |", "|---|---|---|---|"]
        ema = ("", ", EMA weights") if summary.get("ema_image_retrieval_recall@1") is not None else ("",)
        for prefix, label in zip(("", "ema_"), ema):
            for side in ("image", "text"):
                lines.append(f"| {side} retrieval{label} | " + " | ".join(
                    _num(summary.get(f"{prefix}{side}_retrieval_recall@{k}")) for k in _RECALL_KS) + " |")
    else:
        lines.append("No eval results (no eval set was configured, or the last report held none).")
    return "\n".join(lines)


def _preprocessing(vision: dict, text: dict) -> str:
    size = vision["image_size"]
    return "\n".join([
        "## Preprocessing", "",
        (f"`preprocessor_config.json` repeats raylpclip's eval preprocessing: bicubic resize of the short side to "
        f"{size}px, centre crop {size}x{size}, /255, normalised with CLIP's mean and std. The tokenizer wraps "
        f"prompts in its start and end tokens; its `model_max_length` is the text tower's {text['max_position_embeddings']} "
        "positions (pass `truncation=True` for longer prompts).")])


def _usage(cfg: PretrainConfig, classnames: Sequence[str]) -> str:
    where = str(cfg.run_dir / "model")
    labels = list(classnames[:3]) or ["a cat", "a dog"]
    template = cfg.eval.templates[0] if classnames and cfg.eval.templates else "a photo of {}."
    prompts = [template.format(label) for label in labels]
    return "\n".join([
        "## How to load", "", "```python", "from PIL import Image",
        "from transformers import CLIPModel, CLIPProcessor, pipeline", "",
        f'model = CLIPModel.from_pretrained("{where}")',
        f'processor = CLIPProcessor.from_pretrained("{where}")',
        f'inputs = processor(text={prompts!r}, images=Image.open("image.jpg"), return_tensors="pt", padding=True)',
        "probs = model(**inputs).logits_per_image.softmax(dim=-1)", "",
        f'classify = pipeline("zero-shot-image-classification", model="{where}")',
        f'classify(Image.open("image.jpg"), candidate_labels={labels!r}, hypothesis_template="{template}")',
        "```"])


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _count(value: Any, noun: str) -> str:
    return f"{int(value):,} {noun}" if value is not None else f"an unknown number of {noun}"


def _epochs(epoch: Any) -> str:
    return f" ({epoch:.2f} epochs)" if epoch is not None else ""


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_CLASSES_LISTED])
    return shown + (f" and {len(names) - _CLASSES_LISTED} more" if len(names) > _CLASSES_LISTED else "")
