"""raylpclip.losses: named-loss functions (each returns a dict of `*_loss` tensors)."""

from raylpclip.losses.contrastive import clip_loss
from raylpclip.losses.psd import psd_alpha, psd_loss
from raylpclip.losses.psd_siglip import psd_siglip_loss
from raylpclip.losses.siglip import siglip_loss

__all__ = ["clip_loss", "psd_alpha", "psd_loss", "psd_siglip_loss", "siglip_loss"]
