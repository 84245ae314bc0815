"""Users' own data as `Sample`s: what every source lists (`SourceItem`s), what it skipped (`SourceStats`),
and how an item becomes a Sample. The sources themselves are an image folder (raylpclip.data.image_folder,
one subfolder per class) and a captions CSV (raylpclip.data.caption_csv).

A source is built in two steps so that shard writing can be spread over Ray tasks:
1. `*_items` lists the images and decides every caption up front (cheap, in the driver): class
   labels, templates, deliberately wrong captions and the held-out split are all fixed here from
   the seed, so the result never depends on how the items are later chunked into tasks.
2. `load_sample` reads and (re-)encodes one item's image (the expensive part, in the tasks). An item
   may carry an `edit` (raylpclip.data.image_contexts: the context world's grayscale, blur, ...),
   applied there too; and a `GeneratedItem` (the procedural world) is drawn there from its index.

`image_folder_samples` and `caption_csv_samples` chain both steps for single-process use.

Images are referred to by local paths: on a Ray cluster the source folder must be visible to
every node (a shared filesystem).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
from PIL import Image

from raylpclip.data.image_encoding import encode_image
from raylpclip.data.sample import Sample

MAX_SKIP_EXAMPLES = 5


class ImageEdit(Protocol):
    """A picklable change to an image (RGB in, RGB out), made in the writer task after the resize."""

    def __call__(self, image: Image.Image) -> Image.Image: ...


@dataclass(frozen=True)
class SourceItem:
    """One image to be written with one caption: everything but the pixels, decided in the driver.
    With an `edit`, the image is always decoded, edited and re-encoded (never kept as it was)."""

    path: str
    caption: str
    meta: dict[str, Any] = field(default_factory=dict)
    edit: ImageEdit | None = None


@dataclass(frozen=True)
class GeneratedItem:
    """A sample that is a pure function of its index (`recipe(index)`), drawn where it is loaded: a
    writer task receives a recipe and indices, not pixels."""

    recipe: Callable[[int], Sample]
    index: int


@dataclass
class SourceStats:
    """What a source produced and what it skipped, by reason ("unreadable", "missing", ...).

    Filled in while samples are listed and loaded; mergeable so that Ray tasks can each return one.
    """

    samples: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first few skipped files, to go and look at

    def skip(self, reason: str, what: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < MAX_SKIP_EXAMPLES:
            self.examples.append(f"{reason}: {what}")

    def merge(self, other: SourceStats) -> None:
        self.samples += other.samples
        self.skipped.update(other.skipped)
        self.examples.extend(other.examples[:MAX_SKIP_EXAMPLES - len(self.examples)])

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())


def load_sample(item: SourceItem | GeneratedItem, *, image_size: int | None = None,
                stats: SourceStats | None = None) -> Sample | None:
    """The item's image read and encoded as a Sample, or None (counted in `stats`) when the file is
    gone ("missing") or cannot be decoded ("unreadable"). `meta` gains the source image's size as
    `source_width`/`source_height` (the shard writer's own `original_*` fields describe the stored JPEG).
    A GeneratedItem is drawn at its recipe's own size (`image_size` does not apply)."""
    stats = stats if stats is not None else SourceStats()
    if isinstance(item, GeneratedItem):
        sample = item.recipe(item.index)
        stats.samples += 1
        return sample
    try:
        with open(item.path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        stats.skip("missing", item.path)
        return None
    except OSError as err:
        stats.skip("unreadable", f"{item.path} ({err})")
        return None
    try:
        jpg, width, height = encode_image(data, image_size=image_size, edit=item.edit)
    except ValueError as err:
        stats.skip("unreadable", f"{item.path} ({err})")
        return None
    stats.samples += 1
    return Sample(key="", jpg=jpg, caption=item.caption,
                  meta={**item.meta, "source_width": width, "source_height": height})


def iter_samples(items: Iterable[SourceItem | GeneratedItem], *, image_size: int | None = None,
                 stats: SourceStats | None = None) -> Iterator[Sample]:
    """`load_sample` over items, leaving out (and counting) the ones that cannot be read."""
    for item in items:
        sample = load_sample(item, image_size=image_size, stats=stats)
        if sample is not None:
            yield sample


def shuffled(items: Sequence[Any], *, seed: int) -> list[Any]:
    """Items in a seeded random order. Sources list images class by class (and an image's captions
    together) while the loader only shuffles shard order plus a small buffer: shuffling before
    sharding gives every shard a mix of classes and spreads an image's captions over shards."""
    order = np.random.default_rng([seed, 0x7368]).permutation(len(items))
    return [items[int(i)] for i in order]
