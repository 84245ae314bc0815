"""`raylpclip shards contexts|procedural`: the captioned worlds with headroom (issue 24) as shards, and
the Python entry points that write one split of either (what the study runner calls).

    raylpclip shards contexts cifar10/train shards/ctx-train --contexts blurry,grayscale,dark,sketch \\
        --contexts-per-image 0.3,0.45,0.25 --mention-p 0.8 --mismatch-fraction 0.2
    raylpclip shards contexts cifar10/test shards/ctx-ood --contexts noisy --exact-contexts 1
    raylpclip shards procedural shards/shapes --samples 20000 --styles plain,outline,pixel --caption-mode subset

Both go through shard_output.write_source (Ray writer tasks, summary.json): the context world's images
are edited in the tasks (SourceItem.edit), the procedural world's are drawn there from (seed, index).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from raylpclip.commands.shard_output import WriteOptions, add_common_options, positive_int, write_source
from raylpclip.data.caption_templates import read_lines
from raylpclip.data.context_world import (
    DEFAULT_CONTEXTS_PER_IMAGE,
    ContextWorldSpec,
    context_world_items,
    count_weights,
)
from raylpclip.data.image_contexts import CONTEXTS
from raylpclip.data.shape_captions import CAPTION_MODES
from raylpclip.data.shape_drawing import STYLES
from raylpclip.data.sources import GeneratedItem
from raylpclip.data.synthetic import LABEL_BY, SyntheticRecipe, SyntheticSpec, class_names

SOURCES = ("contexts", "procedural")


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}; expected comma-separated names")
    return names


def _weights(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}; expected comma-separated weights, e.g. 0.3,0.45,0.25") from None


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value}; expected a probability in [0, 1]")
    return value


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ctx = sub.add_parser("contexts", help="SRC/<class>/<image> with random contexts applied and named in captions")
    ctx.add_argument("src", help="folder with one subfolder per class (label = sorted subfolder index)")
    ctx.add_argument("out", help="output directory or s3:// URL")
    ctx.add_argument("--contexts", type=_names, default=CONTEXTS,
                     help=f"the contexts to draw from (default: all: {','.join(CONTEXTS)})")
    ctx.add_argument("--contexts-per-image", type=_weights, default=DEFAULT_CONTEXTS_PER_IMAGE,
                     help="weights of 0, 1, 2, ... contexts per image (default: 0.3,0.45,0.25)")
    ctx.add_argument("--exact-contexts", type=int, default=None,
                     help="every image gets exactly N contexts from --contexts (an OOD split: 1; a clean split: 0)")
    ctx.add_argument("--mention-p", type=_probability, default=0.8,
                     help="probability that the caption names each applied context")
    ctx.add_argument("--class-p", type=_probability, default=1.0,
                     help="probability that the caption names the class (else 'an object')")
    ctx.add_argument("--mismatch-fraction", type=_probability, default=0.0,
                     help="fraction of images with the caption of an image of another class")
    ctx.add_argument("--classnames", default=None,
                     help="file of class names, one per line in sorted-folder order (default: folder names)")
    ctx.add_argument("--max-images", type=positive_int, default=None, help="a seeded random subset of this many")
    ctx.add_argument("--image-size", type=positive_int, default=None,
                     help="downscale the shorter side to this before the contexts apply (default: as stored)")
    add_common_options(ctx)
    proc = sub.add_parser("procedural", help="drawn shapes in styles (domains), captions naming some attributes")
    proc.add_argument("out", help="output directory or s3:// URL")
    proc.add_argument("--samples", type=positive_int, required=True, help="how many images")
    proc.add_argument("--styles", type=_names, default=("plain",), help=f"styles to draw from ({','.join(STYLES)})")
    proc.add_argument("--caption-mode", choices=CAPTION_MODES, default="templates",
                      help="templates: the original captions; subset: colour and shape always, the rest each "
                           "with --mention-p")
    proc.add_argument("--mention-p", type=_probability, default=0.7,
                      help="subset captions: probability of naming each of size, position, background, style")
    proc.add_argument("--mismatch-fraction", type=_probability, default=0.0,
                      help="fraction of samples with another sample's caption")
    proc.add_argument("--label-by", choices=LABEL_BY, default="colour_shape")
    proc.add_argument("--image-size", type=positive_int, default=32, help="side of the drawn square images")
    proc.add_argument("--start-index", type=int, default=0,
                      help="first sample index: disjoint splits of one seed take disjoint index ranges")
    add_common_options(proc, shuffle=False)


def write_context_split(src: str | Path, out: str | Path, spec: ContextWorldSpec, *,
                        options: WriteOptions | None = None, start: float | None = None) -> dict[str, Any]:
    """Write one split of the context world (the images of `src`) into `out` with Ray writer tasks;
    returns summary.json's contents, with its local path as `summary_path`. `raylpclip shards contexts`
    is this function; e.g. an OOD split: `ContextWorldSpec(contexts=("noisy",), exact_contexts=1)`."""
    items = context_world_items(src, spec)
    applied = Counter(c for item in items for c in item.meta["contexts"])
    extra = {"src": str(Path(src).resolve()), "contexts": list(spec.contexts),
             "contexts_per_image": [round(float(w), 6) for w in count_weights(spec)],
             "exact_contexts": spec.exact_contexts, "mention_p": spec.mention_p, "class_p": spec.class_p,
             "mismatch_fraction": spec.mismatch_fraction, "max_images": spec.max_images,
             "mismatched": sum(item.meta["caption_mismatched"] for item in items),
             "classnames": _classnames(item.meta for item in items),
             "applied": {c: applied[c] for c in spec.contexts},
             "context_counts": dict(sorted(Counter(len(i.meta["contexts"]) for i in items).items()))}
    path, summary = write_source(items, extra, source="contexts", out=str(out), image_size=spec.image_size,
                                 seed=spec.seed, options=options or WriteOptions(), start=start)
    return {**summary, "summary_path": str(path)}


def write_procedural_split(out: str | Path, samples: int, spec: SyntheticSpec, *, seed: int = 0,
                           mismatch_fraction: float = 0.0, start_index: int = 0,
                           options: WriteOptions | None = None, start: float | None = None) -> dict[str, Any]:
    """Write samples start_index .. start_index + samples - 1 of the procedural world into `out`; each
    is drawn in a Ray writer task from (seed, index). An OOD split: `spec.styles` = the held-out styles
    (and another seed, so that no scene repeats). Returns summary.json's contents plus `summary_path`."""
    if samples < 1 or start_index < 0:
        raise ValueError(f"samples={samples}, start_index={start_index}; expected samples >= 1 and start_index >= 0")
    recipe = SyntheticRecipe(spec, seed=seed, mismatch_fraction=mismatch_fraction)  # checks the spec
    items = [GeneratedItem(recipe, i) for i in range(start_index, start_index + samples)]
    # Samples are independent draws already: shuffling would only lose shard == index range.
    options = WriteOptions(**{**vars(options or WriteOptions()), "shuffle": False})
    extra = {"src": "procedural", "styles": list(spec.styles), "caption_mode": spec.caption_mode,
             "mention_p": spec.mention_p, "label_by": spec.label_by, "mismatch_fraction": mismatch_fraction,
             "start_index": start_index, "classnames": class_names(spec), "image_size": spec.image_size}
    path, summary = write_source(items, extra, source="procedural", out=str(out), image_size=None, seed=seed,
                                 options=options, start=start)
    return {**summary, "summary_path": str(path)}


def _classnames(metas: Any) -> list[str]:
    names = {meta["label"]: meta["label_name"] for meta in metas}
    return [names[i] for i in sorted(names)]


def context_spec(ns: argparse.Namespace) -> ContextWorldSpec:
    classnames: Sequence[str] | None = tuple(read_lines(ns.classnames)) if ns.classnames else None
    return ContextWorldSpec(contexts=tuple(ns.contexts), contexts_per_image=tuple(ns.contexts_per_image),
                            exact_contexts=ns.exact_contexts, mention_p=ns.mention_p, class_p=ns.class_p,
                            mismatch_fraction=ns.mismatch_fraction, image_size=ns.image_size,
                            max_images=ns.max_images, seed=ns.seed, classnames=classnames)


def run(ns: argparse.Namespace, options: WriteOptions, *, start: float | None = None) -> Path:
    """The command line's path into the two entry points above; returns summary.json's local path."""
    start = time.perf_counter() if start is None else start
    if ns.source == "contexts":
        summary = write_context_split(ns.src, ns.out, context_spec(ns), options=options, start=start)
    else:
        spec = SyntheticSpec(image_size=ns.image_size, styles=tuple(ns.styles), caption_mode=ns.caption_mode,
                             mention_p=ns.mention_p, label_by=ns.label_by)
        summary = write_procedural_split(ns.out, ns.samples, spec, seed=ns.seed, mismatch_fraction=ns.mismatch_fraction,
                                         start_index=ns.start_index, options=options, start=start)
    return Path(summary["summary_path"])
