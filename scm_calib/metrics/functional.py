"""WSOL metrics as pure functions of tensors: the one place their math is written.

Each metric is an ``_update`` step (a batch -> counts that sum over batches and processes) and a ``_compute``
step (summed counts -> numbers); the public function is one followed by the other, and the streaming classes of
:mod:`scm_calib.metrics.streaming` only add the counts up between the two.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from scm_calib.boxes.extract import best_box_iou
from scm_calib.boxes.maps import normalize_maps, prepare_maps, resize_maps, wsol_thresholds

from .protocols import Protocol, get_protocol, protocol_thresholds

__all__ = ["box_accuracy", "localization_accuracy", "pixel_average_precision"]

Maps = Tensor | np.ndarray
Boxes = Sequence[Tensor | np.ndarray]
_LOC_COUNTS = ("top1_loc", "top5_loc", "gt_known", "top1_cls", "top5_cls", "count")


def _box_protocol(protocol: str | Protocol, tau: float | None, step: float | None) -> Protocol:
    """The protocol of the box metrics, which read MaxBoxAcc at IoU 0.5."""
    protocol = get_protocol(protocol, tau=tau, step=step)
    if 0.5 not in protocol.iou_thresholds:
        raise ValueError(f"iou_thresholds need 0.5 for MaxBoxAcc, got {protocol.iou_thresholds}.")
    return protocol


def _no_images() -> RuntimeError:
    return RuntimeError("compute() before any update() (no image scored); feed at least one batch.")


def _box_accuracy_update(
    maps: Maps,
    gt_boxes: Boxes,
    protocol: Protocol,
    thresholds: Tensor,
    size: tuple[int, int] | None,
    chunk_size: int | None,
) -> tuple[Tensor, Tensor, int]:
    """(T, D) hits of the largest blob's box, (T, D) hits of any blob's box, and the number of images."""
    maps = torch.as_tensor(maps)
    quantized = prepare_maps(maps.detach(), size, protocol.interpolation)
    largest, every = best_box_iou(
        quantized,
        gt_boxes,
        thresholds=thresholds.to(maps.device),
        holes=protocol.holes,
        chunk_size=chunk_size,
        clip=protocol.clip,
    )
    if not protocol.multi_contour:
        every = largest
    hits_largest = torch.stack([(largest >= delta).sum(dim=0) for delta in protocol.iou_thresholds], dim=1)
    hits_all = torch.stack([(every >= delta).sum(dim=0) for delta in protocol.iou_thresholds], dim=1)
    return hits_largest, hits_all, quantized.shape[0]


def _box_accuracy_compute(
    hits_largest: Tensor, hits_all: Tensor, count: int, thresholds: Tensor, protocol: Protocol
) -> dict[str, float | Tensor]:
    if count == 0:
        raise _no_images()
    curve = hits_largest.to(torch.float64).cpu() / count * 100
    curve_v2 = hits_all.to(torch.float64).cpu() / count * 100
    half = protocol.iou_thresholds.index(0.5)
    result: dict[str, float | Tensor] = {
        "MaxBoxAcc": float(curve[:, half].max()),
        "best_tau": float(thresholds[int(curve[:, half].argmax())]),
    }
    terms = []
    for d, delta in enumerate(protocol.iou_thresholds):
        name = f"@{round(delta * 100)}"
        terms.append(float(curve_v2[:, d].max()))
        result[f"MaxBoxAccV2{name}"] = terms[-1]
        result[f"best_tau{name}"] = float(thresholds[int(curve_v2[:, d].argmax())])
    result["MaxBoxAccV2"] = sum(terms) / len(terms)
    result.update(thresholds=thresholds.clone(), curve=curve, curve_v2=curve_v2)
    return result


def box_accuracy(
    maps: Maps,
    gt_boxes: Boxes,
    protocol: str | Protocol = "wsol",
    tau: float | None = None,
    step: float | None = None,
    size: tuple[int, int] | None = None,
    chunk_size: int | None = None,
) -> dict[str, float | Tensor]:
    """MaxBoxAcc (V1), MaxBoxAccV2 and BoxAcc at a fixed threshold of one set of maps.

    MaxBoxAcc: the box of the largest blob, IoU threshold 0.5, best ``tau``. MaxBoxAccV2: the boxes of
    all blobs (any box hitting any ground-truth box counts), best ``tau`` chosen separately for each IoU
    threshold 0.3 / 0.5 / 0.7, mean of the three.

    Args:
        maps: (B, H, W) localization maps of the ground-truth class at image resolution, any real values
            (or at any resolution with ``size`` set); a tensor or an array.
        gt_boxes: One (K_i, 4) tensor or array ``[x0, y0, x1, y1]`` (pixels of the ``H x W`` image,
            inclusive) per image.
        protocol: ``"wsol"``, ``"scm"``, ``"tscam"`` or a :class:`~scm_calib.metrics.Protocol`.
        tau: Fixed threshold (e.g. the best ``tau`` of a held-out split); ``None`` keeps the protocol's.
        step: Threshold grid step; ``None`` keeps the protocol's.
        size: ``(H, W)`` to resize the maps to (e.g. grid maps); ``None`` takes them at image size.
        chunk_size: Maps turned into boxes at once, which bounds memory; default 64 on the CPU, 512 on a GPU.

    Returns:
        ``MaxBoxAcc`` and ``MaxBoxAccV2`` (percent), ``MaxBoxAccV2@30`` / ``@50`` / ``@70`` (one per IoU
        threshold), ``best_tau`` (of MaxBoxAcc) and ``best_tau@30`` / ``@50`` / ``@70`` (of each V2
        term), ``thresholds`` (T,) and the accuracy-vs-threshold curves ``curve`` (T, D) (largest blob)
        and ``curve_v2`` (T, D) (all blobs), in percent, D = number of IoU thresholds. With a fixed
        ``tau`` (T = 1), ``MaxBoxAcc`` is BoxAcc at that ``tau``.

    Raises:
        ValueError: Maps not (B, H, W), not one box set per map, or a ground-truth box that is NaN,
            negative, inverted or outside the ``H x W`` frame (e.g. 224 px boxes on grid maps without
            ``size``); the message names the image and the box.
        RuntimeError: No image.
    """
    protocol = _box_protocol(protocol, tau, step)
    thresholds = protocol_thresholds(protocol)
    hits_largest, hits_all, count = _box_accuracy_update(maps, gt_boxes, protocol, thresholds, size, chunk_size)
    return _box_accuracy_compute(hits_largest, hits_all, count, thresholds, protocol)


def _check_labels(labels: Tensor, batch: int, num_classes: int) -> None:
    """Labels are (B,) integer classes in ``[0, C)``."""
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape (B,) = ({batch},) to fit the logits, got {tuple(labels.shape)}.")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}; convert with labels.long().")
    outside = (labels < 0) | (labels >= num_classes)
    if bool(outside.any()):
        image = int(outside.nonzero()[0, 0])
        raise ValueError(
            f"image {image}: label {int(labels[image])} is outside [0, {num_classes}) of the logits' {num_classes} "
            "classes; use 0-based labels (CUB's image_class_labels.txt is 1-based) and logits of every class."
        )


def _largest_iou(
    maps: Tensor,
    gt_boxes: Boxes,
    protocol: Protocol,
    thresholds: Tensor,
    size: tuple[int, int] | None,
    chunk_size: int | None,
) -> Tensor:
    """(B, T) IoU of the largest blob's box of each map with its best ground-truth box."""
    quantized = prepare_maps(maps, size, protocol.interpolation)
    largest, _ = best_box_iou(
        quantized,
        gt_boxes,
        thresholds=thresholds.to(maps.device),
        holes=False,
        chunk_size=chunk_size,
        clip=protocol.clip,
    )
    return largest


def _localization_update(
    logits: Maps,
    labels: Maps,
    gt_boxes: Boxes,
    maps_topk: Maps | None,
    maps_gt: Maps | None,
    maps: Maps | None,
    protocol: Protocol,
    thresholds: Tensor,
    size: tuple[int, int] | None,
    chunk_size: int | None,
) -> tuple[dict[str, Tensor], int]:
    """The counts of :data:`_LOC_COUNTS` of one batch and the number k of maps per image."""
    logits, labels = torch.as_tensor(logits).detach(), torch.as_tensor(labels)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, C), got {tuple(logits.shape)}.")
    b, num_classes = logits.shape
    _check_labels(labels, b, num_classes)
    if len(gt_boxes) != b:
        raise ValueError(f"got {len(gt_boxes)} ground-truth box sets for {b} images; pass one per image.")
    if (maps is None) == (maps_topk is None):
        raise ValueError("pass either maps= (B, C, H, W) of all classes or maps_topk (B, k, H, W), not both.")
    if maps is not None:
        maps = torch.as_tensor(maps).detach()
        if maps.dim() != 4 or tuple(maps.shape[:2]) != (b, num_classes):
            raise ValueError(
                f"maps must have shape (B, C, H, W) = ({b}, {num_classes}, H, W) to fit logits "
                f"{tuple(logits.shape)}, got {tuple(maps.shape)}."
            )
        top = logits.topk(min(5, num_classes), dim=1).indices.to(maps.device)
        maps_topk = maps[torch.arange(b, device=maps.device)[:, None], top]
        in_top = (top == labels.to(maps.device)[:, None]).any(dim=1).all()
        maps_gt = None if bool(in_top) else maps[torch.arange(b, device=maps.device), labels.to(maps.device)]
    maps_topk = torch.as_tensor(maps_topk).detach()
    if maps_topk.dim() != 4 or maps_topk.shape[0] != b or not 1 <= maps_topk.shape[1] <= num_classes:
        raise ValueError(
            f"maps_topk must have shape (B, k, H, W) with B = {b} and 1 <= k <= C = {num_classes} to fit "
            f"logits {tuple(logits.shape)}, got {tuple(maps_topk.shape)}."
        )
    if maps_gt is not None:
        maps_gt = torch.as_tensor(maps_gt).detach()
        if maps_gt.dim() != 3 or maps_gt.shape[0] != b:
            raise ValueError(f"maps_gt must have shape (B, H, W) with B = {b}, got {tuple(maps_gt.shape)}.")
    k = maps_topk.shape[1]
    device = maps_topk.device
    labels = labels.to(device)
    ranked = logits.topk(min(5, num_classes), dim=1).indices.to(device)
    correct = ranked == labels[:, None]  # (B, min(5, C))
    iou = torch.stack(
        [_largest_iou(maps_topk[:, j], gt_boxes, protocol, thresholds, size, chunk_size) for j in range(k)], dim=1
    )  # (B, k, T)
    hits = iou > 0.5 if protocol.strict_iou else iou >= 0.5
    found = correct[:, :k]
    if protocol.gt_known_from_top1:
        known = iou[:, 0]
    elif maps_gt is not None:
        known = _largest_iou(maps_gt, gt_boxes, protocol, thresholds, size, chunk_size)
    elif bool(found.any(dim=1).all()):
        known = iou[torch.arange(b, device=device), found.to(torch.int64).argmax(dim=1)]
    else:
        raise ValueError(
            "maps_gt is needed for GT-known Loc: the ground-truth class is not among the top-k maps of "
            f"{int((~found.any(dim=1)).sum())} images; pass maps_gt (B, H, W)."
        )
    counts = {
        "top1_loc": (hits[:, 0] & found[:, :1]).sum(dim=0),
        "top5_loc": (hits[:, :5] & found[:, :5, None]).any(dim=1).sum(dim=0),
        "gt_known": (known >= 0.5).sum(dim=0),
        "top1_cls": correct[:, 0].sum(),
        "top5_cls": correct.any(dim=1).sum(),
        "count": torch.tensor(b, device=device),
    }
    return counts, k


def _localization_compute(
    counts: dict[str, Tensor], k: int, thresholds: Tensor, protocol: Protocol
) -> dict[str, float | Tensor]:
    n = int(counts["count"])
    if n == 0:
        raise _no_images()
    curves = {
        "Top1Loc": counts["top1_loc"].cpu().to(torch.float64) / n * 100,
        "GTKnownLoc": counts["gt_known"].cpu().to(torch.float64) / n * 100,
    }
    if k >= 5:
        curves["Top5Loc"] = counts["top5_loc"].cpu().to(torch.float64) / n * 100
    best = int(curves["GTKnownLoc"].argmax())
    result: dict[str, float | Tensor] = {"best_tau": float(thresholds[best])}
    for name, curve in curves.items():
        index = int(curve.argmax()) if protocol.tau_per_metric else best
        result[name] = float(curve[index])
        if protocol.tau_per_metric:
            result[f"best_tau/{name}"] = float(thresholds[index])
        result[f"curve/{name}"] = curve
    result["Top1Cls"] = float(counts["top1_cls"]) / n * 100
    result["Top5Cls"] = float(counts["top5_cls"]) / n * 100
    result["thresholds"] = thresholds.clone()
    return result


def localization_accuracy(
    logits: Maps,
    labels: Maps,
    gt_boxes: Boxes,
    maps_topk: Maps | None = None,
    maps_gt: Maps | None = None,
    *,
    maps: Maps | None = None,
    protocol: str | Protocol = "wsol",
    tau: float | None = None,
    step: float | None = None,
    size: tuple[int, int] | None = None,
    chunk_size: int | None = None,
) -> dict[str, float | Tensor]:
    """Top-1 / Top-5 / GT-known Loc and Top-1 / Top-5 classification of one set of maps.

    GT-known Loc: the box of the ground-truth class's map has IoU >= 0.5 with a ground-truth box. Top-1
    Loc: the top-1 class is right and its map's box hits. Top-5 Loc: one of the top-5 classes is the
    ground truth and that class's map's box hits. Boxes are those of the largest blob. Pass ``maps`` (every
    class's localization map, as WSOL code bases have them) or ``maps_topk``.

    Args:
        logits: (B, C) class scores; their top-k order gives the classes of ``maps_topk``.
        labels: (B,) ground-truth classes, integers in ``[0, C)``.
        gt_boxes: One (K_i, 4) tensor or array of ground-truth boxes per image.
        maps_topk: (B, k, H, W) localization maps of the top-k classes of ``logits``, best first; k >= 5 for
            Top-5 Loc (k = 1 is enough for Top-1 Loc and, under ``"scm"``, GT-known Loc).
        maps_gt: (B, H, W) localization maps of the ground-truth classes, for GT-known Loc with ``maps_topk``.
            ``None`` takes the ground-truth class's map from ``maps_topk`` (it must be there) or, under
            ``"scm"``, the top-1 map.
        maps: (B, C, H, W) localization maps of all classes (keyword only), instead of ``maps_topk`` and
            ``maps_gt``: the top-5 and ground-truth maps are taken from it.
        protocol: ``"wsol"``, ``"scm"``, ``"tscam"`` or a :class:`~scm_calib.metrics.Protocol`.
        tau: Fixed threshold; ``None`` keeps the protocol's.
        step: Threshold grid step; ``None`` keeps the protocol's.
        size: ``(H, W)`` to resize the maps to; ``None`` takes them at image size.
        chunk_size: Maps turned into boxes at once, which bounds memory; default 64 on the CPU, 512 on a GPU.

    Returns:
        ``Top1Loc``, ``Top5Loc``, ``GTKnownLoc``, ``Top1Cls``, ``Top5Cls`` (percent); ``best_tau`` (the threshold
        of GT-known Loc, at which the Loc metrics are read) or, under ``"scm"``, ``best_tau`` of each metric as
        ``best_tau/Top1Loc`` etc. (and ``best_tau`` of GT-known Loc); ``thresholds`` and the curves
        ``curve/Top1Loc`` etc. (T,). ``Top5Loc`` is omitted when fewer than 5 maps were given.

    Raises:
        ValueError: Shapes that do not fit together, labels outside ``[0, C)``, or a bad ground-truth box
            (see :func:`box_accuracy`).
        RuntimeError: No image.
    """
    protocol = get_protocol(protocol, tau=tau, step=step)
    thresholds = protocol_thresholds(protocol)
    counts, k = _localization_update(
        logits, labels, gt_boxes, maps_topk, maps_gt, maps, protocol, thresholds, size, chunk_size
    )
    return _localization_compute(counts, k, thresholds, protocol)


def _pxap_edges(step: float) -> Tensor:
    """Right edges ``[step, ..., 1 - step, 1, 2, 3]`` of the score bins, as wsolevaluation's ``MaskEvaluator``."""
    return torch.cat([wsol_thresholds(step), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)])


def _pxap_update(
    maps: Tensor, masks: Tensor, ignore: Tensor | None, edges: Tensor, size: tuple[int, int] | None
) -> tuple[Tensor, Tensor]:
    """Float64 histograms of the scores of object and of background pixels over the bins of ``edges``."""
    device = maps.device
    if size is not None:
        maps = resize_maps(maps.detach(), size, "bicubic")
    maps = normalize_maps(maps.detach()).to(torch.float64)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {tuple(masks.shape)} must match the maps {tuple(maps.shape)} (B, H, W).")
    keep = torch.ones_like(maps, dtype=torch.bool) if ignore is None else ~ignore.to(device).bool()
    bins = torch.bucketize(maps, edges.to(device), right=True) - 1
    bins = bins.clamp(max=edges.numel() - 2)
    is_object = masks.to(device).bool()
    num_bins = edges.numel() - 1
    object_hist = torch.bincount(bins[is_object & keep], minlength=num_bins).to(torch.float64)
    background_hist = torch.bincount(bins[~is_object & keep], minlength=num_bins).to(torch.float64)
    return object_hist, background_hist


def _pxap_compute(object_hist: Tensor, background_hist: Tensor) -> dict[str, float | Tensor]:
    tp = object_hist.cpu().flip(0).cumsum(0)
    fp = background_hist.cpu().flip(0).cumsum(0)
    if tp[-1] <= 0:
        raise RuntimeError("no object pixel in the masks so far; PxAP needs positive ground truth.")
    predicted = tp + fp
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
    recall = tp / tp[-1]
    terms = precision[1:] * torch.diff(recall)
    value = float(terms[predicted[1:] > 0].sum()) * 100
    return {"PxAP": value, "precision": precision, "recall": recall}


def pixel_average_precision(
    maps: Tensor,
    masks: Tensor,
    ignore: Tensor | None = None,
    step: float = 0.001,
    size: tuple[int, int] | None = None,
) -> dict[str, float | Tensor]:
    """PxAP: pixel-wise average precision of score maps against masks (wsolevaluation).

    Scores are binned by the threshold grid with right edges ``[step, ..., 1 - step, 1, 2, 3]``, as
    wsolevaluation's ``MaskEvaluator``; precision and recall follow from the cumulative histograms.

    Args:
        maps: (B, H, W) score maps, any real values; min-max normalised per map.
        masks: (B, H, W) ground-truth object masks (nonzero = object).
        ignore: (B, H, W) pixels to leave out (nonzero), e.g. OpenImages' ignore regions.
        step: Threshold grid step (wsolevaluation uses 0.001 for PxAP).
        size: ``(H, W)`` to resize the maps to (bicubic); ``None`` takes them at mask size.

    Returns:
        ``PxAP`` (percent) and the curve ``precision``, ``recall`` (from the highest threshold down).

    Raises:
        ValueError: Masks of another shape than the (resized) maps.
        RuntimeError: No object pixel in the masks.
    """
    object_hist, background_hist = _pxap_update(maps, masks, ignore, _pxap_edges(step), size)
    return _pxap_compute(object_hist, background_hist)
