"""The context world: real images of a class folder (ROOT/<class>/<image>, as `raylpclip shards folder`
reads it), each with a random subset of *contexts* applied (raylpclip.data.image_contexts: grayscale,
blurry, dark, close-up, sketch, ...) and named, partially and in varied words, in its caption
(raylpclip.data.context_captions). Captions then describe more than the class, so a CLIP's image
encoder has features to learn beyond its zero-shot head, and "contexts" are real image properties.

Per image, from (seed, image id) alone (adding images never changes another image's draws):
- how many contexts: drawn from `contexts_per_image` (P(0), P(1), ...), or exactly `exact_contexts`;
- which: a subset of `contexts` of that size, uniform over the subsets whose contexts may go together
  (image_contexts.EXCLUSIVE: never dark with bright), applied in the canonical order;
- which of them the caption names: each with `mention_p`; the class is named with `class_p` (else
  "an object").
Then exactly round(n * mismatch_fraction) images, at seeded positions, take the caption of a random
image of another class (noisy correspondence, like the folder source's and data/synthetic.py's).

An OOD test split is the same call with `contexts` = the held-out ones and `exact_contexts=1`; a clean
split has `exact_contexts=0`. The pixels are edited in the Ray writer tasks (SourceItem.edit).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from typing import Iterator, Sequence

import numpy as np

from raylpclip.data.context_captions import context_caption
from raylpclip.data.image_contexts import CONTEXTS, ContextEdit, check_contexts, compatible, largest_compatible
from raylpclip.data.image_folder import image_folder_items
from raylpclip.data.sample import Sample
from raylpclip.data.sources import SourceItem, SourceStats, iter_samples

DEFAULT_CONTEXTS_PER_IMAGE = (0.3, 0.45, 0.25)
_DRAW_STREAM, _EDIT_STREAM, _SUBSET_STREAM, _MISMATCH_STREAM = 0x6374, 0x6564, 0x7375, 0x6D6D


@dataclass(frozen=True)
class ContextWorldSpec:
    """One split of the context world (see the module doc). `contexts`: the contexts it draws from;
    `exact_contexts` (when set) overrides `contexts_per_image`; `image_size` downscales before the
    contexts apply (None: as stored); `max_images` keeps a seeded random subset of the folder."""

    contexts: tuple[str, ...] = CONTEXTS
    contexts_per_image: tuple[float, ...] = DEFAULT_CONTEXTS_PER_IMAGE
    exact_contexts: int | None = None
    mention_p: float = 0.8
    class_p: float = 1.0
    mismatch_fraction: float = 0.0
    image_size: int | None = None
    max_images: int | None = None
    seed: int = 0
    classnames: tuple[str, ...] | None = None


def _probability(value: float, key: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"ContextWorldSpec.{key}={value}; expected a probability in [0, 1]")


def count_weights(spec: ContextWorldSpec) -> np.ndarray:
    """P(number of contexts = k) for k = 0, 1, ...: `exact_contexts` as a point mass, else the
    normalised `contexts_per_image`. Checks them against what `contexts` can supply."""
    contexts = check_contexts(spec.contexts)
    most = largest_compatible(contexts)
    if spec.exact_contexts is not None:
        if not 0 <= spec.exact_contexts <= most:
            raise ValueError(f"ContextWorldSpec.exact_contexts={spec.exact_contexts}; expected 0..{most}: at most "
                             f"{most} of contexts {list(contexts)} go together on one image")
        return np.eye(spec.exact_contexts + 1)[spec.exact_contexts]
    weights = np.asarray(spec.contexts_per_image, dtype=np.float64)
    if weights.ndim != 1 or not len(weights) or (weights < 0).any() or not weights.sum() > 0:
        raise ValueError(f"ContextWorldSpec.contexts_per_image={spec.contexts_per_image}; expected weights "
                         "P(0 contexts), P(1), ... that are >= 0 and not all 0 (e.g. 0.3,0.45,0.25)")
    top = int(np.flatnonzero(weights)[-1])
    if top > most:
        raise ValueError(f"ContextWorldSpec.contexts_per_image={spec.contexts_per_image} asks for {top} contexts "
                         f"on one image; at most {most} of contexts {list(contexts)} go together")
    return weights[:top + 1] / weights.sum()


def check_spec(spec: ContextWorldSpec) -> None:
    """Every field checked before any image is listed; errors name the field."""
    count_weights(spec)
    for key in ("mention_p", "class_p", "mismatch_fraction"):
        _probability(getattr(spec, key), key)
    for key in ("image_size", "max_images"):
        value = getattr(spec, key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"ContextWorldSpec.{key}={value!r}; expected an integer >= 1 or None")


def stable_hash(*parts: object) -> int:
    """A 63-bit integer from `parts`, the same in every process (Python's hash() is salted per process)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@lru_cache(maxsize=64)
def _subsets(contexts: tuple[str, ...], k: int) -> tuple[tuple[str, ...], ...]:
    """The subsets of k contexts that may go together, in the canonical order (at most C(10, 5) = 252)."""
    return tuple(c for c in combinations(contexts, k) if compatible(c))


def draw_contexts(spec: ContextWorldSpec, rng: np.random.Generator, weights: np.ndarray | None = None) -> tuple[str, ...]:
    """One image's contexts: a count from the weights, then a subset of that size, uniformly."""
    weights = count_weights(spec) if weights is None else weights
    k = int(rng.choice(len(weights), p=weights))
    options = _subsets(check_contexts(spec.contexts), k)
    return options[int(rng.integers(len(options)))]


def _describe(spec: ContextWorldSpec, weights: np.ndarray, image_id: str,
              name: str) -> tuple[tuple[str, ...], list[str], bool, str]:
    """(applied contexts, mentioned ones, whether the class is named, caption) of one image."""
    rng = np.random.default_rng([spec.seed, _DRAW_STREAM, stable_hash(image_id)])
    applied = draw_contexts(spec, rng, weights)
    said = rng.random(len(applied)) < spec.mention_p
    mentioned = [c for c, s in zip(applied, said) if s]
    named = bool(rng.random() < spec.class_p)
    return applied, mentioned, named, context_caption(name if named else None, mentioned, rng)


def _mismatched(n: int, spec: ContextWorldSpec) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng([spec.seed, _MISMATCH_STREAM]).permutation(n)[:round(n * spec.mismatch_fraction)]] = True
    return mask


def context_world_items(src: str | os.PathLike, spec: ContextWorldSpec) -> list[SourceItem]:
    """One item per image of `src/<class>/...` (or of a seeded `max_images` subset), in sorted order,
    with its contexts as the item's edit and its caption decided (see the module doc). Meta: `label`,
    `label_name`, `image_id`, `contexts` (applied), `mentioned` (the contexts the caption names: the
    donor's when mismatched), `class_named`, `caption_mismatched` and `caption_label` (the class the
    caption describes)."""
    check_spec(spec)
    weights = count_weights(spec)
    # The folder source lists, labels and names the classes: the same labels as `shards folder`.
    listed = image_folder_items(src, templates=("{}",), classnames=list(spec.classnames) if spec.classnames else None)
    if spec.max_images is not None and spec.max_images < len(listed):
        keep = np.random.default_rng([spec.seed, _SUBSET_STREAM]).permutation(len(listed))[:spec.max_images]
        listed = [listed[int(i)] for i in np.sort(keep)]
    labels = np.array([item.meta["label"] for item in listed])
    if spec.mismatch_fraction > 0 and len(np.unique(labels)) < 2:
        raise ValueError(f"ContextWorldSpec.mismatch_fraction={spec.mismatch_fraction} needs images of at least "
                         f"two classes under {str(src)!r} to take a wrong caption from")
    described = [_describe(spec, weights, item.meta["image_id"], item.meta["label_name"]) for item in listed]
    mismatched = _mismatched(len(listed), spec)
    items = []
    for i, item in enumerate(listed):
        applied, mentioned, named, caption = described[i]
        donor = i
        if mismatched[i]:
            rng = np.random.default_rng([spec.seed, _MISMATCH_STREAM, stable_hash(item.meta["image_id"])])
            while labels[donor] == labels[i]:  # about 1.1 draws with 10 balanced classes
                donor = int(rng.integers(len(listed)))
            _, mentioned, named, caption = described[donor]
        meta = {**item.meta, "contexts": list(applied), "mentioned": list(mentioned), "class_named": named,
                "caption_mismatched": bool(mismatched[i]), "caption_label": int(labels[donor])}
        edit = ContextEdit(applied, seed=stable_hash(spec.seed, _EDIT_STREAM, item.meta["image_id"]))
        # Every image is re-encoded, edited or not: JPEG generations must not tell contexts apart.
        items.append(SourceItem(item.path, caption, meta, edit=edit))
    return items


def context_world_samples(src: str | os.PathLike, spec: ContextWorldSpec,
                          stats: SourceStats | None = None) -> Iterator[Sample]:
    """The split's samples in one process (tests, small sets); `raylpclip shards contexts` writes the
    same items with Ray tasks."""
    return iter_samples(context_world_items(src, spec), image_size=spec.image_size, stats=stats)


def context_names(contexts: Sequence[str] | None = None) -> tuple[str, ...]:
    """The known contexts (or `contexts` checked), in the canonical order."""
    return CONTEXTS if contexts is None else check_contexts(contexts)
