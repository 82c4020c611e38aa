"""Score maps to localization boxes, in pure, batched PyTorch (CPU or CUDA).

Implements the box side of the WSOL evaluation protocol of Choe et al., "Evaluating Weakly Supervised
Object Localization Methods Right" (CVPR 2020), as used by SCM (Bai et al., ECCV 2022):

1. resize a score map to the image size (bicubic or bilinear), min-max normalise it (a constant or NaN
   map becomes all zeros), quantise it to uint8 by truncating ``map * 255``;
2. for each threshold ``tau``, the foreground is ``q > int(tau * max(q))`` (strict);
3. the blobs are the 8-connected components of the foreground; a blob with bounding rectangle
   ``(x, y, w, h)`` gives the box ``[x, y, x + w, y + h]`` with ``x + w`` and ``y + h`` clipped to
   ``W - 1`` and ``H - 1``; no foreground gives the single box ``[0, 0, 0, 0]``;
4. boxes are compared by IoU with inclusive pixel coordinates (width ``x1 - x0 + 1``).

The whole threshold sweep is done at once: every row of the quantised map is cut into runs (maximal
horizontal segments of foreground) for all thresholds together, directly from the level changes between
neighbouring pixels, so the cost grows with the number of runs and not with pixels x thresholds. Runs
of neighbouring rows that touch (8-connectivity) are joined by a vectorised union-find (hooking and
pointer jumping), and a component's box is the min / max over its runs.

Differences from OpenCV's ``findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)`` (reproduced exactly by
:mod:`scm_calib.boxes_cv2`): hole contours are not returned (their boxes lie inside the outer box of their
component), and "largest" means the most foreground pixels rather than the largest contour polygon area.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BlobBoxes",
    "blob_boxes",
    "box_iou",
    "boxes_from_maps",
    "best_box_iou",
    "normalize_maps",
    "pad_boxes",
    "prepare_maps",
    "quantize_maps",
    "resize_maps",
    "scale_boxes",
    "threshold_levels",
    "wsol_thresholds",
]

INTERPOLATIONS = ("bicubic", "bilinear")


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


class _Components(NamedTuple):
    """8-connected components of the foregrounds of quantised maps, one row per component."""

    batch_index: Tensor
    level_index: Tensor
    x0: Tensor
    y0: Tensor
    x1: Tensor
    y1: Tensor
    area: Tensor
    contour_area: Tensor
    start_x: Tensor
    start_row: Tensor


def wsol_thresholds(step: float = 0.01) -> Tensor:
    """The protocol's threshold grid ``numpy.arange(0, 1, step)``, bit for bit.

    Args:
        step: Grid step; wsolevaluation uses 0.01 (its evaluation script) or 0.001.

    Returns:
        (T,) float64 thresholds.
    """
    if not 0.0 < step < 1.0:
        raise ValueError(f"step must be in (0, 1), got {step}; the protocol uses 0.01 or 0.001.")
    return torch.from_numpy(np.arange(0, 1, step))


def resize_maps(maps: Tensor, size: tuple[int, int], interpolation: str = "bicubic") -> Tensor:
    """Resize score maps to an image size, as the protocols do before normalising.

    Args:
        maps: (B, h, w) score maps, e.g. at the patch-grid resolution.
        size: Target ``(H, W)``.
        interpolation: ``"bicubic"`` (wsolevaluation) or ``"bilinear"`` (SCM and TS-CAM code),
            both with ``align_corners=False`` like OpenCV's resize.

    Returns:
        (B, H, W) float32 maps.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}.")
    _check_maps(maps)
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.float()
    out = F.interpolate(maps.float()[:, None], size=tuple(size), mode=interpolation, align_corners=False)
    return out[:, 0]


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max normalise each map to [0, 1]; a constant map or one with a NaN becomes all zeros.

    Args:
        maps: (B, H, W) score maps, any real values.

    Returns:
        (B, H, W) float32 maps in [0, 1].
    """
    _check_maps(maps)
    maps = maps.float()
    flat = maps.flatten(1)
    low = flat.amin(dim=1)
    span = flat.amax(dim=1) - low
    bad = torch.isnan(flat).any(dim=1) | ~(span > 0) | ~torch.isfinite(span)
    span = torch.where(bad, torch.ones_like(span), span)
    out = (maps - low[:, None, None]) / span[:, None, None]
    return torch.where(bad[:, None, None], torch.zeros_like(out), out)


def quantize_maps(maps: Tensor) -> Tensor:
    """Quantise normalised maps to uint8 by truncating ``map * 255``, as the protocol does.

    Args:
        maps: (B, H, W) maps in [0, 1].

    Returns:
        (B, H, W) uint8 maps.
    """
    _check_maps(maps)
    return (maps.float() * 255).clamp(0, 255).to(torch.uint8)


def prepare_maps(maps: Tensor, size: tuple[int, int] | None = None, interpolation: str = "bicubic") -> Tensor:
    """Resize (when ``size`` is given), min-max normalise and quantise score maps.

    Args:
        maps: (B, h, w) score maps, any real values; uint8 maps are taken as already quantised.
        size: ``(H, W)`` to resize to; ``None`` keeps the maps' size.
        interpolation: ``"bicubic"`` or ``"bilinear"``.

    Returns:
        (B, H, W) uint8 maps.
    """
    _check_maps(maps)
    if maps.dtype == torch.uint8:
        if size is not None and tuple(maps.shape[-2:]) != tuple(size):
            raise ValueError(
                f"uint8 maps are taken as quantised maps at image size, got {tuple(maps.shape)} and "
                f"size={size}; pass float score maps to resize them."
            )
        return maps
    if size is not None:
        maps = resize_maps(maps, size, interpolation)
    return quantize_maps(normalize_maps(maps))


def threshold_levels(quantized: Tensor, thresholds: Tensor | Sequence[float]) -> Tensor:
    """Integer levels ``int(tau * max(q))`` of each map: foreground is ``q > level``.

    Args:
        quantized: (B, H, W) uint8 maps.
        thresholds: (T,) thresholds ``tau`` in [0, 1].

    Returns:
        (B, T) int64 levels.
    """
    taus = _as_thresholds(thresholds, quantized.device)
    qmax = quantized.flatten(1).amax(dim=1).to(torch.float64)
    return torch.floor(qmax[:, None] * taus[None, :]).to(torch.int64)


def _as_thresholds(thresholds: Tensor | Sequence[float], device: torch.device) -> Tensor:
    taus = torch.as_tensor(thresholds, dtype=torch.float64, device=device).flatten()
    if taus.numel() == 0:
        raise ValueError("thresholds is empty; pass e.g. scm_calib.boxes.wsol_thresholds().")
    if bool(((taus < 0) | (taus > 1) | torch.isnan(taus)).any()):
        raise ValueError(f"thresholds must lie in [0, 1], got values from {taus.min()} to {taus.max()}.")
    return taus


def _check_maps(maps: Tensor) -> None:
    if maps.dim() != 3:
        raise ValueError(
            f"maps must have shape (B, H, W), got {tuple(maps.shape)}; add a batch dimension with "
            "maps[None] or flatten extra ones."
        )


def _runs(quantized: Tensor, levels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Foreground runs of every row of every map at every level, sorted by (map, row, level, x).

    A run starts at x for the levels in [q[x-1], q[x]) and ends at x for the levels in [q[x+1], q[x]),
    with zeros outside the map, so runs are found from the level changes between neighbours.

    Returns:
        Sort keys (R,), map index, row, level index, first and last x of each run (R,) each.
    """
    b, h, w = quantized.shape
    num_levels = levels.numel()
    q = F.pad(quantized.to(torch.int32), (1, 1))
    # below[v] = number of levels < v, so levels in [u, v) have indices [below[u], below[v]).
    below = torch.searchsorted(levels, torch.arange(257, device=q.device, dtype=levels.dtype)).to(torch.int32)
    counts = below[q.long()]
    left, right = counts[..., :-1], counts[..., 1:]
    stride_x = w + 2

    def events(first: Tensor, last: Tensor, shift: int) -> Tensor:
        n = (last - first).clamp(min=0).flatten()  # (B * H * (W + 1),) levels changing at each pair
        pair = n.nonzero()[:, 0]
        n_sel = n[pair].long()
        group = torch.repeat_interleave(n_sel)
        offset = torch.arange(group.numel(), device=q.device) - (torch.cumsum(n_sel, 0) - n_sel)[group]
        level = first.flatten()[pair].long()[group] + offset
        pair = pair[group]
        image_row = torch.div(pair, w + 1, rounding_mode="floor")
        row_key = image_row * num_levels + level
        return torch.sort(row_key * stride_x + (pair - image_row * (w + 1)) + shift).values

    starts = events(left, right, 1)  # pair j is (x = j - 1, x = j): a run starts at x = j, key x + 1
    ends = events(right, left, 0)  # a run ends at x = j - 1, key x + 1
    row_key = torch.div(starts, stride_x, rounding_mode="floor")
    x0 = starts - row_key * stride_x - 1
    x1 = ends - row_key * stride_x - 1
    level = row_key % num_levels
    image_row = torch.div(row_key, num_levels, rounding_mode="floor")
    return starts, torch.div(image_row, h, rounding_mode="floor"), image_row % h, level, x0, x1


def _components(quantized: Tensor, levels: Tensor, eight: bool = True) -> tuple[_Components, Tensor, Tensor]:
    """Connected components of ``quantized > level`` for every map and every level.

    Args:
        quantized: (B, H, W) uint8 maps.
        levels: (L,) sorted, distinct int64 levels.
        eight: 8-connectivity (foreground blobs) or 4-connectivity (holes).

    Returns:
        One row per component, with its map, level index, inclusive pixel extents, pixel count, the
        area of its contour polygon (for blobs, through their boundary pixels' centres, holes not
        included; for holes, through the centres of the foreground pixels around them) and its first
        pixel in raster order. Then the sorted end keys (R,) of the runs and each run's component (R,).
    """
    _, h, w = quantized.shape
    num_levels = levels.numel()
    stride_x = w + 2
    reach = 1 if eight else 0
    keys, image, row, level, x0, x1 = _runs(quantized, levels)
    num_runs = keys.numel()
    device = keys.device
    if num_runs == 0:
        empty = keys.new_zeros(0)
        fields = [empty] * 7 + [empty.double()] + [empty] * 2
        return _Components(*fields), empty, empty
    # Runs of the next row (same map, same level) touching [x0 - reach, x1 + reach] form a contiguous range.
    next_row = (keys - x0 - 1) + num_levels * stride_x
    end_keys = keys - x0 + x1
    first = torch.searchsorted(end_keys, next_row + x0 + 1 - reach)
    last = torch.searchsorted(keys, next_row + x1 + 1 + reach, right=True) - 1
    touching = (first <= last) & (row < h - 1)
    runs = torch.arange(num_runs, device=device)
    src, dst = runs[touching], first[touching]
    # Consecutive runs j, j + 1 of one range are joined through the run above them.
    cover = torch.zeros(num_runs + 1, dtype=torch.int64, device=device)
    cover.index_add_(0, first[touching], torch.ones_like(src))
    cover.index_add_(0, last[touching], -torch.ones_like(src))
    chained = (torch.cumsum(cover, 0)[:num_runs] > 0).nonzero()[:, 0]
    parent = _union_find(num_runs, torch.cat([src, chained]), torch.cat([dst, chained + 1]))

    is_root = parent == runs
    comp = (torch.cumsum(is_root, 0) - 1)[parent]
    roots = is_root.nonzero()[:, 0]
    n = roots.numel()

    def reduce(values: Tensor, how: str, index: Tensor = comp) -> Tensor:
        return values.new_zeros(n).scatter_reduce_(0, index, values, how, include_self=False)

    span = (last - first + 1).clamp(min=0) * touching
    upper = torch.repeat_interleave(runs, span)
    lower = first[upper] + torch.arange(upper.numel(), device=device) - (torch.cumsum(span, 0) - span)[upper]
    a, c, b, d = x0[upper], x1[upper], x0[lower], x1[lower]
    if eight:
        # Polygon through the blob's boundary pixels between touching runs a..c (above) and b..d (below):
        # it moves one pixel diagonally per row, so the left edge runs from max(a, b - 1) to
        # max(b, a - 1) and the right edge from min(c, d + 1) to min(d, c + 1).
        top = torch.minimum(c, d + 1) - torch.maximum(a, b - 1)
        bottom = torch.minimum(d, c + 1) - torch.maximum(b, a - 1)
        strip = ((top + bottom).clamp(min=0) / 2).to(torch.float64)
        caps = torch.zeros(0, dtype=torch.float64, device=device)
        cap_runs = caps.long()
    else:
        # Polygon through the foreground pixels around a hole: it passes one pixel outside each run, and
        # a run with no hole run above (below) adds a cap of its length.
        top = torch.maximum(c + 1, d) - torch.minimum(a - 1, b)
        bottom = torch.maximum(d + 1, c) - torch.minimum(b - 1, a)
        strip = ((top + bottom) / 2).to(torch.float64)
        has_above = torch.zeros(num_runs, dtype=torch.int64, device=device).index_fill_(0, lower, 1)
        open_sides = (1 - has_above) + (1 - touching.long())
        cap_runs = runs
        caps = (open_sides * (x1 - x0 + 1)).to(torch.float64)
    contour_area = torch.zeros(n, dtype=torch.float64, device=device)
    contour_area.index_add_(0, comp[upper], strip).index_add_(0, comp[cap_runs], caps)
    components = _Components(
        batch_index=image[roots],
        level_index=level[roots],
        x0=reduce(x0, "amin"),
        y0=reduce(row, "amin"),
        x1=reduce(x1, "amax"),
        y1=reduce(row, "amax"),
        area=reduce(x1 - x0 + 1, "sum"),
        contour_area=contour_area,
        start_x=x0[roots],
        start_row=row[roots],
    )
    return components, end_keys, comp


def _holes(quantized: Tensor, levels: Tensor) -> _Components:
    """Holes of the foregrounds: 4-connected background components that do not touch the border.

    Returns:
        The holes' rows in the layout of :func:`_components`, extents of the hole pixels.
    """
    h, w = quantized.shape[-2:]
    # Background q <= level is (255 - q) > 254 - level; reversed so that the levels stay ascending.
    holes, _, _ = _components(255 - quantized, (254 - levels).flip(0), eight=False)
    inside = (holes.x0 > 0) & (holes.y0 > 0) & (holes.x1 < w - 1) & (holes.y1 < h - 1)
    holes = _Components(*(field[inside] for field in holes))
    return holes._replace(level_index=levels.numel() - 1 - holes.level_index)


def _blob_components(quantized: Tensor, levels: Tensor) -> tuple[_Components, _Components]:
    """Blobs and holes; each blob's contour area includes the contour areas of its holes, like OpenCV's."""
    blobs, end_keys, comp = _components(quantized, levels)
    holes = _holes(quantized, levels)
    if holes.x0.numel():
        # The pixel left of a hole's first pixel ends a run of the blob around the hole.
        h, w = quantized.shape[-2:]
        row_key = (holes.batch_index * h + holes.start_row) * levels.numel() + holes.level_index
        run = torch.searchsorted(end_keys, row_key * (w + 2) + holes.start_x)
        blobs.contour_area.index_add_(0, comp[run], holes.contour_area)
    return blobs, holes


def _union_find(num_nodes: int, src: Tensor, dst: Tensor) -> Tensor:
    """Connected components of a graph whose edges go from lower to higher node index.

    Each node first points at its smallest neighbour below it (a forest, flattened by pointer jumping);
    the edges still joining two trees then hook the larger root onto the smaller until none is left.

    Returns:
        (num_nodes,) the smallest node index of each node's component.
    """
    parent = torch.arange(num_nodes, device=src.device).scatter_reduce_(0, dst, src, "amin")
    while True:
        parent = _flatten(parent)
        ps, pd = parent[src], parent[dst]
        differ = ps != pd
        if not bool(differ.any()):
            return parent
        src, dst, ps, pd = src[differ], dst[differ], ps[differ], pd[differ]
        parent.scatter_reduce_(0, torch.maximum(ps, pd), torch.minimum(ps, pd), "amin")


def _flatten(parent: Tensor) -> Tensor:
    """Pointer jumping until every node points at its root."""
    while True:
        grand = parent[parent]
        if torch.equal(grand, parent):
            return parent
        parent = grand


def _level_table(quantized: Tensor, thresholds: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct levels of a batch and, for each (map, threshold), the index of its level."""
    per_map = threshold_levels(quantized, thresholds)
    levels, index = torch.unique(per_map, sorted=True, return_inverse=True)
    return levels, index


def _chunks(num: int, chunk_size: int) -> list[slice]:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    return [slice(i, min(i + chunk_size, num)) for i in range(0, num, chunk_size)]


class _Blobs(NamedTuple):
    """Protocol boxes of the blobs (and holes) of a chunk of maps, one row each."""

    boxes: Tensor
    slot: Tensor
    area: Tensor
    contour_area: Tensor
    hole: Tensor


def _blobs(quantized: Tensor, levels: Tensor, holes: bool) -> _Blobs:
    """Blobs of every (map, level) slot ``map * L + level``, with the boxes of holes when ``holes``.

    A blob with pixel extents ``x0..x1`` gives ``[x0, y0, x1 + 1, y1 + 1]``; a hole's contour runs
    through the foreground pixels around it, so a hole with extents ``x0..x1`` gives
    ``[x0 - 1, y0 - 1, x1 + 2, y1 + 2]``; both clipped to ``W - 1``, ``H - 1``.
    """
    h, w = quantized.shape[-2:]
    blobs, hole_rows = _blob_components(quantized, levels)
    parts = [(blobs, 0)] + ([(hole_rows, 1)] if holes else [])
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
        rows.append(_Blobs(boxes, slot, comps.area, comps.contour_area, hole))
    return _Blobs(*(torch.cat([part[i] for part in rows]) for i in range(5)))


def _largest(blobs: _Blobs, num_slots: int) -> Tensor:
    """Index of the blob of largest contour area in each slot, -1 for an empty slot.

    Ties go to the blob that starts last in raster order, as ``max()`` over OpenCV's contour list (which
    lists contours in reverse raster order of their starting pixel) picks it.
    """
    area = torch.where(blobs.hole, -1.0, blobs.contour_area)
    most = torch.full((num_slots,), -1.0, dtype=torch.float64, device=area.device)
    most.scatter_reduce_(0, blobs.slot, area, "amax")
    is_max = (area == most[blobs.slot]) & ~blobs.hole
    index = torch.arange(area.numel(), device=area.device)
    best = torch.full((num_slots,), -1, dtype=torch.int64, device=area.device)
    return best.scatter_reduce_(0, blobs.slot[is_max], index[is_max], "amax")


def blob_boxes(
    quantized: Tensor,
    thresholds: Tensor | Sequence[float] | None = None,
    largest_only: bool = False,
    holes: bool = True,
    chunk_size: int = 16,
    num_threads: int | None = 1,
) -> BlobBoxes:
    """Boxes of the blobs of quantised maps for a whole threshold sweep.

    Args:
        quantized: (B, H, W) uint8 maps (see :func:`prepare_maps`).
        thresholds: (T,) thresholds ``tau``; default :func:`wsol_thresholds` (step 0.01).
        largest_only: Keep only the blob of largest contour area per (map, threshold), one row each,
            so ``boxes.view(B, T, 4)`` works (MaxBoxAcc). Otherwise every 8-connected blob (MaxBoxAccV2).
        holes: With ``largest_only=False``, also give the boxes of the holes' contours, as OpenCV's
            ``RETR_TREE`` does (they lie inside their blob's box).
        chunk_size: Maps processed at once; bounds memory.
        num_threads: Intra-op threads for CPU tensors during the call (``None``: torch's setting).
            One is fastest on small or busy machines; parallelise over processes instead.

    Returns:
        The boxes, with their map and threshold indices and pixel counts (0 for holes).
    """
    _check_quantized(quantized)
    with _cpu_threads(quantized.device, num_threads):
        return _blob_boxes(quantized, thresholds, largest_only, holes, chunk_size)


def _blob_boxes(
    quantized: Tensor,
    thresholds: Tensor | Sequence[float] | None,
    largest_only: bool,
    holes: bool,
    chunk_size: int,
) -> BlobBoxes:
    taus = _as_thresholds(wsol_thresholds() if thresholds is None else thresholds, quantized.device)
    num_taus = taus.numel()
    device = quantized.device
    parts = []
    for chunk in _chunks(quantized.shape[0], chunk_size):
        q = quantized[chunk]
        levels, level_index = _level_table(q, taus)
        num_slots = q.shape[0] * levels.numel()
        blobs = _blobs(q, levels, holes and not largest_only)
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
    return BlobBoxes(*(torch.cat([part[i] for part in parts]) for i in range(4)))


def boxes_from_maps(
    maps: Tensor,
    thresholds: Tensor | Sequence[float] | None = None,
    size: tuple[int, int] | None = None,
    interpolation: str = "bicubic",
    largest_only: bool = False,
    holes: bool = True,
    chunk_size: int = 16,
    num_threads: int | None = 1,
) -> BlobBoxes:
    """Score maps to boxes over a threshold sweep: resize, normalise, quantise, threshold, blobs.

    Args:
        maps: (B, h, w) score maps, any real values (uint8 maps are taken as already quantised).
        thresholds: (T,) thresholds ``tau``; default :func:`wsol_thresholds` (step 0.01).
        size: Image size ``(H, W)`` to resize the maps to; ``None`` keeps their size.
        interpolation: ``"bicubic"`` (wsolevaluation) or ``"bilinear"`` (SCM, TS-CAM).
        largest_only: One box per (map, threshold), of the blob of largest contour area.
        holes: With ``largest_only=False``, also give the boxes of the holes' contours (OpenCV's
            ``RETR_TREE``).
        chunk_size: Maps processed at once; bounds memory.
        num_threads: Intra-op threads for CPU tensors during the sweep (``None``: torch's setting).

    Returns:
        The boxes with their map and threshold indices and pixel counts.

    Example:
        >>> maps = torch.zeros(1, 8, 8); maps[0, 2:4, 1:6] = 1.0
        >>> boxes_from_maps(maps, thresholds=[0.5]).boxes
        tensor([[1, 2, 6, 4]])
    """
    quantized = prepare_maps(maps, size, interpolation)
    return blob_boxes(quantized, thresholds, largest_only, holes, chunk_size, num_threads)


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
    return _iou(a, b)


def _iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of broadcastable float64 boxes (..., 4), inclusive convention."""
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + 1).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + 1).clamp(min=0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return inter / (area_a + area_b - inter)


def pad_boxes(gt_boxes: Sequence[Tensor], device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Stack per-image ground-truth boxes into a padded tensor.

    Args:
        gt_boxes: One (K_i, 4) tensor ``[x0, y0, x1, y1]`` per image (or a (B, K, 4) tensor).
        device: Device of the result; default the first tensor's.

    Returns:
        (B, K, 4) float64 boxes and (B, K) bool validity mask, K = max K_i.
    """
    boxes = [torch.as_tensor(b).reshape(-1, 4) if torch.as_tensor(b).numel() else None for b in gt_boxes]
    for i, b in enumerate(boxes):
        if b is None:
            raise ValueError(f"image {i} has no ground-truth box; every image needs at least one (K_i >= 1).")
    device = boxes[0].device if device is None else device
    k = max(b.shape[0] for b in boxes)
    out = torch.zeros(len(boxes), k, 4, dtype=torch.float64, device=device)
    valid = torch.zeros(len(boxes), k, dtype=torch.bool, device=device)
    for i, b in enumerate(boxes):
        out[i, : b.shape[0]] = b.to(device=device, dtype=torch.float64)
        valid[i, : b.shape[0]] = True
    return out, valid


def best_box_iou(
    quantized: Tensor,
    gt_boxes: Sequence[Tensor],
    thresholds: Tensor | Sequence[float] | None = None,
    holes: bool = True,
    chunk_size: int = 16,
    num_threads: int | None = 1,
) -> tuple[Tensor, Tensor]:
    """Best IoU with the ground truth of each map at each threshold, largest blob and all blobs.

    Args:
        quantized: (B, H, W) uint8 maps (see :func:`prepare_maps`).
        gt_boxes: One (K_i, 4) tensor of ground-truth boxes per map, in pixels of the map.
        thresholds: (T,) thresholds ``tau``; default :func:`wsol_thresholds` (step 0.01).
        holes: Count the boxes of hole contours among all blobs, as OpenCV's ``RETR_TREE`` does.
        chunk_size: Maps processed at once; bounds memory.
        num_threads: Intra-op threads for CPU tensors during the call (``None``: torch's setting).

    Returns:
        (B, T) float64 IoU of the largest blob's box with its best ground-truth box (MaxBoxAcc), and
        (B, T) float64 best IoU over all blob boxes and ground-truth boxes (MaxBoxAccV2). A threshold
        without foreground scores the box ``[0, 0, 0, 0]``.
    """
    _check_quantized(quantized)
    if len(gt_boxes) != quantized.shape[0]:
        raise ValueError(f"got {len(gt_boxes)} box sets for {quantized.shape[0]} maps; pass one per map.")
    taus = _as_thresholds(wsol_thresholds() if thresholds is None else thresholds, quantized.device)
    gt, valid = pad_boxes(gt_boxes, quantized.device)
    with _cpu_threads(quantized.device, num_threads):
        return _best_box_iou(quantized, gt, valid, taus, holes, chunk_size)


def _best_box_iou(
    quantized: Tensor, gt: Tensor, valid: Tensor, taus: Tensor, holes: bool, chunk_size: int
) -> tuple[Tensor, Tensor]:
    largest_parts, all_parts = [], []
    for chunk in _chunks(quantized.shape[0], chunk_size):
        q, gt_chunk, valid_chunk = quantized[chunk], gt[chunk], valid[chunk]
        levels, level_index = _level_table(q, taus)
        num_slots = q.shape[0] * levels.numel()
        blobs = _blobs(q, levels, holes)
        image = torch.div(blobs.slot, levels.numel(), rounding_mode="floor")
        iou = _iou(blobs.boxes.to(torch.float64)[:, None], gt_chunk[image])
        iou = torch.where(valid_chunk[image], iou, -1.0).amax(dim=1)
        # A slot without foreground scores the box [0, 0, 0, 0].
        empty = torch.where(valid_chunk, _iou(torch.zeros_like(gt_chunk), gt_chunk), -1.0).amax(dim=1)
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


def scale_boxes(boxes: Tensor, original_size: tuple[int, int], size: tuple[int, int] = (224, 224)) -> Tensor:
    """Scale ground-truth boxes from the original image to the resized one, truncating to int.

    Each coordinate is multiplied by ``new / original`` of its axis and truncated, the protocol's
    convention for the 224 x 224 resize.

    Args:
        boxes: (K, 4) boxes ``[x0, y0, x1, y1]`` in pixels of the original image.
        original_size: Original ``(W, H)``.
        size: Resized ``(W, H)``.

    Returns:
        (K, 4) int64 boxes.
    """
    (w0, h0), (w1, h1) = original_size, size
    if min(w0, h0, w1, h1) <= 0:
        raise ValueError(f"sizes must be positive (W, H), got original_size={original_size}, size={size}.")
    scale = torch.tensor([w1 / w0, h1 / h0, w1 / w0, h1 / h0], dtype=torch.float64, device=boxes.device)
    return torch.trunc(boxes.to(torch.float64) * scale).to(torch.int64)


@contextmanager
def _cpu_threads(device: torch.device, num_threads: int | None) -> Iterator[None]:
    """Run CPU work with ``num_threads`` intra-op threads (``None``: leave torch's setting).

    The sweep is many short vectorised ops; with several threads on a busy machine, OpenMP's thread
    hand-offs cost more than the ops themselves (measured 50x slower on 2 loaded cores).
    """
    previous = torch.get_num_threads()
    change = device.type == "cpu" and num_threads is not None and num_threads != previous
    if change:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(previous)


def _check_quantized(quantized: Tensor) -> None:
    _check_maps(quantized)
    if quantized.dtype != torch.uint8:
        raise TypeError(f"quantized must be uint8, got {quantized.dtype}; use prepare_maps() first.")
