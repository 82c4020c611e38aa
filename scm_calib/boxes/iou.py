"""Box geometry of the WSOL protocols: IoU with inclusive pixel coordinates, padded ground truth, rescaling.

Boxes are ``[x0, y0, x1, y1]`` with inclusive pixel coordinates (width ``x1 - x0 + 1``), as in
wsolevaluation (Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right", CVPR 2020).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["box_iou", "broadcast_box_iou", "check_in_frame", "pad_boxes", "scale_boxes"]


def box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """IoU of every pair of boxes, with inclusive pixel coordinates (width ``x1 - x0 + 1``).

    Args:
        boxes_a: (N, 4) boxes ``[x0, y0, x1, y1]``.
        boxes_b: (M, 4) boxes.

    Returns:
        (N, M) float64 IoU.

    Example:
        >>> box_iou(torch.tensor([[1, 2, 5, 6]]), torch.tensor([[3, 1, 4, 5]]))  # 8 / 27
        tensor([[0.2963]], dtype=torch.float64)
    """
    for name, boxes in (("boxes_a", boxes_a), ("boxes_b", boxes_b)):
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{name} must have shape (N, 4) as [x0, y0, x1, y1], got {tuple(boxes.shape)}.")
    a = boxes_a.to(torch.float64)[:, None]
    b = boxes_b.to(torch.float64)[None]
    return broadcast_box_iou(a, b)


def broadcast_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes that broadcast against each other, inclusive convention.

    Args:
        a: (..., 4) float64 boxes ``[x0, y0, x1, y1]``.
        b: (..., 4) float64 boxes, broadcastable with ``a``.

    Returns:
        (...) float64 IoU.
    """
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + 1).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + 1).clamp(min=0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return inter / (area_a + area_b - inter)


def pad_boxes(gt_boxes: Sequence[Tensor], device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Stack per-image ground-truth boxes into a padded tensor, checking each box.

    Args:
        gt_boxes: One (K_i, 4) tensor ``[x0, y0, x1, y1]`` per image, or (4,) for a single box (or a (B, K, 4)
            tensor); tensors, arrays or nested lists.
        device: Device of the result; default the first tensor's.

    Returns:
        (B, K, 4) float64 boxes and (B, K) bool validity mask, K = max K_i.

    Raises:
        ValueError: An image has no box, boxes not shaped (K, 4), or a box with a NaN, a negative coordinate
            or ``x1 < x0`` / ``y1 < y0``; the message names the image's index in the batch and the box.
    """
    boxes = [_as_box_set(b, i) for i, b in enumerate(gt_boxes)]
    device = boxes[0].device if device is None and boxes else device
    if not boxes:
        empty = torch.zeros(0, 0, 4, dtype=torch.float64, device=device)
        return empty, empty[..., 0].bool()
    counts = [b.shape[0] for b in boxes]
    k = max(counts)
    # One concatenation, one value check and one scatter for the whole batch, whatever its size: a loop of small
    # ops per image would cost a kernel launch each, and a host sync each, on a GPU.
    same = len({(b.device, b.dtype) for b in boxes}) == 1
    flat = torch.cat(boxes if same else [b.to(device=device, dtype=torch.float64) for b in boxes])
    flat = flat.to(device=device, dtype=torch.float64)
    _check_box_values(flat, counts)
    if all(count == k for count in counts):
        return flat.view(len(boxes), k, 4), torch.ones(len(boxes), k, dtype=torch.bool, device=device)
    sizes = torch.tensor(counts)
    image = torch.repeat_interleave(torch.arange(len(boxes)), sizes)
    row = torch.arange(len(flat)) - (torch.cumsum(sizes, 0) - sizes)[image]
    out = flat.new_zeros(len(boxes) * k, 4).index_copy_(0, (image * k + row).to(device), flat)
    valid = (torch.arange(k) < sizes[:, None]).to(device)
    return out.view(len(boxes), k, 4), valid


def _as_box_set(boxes: Tensor | np.ndarray | Sequence[float], image: int) -> Tensor:
    """One image's ground-truth boxes as a (K, 4) tensor, its shape and dtype checked (not its values)."""
    b = torch.as_tensor(boxes)
    if b.dim() == 1 and b.numel() == 4:
        b = b[None]
    if b.dim() != 2 or b.shape[1] != 4:
        raise ValueError(
            f"image {image}: ground-truth boxes must have shape (K, 4) as [x0, y0, x1, y1], got "
            f"{tuple(b.shape)}; pass one (K, 4) tensor per image (reshape a flat list with .view(-1, 4))."
        )
    if b.shape[0] == 0:
        raise ValueError(f"image {image} has no ground-truth box; every image needs at least one (K_i >= 1).")
    if b.dtype == torch.bool or b.is_complex():
        raise TypeError(f"image {image}: ground-truth boxes must be real pixel coordinates, got {b.dtype}.")
    return b


def _check_box_values(flat: Tensor, counts: list[int]) -> None:
    """Every box of the batch (rows of ``flat``, ``counts[i]`` of image ``i``) is a valid ``[x0, y0, x1, y1]``."""
    bad = torch.isnan(flat).any(1) | (flat < 0).any(1) | (flat[:, 2] < flat[:, 0]) | (flat[:, 3] < flat[:, 1])
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        image = bisect.bisect_right(list(itertools.accumulate(counts)), row)
        raise ValueError(
            f"image {image}: ground-truth box {flat[row].tolist()} is not [x0, y0, x1, y1] with 0 <= x0 <= x1 and "
            "0 <= y0 <= y1 (NaN, negative or inverted); fix the annotation or its conversion, e.g. (x, y, w, h) to "
            "(x, y, x + w, y + h)."
        )


def check_in_frame(gt: Tensor, valid: Tensor, height: int, width: int) -> None:
    """Check that every valid ground-truth box lies in the maps' frame.

    ``x1 <= W`` and ``y1 <= H``: the edge itself is allowed for boxes written as ``x + width``.

    Args:
        gt: (B, K, 4) padded boxes (see :func:`pad_boxes`).
        valid: (B, K) bool validity mask.
        height: Maps' height ``H``.
        width: Maps' width ``W``.

    Raises:
        ValueError: A box outside the frame; the message names the image and the box, and says to pass
            ``size=`` when the boxes are in pixels of a much larger image.
    """
    outside = valid & ((gt[..., 2] > width) | (gt[..., 3] > height))
    if not bool(outside.any()):
        return
    image, row = (int(i) for i in outside.nonzero()[0])
    box = gt[image, row].tolist()
    extent = int(gt[valid][:, 2:].amax()) + 1
    hint = (
        f"the boxes are in pixels of a larger image (about {extent} px): pass size=(H, W) of that image to "
        "BoxAccuracy / LocalizationAccuracy / boxes_from_maps to resize the maps to it"
        if extent > 2 * max(height, width)
        else "scale the boxes to the maps with scale_boxes(), or pass size=(H, W) of the boxes' image"
    )
    raise ValueError(f"image {image}: ground-truth box {box} lies outside the {height} x {width} (H x W) maps; {hint}.")


def scale_boxes(boxes: Tensor, original_size: tuple[int, int], size: tuple[int, int] = (224, 224)) -> Tensor:
    """Scale ground-truth boxes from the original image to the resized one, truncating to int.

    Each coordinate is multiplied by the new size and divided by the original size of its axis, in float64
    and in that order, then truncated: wsolevaluation's ``resize_bbox`` bit for bit (``x * (new / old)``
    differs by one pixel on some inputs, e.g. x = 55 of 110 px at 224: 112 here, 111 there).
    The one ground-truth rescale of the library: the datasets' ``boxes_protocol``,
    :func:`scm_calib.interop.read_wsolevaluation` and the inference example's boxes all call it.

    Args:
        boxes: (K, 4) boxes ``[x0, y0, x1, y1]`` in pixels of the original image.
        original_size: Original ``(W, H)``.
        size: Resized ``(W, H)``.

    Returns:
        (K, 4) int64 boxes.
    """
    boxes = torch.as_tensor(boxes)
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (K, 4) as [x0, y0, x1, y1], got {tuple(boxes.shape)}.")
    (w0, h0), (w1, h1) = original_size, size
    if min(w0, h0, w1, h1) <= 0:
        raise ValueError(f"sizes must be positive (W, H), got original_size={original_size}, size={size}.")
    new = torch.tensor([w1, h1, w1, h1], dtype=torch.float64, device=boxes.device)
    old = torch.tensor([w0, h0, w0, h0], dtype=torch.float64, device=boxes.device)
    return torch.trunc(boxes.to(torch.float64) * new / old).to(torch.int64)
