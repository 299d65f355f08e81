"""Weights in: timm, torchvision, transformers and open_clip ViTs converted to FastViT, and checkpoint files of their layouts.

Every conversion builds the FastViT on the meta device (no weight initialisation: the weights
are about to be replaced) and assigns copies of the source's tensors, keeping its device, dtype
and training mode. What FastViT cannot represent is refused by name (``UnsupportedModelError``).
"""
from ._common import UnsupportedModelError
from .checkpoint import load_checkpoint
from .open_clip_vit import from_open_clip, open_clip_to_timm
from .timm_vit import from_timm
from .torchvision_vit import from_torchvision, torchvision_to_timm
from .transformers_vit import from_transformers, transformers_to_timm

__all__ = ["from_timm", "from_torchvision", "from_transformers", "from_open_clip", "load_checkpoint",
           "torchvision_to_timm", "transformers_to_timm", "open_clip_to_timm", "UnsupportedModelError"]
