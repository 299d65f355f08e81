"""fastvit: Triton kernels for fast, memory-lean Vision Transformers.

Unrelated to Apple's FastViT architecture of the same name: this is the plain ViT of Dosovitskiy
et al. with fused kernels.
"""
from . import ops
from .backend import BACKENDS, resolve_backend
from .convert import from_open_clip, from_timm, from_torchvision, from_transformers, load_checkpoint
from .integrations import PatchReport, patch, unpatch
from .naflex import NaFlexFastViT
from .variants import count_params, list_models, model_config
from .vit import FastViT, create_model

__version__ = "0.1.0"
__all__ = ["FastViT", "create_model", "list_models", "model_config", "count_params", "from_timm",
           "from_torchvision", "from_transformers", "from_open_clip", "load_checkpoint", "patch", "unpatch",
           "PatchReport", "NaFlexFastViT", "ops", "BACKENDS", "resolve_backend"]
