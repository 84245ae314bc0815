"""`raylpclip tokenizer`: build a tokenizer directory once, then point `model.tokenizer` at it.

  raylpclip tokenizer clip-bpe BPE_GZ OUT      OpenAI CLIP's tokenizer from its BPE merges file
  raylpclip tokenizer train SHARDS OUT [--vocab-size N] [--samples N]
                                               a byte-level BPE trained on the shards' captions

Runs need the same tokenizer on every node and across resumes, so a cluster recipe names a directory
made here rather than training one per run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raylpclip.data.metadata import sample_captions
from raylpclip.data.shard_files import resolve_shards
from raylpclip.data.tokenization import tokenize
from raylpclip.models.bpe_tokenizer import clip_tokenizer_from_bpe, train_tokenizer
from raylpclip.summary import write_summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raylpclip tokenizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    bpe = sub.add_parser("clip-bpe", help="CLIP's tokenizer from bpe_simple_vocab_16e6.txt.gz")
    bpe.add_argument("bpe")
    bpe.add_argument("out")
    train = sub.add_parser("train", help="a BPE trained on shard captions")
    train.add_argument("shards", help="shard directory, glob, brace range or s3:// URL")
    train.add_argument("out")
    train.add_argument("--vocab-size", type=int, default=1024)
    train.add_argument("--samples", type=int, default=20000, help="captions to read")
    return parser


def cmd_tokenizer(args: list[str]) -> Path:
    ns = _parser().parse_args(args)
    if ns.kind == "clip-bpe":
        tokenizer = clip_tokenizer_from_bpe(ns.bpe, ns.out)
        source = ns.bpe
    else:
        files, fmt = resolve_shards(ns.shards)
        captions = sample_captions(files, fmt=fmt, limit=ns.samples)
        if not captions:
            raise ValueError(f"no captions in the shards at {ns.shards!r} to train a tokenizer on")
        tokenizer = train_tokenizer(captions, vocab_size=ns.vocab_size, out_dir=ns.out)
        source = ns.shards
    example = "a photo of a dog."
    ids = tokenize(tokenizer, [example], context_length=16)["input_ids"][0].tolist()
    print(f"[raylpclip] tokenizer ({len(tokenizer)} tokens) saved to {ns.out}; {example!r} -> {ids}")
    return write_summary(ns.out, {"kind": ns.kind, "source": source, "vocab_size": len(tokenizer),
                                  "out": str(Path(ns.out).resolve())})
