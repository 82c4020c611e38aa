"""Per-image diagnostics of a WSOL evaluation and TS-CAM's breakdown of localization outcomes.

TS-CAM (Gao et al., ICCV 2021) sorts every test image into one outcome of its top-1 prediction, the analysis
SCM's code keeps (``get_badcase_detail`` in ``lib/cams_deit.py`` of vasgaowei/TS-CAM, lines 307-345; the same
function in 164140757/SCM, lines 304-342). With the box of the top-1 class's map at a fixed threshold, ``IoG`` =
intersection / ground-truth box area and ``IoB`` = intersection / predicted box area (inclusive pixels, as IoU),
in this order, the first that applies:

1. ``wrong_class``: the top-1 class is not the label;
2. ``right``: IoU with the best ground-truth box ``> 0.5`` (TS-CAM's strict Top-1 Loc);
3. ``multi_instance``: the image has several ground-truth boxes and the box covers ``IoG > 0.3`` of more than one;
4. ``part``: ``IoB > 0.5`` with the best-IoU ground-truth box: the box lies mostly inside the object;
5. ``too_large``: ``IoG >= 0.7`` with it: the object lies mostly inside a box too large (TS-CAM's "more");
6. ``wrong_place``: the rest, a box that misses the object (TS-CAM's "wrong").

The best-IoU box is the first of the largest IoU (the first box when no box overlaps). The thresholds are the
fields of :class:`OutcomeThresholds`. ``right`` equals Top-1 Loc (:class:`~scm_calib.metrics.LocalizationAccuracy`
under the ``"tscam"`` preset, or with ``strict_iou=False`` under ``"wsol"``) at the same threshold. The predicted box
is the protocol's clipped box; TS-CAM's own boxes are not clipped, one pixel wider at the right and bottom edges.

Example:
    >>> maps = torch.zeros(2, 3, 16, 16); maps[:, :, 4:12, 4:12] = 1.0   # (B, C, H, W) class maps
    >>> logits, labels = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]]), torch.tensor([1, 2])
    >>> gt_boxes = [torch.tensor([[4, 4, 11, 11]])] * 2
    >>> outcomes = LocalizationOutcomes(tau=0.5)
    >>> outcomes.update(maps, logits, labels, gt_boxes)                   # once per batch
    >>> outcomes.compute()["right"], outcomes.compute()["wrong_class"]    # percent of the images
    (50.0, 50.0)
    >>> rows = diagnose_images(maps, logits, labels, gt_boxes, ["a.jpg", "b.jpg"], tau=0.5)
    >>> write_diagnoses("test_images.csv", rows).name
    'test_images.csv'
    >>> worst, best = worst_and_best(rows, k=1)                           # the images to draw
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from scm_calib.boxes import boxes_from_maps, pad_boxes
from scm_calib.metrics.streaming import Metric

__all__ = [
    "AFFINITY_PAIRS",
    "OUTCOMES",
    "ImageDiagnosis",
    "LocalizationOutcomes",
    "OutcomeThresholds",
    "SemanticAffinity",
    "classify_outcomes",
    "diagnose_images",
    "localization_outcomes",
    "worst_and_best",
    "write_diagnoses",
]

OUTCOMES = ("right", "wrong_class", "multi_instance", "part", "too_large", "wrong_place")
"""The outcome names; :func:`classify_outcomes` gives indices into this tuple."""


@dataclass(frozen=True)
class OutcomeThresholds:
    """The thresholds of the outcome breakdown; the defaults are TS-CAM's.

    Attributes:
        iou: IoU for ``right``.
        strict_iou: ``right`` needs ``IoU > iou`` (TS-CAM) instead of ``IoU >= iou`` (wsolevaluation).
        multi_instance_iog: ``multi_instance`` when more than one ground-truth box has ``IoG >`` this.
        part_iob: ``part`` when ``IoB >`` this.
        too_large_iog: ``too_large`` when ``IoG >=`` this.
    """

    iou: float = 0.5
    strict_iou: bool = True
    multi_instance_iog: float = 0.3
    part_iob: float = 0.5
    too_large_iog: float = 0.7


@dataclass(frozen=True)
class ImageDiagnosis:
    """One row of the per-image table.

    Attributes:
        image_id: The image's path relative to the image root (or any id).
        label: 0-based ground-truth class.
        predicted: Top-1 predicted class.
        iou: IoU of ``box`` with its best ground-truth box.
        tau: The threshold the box was read at.
        box: ``(x0, y0, x1, y1)``, the largest blob's box of the predicted class's map, in map pixels.
        outcome: One of :data:`OUTCOMES`.
    """

    image_id: str
    label: int
    predicted: int
    iou: float
    tau: float
    box: tuple[int, int, int, int]
    outcome: str


def _check_batch(pred_boxes: Tensor, predicted: Tensor, labels: Tensor, gt_boxes: Sequence[object]) -> None:
    b = pred_boxes.shape[0]
    if pred_boxes.shape != (b, 4):
        raise ValueError(f"pred_boxes must have shape (B, 4) as [x0, y0, x1, y1], got {tuple(pred_boxes.shape)}.")
    for name, value in (("predicted", predicted), ("labels", labels)):
        if value.shape != (b,):
            raise ValueError(f"{name} must have shape (B,) = ({b},), got {tuple(value.shape)}.")
    if len(gt_boxes) != b:
        raise ValueError(f"got {len(gt_boxes)} ground-truth box sets for {b} images; pass one per image.")


def _outcomes(
    pred_boxes: Tensor, predicted: Tensor, labels: Tensor, gt_boxes: Sequence[Tensor], rule: OutcomeThresholds
) -> tuple[Tensor, Tensor]:
    """(B,) outcome indices and (B,) best IoU."""
    pred_boxes, predicted, labels = (torch.as_tensor(x) for x in (pred_boxes, predicted, labels))
    _check_batch(pred_boxes, predicted, labels, gt_boxes)
    device = pred_boxes.device
    if pred_boxes.shape[0] == 0:  # an empty batch
        return torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, dtype=torch.float64, device=device)
    gt, valid = pad_boxes(gt_boxes, device)  # (B, K, 4), (B, K)
    box = pred_boxes.to(device, torch.float64)[:, None]  # (B, 1, 4)
    width = (torch.minimum(box[..., 2], gt[..., 2]) - torch.maximum(box[..., 0], gt[..., 0]) + 1).clamp(min=0)
    height = (torch.minimum(box[..., 3], gt[..., 3]) - torch.maximum(box[..., 1], gt[..., 1]) + 1).clamp(min=0)
    inter = width * height
    box_area = (box[..., 2] - box[..., 0] + 1) * (box[..., 3] - box[..., 1] + 1)
    gt_area = (gt[..., 2] - gt[..., 0] + 1) * (gt[..., 3] - gt[..., 1] + 1)
    iou = torch.where(valid, inter / (box_area + gt_area - inter), -1.0)
    best_iou, best = iou.max(dim=1)  # the first of the largest, as TS-CAM's loop keeps it
    iog = inter / gt_area
    iob_best = inter.gather(1, best[:, None])[:, 0] / box_area[:, 0]
    iog_best = iog.gather(1, best[:, None])[:, 0]
    hit = best_iou > rule.iou if rule.strict_iou else best_iou >= rule.iou
    multi = (valid.sum(dim=1) > 1) & ((valid & (iog > rule.multi_instance_iog)).sum(dim=1) > 1)
    outcome = torch.full_like(best, OUTCOMES.index("wrong_place"))
    for name, where in (
        ("too_large", iog_best >= rule.too_large_iog),
        ("part", iob_best > rule.part_iob),
        ("multi_instance", multi),
        ("right", hit),
        ("wrong_class", predicted.to(device) != labels.to(device)),
    ):  # reversed priority: a later rule overrides an earlier one
        outcome = torch.where(where, OUTCOMES.index(name), outcome)
    return outcome, best_iou


def classify_outcomes(
    pred_boxes: Tensor,
    predicted: Tensor,
    labels: Tensor,
    gt_boxes: Sequence[Tensor],
    thresholds: OutcomeThresholds = OutcomeThresholds(),
) -> Tensor:
    """The outcome of each image from its top-1 prediction and box (the module docstring defines them).

    Args:
        pred_boxes: (B, 4) box of each image's top-1 class, ``[x0, y0, x1, y1]`` inclusive pixels.
        predicted: (B,) top-1 class.
        labels: (B,) ground-truth class.
        gt_boxes: One (K_i, 4) tensor of ground-truth boxes per image, in the same pixels as ``pred_boxes``.
        thresholds: The breakdown's thresholds.

    Returns:
        (B,) int64 indices into :data:`OUTCOMES`.

    Example:
        >>> gt = [torch.tensor([[10, 10, 49, 49]])]
        >>> OUTCOMES[int(classify_outcomes(torch.tensor([[20, 20, 30, 30]]), torch.tensor([1]), torch.tensor([1]), gt))]
        'part'
    """
    return _outcomes(pred_boxes, predicted, labels, gt_boxes, thresholds)[0]


def _top1(
    maps: Tensor | np.ndarray, logits: Tensor, tau: float, size: tuple[int, int] | None, interpolation: str
) -> tuple[Tensor, Tensor]:
    """(B,) top-1 classes and (B, 4) largest-blob boxes of their maps at ``tau``."""
    maps, logits = torch.as_tensor(maps).detach(), torch.as_tensor(logits).detach()
    if logits.dim() != 2 or logits.shape[0] != maps.shape[0]:
        raise ValueError(f"logits must have shape (B, C) with B = {maps.shape[0]}, got {tuple(logits.shape)}.")
    predicted = logits.topk(1, dim=1).indices[:, 0].to(maps.device)
    if maps.dim() == 4:
        if maps.shape[1] != logits.shape[1]:
            raise ValueError(
                f"maps (B, C, H, W) must have C = {logits.shape[1]} as the logits, got {tuple(maps.shape)}."
            )
        maps = maps[torch.arange(maps.shape[0], device=maps.device), predicted]
    if not 0.0 <= tau < 1.0:
        raise ValueError(f"tau must be in [0, 1), got {tau}; pass the threshold chosen on held-out data.")
    boxes = boxes_from_maps(maps, thresholds=[tau], size=size, interpolation=interpolation, largest_only=True).boxes
    return predicted, boxes


def diagnose_images(
    maps: Tensor | np.ndarray,
    logits: Tensor,
    labels: Tensor,
    gt_boxes: Sequence[Tensor],
    image_ids: Sequence[str],
    tau: float,
    *,
    size: tuple[int, int] | None = None,
    interpolation: str = "bicubic",
    thresholds: OutcomeThresholds = OutcomeThresholds(),
) -> list[ImageDiagnosis]:
    """The per-image table of a batch: class, top-1 class, its box at ``tau``, the box's best IoU, the outcome.

    Args:
        maps: (B, C, H, W) maps of all classes, or (B, H, W) maps of each image's top-1 class.
        logits: (B, C) class scores; the top-1 class is their argmax.
        labels: (B,) 0-based ground-truth classes.
        gt_boxes: One (K_i, 4) tensor of ground-truth boxes per image, in pixels of the (resized) maps.
        image_ids: B ids, e.g. ``batch.paths``.
        tau: The threshold, e.g. the ``best_tau`` chosen on held-out data.
        size: ``(H, W)`` to resize the maps to (e.g. grid maps); ``None`` takes them at image size.
        interpolation: ``"bicubic"`` (``"wsol"``) or ``"bilinear"`` (``"scm"``, ``"tscam"``).
        thresholds: The breakdown's thresholds.

    Returns:
        B rows, in batch order.
    """
    predicted, boxes = _top1(maps, logits, tau, size, interpolation)
    if len(image_ids) != boxes.shape[0]:
        raise ValueError(f"got {len(image_ids)} image ids for {boxes.shape[0]} maps; pass one per image.")
    outcome, iou = _outcomes(boxes, predicted, torch.as_tensor(labels), gt_boxes, thresholds)
    return [
        ImageDiagnosis(
            image_id=str(image_id),
            label=int(label),
            predicted=int(top),
            iou=float(best),
            tau=float(tau),
            box=(int(box[0]), int(box[1]), int(box[2]), int(box[3])),
            outcome=OUTCOMES[int(code)],
        )
        for image_id, label, top, best, box, code in zip(
            image_ids,
            torch.as_tensor(labels).tolist(),
            predicted.tolist(),
            iou.tolist(),
            boxes.tolist(),
            outcome.tolist(),
            strict=True,
        )
    ]


class LocalizationOutcomes(Metric):
    """TS-CAM's breakdown of localization outcomes, streamed: the share of images in each of :data:`OUTCOMES`.

    A :class:`~scm_calib.metrics.Metric`: its state (``counts``, one per outcome) sums over batches and, inside
    :meth:`compute`, over the processes of an initialised ``torch.distributed`` group, like the metrics of
    :mod:`scm_calib.metrics`.

    Args:
        tau: The threshold the boxes are read at (TS-CAM: 0.1 on CUB, 0.12 on ILSVRC; else a held-out ``best_tau``).
        size: ``(H, W)`` to resize the maps to; ``None`` takes them at image size.
        interpolation: ``"bicubic"`` (``"wsol"``) or ``"bilinear"`` (``"scm"``, ``"tscam"``).
        thresholds: The breakdown's thresholds.
    """

    def __init__(
        self,
        tau: float,
        size: tuple[int, int] | None = None,
        interpolation: str = "bicubic",
        thresholds: OutcomeThresholds = OutcomeThresholds(),
    ) -> None:
        if not 0.0 <= tau < 1.0:
            raise ValueError(f"tau must be in [0, 1), got {tau}; pass the threshold chosen on held-out data.")
        super().__init__()
        self.tau = tau
        self.size = size
        self.interpolation = interpolation
        self.thresholds = thresholds
        self.add_state("counts", torch.zeros(len(OUTCOMES), dtype=torch.int64))

    def update(self, maps: Tensor | np.ndarray, logits: Tensor, labels: Tensor, gt_boxes: Sequence[Tensor]) -> None:
        """Add a batch.

        Args:
            maps: (B, C, H, W) maps of all classes, or (B, H, W) maps of each image's top-1 class.
            logits: (B, C) class scores.
            labels: (B,) 0-based ground-truth classes.
            gt_boxes: One (K_i, 4) tensor of ground-truth boxes per image, in pixels of the (resized) maps.
        """
        predicted, boxes = _top1(maps, logits, self.tau, self.size, self.interpolation)
        outcome, _ = _outcomes(boxes, predicted, torch.as_tensor(labels), gt_boxes, self.thresholds)
        self._add({"counts": torch.bincount(outcome, minlength=len(OUTCOMES))}, outcome.device)

    def update_from(self, rows: Sequence[ImageDiagnosis]) -> None:
        """Add the outcomes of rows :func:`diagnose_images` already gave (no second box sweep).

        Args:
            rows: Per-image rows read with this metric's ``tau``, size, interpolation and thresholds.
        """
        codes = torch.tensor([OUTCOMES.index(row.outcome) for row in rows], dtype=torch.int64)
        self._add({"counts": torch.bincount(codes, minlength=len(OUTCOMES))}, self.counts.device)

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float]:
        """The share of each outcome, in percent (they sum to 100), and ``count``, the number of images."""
        counts = states["counts"]
        total = int(counts.sum())
        if total == 0:
            raise RuntimeError("compute() before any update(); feed at least one batch.")
        shares = {name: float(n) / total * 100 for name, n in zip(OUTCOMES, counts.tolist(), strict=True)}
        return {**shares, "count": float(total)}


def localization_outcomes(
    maps: Tensor | np.ndarray,
    logits: Tensor,
    labels: Tensor,
    gt_boxes: Sequence[Tensor],
    tau: float,
    *,
    size: tuple[int, int] | None = None,
    interpolation: str = "bicubic",
    thresholds: OutcomeThresholds = OutcomeThresholds(),
) -> dict[str, float]:
    """The outcome breakdown of one set of maps (see :class:`LocalizationOutcomes`).

    Returns:
        The share of each outcome in percent, and ``count``.
    """
    metric = LocalizationOutcomes(tau, size, interpolation, thresholds)
    metric.update(maps, logits, labels, gt_boxes)
    return metric.compute()


def write_diagnoses(path: str | Path, rows: Sequence[ImageDiagnosis]) -> Path:
    """Write the per-image table as CSV (``.csv``) or JSON lines (``.jsonl``).

    CSV columns: ``image_id, label, predicted, iou, tau, x0, y0, x1, y1, outcome``; a JSON line holds the
    :class:`ImageDiagnosis` fields, ``box`` as a list.

    Args:
        path: The file to write; its suffix picks the format.
        rows: The rows, e.g. of every batch of an evaluation.

    Returns:
        The path.
    """
    path = Path(path)
    if path.suffix not in (".csv", ".jsonl"):
        raise ValueError(f"path must end in .csv or .jsonl (the format), got {path.name!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as file:
        if path.suffix == ".jsonl":
            file.writelines(json.dumps(asdict(row)) + "\n" for row in rows)
            return path
        writer = csv.writer(file)
        writer.writerow(["image_id", "label", "predicted", "iou", "tau", "x0", "y0", "x1", "y1", "outcome"])
        for row in rows:
            writer.writerow([row.image_id, row.label, row.predicted, row.iou, row.tau, *row.box, row.outcome])
    return path


def worst_and_best(rows: Sequence[ImageDiagnosis], k: int = 8) -> tuple[list[ImageDiagnosis], list[ImageDiagnosis]]:
    """The ``k`` rows of lowest IoU and the ``k`` of highest (e.g. the images to draw overlays of).

    Args:
        rows: The per-image table.
        k: Rows of each end; fewer when the table is shorter.

    Returns:
        The worst rows, lowest IoU first, and the best rows, highest IoU first; ties keep the table's order.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}.")
    ranked = sorted(rows, key=lambda row: row.iou)
    best = sorted(rows, key=lambda row: -row.iou)
    return ranked[:k], best[:k]


AFFINITY_PAIRS = ("inside", "background", "boundary")
"""The kinds of neighbouring patch pairs :class:`SemanticAffinity` averages over."""


class SemanticAffinity(Metric):
    """Does SCM's semantic similarity see object boundaries? Its mean over each kind of neighbouring patch pair.

    SCM diffuses the attention along the 4-neighbour grid, weighted by the cosine similarity of the patches'
    C-dimensional class-score vectors (``Sim`` of ``docs/method.md``). The diffusion can only follow the object
    when that similarity is higher between two object patches than across the object's edge. This metric averages
    it over the grid's neighbouring pairs of three kinds, with a patch inside the object when the object mask
    covers more than half of it: ``inside`` (both patches inside), ``background`` (neither) and ``boundary`` (one
    of each). ``boundary`` close to ``inside`` means the diffusion crosses edges as easily as it spreads inside.

    A :class:`~scm_calib.metrics.Metric`: its sums add over batches and processes.

    Example:
        >>> semantic = torch.zeros(1, 2, 4, 4); semantic[:, 0] = 1.0; semantic[:, 1, 1:3, 1:3] = 3.0
        >>> masks = torch.zeros(1, 16, 16, dtype=torch.bool); masks[:, 4:12, 4:12] = True
        >>> affinity = SemanticAffinity(); affinity.update(semantic, masks)
        >>> {name: round(value, 2) for name, value in affinity.compute().items() if name in AFFINITY_PAIRS}
        {'inside': 1.0, 'background': 1.0, 'boundary': 0.32}
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.add_state("sums", torch.zeros(len(AFFINITY_PAIRS), dtype=torch.float64))
        self.add_state("pairs", torch.zeros(len(AFFINITY_PAIRS), dtype=torch.int64))

    def update(self, semantic: Tensor, masks: Tensor) -> None:
        """Add a batch.

        Args:
            semantic: (B, C, h, w) class-score maps (``SCMOutput.semantic``), C >= 2.
            masks: (B, H, W) object masks at any resolution (e.g. the input's); area-pooled to h x w.
        """
        if semantic.dim() != 4 or masks.dim() != 3 or semantic.shape[0] != masks.shape[0]:
            raise ValueError(
                f"semantic must be (B, C, h, w) and masks (B, H, W) with the same B; got {tuple(semantic.shape)} "
                f"and {tuple(masks.shape)}."
            )
        h, w = semantic.shape[-2:]
        inside = torch.nn.functional.adaptive_avg_pool2d(masks.float()[:, None], (h, w))[:, 0] > 0.5
        unit = semantic.detach().double()
        unit = unit / unit.norm(dim=1, keepdim=True).clamp(min=self.eps)
        sums, pairs = [], []
        for similarity, a, b in (
            ((unit[..., :, 1:] * unit[..., :, :-1]).sum(1), inside[..., :, 1:], inside[..., :, :-1]),
            ((unit[..., 1:, :] * unit[..., :-1, :]).sum(1), inside[..., 1:, :], inside[..., :-1, :]),
        ):
            kinds = (a & b, ~a & ~b, a ^ b)
            sums.append(torch.stack([similarity[kind].sum() for kind in kinds]))
            pairs.append(torch.stack([kind.sum() for kind in kinds]))
        self._add({"sums": sum(sums).cpu(), "pairs": sum(pairs).cpu()}, torch.device("cpu"))

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float]:
        """The mean similarity of each kind of pair (NaN for a kind with no pair) and each kind's number of pairs."""
        if int(states["pairs"].sum()) == 0:
            raise RuntimeError("compute() before any update(); feed at least one batch.")
        means = states["sums"] / states["pairs"].clamp(min=1)
        result = {
            name: float(mean) if int(n) else float("nan")
            for name, mean, n in zip(AFFINITY_PAIRS, means, states["pairs"], strict=True)
        }
        return {
            **result,
            **{f"{name}_pairs": float(n) for name, n in zip(AFFINITY_PAIRS, states["pairs"], strict=True)},
        }
