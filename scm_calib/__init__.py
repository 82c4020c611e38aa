"""scm_calib: SCM (Spatial Calibration Module; Bai et al., "Weakly Supervised Object Localization via
Transformer with Implicit Spatial Calibration", ECCV 2022) for any timm Vision Transformer."""

from . import boxes, data, evaluation, metrics, viz
from .adapter import SCMAdapter, SCMOutput, StrippedViT
from .boxes import best_box_iou, box_iou, boxes_from_maps, resize_maps, scale_boxes
from .calibration import SCM, SCMBlock, spatial_gate
from .capture import UnsupportedModelError
from .checkpoint import CheckpointError, load_weights, save_weights
from .localize import localization_maps, select_maps, semantic_and_attention
from .metrics import BoxAccuracy, LocalizationAccuracy, PixelAveragePrecision
from .viz import overlay, save_png

__version__ = "0.1.0"

__all__ = [
    "best_box_iou",
    "box_iou",
    "BoxAccuracy",
    "boxes",
    "boxes_from_maps",
    "CheckpointError",
    "data",
    "evaluation",
    "load_weights",
    "localization_maps",
    "LocalizationAccuracy",
    "metrics",
    "overlay",
    "PixelAveragePrecision",
    "resize_maps",
    "save_png",
    "save_weights",
    "scale_boxes",
    "select_maps",
    "SCM",
    "SCMAdapter",
    "SCMBlock",
    "SCMOutput",
    "semantic_and_attention",
    "spatial_gate",
    "StrippedViT",
    "UnsupportedModelError",
    "viz",
]
