"""The protocol's boxes from score maps over a threshold sweep: largest blob, all blobs, holes, best IoU.

Implements the box side of the WSOL evaluation protocol of Choe et al., "Evaluating Weakly Supervised
Object Localization Methods Right" (CVPR 2020), as used by SCM (Bai et al., ECCV 2022), in pure, batched
PyTorch (CPU or CUDA):

1. maps are resized, normalised and quantised to uint8 (:mod:`scm_calib.boxes.maps`);
2. for each threshold ``tau``, the foreground is ``q > int(tau * max(q))`` (strict);
3. the blobs are the 8-connected components of the foreground (:mod:`scm_calib.boxes.components`); a blob
   with bounding rectangle ``(x, y, w, h)`` gives the box ``[x, y, x + w, y + h]`` with ``x + w`` and
   ``y + h`` clipped to ``W - 1`` and ``H - 1``; no foreground gives the single box ``[0, 0, 0, 0]``;
4. boxes are compared by IoU with inclusive pixel coordinates (:mod:`scm_calib.boxes.iou`).

The result equals OpenCV's ``findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)`` with ``cv2.contourArea`` and
``cv2.boundingRect`` (reproduced exactly by :mod:`scm_calib.boxes.opencv`): the same blob and hole boxes,
and the same largest contour, ties included, except that a hole is never the largest contour (OpenCV can
pick a hole of exactly its blob's area, which only a ring one pixel thin along diagonals has).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, NamedTuple, TypedDict

import torch
from torch import Tensor

from .components import component_tables, level_table
from .iou import broadcast_box_iou, check_in_frame, pad_boxes
from .maps import INTERPOLATIONS, as_thresholds, check_quantized, prepare_maps, wsol_thresholds

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["BlobBoxes", "SweepKeywords", "SweepOptions", "best_box_iou", "blob_boxes", "boxes_from_maps"]

_INT32_MAX = 2**31 - 1


@dataclass(frozen=True, eq=False)
class SweepOptions:
    """How a threshold sweep turns maps into boxes; shared by :func:`blob_boxes`, :func:`boxes_from_maps`
    and :func:`best_box_iou`, which also take each field as a keyword that overrides ``options``.

    Attributes:
        thresholds: (T,) thresholds ``tau`` in [0, 1]; ``None`` is :func:`wsol_thresholds` (step 0.01).
        holes: Also give the boxes of the holes' contours among all blobs, as OpenCV's ``RETR_TREE`` does
            (they lie inside their blob's box). The largest blob never is a hole.
        chunk_size: Maps processed at once, which bounds memory; ``None`` is 64 on the CPU, 512 on a GPU.
        num_threads: Python threads sharing the maps' pixel work on the CPU. Each runs torch ops with
            torch's own thread count (left unchanged), so more than one pays off only when that is 1, e.g.
            after ``torch.set_num_threads(1)`` in a process of its own.
        interpolation: Resize mode of :func:`boxes_from_maps`, ``"bicubic"`` (wsolevaluation) or
            ``"bilinear"`` (SCM, TS-CAM).

    Example:
        >>> from scm_calib.boxes import prepare_maps
        >>> maps = torch.zeros(1, 8, 8); maps[0, 2:4, 1:6] = 1.0
        >>> options = SweepOptions(thresholds=[0.3, 0.5], holes=False)
        >>> blob_boxes(prepare_maps(maps), options, largest_only=True).boxes
        tensor([[1, 2, 6, 4],
                [1, 2, 6, 4]])
    """

    thresholds: Tensor | Sequence[float] | None = None
    holes: bool = True
    chunk_size: int | None = None
    num_threads: int = 1
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.thresholds is not None:
            as_thresholds(self.thresholds, torch.device("cpu"))
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {self.chunk_size}.")
        if self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}.")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}.")

    def taus(self, device: torch.device) -> Tensor:
        """The checked thresholds on a device.

        Args:
            device: Device of the result.

        Returns:
            (T,) float64 thresholds.
        """
        return as_thresholds(wsol_thresholds() if self.thresholds is None else self.thresholds, device)


class SweepKeywords(TypedDict, total=False):
    """The fields of :class:`SweepOptions`, given as keywords to override ``options``."""

    thresholds: Tensor | Sequence[float] | None
    holes: bool
    chunk_size: int | None
    num_threads: int
    interpolation: str


def _options(options: SweepOptions | Tensor | Sequence[float] | None, overrides: dict[str, object]) -> SweepOptions:
    """``options`` (default :class:`SweepOptions`; a tensor or sequence is the thresholds) with the keyword overrides
    applied."""
    if isinstance(options, (Tensor, Sequence)) and not isinstance(options, str):
        if "thresholds" in overrides:
            raise TypeError("thresholds given twice, positionally and as thresholds=...; give them once.")
        overrides = {**overrides, "thresholds": options}  # the thresholds, positionally as before SweepOptions
        options = None
    if options is None:
        options = SweepOptions()
    elif not isinstance(options, SweepOptions):
        raise TypeError(
            f"options must be a SweepOptions or the thresholds, got {type(options).__name__}; pass the other "
            "sweep options by keyword (holes=...) or as SweepOptions(...)."
        )
    unknown = sorted(set(overrides) - {field.name for field in fields(SweepOptions)})
    if unknown:
        names = [field.name for field in fields(SweepOptions)]
        raise TypeError(f"unknown sweep option(s) {unknown}; the options are {names}.")
    return replace(options, **overrides) if overrides else options


class BlobBoxes(NamedTuple):
    """Boxes of the blobs of a batch of maps over a threshold sweep, flattened.

    Rows are ordered by image, then threshold. A (map, threshold) pair without foreground has one row,
    the box ``[0, 0, 0, 0]`` with area 0.

    Attributes:
        boxes: (N, 4) int64 boxes ``[x0, y0, x1, y1]`` in the protocol's convention.
        batch_index: (N,) index of the map each box comes from.
        threshold_index: (N,) index of the threshold each box comes from.
        area: (N,) number of foreground pixels of the blob.
    """

    boxes: Tensor
    batch_index: Tensor
    threshold_index: Tensor
    area: Tensor


def _chunks(num: int, chunk_size: int | None, device: torch.device) -> list[slice]:
    if chunk_size is None:
        chunk_size = 64 if device.type == "cpu" else 512
    return [slice(i, min(i + chunk_size, num)) for i in range(0, num, chunk_size)]


class _Blobs(NamedTuple):
    """Protocol boxes of the blobs (and holes) of a chunk of maps, one row each."""

    boxes: Tensor
    slot: Tensor
    area: Tensor
    contour_area: Tensor
    hole: Tensor
    first: Tensor


def _blobs(
    quantized: Tensor, levels: Tensor, hole_boxes: bool, contour_areas: bool, workers: int = 1, clip: bool = True
) -> _Blobs:
    """Blobs of every (map, level) slot ``map * L + level``, with the boxes of holes when ``hole_boxes``.

    A blob with pixel extents ``x0..x1`` gives ``[x0, y0, x1 + 1, y1 + 1]``; a hole's contour runs
    through the foreground pixels around it, so a hole with extents ``x0..x1`` gives
    ``[x0 - 1, y0 - 1, x1 + 2, y1 + 2]``; both clipped to ``W - 1``, ``H - 1`` when ``clip``. The holes are
    found when their boxes or the blobs' contour areas (which include the holes) are needed.
    """
    h, w = quantized.shape[-2:] if clip else (_INT32_MAX, _INT32_MAX)
    blobs, hole_rows = component_tables(quantized, levels, holes=hole_boxes or contour_areas, workers=workers)
    parts = [(blobs, 0)] + ([(hole_rows, 1)] if hole_boxes else [])
    rows = []
    for comps, grow in parts:
        boxes = torch.stack(
            [
                comps.x0 - grow,
                comps.y0 - grow,
                (comps.x1 + 1 + grow).clamp(max=w - 1),
                (comps.y1 + 1 + grow).clamp(max=h - 1),
            ],
            dim=1,
        )
        slot = comps.batch_index * levels.numel() + comps.level_index
        hole = torch.full_like(slot, bool(grow), dtype=torch.bool)
        rows.append(_Blobs(boxes, slot, comps.area, comps.contour_area, hole, comps.first))
    return _Blobs(*(torch.cat([part[i] for part in rows]) for i in range(6)))


def _largest(blobs: _Blobs, num_slots: int) -> Tensor:
    """Index of the blob of largest contour area in each slot, -1 for an empty slot.

    Ties go to the blob that starts last in raster order, as ``max()`` over OpenCV's contour list (which
    lists contours in reverse raster order of their starting pixel) picks it.
    """
    area = torch.where(blobs.hole, -1.0, blobs.contour_area)
    most = torch.full((num_slots,), -1.0, dtype=torch.float64, device=area.device)
    most.scatter_reduce_(0, blobs.slot, area, "amax")
    first = torch.where((area == most[blobs.slot]) & ~blobs.hole, blobs.first, -1)
    last_start = torch.full((num_slots,), -1, dtype=torch.int64, device=area.device)
    last_start.scatter_reduce_(0, blobs.slot, first, "amax")
    pick = (first >= 0) & (first == last_start[blobs.slot])
    best = torch.full((num_slots,), -1, dtype=torch.int64, device=area.device)
    best[blobs.slot[pick]] = torch.arange(area.numel(), device=area.device)[pick]
    return best


def blob_boxes(
    quantized: Tensor,
    options: SweepOptions | Tensor | Sequence[float] | None = None,
    *,
    largest_only: bool = False,
    **overrides: Unpack[SweepKeywords],
) -> BlobBoxes:
    """Boxes of the blobs of quantised maps for a whole threshold sweep.

    Args:
        quantized: (B, H, W) uint8 maps (see :func:`prepare_maps`).
        options: The sweep's thresholds, holes, chunk size and threads; default :class:`SweepOptions`. A tensor
            or sequence here is the thresholds alone.
        largest_only: Keep only the blob of largest contour area per (map, threshold), one row each,
            so ``boxes.view(B, T, 4)`` works (MaxBoxAcc). Otherwise every 8-connected blob (MaxBoxAccV2),
            and the holes' boxes with ``holes``.
        **overrides: Fields of :class:`SweepOptions` replacing those of ``options``, e.g. ``thresholds=[0.5]``.

    Returns:
        The boxes, with their map and threshold indices and pixel counts (0 for holes).
    """
    check_quantized(quantized)
    options = _options(options, dict(overrides))
    workers = options.num_threads if quantized.device.type == "cpu" else 1
    taus = options.taus(quantized.device)
    num_taus = taus.numel()
    device = quantized.device
    parts = []
    for chunk in _chunks(quantized.shape[0], options.chunk_size, device):
        q = quantized[chunk]
        levels, level_index = level_table(q, taus)
        num_slots = q.shape[0] * levels.numel()
        hole_boxes = options.holes and not largest_only
        blobs = _blobs(q, levels, hole_boxes=hole_boxes, contour_areas=largest_only, workers=workers)
        maps = torch.arange(q.shape[0], device=device)
        pair_slot = (maps[:, None] * levels.numel() + level_index).flatten()
        if largest_only:
            index = _largest(blobs, num_slots)[pair_slot]
            pair = torch.arange(pair_slot.numel(), device=device)
        else:
            order = torch.argsort(blobs.slot, stable=True)
            per_slot = torch.bincount(blobs.slot, minlength=num_slots)
            count, first = per_slot[pair_slot], (torch.cumsum(per_slot, 0) - per_slot)[pair_slot]
            n = count.clamp(min=1)
            pair = torch.repeat_interleave(torch.arange(pair_slot.numel(), device=device), n)
            offset = torch.arange(pair.numel(), device=device) - (torch.cumsum(n, 0) - n)[pair]
            position = (first[pair] + offset).clamp(max=max(order.numel() - 1, 0))
            index = torch.where(count[pair] > 0, order[position] if order.numel() else position, -1)
        found = index >= 0
        safe = index.clamp(min=0)
        if blobs.slot.numel() == 0:
            boxes, area = index.new_zeros((index.numel(), 4)), index.new_zeros(index.numel())
        else:
            area = torch.where(blobs.hole, 0, blobs.area)[safe]
            boxes, area = torch.where(found[:, None], blobs.boxes[safe], 0), torch.where(found, area, 0)
        parts.append((boxes, pair // num_taus + chunk.start, pair % num_taus, area))
    if not parts:  # no maps
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return BlobBoxes(empty.view(0, 4), empty, empty, empty)
    return BlobBoxes(*(torch.cat([part[i] for part in parts]) for i in range(4)))


def boxes_from_maps(
    maps: Tensor,
    options: SweepOptions | Tensor | Sequence[float] | None = None,
    *,
    size: tuple[int, int] | None = None,
    largest_only: bool = False,
    **overrides: Unpack[SweepKeywords],
) -> BlobBoxes:
    """Score maps to boxes over a threshold sweep: resize, normalise, quantise, threshold, blobs.

    Args:
        maps: (B, h, w) score maps, any real values (uint8 maps are taken as already quantised).
        options: The sweep's thresholds, holes, chunk size, threads and interpolation; default
            :class:`SweepOptions`.
        size: Image size ``(H, W)`` to resize the maps to; ``None`` keeps their size.
        largest_only: One box per (map, threshold), of the blob of largest contour area.
        **overrides: Fields of :class:`SweepOptions` replacing those of ``options``, e.g. ``thresholds=[0.5]``.

    Returns:
        The boxes with their map and threshold indices and pixel counts.

    Example:
        >>> maps = torch.zeros(1, 8, 8); maps[0, 2:4, 1:6] = 1.0
        >>> boxes_from_maps(maps, thresholds=[0.5]).boxes
        tensor([[1, 2, 6, 4]])
    """
    options = _options(options, dict(overrides))
    quantized = prepare_maps(maps, size, options.interpolation)
    return blob_boxes(quantized, options, largest_only=largest_only)


def best_box_iou(
    quantized: Tensor,
    gt_boxes: Sequence[Tensor],
    options: SweepOptions | Tensor | Sequence[float] | None = None,
    *,
    clip: bool = True,
    **overrides: Unpack[SweepKeywords],
) -> tuple[Tensor, Tensor]:
    """Best IoU with the ground truth of each map at each threshold, largest blob and all blobs.

    Args:
        quantized: (B, H, W) uint8 maps (see :func:`prepare_maps`).
        gt_boxes: One (K_i, 4) tensor of ground-truth boxes per map, in pixels of the map.
        options: The sweep's thresholds, holes, chunk size and threads; default :class:`SweepOptions`. A tensor
            or sequence here is the thresholds alone.
        clip: Clip the boxes' ``x1``, ``y1`` to ``W - 1``, ``H - 1`` (wsolevaluation); TS-CAM's code does not.
        **overrides: Fields of :class:`SweepOptions` replacing those of ``options``, e.g. ``chunk_size=16``.

    Returns:
        (B, T) float64 IoU of the largest blob's box with its best ground-truth box (MaxBoxAcc), and
        (B, T) float64 best IoU over all blob boxes and ground-truth boxes (MaxBoxAccV2). A threshold
        without foreground scores the box ``[0, 0, 0, 0]``.
    """
    check_quantized(quantized)
    options = _options(options, dict(overrides))
    if len(gt_boxes) != quantized.shape[0]:
        raise ValueError(f"got {len(gt_boxes)} box sets for {quantized.shape[0]} maps; pass one per map.")
    taus = options.taus(quantized.device)
    if len(gt_boxes) == 0:  # no maps
        empty = torch.zeros(0, taus.numel(), dtype=torch.float64, device=quantized.device)
        return empty, empty.clone()
    gt, valid = pad_boxes(gt_boxes, quantized.device)
    check_in_frame(gt, valid, *quantized.shape[-2:])
    workers = options.num_threads if quantized.device.type == "cpu" else 1
    largest_parts, all_parts = [], []
    for chunk in _chunks(quantized.shape[0], options.chunk_size, quantized.device):
        q, gt_chunk, valid_chunk = quantized[chunk], gt[chunk], valid[chunk]
        levels, level_index = level_table(q, taus)
        num_slots = q.shape[0] * levels.numel()
        blobs = _blobs(q, levels, hole_boxes=options.holes, contour_areas=True, workers=workers, clip=clip)
        image = torch.div(blobs.slot, levels.numel(), rounding_mode="floor")
        iou = broadcast_box_iou(blobs.boxes.to(torch.float64)[:, None], gt_chunk[image])
        iou = torch.where(valid_chunk[image], iou, -1.0).amax(dim=1)
        # A slot without foreground scores the box [0, 0, 0, 0].
        empty = torch.where(valid_chunk, broadcast_box_iou(torch.zeros_like(gt_chunk), gt_chunk), -1.0).amax(dim=1)
        empty = empty.repeat_interleave(levels.numel())
        has = torch.zeros(num_slots, dtype=torch.bool, device=q.device)
        has[blobs.slot] = True
        best = torch.where(has, -1.0, empty).scatter_reduce(0, blobs.slot, iou, "amax")
        largest = _largest(blobs, num_slots)
        largest_iou = torch.where(largest >= 0, iou[largest.clamp(min=0)] if iou.numel() else empty, empty)
        pair_slot = torch.arange(q.shape[0], device=q.device)[:, None] * levels.numel() + level_index
        largest_parts.append(largest_iou[pair_slot])
        all_parts.append(best[pair_slot])
    return torch.cat(largest_parts), torch.cat(all_parts)
