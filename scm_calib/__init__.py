"""scm_calib: SCM (Spatial Calibration Module; Bai et al., "Weakly Supervised Object Localization via
Transformer with Implicit Spatial Calibration", ECCV 2022) for any timm Vision Transformer.

The names here are the ones a user calls: wrap a model, read its maps, turn them into boxes, score them, save
and load the weights. Everything else is imported from its module (``scm_calib.data``, ``scm_calib.viz``,
``scm_calib.boxes``, ``scm_calib.calibration``, ...).
"""

from .adapter import SCMAdapter, SCMOutput, StrippedViT
from .boxes import best_box_iou, box_iou, boxes_from_maps, scale_boxes
from .calibration import SCM
from .capture import UnsupportedModelError
from .checkpoint import CheckpointError, load_weights, save_weights
from .localize import localization_maps, select_maps, semantic_and_attention
from .metrics import BoxAccuracy, LocalizationAccuracy, PixelAveragePrecision

__version__ = "0.1.0"

__all__ = [
    # wrap
    "SCMAdapter",
    "SCMOutput",
    "StrippedViT",
    "SCM",
    # maps
    "localization_maps",
    "select_maps",
    "semantic_and_attention",
    # boxes
    "boxes_from_maps",
    "best_box_iou",
    "box_iou",
    "scale_boxes",
    # metrics
    "BoxAccuracy",
    "LocalizationAccuracy",
    "PixelAveragePrecision",
    # weights
    "save_weights",
    "load_weights",
    "CheckpointError",
    "UnsupportedModelError",
]
