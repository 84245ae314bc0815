"""Exponential moving average of a model: PSD's EMA teacher and the EMA weights of `train.ema_decay`."""

from __future__ import annotations

from copy import deepcopy

import torch


class ModelEMA(torch.nn.Module):
    """Holds a frozen copy of `model` whose weights trail it: w <- d * w + (1 - d) * w_model.

    The copy is made when the EMA is, so it starts at the model's weights of that moment; buffers are
    copied, not averaged (CLIP's are fixed position ids)."""

    def __init__(self, model: torch.nn.Module, *, decay: float, copy=None):
        """`copy`: a callable making the copy, for a model that cannot be deep-copied (a sharded one); it must
        return the model's weights of this moment."""
        super().__init__()
        self.module = (copy() if copy is not None else deepcopy(model)).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        ema_params = dict(self.module.named_parameters())
        pairs = [(ema_params[name], param.detach()) for name, param in model.named_parameters()]
        # One multi-tensor kernel per kind of tensor rather than a launch per parameter. Under FSDP the weights
        # are sharded tensors (DTensor) beside a few plain replicated scalars; a foreach op takes one kind.
        kinds: dict[type, list] = {}
        for pair in pairs:
            kinds.setdefault(type(pair[0].detach()), []).append(pair)
        for group in kinds.values():
            torch._foreach_lerp_([e for e, _ in group], [p for _, p in group], 1.0 - self.decay)
        ema_buffers = dict(self.module.named_buffers())
        for name, buf in model.named_buffers():
            ema_buffers[name].copy_(buf)

    @torch.no_grad()
    def reset(self, model: torch.nn.Module) -> None:
        """Start over from `model`'s current weights (a resumed run whose checkpoint has no EMA)."""
        self.module.load_state_dict(model.state_dict())

    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        # A sharded copy (FSDP2) keeps its root's weights gathered after a forward, expecting a backward that a
        # frozen copy never runs: free them now, so the update and the state dict see shards again.
        if hasattr(self.module, "reshard"):
            self.module.reshard()
        return out
