"""fastvit on models built elsewhere: ``patch`` / ``unpatch`` (timm, transformers, open_clip, in
place) and, on import of ``fastvit.integrations.transformers``, ``attn_implementation="fastvit"``."""
from .patch import PatchReport, patch, unpatch

__all__ = ["patch", "unpatch", "PatchReport"]
