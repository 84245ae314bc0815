"""`raylpclip convert`: other formats' checkpoints into a transformers CLIP directory.

  raylpclip convert open-clip CHECKPOINT OUT [--config open_clip_config.json] [--bpe bpe_simple_vocab_16e6.txt.gz]

CHECKPOINT is open_clip's `open_clip_pytorch_model.bin` (read with torch.load(weights_only=True)), its
`.safetensors`, or a training checkpoint ({"state_dict": ...} with DDP's `module.` prefixes). Its model config
is the `open_clip_config.json` beside it (open_clip's hub layout) unless --config names one (that layout, or a
plain model config JSON). OUT becomes a complete CLIP directory: CLIPModel weights and config, the image
processor (the checkpoint's preprocess_cfg mean/std) and, when it can be made offline, the tokenizer: OpenAI's
CLIP BPE, open_clip's default, rebuilt from --bpe or from the installed open_clip package's copy. Point
`model.pretrained`, `raylpclip probe model=`, `raylpclip finetune model=` or CLIPModel.from_pretrained at OUT.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

from raylpclip.models.bpe_tokenizer import CLIP_VOCAB_SIZE, clip_tokenizer_from_bpe
from raylpclip.models.clip import export_clip
from raylpclip.models.hf_processor import save_processor
from raylpclip.models.openclip_config import CONFIG_FILE, OpenClipConfig, preprocess_settings
from raylpclip.models.openclip_weights import load_openclip
from raylpclip.summary import write_summary

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"  # the merges file openai/CLIP and open_clip ship


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raylpclip convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    oc = sub.add_parser("open-clip", help="an open_clip checkpoint -> a transformers CLIP directory")
    oc.add_argument("checkpoint", help="open_clip_pytorch_model.bin, *.safetensors or a training checkpoint")
    oc.add_argument("out", help="the CLIP directory to write")
    oc.add_argument("--config", default=None, help=f"the model config JSON (default: {CONFIG_FILE} beside the "
                                                     "checkpoint)")
    oc.add_argument("--bpe", default=None, help=f"OpenAI's CLIP BPE merges ({BPE_FILE}) for the tokenizer "
                                                "(default: the installed open_clip package's copy, if any)")
    return parser


def _installed_bpe() -> str | None:
    """open_clip's own copy of the CLIP BPE, found without importing open_clip (its import pulls in timm)."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / BPE_FILE
        if candidate.is_file():
            return str(candidate)
    return None


def _tokenizer(text_config, oc: OpenClipConfig, bpe: str | None):
    """(tokenizer or None, what it is or why there is none)."""
    vocab, eos = int(text_config.vocab_size), text_config.eos_token_id
    if oc.text.get("hf_tokenizer_name"):
        return None, (f"no tokenizer written: the model's tokenizer is the Hugging Face tokenizer "
                      f"{oc.text['hf_tokenizer_name']!r}; save it into the directory with its save_pretrained")
    if eos != vocab - 1 or not 2 * 256 + 2 <= vocab <= CLIP_VOCAB_SIZE:
        return None, (f"no tokenizer written: a {vocab}-token vocabulary ending anywhere but at EOS id {eos} is not "
                      "OpenAI's CLIP BPE; add the model's own tokenizer to the directory")
    bpe = bpe or _installed_bpe()
    if not bpe:
        return None, (f"no tokenizer written: no CLIP BPE merges file to build it from; pass --bpe {BPE_FILE} "
                      "(shipped with open_clip and openai/CLIP)")
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = clip_tokenizer_from_bpe(bpe, scratch, vocab_size=vocab)
    if vocab == CLIP_VOCAB_SIZE:
        return tokenizer, f"OpenAI's CLIP BPE ({vocab} tokens, from {bpe})"
    # A small (test or toy) model: the BPE's first merges, so that start/end of text stay the last two ids.
    return tokenizer, (f"OpenAI's CLIP BPE cut to the checkpoint's {vocab} tokens (its first {vocab - 2 * 256 - 2} merges, "
                       f"from {bpe}): right for a model trained with that cut, not for one with another tokenizer")


def convert_open_clip(checkpoint: str, out: str, *, config: str | None = None, bpe: str | None = None) -> dict:
    """Write the CLIP directory `out` for an open_clip checkpoint; returns the summary's fields."""
    model, oc = load_openclip(checkpoint, config=config)
    vision, text = model.config.vision_config, model.config.text_config
    pre = preprocess_settings(oc, int(vision.image_size))
    tokenizer, tokenizer_note = _tokenizer(text, oc, bpe)
    export_clip(model, out, logit_bias=getattr(model.config, "logit_bias", None))
    save_processor(model.config, tokenizer, out, mean=pre.mean, std=pre.std)
    return {
        "kind": "open-clip", "checkpoint": str(Path(checkpoint).resolve()), "config": oc.source,
        "out": str(Path(out).resolve()), "hidden_act": vision.hidden_act, "projection_dim": model.config.projection_dim,
        "vision": {"image_size": vision.image_size, "patch_size": vision.patch_size, "width": vision.hidden_size,
                   "layers": vision.num_hidden_layers, "heads": vision.num_attention_heads},
        "text": {"context_length": text.max_position_embeddings, "vocab_size": text.vocab_size,
                 "width": text.hidden_size, "layers": text.num_hidden_layers, "heads": text.num_attention_heads,
                 "eos_token_id": text.eos_token_id},
        "parameters": sum(p.numel() for p in model.parameters()), "logit_scale": float(model.logit_scale.detach().exp()),
        "logit_bias": getattr(model.config, "logit_bias", None),
        "image_mean": list(pre.mean), "image_std": list(pre.std), "preprocess_notes": pre.notes,
        "tokenizer_written": tokenizer is not None, "tokenizer": tokenizer_note,
    }


def cmd_convert(args: list[str]) -> Path:
    ns = _parser().parse_args(args)
    summary = convert_open_clip(ns.checkpoint, ns.out, config=ns.config, bpe=ns.bpe)
    print(f"[raylpclip] {ns.checkpoint} -> {ns.out}: CLIPModel ({summary['parameters']:,} parameters, "
          f"{summary['hidden_act']}), image processor, tokenizer: {summary['tokenizer']}")
    for note in summary["preprocess_notes"]:
        print(f"[raylpclip] note: {note}")
    return write_summary(ns.out, summary)
