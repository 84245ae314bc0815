"""FLIP's patch dropout (Li et al. 2023) on transformers' CLIP vision tower, as a forward hook.

In training, each image keeps its class token and a random subset of round((1 - p) * N) of its N patch
tokens, drawn independently per image, after the position embeddings are added and before
`pre_layrnorm` and the encoder (where open_clip's PatchDropout sits). The encoder's cost is about linear
in the tokens (quadratic in attention), so p = 0.5 roughly halves the vision tower's work per image.

A hook on `CLIPVisionEmbeddings` rather than a module of our own in its place: the CLIPModel keeps its
structure and state_dict keys, so checkpoints, `save_pretrained` exports (a plain CLIPModel, no custom
code) and `load_clip` do not know patch dropout existed. The hook does nothing in eval mode
(`model.eval()`: evaluation, inference, the EMA copies) nor at p = 0, so the output is then the
embeddings' own tensor, bit for bit.

The draws use torch's global generator on the tokens' device (as open_clip does), so torch.compile
traces them into the graph; training_setup seeds that generator per rank, so workers keep different
patches of their images.
"""

from __future__ import annotations

import torch
from torch import nn


def kept_patches(num_patches: int, p: float) -> int:
    """Patch tokens an image keeps at dropout `p`: round((1 - p) * N), at least one."""
    return max(1, round((1.0 - p) * num_patches))


def drop_patches(tokens: torch.Tensor, p: float) -> torch.Tensor:
    """(B, 1 + N, D) tokens, class token first -> (B, 1 + k, D): the class token, then k = kept_patches(N, p)
    patch tokens of each row, a random subset per row, in their original order."""
    b, n = tokens.shape[0], tokens.shape[1] - 1
    # top-k of uniform scores: a uniformly random k-subset of each row, one kernel for the whole batch.
    scores = torch.rand(b, n, device=tokens.device)
    keep = scores.topk(kept_patches(n, p), dim=1).indices.sort(dim=1).values + 1  # + 1: past the class token
    index = torch.cat([keep.new_zeros(b, 1), keep], dim=1)
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class PatchDropout:
    """The forward hook: replaces the embeddings' output with `drop_patches(output, p)` in train mode.

    `p` is read at each call (torch.compile guards on it: a change, e.g. the unmasked tuning phase of
    `train.patch_dropout_until_step`, recompiles once)."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training or self.p == 0.0:
            return None  # a forward hook returning None leaves the output as it is
        return drop_patches(output, self.p)


def _hook_of(embeddings: nn.Module) -> PatchDropout | None:
    return next((h for h in embeddings._forward_hooks.values() if isinstance(h, PatchDropout)), None)


def set_patch_dropout(clip: nn.Module, p: float) -> None:
    """Patch dropout `p` on `clip` (a CLIPModel) from its next training forward: the hook is attached on
    the first p > 0 and retuned after (p = 0 turns it off; it never attaches twice)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"patch dropout p={p}: expected 0 <= p < 1")
    embeddings = clip.vision_model.embeddings
    hook = _hook_of(embeddings)
    if hook is None and p > 0:
        embeddings.register_forward_hook(PatchDropout(p))
    elif hook is not None:
        hook.p = p


def patch_dropout_of(clip: nn.Module) -> float:
    """The patch dropout `clip` trains with now (0.0 without the hook)."""
    hook = _hook_of(clip.vision_model.embeddings)
    return hook.p if hook is not None else 0.0
