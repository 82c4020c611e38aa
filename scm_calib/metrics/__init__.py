"""WSOL metrics, function-first, and the protocol presets that published numbers were computed with.

Box metrics follow Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right"
(CVPR 2020): MaxBoxAcc, MaxBoxAccV2 and PxAP. Top-1 / Top-5 / GT-known Loc follow the CAM literature,
with the presets of TS-CAM (ICCV 2021) and SCM (Bai et al., ECCV 2022). ``docs/evaluation.md`` explains
each preset and metric with worked numbers.

Each metric is a pure function of tensors (:func:`box_accuracy`, :func:`localization_accuracy`,
:func:`pixel_average_precision`, in :mod:`scm_calib.metrics.functional`) and a streaming class that adds the
same counts up over batches and processes (:class:`BoxAccuracy`, :class:`LocalizationAccuracy`,
:class:`PixelAveragePrecision`, in :mod:`scm_calib.metrics.streaming`): ``update()`` once per batch,
``compute()`` at the end (on every process under ``torch.distributed``: it sums the states), ``reset()``.

Example:
    >>> import torch
    >>> maps = torch.zeros(2, 14, 14)
    >>> maps[:, 3:10, 4:12] = 1.0                         # (B, h, w) score maps of two images
    >>> gt_boxes = [torch.tensor([[4, 3, 11, 9]])] * 2   # (K, 4) boxes of each image, in pixels of the maps
    >>> val = BoxAccuracy(protocol="wsol")
    >>> val.update(maps, gt_boxes)                        # once per batch
    >>> best = val.compute()["best_tau"]                  # threshold chosen on a held-out split
    >>> box_accuracy(maps, gt_boxes, tau=best)["MaxBoxAccV2"]  # applied, fixed, to the test split
    100.0
"""

from .functional import box_accuracy, localization_accuracy, pixel_average_precision
from .protocols import PROTOCOLS, Protocol, get_protocol, protocol_thresholds
from .streaming import BoxAccuracy, LocalizationAccuracy, Metric, PixelAveragePrecision

__all__ = [
    "PROTOCOLS",
    "BoxAccuracy",
    "LocalizationAccuracy",
    "Metric",
    "PixelAveragePrecision",
    "Protocol",
    "box_accuracy",
    "get_protocol",
    "localization_accuracy",
    "pixel_average_precision",
    "protocol_thresholds",
]
