"""OpenCV backend for maps to boxes: bit-equal to the wsolevaluation reference loop (optional extra).

Reproduces ``compute_bboxes_from_scoremaps`` of wsolevaluation (Choe et al., CVPR 2020), one map and one
threshold at a time: ``cv2.threshold`` at ``int(tau * max)`` (strict ``>``), ``cv2.findContours(RETR_TREE,
CHAIN_APPROX_SIMPLE)`` (outer borders of 8-connected blobs *and* borders of holes), the largest contour by
``cv2.contourArea`` or all contours, and ``cv2.boundingRect`` to ``[x, y, x + w, y + h]`` clipped to
``W - 1``, ``H - 1``. Use it when bit-equality with published numbers matters; the pure-torch
:mod:`scm_calib.boxes` is the fast, batched path, held equal to this one by ``tests/test_boxes.py``.
Needs ``pip install scm_calib[opencv]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from .maps import wsol_thresholds

__all__ = ["best_box_iou_cv2", "map_boxes_cv2", "prepare_maps_cv2"]

_INTERPOLATION = {"bicubic": "INTER_CUBIC", "bilinear": "INTER_LINEAR"}


def _cv2() -> ModuleType:
    try:
        import cv2
    except ImportError as error:
        raise ImportError(
            "scm_calib.boxes.opencv needs OpenCV: pip install 'scm_calib[opencv]' (opencv-python-headless), "
            "or use the pure-torch scm_calib.boxes."
        ) from error
    return cv2


def prepare_maps_cv2(
    maps: Tensor, size: tuple[int, int] | None = None, *, interpolation: str = "bicubic"
) -> np.ndarray:
    """Resize with ``cv2.resize``, min-max normalise and quantise, exactly as wsolevaluation.

    Args:
        maps: (B, h, w) score maps.
        size: ``(H, W)`` to resize to; ``None`` keeps the size.
        interpolation: ``"bicubic"`` (``INTER_CUBIC``) or ``"bilinear"`` (``INTER_LINEAR``).

    Returns:
        (B, H, W) uint8 array.
    """
    cv2 = _cv2()
    if interpolation not in _INTERPOLATION:
        raise ValueError(f"interpolation must be one of {tuple(_INTERPOLATION)}, got {interpolation!r}.")
    out = []
    for cam in maps.detach().float().cpu().numpy():
        if size is not None:
            mode = getattr(cv2, _INTERPOLATION[interpolation])
            cam = cv2.resize(cam, (size[1], size[0]), interpolation=mode)
        if np.isnan(cam).any() or cam.min() == cam.max():
            cam = np.zeros_like(cam)
        else:
            cam = cam - cam.min()
            cam = cam / cam.max()
        out.append((cam * 255).astype(np.uint8))
    return np.stack(out)


def map_boxes_cv2(quantized: np.ndarray, tau: float, largest_only: bool) -> np.ndarray:
    """Boxes of one uint8 map at one threshold, as wsolevaluation's ``scoremap2bbox``.

    Args:
        quantized: (H, W) uint8 map.
        tau: Threshold in [0, 1].
        largest_only: Keep the contour of largest ``cv2.contourArea`` only (MaxBoxAcc).

    Returns:
        (N, 4) int64 boxes; ``[[0, 0, 0, 0]]`` without foreground.
    """
    boxes, areas = _contour_boxes(quantized, tau)
    return boxes[np.argmax(areas)][None] if largest_only else boxes


def _contour_boxes(quantized: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """All contour boxes (N, 4) of one map at one threshold and their polygon areas (N,).

    ``numpy.argmax`` of the areas is the contour that ``max(contours, key=cv2.contourArea)`` picks.
    """
    cv2 = _cv2()
    height, width = quantized.shape
    _, binary = cv2.threshold(quantized, int(tau * np.max(quantized)), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    if len(contours) == 0:
        return np.zeros((1, 4), dtype=np.int64), np.zeros(1)
    areas = np.asarray([cv2.contourArea(contour) for contour in contours])
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
    return np.asarray(boxes, dtype=np.int64), areas


def best_box_iou_cv2(
    quantized: np.ndarray | Tensor,
    gt_boxes: Sequence[Tensor],
    thresholds: Tensor | Sequence[float] | None = None,
) -> tuple[Tensor, Tensor]:
    """OpenCV counterpart of :func:`scm_calib.boxes.best_box_iou`.

    Args:
        quantized: (B, H, W) uint8 maps.
        gt_boxes: One (K_i, 4) tensor of ground-truth boxes per map.
        thresholds: (T,) thresholds; default :func:`scm_calib.boxes.wsol_thresholds`.

    Returns:
        (B, T) float64 IoU of the largest contour's box and (B, T) best IoU over all contours.
    """
    q = np.asarray(quantized.cpu() if isinstance(quantized, Tensor) else quantized)
    taus = np.asarray(wsol_thresholds() if thresholds is None else thresholds, dtype=np.float64)
    largest = torch.zeros(len(q), len(taus), dtype=torch.float64)
    every = torch.zeros(len(q), len(taus), dtype=torch.float64)
    for b, cam in enumerate(q):
        gt = torch.as_tensor(gt_boxes[b]).reshape(-1, 4).cpu().numpy().astype(np.float64)
        for t, tau in enumerate(taus):
            found, areas = _contour_boxes(cam, float(tau))
            iou = _iou_numpy(found, gt).max(axis=1)
            every[b, t] = float(iou.max())
            largest[b, t] = float(iou[int(np.argmax(areas))])
    return largest, every


def _iou_numpy(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of (N, 4) and (M, 4) boxes, inclusive convention, as wsolevaluation computes it."""
    a, b = boxes_a[:, None].astype(np.float64), boxes_b[None]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1, 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1, 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return inter / (area_a + area_b - inter)
