"""scm_calib: SCM (Spatial Calibration Module; Bai et al., "Weakly Supervised Object Localization via
Transformer with Implicit Spatial Calibration", ECCV 2022) for any timm Vision Transformer."""

from .adapter import SCMAdapter, SCMOutput, StrippedViT
from .boxes import box_iou, boxes_from_maps, resize_maps
from .calibration import SCM, SCMBlock, spatial_gate
from .capture import UnsupportedModelError
from .checkpoint import CheckpointError, load_weights, save_weights
from .localize import localization_maps, semantic_and_attention

__version__ = "0.1.0"

__all__ = [
    "SCM",
    "CheckpointError",
    "SCMAdapter",
    "SCMBlock",
    "SCMOutput",
    "StrippedViT",
    "UnsupportedModelError",
    "box_iou",
    "boxes_from_maps",
    "load_weights",
    "localization_maps",
    "resize_maps",
    "save_weights",
    "semantic_and_attention",
    "spatial_gate",
]
