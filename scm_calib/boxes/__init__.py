"""Score maps to localization boxes, in pure, batched PyTorch (CPU or CUDA), as the WSOL protocols do.

One module per idea, each importable on its own:

- :mod:`scm_calib.boxes.maps`: map preparation (resize, min-max normalise, quantise, threshold levels);
  depends on nothing else in the package.
- :mod:`scm_calib.boxes.components`: the component engine (basins, union-find over a whole sweep).
- :mod:`scm_calib.boxes.extract`: the protocol's boxes (largest blob, all blobs, holes, best IoU) and
  :class:`SweepOptions`.
- :mod:`scm_calib.boxes.iou`: box geometry (IoU, padded ground truth, rescaling).
- :mod:`scm_calib.boxes.opencv`: the OpenCV reference (optional extra ``scm_calib[opencv]``).
"""

from .extract import BlobBoxes, SweepOptions, best_box_iou, blob_boxes, boxes_from_maps
from .iou import box_iou, pad_boxes, scale_boxes
from .maps import (
    INTERPOLATIONS,
    normalize_maps,
    prepare_maps,
    quantize_maps,
    resize_maps,
    threshold_levels,
    wsol_thresholds,
)

__all__ = [
    "BlobBoxes",
    "INTERPOLATIONS",
    "SweepOptions",
    "best_box_iou",
    "blob_boxes",
    "box_iou",
    "boxes_from_maps",
    "normalize_maps",
    "pad_boxes",
    "prepare_maps",
    "quantize_maps",
    "resize_maps",
    "scale_boxes",
    "threshold_levels",
    "wsol_thresholds",
]
