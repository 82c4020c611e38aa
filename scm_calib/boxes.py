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

The whole threshold sweep is done at once, since the foregrounds are nested (a lower level only adds
pixels): every pixel points to its highest neighbour, which cuts the map into basins that stay connected
at every level; a per-basin table of what each basin holds by each level, and the first level at which
each pair of basins touch, are all the work over pixels. Levels are then walked top down, joining the
basins of a few hundred pairs per map. Holes (4-connected background off the border) are the same
computation bottom up, and contour areas come from the 2x2 squares between pixel centres (see
:func:`_quad_mass`).

The result equals OpenCV's ``findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)`` with ``cv2.contourArea`` and
``cv2.boundingRect`` (reproduced exactly by :mod:`scm_calib.boxes_cv2`): the same blob and hole boxes, and
the same largest contour, ties included, except that a hole is never the largest contour (OpenCV can pick
a hole of exactly its blob's area, which only a ring one pixel thin along diagonals has).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    """Connected components of the foregrounds (or backgrounds) of quantised maps, one row per component
    and level: map, level index, inclusive pixel extents, pixel count, contour area, first pixel (flat
    index in raster order)."""

    batch_index: Tensor
    level_index: Tensor
    x0: Tensor
    y0: Tensor
    x1: Tensor
    y1: Tensor
    area: Tensor
    contour_area: Tensor
    first: Tensor


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
    # Interpolation is linear and separable: rows then columns, as two small matrix products (several
    # times faster than F.interpolate on the CPU, equal to float rounding).
    rows = _interpolation_matrix(size[0], maps.shape[-2], interpolation, maps.device)
    cols = _interpolation_matrix(size[1], maps.shape[-1], interpolation, maps.device)
    return rows @ maps.float() @ cols.t()


def _interpolation_matrix(out_size: int, in_size: int, interpolation: str, device: torch.device) -> Tensor:
    """(out_size, in_size) weights of F.interpolate along one axis (``align_corners=False``)."""
    eye = torch.eye(in_size, device=device)[None, None]
    return F.interpolate(eye, size=(out_size, in_size), mode=interpolation, align_corners=False)[0, 0]


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max normalise each map to [0, 1]; a constant map or one with a NaN becomes all zeros.

    Args:
        maps: (B, H, W) score maps, any real values.

    Returns:
        (B, H, W) float32 maps in [0, 1].
    """
    _check_maps(maps)
    return _normalize_(maps.float().clone())


def _normalize_(maps: Tensor) -> Tensor:
    """:func:`normalize_maps` in place on float32 maps."""
    flat = maps.flatten(1)
    low, high = flat.amin(dim=1), flat.amax(dim=1)  # NaN propagates to both
    span = high - low
    bad = ~(span > 0) | ~torch.isfinite(span)
    maps.sub_(low[:, None, None]).div_(span[:, None, None])
    if bool(bad.any()):
        maps[bad] = 0.0
    return maps


def quantize_maps(maps: Tensor) -> Tensor:
    """Quantise normalised maps to uint8 by truncating ``map * 255``, as the protocol does.

    Args:
        maps: (B, H, W) maps in [0, 1].

    Returns:
        (B, H, W) uint8 maps.
    """
    _check_maps(maps)
    return _quantize_(maps.float().clone())


def _quantize_(maps: Tensor) -> Tensor:
    """:func:`quantize_maps` of float32 maps, changing them in place."""
    return maps.mul_(255).clamp_(0, 255).to(torch.uint8)


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
    if size is not None and tuple(maps.shape[-2:]) != tuple(size):
        maps = resize_maps(maps, size, interpolation)  # a new tensor, free to change in place
    else:
        maps = maps.float().clone()
    return _quantize_(_normalize_(maps))


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


# Raster-order neighbourhoods, the centre included: 8-connectivity for blobs, 4 for holes.
_NEIGHBOURS = {
    True: tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)),
    False: ((-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)),
}
# Each pixel pair once: the neighbours after a pixel in raster order.
_FORWARD = {True: ((0, 1), (1, -1), (1, 0), (1, 1)), False: ((0, 1), (1, 0))}
_INT32_MAX = 2**31 - 1


def _quad_mass(c: Tensor) -> Tensor:
    """Each pixel's share, in half units, of the contour areas of the components it belongs to.

    OpenCV's contour of an 8-connected blob runs through its boundary pixels' centres, and a hole's through
    the foreground pixels around it. Cut the plane into the unit squares between four pixel centres: a
    square whose corners hold 3 foreground pixels gives half its area to the blob, one with 4 gives all of
    it, and the rest of every square belongs to the background pixels in it, half a unit to each of the
    first two (two diagonal ones may lie in different holes). So a blob's contour area is half the number
    of squares in which one of its pixels is the 3rd or 4th corner to turn foreground as the level falls,
    plus the areas of its holes; a hole's is half the number in which one of its pixels is the 1st or 2nd
    to turn background as the level rises. Breaking ties by raster order one way for blobs and the other
    way for holes makes these the same pixels, so one map serves both. Squares over the map's border never
    hold 3 foreground pixels, and holes do not touch the border, so only squares inside the map count.

    Args:
        c: (B, H, W) number of levels below each pixel's value (foreground at level index ``l`` iff
            ``c > l``).

    Returns:
        (B, H, W) uint8 half units per pixel, 0 to 4.
    """
    tl, tr, bl, br = c[:, :-1, :-1], c[:, :-1, 1:], c[:, 1:, :-1], c[:, 1:, 1:]
    # A corner's rank in its square: the corners before it, by c and then raster order (tl, tr, bl, br).
    mass = torch.zeros(c.shape, dtype=torch.uint8, device=c.device)
    corners = {"tl": (tl, slice(None, -1), slice(None, -1)), "tr": (tr, slice(None, -1), slice(1, None))}
    corners |= {"bl": (bl, slice(1, None), slice(None, -1)), "br": (br, slice(1, None), slice(1, None))}
    for name, (value, rows, cols) in corners.items():
        rank = torch.zeros(value.shape, dtype=torch.uint8, device=c.device)
        for other_name, (other, _, _) in corners.items():
            if other_name != name:  # before: smaller, or equal and earlier in raster order
                rank += (other <= value if other_name < name else other < value).to(torch.uint8)
        mass[:, rows, cols] += (rank <= 1).to(torch.uint8)  # uint8 throughout: mixed types are slow
    return mass


def _basins(key: Tensor, present: Tensor, eight: bool) -> tuple[Tensor, Tensor]:
    """Cut the present pixels into basins: trees in which every pixel points to its earliest neighbour.

    A pixel's parent is the neighbour (or itself) of largest ``key``, ties to the first in raster order,
    so a parent is present whenever its child is and every basin is connected at every level. Pointer
    jumping finds each pixel's root.

    Args:
        key: (B, H, W) int16 order of appearance, larger first (0 to 255).
        present: (B, H, W) bool, pixels present at some level.
        eight: 8- or 4-connectivity.

    Returns:
        (N,) int32 flat index of each pixel's root (absent pixels are their own) and (N,) bool roots of
        present pixels.
    """
    b, h, w = key.shape
    # Larger key first; on ties the larger code (low 4 bits), i.e. the first neighbour in raster order.
    k = F.pad((key + 1).masked_fill_(~present, 0) * 16, (1, 1, 1, 1))
    neighbours = _NEIGHBOURS[eight]
    if eight:  # the 3 x 3 maximum is separable: codes 3 * (1 - dy) + (1 - dx)
        row = torch.maximum(k[:, :, :-2] + 2, k[:, :, 1:-1] + 1)
        row = torch.maximum(row, k[:, :, 2:], out=row)
        best = torch.maximum(row[:, :-2] + 6, row[:, 1:-1] + 3)
        best = torch.maximum(best, row[:, 2:], out=best)
    else:
        best = None
        for rank, (dy, dx) in enumerate(neighbours):
            value = k[:, 1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx] + (len(neighbours) - 1 - rank)
            best = value if best is None else torch.maximum(best, value, out=best)
    offsets = torch.tensor([dy * w + dx for dy, dx in reversed(neighbours)], device=key.device, dtype=torch.int32)
    step = torch.index_select(offsets, 0, (best & 15).flatten().int()).masked_fill_(~present.flatten(), 0)
    parent = torch.arange(b * h * w, device=key.device, dtype=torch.int32).add_(step)
    while True:  # pointer jumping, two jumps per check (index_select on int32 is the fastest gather here)
        grand = torch.index_select(parent, 0, parent)
        great = torch.index_select(grand, 0, grand)
        if torch.equal(great, grand):
            return great, (step == 0) & present.flatten()
        parent = great


class _BasinTables(NamedTuple):
    """What the basins of some maps hold, step by step (see :func:`_basin_tables`)."""

    basin: Tensor
    root_step: Tensor
    lower: Tensor
    upper: Tensor
    first_step: Tensor
    sums: Tensor
    extents: Tensor


def _basin_tables(
    key: Tensor, appear: Tensor, num_steps: int, eight: bool, packed: Tensor, first_pixel: int = 0
) -> _BasinTables:
    """The pixel work of :func:`_sweep` for a few maps: basins, where they touch, what they hold by each step.

    Args:
        key: (B, H, W) int16 order of appearance, larger first, consistent with ``appear``.
        appear: (B, H, W) int16 step at which each pixel joins; ``num_steps`` for never.
        num_steps: Number of steps.
        eight: 8-connectivity (blobs) or 4 (holes).
        packed: (N,) int64 pixel count plus half units of contour area << 32 of each pixel.
        first_pixel: Flat index of these maps' first pixel among all maps.

    Returns:
        Each pixel's basin (N,) (``num_basins`` for pixels never present), each basin's first step,
        each pair of touching basins (lower < upper) with the first step at which they touch, and per basin
        and step, accumulated over steps: pixel count plus half units of contour area << 32 (num_basins,
        num_steps) and the least and greatest x and flat index (4, num_basins, num_steps) int32.
    """
    b, h, w = key.shape
    device = key.device
    present = appear < num_steps
    parent, is_root = _basins(key, present, eight)
    rank = torch.cumsum(is_root, 0, dtype=torch.int32).sub_(1)
    num_basins = int(rank[-1]) + 1 if rank.numel() else 0
    basin = torch.index_select(rank, 0, parent).masked_fill_(~present.flatten(), num_basins)

    # The first step at which each pair of touching basins touch (never, if a pixel is never present):
    # each pixel against its neighbour in each forward direction, inside the map.
    forward = _FORWARD[eight]
    grid = basin.view(b, h, w)
    differ = torch.zeros(len(forward), b, h, w, dtype=torch.bool, device=device)
    for out, (dy, dx) in zip(differ, forward, strict=True):
        x_lo, x_hi = max(0, -dx), w - max(0, dx)
        here = grid[:, : h - dy, x_lo:x_hi]
        torch.ne(here, grid[:, dy:, x_lo + dx : x_hi + dx], out=out[:, : h - dy, x_lo:x_hi])
    direction, pixel = differ.view(len(forward), -1).nonzero(as_tuple=True)
    offsets = torch.tensor([dy * w + dx for dy, dx in forward], device=device)
    other = pixel + torch.index_select(offsets, 0, direction)
    a, c = torch.index_select(basin, 0, pixel).long(), torch.index_select(basin, 0, other).long()
    flat_appear = appear.flatten()
    step = torch.maximum(torch.index_select(flat_appear, 0, pixel), torch.index_select(flat_appear, 0, other))
    lower, upper, first_step = _first_touch(torch.minimum(a, c), torch.maximum(a, c), step, num_basins, num_steps)

    # Per (basin, step) slot; pixels never present land past the end.
    slot = flat_appear.int().add_(basin, alpha=num_steps).long()  # one dtype per op: mixed types are slow
    size = (num_basins + 1) * num_steps + 1
    sums = torch.zeros(size, dtype=torch.int64, device=device).scatter_add_(0, slot, packed)
    sums = sums[: num_basins * num_steps].view(num_basins, num_steps).cumsum(1)
    x = torch.arange(w, device=device, dtype=torch.int32).expand(b, h, w).flatten()
    index = torch.arange(first_pixel, first_pixel + b * h * w, device=device, dtype=torch.int32)
    extents = []
    for values, how in ((x, "amin"), (x, "amax"), (index, "amin"), (index, "amax")):
        table = torch.full((size,), _INT32_MAX if how == "amin" else -1, dtype=torch.int32, device=device)
        table = table.scatter_reduce_(0, slot, values, how)[: num_basins * num_steps].view(num_basins, num_steps)
        extents.append((table.cummin(1) if how == "amin" else table.cummax(1)).values)
    root_step = num_steps - (sums > 0).sum(dim=1)  # a basin's pixel count is 0 until its root appears
    return _BasinTables(basin, root_step, lower, upper, first_step, sums, torch.stack(extents))


def _first_touch(
    lower: Tensor, upper: Tensor, step: Tensor, num_basins: int, num_steps: int, dense: bool | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct pairs ``lower < upper`` (basins ``num_basins`` stand for never-present pixels) and the
    least step of each, leaving out pairs that never touch (step ``num_steps``).

    ``dense`` (default: when the table has at most 4M entries) reduces into a table over all pairs, which
    is cheaper than sorting the pixel pairs.
    """
    step = step.long()
    key = lower * (num_basins + 1) + upper
    if (num_basins + 1) ** 2 <= 1 << 22 if dense is None else dense:
        table = torch.full(((num_basins + 1) ** 2,), num_steps, dtype=torch.int64, device=step.device)
        table.scatter_reduce_(0, key, step, "amin")
        pair = (table < num_steps).nonzero()[:, 0]
        first_step = table[pair]
    else:
        pair, inverse = torch.unique(key, return_inverse=True)
        first_step = torch.full_like(pair, num_steps).scatter_reduce_(0, inverse, step, "amin")
        keep = first_step < num_steps
        pair, first_step = pair[keep], first_step[keep]
    return torch.div(pair, num_basins + 1, rounding_mode="floor"), pair % (num_basins + 1), first_step


def _sweep(
    parts: list[_BasinTables],
    shape: tuple[int, int, int],
    num_steps: int,
    extra_mass: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """Connected components of ``{appear <= s}`` at every step ``s``, with extents, areas and contour areas.

    Pixels join as steps go on, so components only grow and merge. Each basin (see :func:`_basins`) lies
    inside one component at every step, so only basins need joining: the pixel work (:func:`_basin_tables`,
    a few maps at a time to stay in cache) gives what each basin holds by each step and the first step at
    which each pair of basins touch; the steps then merge a few hundred basins per map.

    Args:
        parts: Basin tables of consecutive groups of maps, in order.
        shape: ``(B, H, W)`` of all the maps.
        num_steps: Number of steps.
        extra_mass: ``(step, pixel, half_units)``: half units to add to the component holding a flat
            pixel index at a step (holes' contour areas, added to the blobs around them).

    Returns:
        (R, 9) int64 table of the components of all steps: map, step, x0, y0, x1, y1 (pixel extents,
        inclusive), pixel count, contour area in half units, and the flat index of the first pixel.
    """
    b, h, w = shape
    device = parts[0].sums.device
    counts = [part.root_step.numel() for part in parts]
    offsets = [sum(counts[:i]) for i in range(len(parts))]
    num_basins = sum(counts)
    lower = torch.cat([part.lower + offset for part, offset in zip(parts, offsets, strict=True)])
    upper = torch.cat([part.upper + offset for part, offset in zip(parts, offsets, strict=True)])
    first_step = torch.cat([part.first_step for part in parts])
    by_step = torch.argsort(first_step)
    lower, upper, first_step = lower[by_step], upper[by_step], first_step[by_step]
    comp_at = _merge_steps(lower, upper, first_step, num_basins, num_steps)

    # Reduce each component's basins, step by step, into slot step * num_basins + component.
    size = num_steps * num_basins
    hows = ("amin", "amax", "amin", "amax")
    extents = [
        torch.full((size,), _INT32_MAX if how == "amin" else -1, dtype=torch.int32, device=device) for how in hows
    ]
    total = torch.zeros(size, dtype=torch.int64, device=device)
    by_steps = torch.arange(num_steps, device=device) * num_basins
    for part, offset, count in zip(parts, offsets, counts, strict=True):
        group = (comp_at[:, offset : offset + count].t() + by_steps).flatten()
        for out, values, how in zip(extents, part.extents, hows, strict=True):
            out.scatter_reduce_(0, group, values.flatten(), how)
        total.index_add_(0, group, part.sums.flatten())
    if extra_mass is not None:
        at_step, pixel, extra = extra_mass
        basin = torch.empty_like(pixel)
        part_pixels = torch.tensor([0] + [part.basin.numel() for part in parts], device=device).cumsum(0)
        bounds = torch.searchsorted(pixel, part_pixels).tolist()  # pixels are sorted by the caller
        for i, (part, offset) in enumerate(zip(parts, offsets, strict=True)):
            local = pixel[bounds[i] : bounds[i + 1]] - part_pixels[i]
            basin[bounds[i] : bounds[i + 1]] = torch.index_select(part.basin, 0, local).long() + offset
        owner = comp_at[at_step, basin]
        total.index_add_(0, at_step * num_basins + owner, extra * (1 << 32))
    root_step = torch.cat([part.root_step for part in parts])
    alive = root_step[None, :] <= torch.arange(num_steps, device=device)[:, None]
    rows = ((comp_at == torch.arange(num_basins, device=device)) & alive).flatten().nonzero()[:, 0]
    x0, x1, first, last = (values[rows].long() for values in extents)
    total = total[rows]
    map_of = torch.div(first, h * w, rounding_mode="floor")
    y0 = torch.div(first - map_of * h * w, w, rounding_mode="floor")
    y1 = torch.div(last - map_of * h * w, w, rounding_mode="floor")
    step_of = torch.div(rows, num_basins, rounding_mode="floor")
    return torch.stack([map_of, step_of, x0, y0, x1, y1, total & 0xFFFFFFFF, total >> 32, first], dim=1)


def _component_tables(
    quantized: Tensor, levels: Tensor, holes: bool = True, maps_at_once: int | None = None, workers: int = 1
) -> tuple[_Components, _Components]:
    """Blobs (8-connected foreground) and holes of ``quantized > level`` for every map and every level.

    A blob's contour area includes its holes' contour areas, as OpenCV's outer contour encloses them; the
    holes are found first (background grows with the level) and each adds its area to the blob holding
    the pixel left of its first pixel.

    Args:
        quantized: (B, H, W) uint8 maps.
        levels: (L,) sorted, distinct int64 levels.
        holes: Find the holes; without them, blobs' contour areas leave the holes out.
        maps_at_once: Maps per pass of the pixel work; default 4 on the CPU (to stay in cache), all on
            other devices.
        workers: Python threads sharing the passes of the pixel work (torch ops release the GIL).

    Returns:
        Blobs and holes, one row per component and level; holes have pixel extents and count 0 pixels.
    """
    b, h, w = quantized.shape
    num_levels = levels.numel()
    if quantized.numel() >= 2**31:
        raise ValueError(f"a chunk of {quantized.numel()} pixels is too large; pass a smaller chunk_size.")
    if maps_at_once is None:
        maps_at_once = 4 if quantized.device.type == "cpu" else b
    below = torch.searchsorted(levels, torch.arange(256, device=quantized.device, dtype=levels.dtype))
    below = below.to(torch.int16)

    def pixel_work(start: int) -> tuple[_BasinTables | None, _BasinTables]:
        part = quantized[start : start + maps_at_once]
        # Foreground at level index l iff c > l; c <= L, uint8 for the 2x2 ranks when it fits.
        c = torch.index_select(below, 0, part.flatten().int()).view(part.shape)
        mass = _quad_mass(c.to(torch.uint8) if num_levels < 256 else c)
        packed = mass.flatten().long().mul_(1 << 32).add_(1)  # pixel count and contour area, summed together
        key = part.to(torch.int16)
        first_pixel = start * h * w
        # Background at level l iff c <= l: step l; 4-connected components off the border are holes.
        hole_part = _basin_tables(255 - key, c, num_levels, False, packed, first_pixel) if holes else None
        # Foreground at level l iff c > l: step L - 1 - l.
        return hole_part, _basin_tables(key, num_levels - c, num_levels, True, packed, first_pixel)

    starts = range(0, b, maps_at_once)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(pixel_work, starts))
    else:
        results = [pixel_work(start) for start in starts]
    hole_parts = [hole for hole, _ in results if hole is not None]
    blob_parts = [blob for _, blob in results]
    hole_rows = quantized.new_zeros(0, 9, dtype=torch.int64)
    extra_mass = None
    if holes:
        rows = _sweep(hole_parts, (b, h, w), num_levels)
        inside = (rows[:, 2] > 0) & (rows[:, 3] > 0) & (rows[:, 4] < w - 1) & (rows[:, 5] < h - 1)
        hole_rows = rows[inside]
        hole_rows = hole_rows[torch.argsort(hole_rows[:, 8])]
        extra_mass = (num_levels - 1 - hole_rows[:, 1], hole_rows[:, 8] - 1, hole_rows[:, 7])
    blob_rows = _sweep(blob_parts, (b, h, w), num_levels, extra_mass)
    blob_rows[:, 1] = num_levels - 1 - blob_rows[:, 1]
    blobs, holes_out = (_as_components(rows) for rows in (blob_rows, hole_rows))
    return blobs, holes_out._replace(area=torch.zeros_like(holes_out.area))


def _as_components(rows: Tensor) -> _Components:
    fields = rows.unbind(1)
    return _Components(*fields[:7], contour_area=fields[7].to(torch.float64) / 2, first=fields[8])


def _merge_steps(
    lower: Tensor, upper: Tensor, first_step: Tensor, num_nodes: int, num_steps: int, use_numpy: bool | None = None
) -> Tensor:
    """The component (its least node) of every node at every step, as the edges of each step join them.

    Args:
        lower, upper: (E,) edges, sorted by the step at which they join.
        first_step: (E,) the step at which each edge joins, ascending.
        num_nodes: Number of nodes.
        num_steps: Number of steps.
        use_numpy: A loop over steps in NumPy (default on the CPU), or one vectorised union-find over all
            steps in torch.

    Returns:
        (num_steps, num_nodes) int64.
    """
    if use_numpy is None:
        use_numpy = lower.device.type == "cpu"
    if use_numpy:
        bounds = torch.searchsorted(first_step, torch.arange(num_steps + 1)).tolist()
        # Many small operations: NumPy's are several times cheaper than torch's on the CPU.
        lower_np, upper_np = lower.numpy(), upper.numpy()
        comp_np = np.arange(num_nodes)
        out = np.empty((num_steps, num_nodes), dtype=np.int64)
        for step in range(num_steps):
            if bounds[step + 1] > bounds[step]:
                a = comp_np[lower_np[bounds[step] : bounds[step + 1]]]
                c = comp_np[upper_np[bounds[step] : bounds[step + 1]]]
                comp_np = _union_find_np(num_nodes, np.minimum(a, c), np.maximum(a, c))[comp_np]
            out[step] = comp_np
        return torch.from_numpy(out)
    # One graph over (step, node) pairs, each edge copied into every step from its own on: no loop over
    # steps (for GPUs, where each small operation costs a kernel launch).
    copies = num_steps - first_step
    edge = torch.repeat_interleave(torch.arange(lower.numel(), device=lower.device), copies)
    step = first_step[edge] + torch.arange(edge.numel(), device=lower.device) - (copies.cumsum(0) - copies)[edge]
    labels = _union_find(num_steps * num_nodes, step * num_nodes + lower[edge], step * num_nodes + upper[edge])
    return labels.view(num_steps, num_nodes) - torch.arange(num_steps, device=lower.device)[:, None] * num_nodes


def _union_find_np(num_nodes: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """:func:`_union_find` in NumPy."""
    parent = np.arange(num_nodes)
    np.minimum.at(parent, dst, src)
    while True:
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        ps, pd = parent[src], parent[dst]
        differ = ps != pd
        if not differ.any():
            return parent
        src, dst, ps, pd = src[differ], dst[differ], ps[differ], pd[differ]
        np.minimum.at(parent, np.maximum(ps, pd), np.minimum(ps, pd))


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


def _chunks(num: int, chunk_size: int | None, device: torch.device) -> list[slice]:
    if chunk_size is None:
        chunk_size = 64 if device.type == "cpu" else 512
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
    blobs, hole_rows = _component_tables(quantized, levels, holes=hole_boxes or contour_areas, workers=workers)
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
    thresholds: Tensor | Sequence[float] | None = None,
    largest_only: bool = False,
    holes: bool = True,
    chunk_size: int | None = None,
    num_threads: int | None = None,
) -> BlobBoxes:
    """Boxes of the blobs of quantised maps for a whole threshold sweep.

    Args:
        quantized: (B, H, W) uint8 maps (see :func:`prepare_maps`).
        thresholds: (T,) thresholds ``tau``; default :func:`wsol_thresholds` (step 0.01).
        largest_only: Keep only the blob of largest contour area per (map, threshold), one row each,
            so ``boxes.view(B, T, 4)`` works (MaxBoxAcc). Otherwise every 8-connected blob (MaxBoxAccV2).
        holes: With ``largest_only=False``, also give the boxes of the holes' contours, as OpenCV's
            ``RETR_TREE`` does (they lie inside their blob's box).
        chunk_size: Maps processed at once, which bounds memory; default 64 on the CPU, 512 on a GPU.
        num_threads: CPU threads sharing the maps (``None``: ``torch.get_num_threads()``); torch ops
            then run on one thread each.
            One is fastest on small or busy machines; parallelise over processes instead.

    Returns:
        The boxes, with their map and threshold indices and pixel counts (0 for holes).
    """
    _check_quantized(quantized)
    with _cpu_threads(quantized.device, num_threads) as workers:
        return _blob_boxes(quantized, thresholds, largest_only, holes, chunk_size, workers)


def _blob_boxes(
    quantized: Tensor,
    thresholds: Tensor | Sequence[float] | None,
    largest_only: bool,
    holes: bool,
    chunk_size: int | None,
    workers: int = 1,
) -> BlobBoxes:
    taus = _as_thresholds(wsol_thresholds() if thresholds is None else thresholds, quantized.device)
    num_taus = taus.numel()
    device = quantized.device
    parts = []
    for chunk in _chunks(quantized.shape[0], chunk_size, quantized.device):
        q = quantized[chunk]
        levels, level_index = _level_table(q, taus)
        num_slots = q.shape[0] * levels.numel()
        blobs = _blobs(q, levels, hole_boxes=holes and not largest_only, contour_areas=largest_only, workers=workers)
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
    thresholds: Tensor | Sequence[float] | None = None,
    size: tuple[int, int] | None = None,
    interpolation: str = "bicubic",
    largest_only: bool = False,
    holes: bool = True,
    chunk_size: int | None = None,
    num_threads: int | None = None,
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
        chunk_size: Maps processed at once, which bounds memory; default 64 on the CPU, 512 on a GPU.
        num_threads: CPU threads sharing the maps (``None``: ``torch.get_num_threads()``); torch ops
            then run on one thread each.

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
    k = max((b.shape[0] for b in boxes), default=0)
    out = torch.zeros(len(boxes), k, 4, dtype=torch.float64, device=device)
    valid = torch.zeros(len(boxes), k, dtype=torch.bool, device=device)
    for i, b in enumerate(boxes):
        out[i, : b.shape[0]] = b.to(device=device, dtype=torch.float64)
        valid[i, : b.shape[0]] = True
    return out, valid


def _as_box_set(boxes: Tensor | np.ndarray | Sequence[float], image: int) -> Tensor:
    """One image's ground-truth boxes as a checked (K, 4) tensor."""
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
    b64 = b.to(torch.float64)
    bad = torch.isnan(b64).any(1) | (b64 < 0).any(1) | (b64[:, 2] < b64[:, 0]) | (b64[:, 3] < b64[:, 1])
    if bool(bad.any()):
        box = b64[int(bad.nonzero()[0, 0])].tolist()
        raise ValueError(
            f"image {image}: ground-truth box {box} is not [x0, y0, x1, y1] with 0 <= x0 <= x1 and 0 <= y0 <= y1 "
            "(NaN, negative or inverted); fix the annotation or its conversion, e.g. (x, y, w, h) to "
            "(x, y, x + w, y + h)."
        )
    return b


def _check_frame(gt: Tensor, valid: Tensor, height: int, width: int) -> None:
    """Every valid ground-truth box lies in the maps' frame (``x1 <= W``, ``y1 <= H``: the edge itself is
    allowed for boxes written as ``x + width``)."""
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


def best_box_iou(
    quantized: Tensor,
    gt_boxes: Sequence[Tensor],
    thresholds: Tensor | Sequence[float] | None = None,
    holes: bool = True,
    chunk_size: int | None = None,
    num_threads: int | None = None,
    clip: bool = True,
) -> tuple[Tensor, Tensor]:
    """Best IoU with the ground truth of each map at each threshold, largest blob and all blobs.

    Args:
        quantized: (B, H, W) uint8 maps (see :func:`prepare_maps`).
        gt_boxes: One (K_i, 4) tensor of ground-truth boxes per map, in pixels of the map.
        thresholds: (T,) thresholds ``tau``; default :func:`wsol_thresholds` (step 0.01).
        holes: Count the boxes of hole contours among all blobs, as OpenCV's ``RETR_TREE`` does.
        chunk_size: Maps processed at once, which bounds memory; default 64 on the CPU, 512 on a GPU.
        num_threads: CPU threads sharing the maps (``None``: ``torch.get_num_threads()``); torch ops
            then run on one thread each.
        clip: Clip the boxes' ``x1``, ``y1`` to ``W - 1``, ``H - 1`` (wsolevaluation); TS-CAM's code does not.

    Returns:
        (B, T) float64 IoU of the largest blob's box with its best ground-truth box (MaxBoxAcc), and
        (B, T) float64 best IoU over all blob boxes and ground-truth boxes (MaxBoxAccV2). A threshold
        without foreground scores the box ``[0, 0, 0, 0]``.
    """
    _check_quantized(quantized)
    if len(gt_boxes) != quantized.shape[0]:
        raise ValueError(f"got {len(gt_boxes)} box sets for {quantized.shape[0]} maps; pass one per map.")
    taus = _as_thresholds(wsol_thresholds() if thresholds is None else thresholds, quantized.device)
    if len(gt_boxes) == 0:  # no maps
        empty = torch.zeros(0, taus.numel(), dtype=torch.float64, device=quantized.device)
        return empty, empty.clone()
    gt, valid = pad_boxes(gt_boxes, quantized.device)
    _check_frame(gt, valid, *quantized.shape[-2:])
    with _cpu_threads(quantized.device, num_threads) as workers:
        return _best_box_iou(quantized, gt, valid, taus, holes, chunk_size, workers, clip)


def _best_box_iou(
    quantized: Tensor,
    gt: Tensor,
    valid: Tensor,
    taus: Tensor,
    holes: bool,
    chunk_size: int | None,
    workers: int = 1,
    clip: bool = True,
) -> tuple[Tensor, Tensor]:
    largest_parts, all_parts = [], []
    for chunk in _chunks(quantized.shape[0], chunk_size, quantized.device):
        q, gt_chunk, valid_chunk = quantized[chunk], gt[chunk], valid[chunk]
        levels, level_index = _level_table(q, taus)
        num_slots = q.shape[0] * levels.numel()
        blobs = _blobs(q, levels, hole_boxes=holes, contour_areas=True, workers=workers, clip=clip)
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

    Each coordinate is multiplied by the new size and divided by the original size of its axis, in float64
    and in that order, then truncated: wsolevaluation's ``resize_bbox`` bit for bit (``x * (new / old)``
    differs by one pixel on some inputs, e.g. x = 55 of 110 px at 224: 112 here, 111 there).
    :func:`scm_calib.data.protocol_boxes` is this function.

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


@contextmanager
def _cpu_threads(device: torch.device, num_threads: int | None) -> Iterator[int]:
    """Split CPU work over ``num_threads`` workers (``None``: torch's thread count), each running torch ops
    on one thread; yields the number of workers (1 on other devices).

    The sweep is many short vectorised ops: splitting the maps among single-threaded workers scales,
    while OpenMP's hand-offs inside each short op cost more than they save (measured 50x slower on 2
    loaded cores).
    """
    if device.type != "cpu":
        yield 1
        return
    previous = torch.get_num_threads()
    workers = previous if num_threads is None else num_threads
    if workers < 1:
        raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}.")
    torch.set_num_threads(1)
    try:
        yield workers
    finally:
        torch.set_num_threads(previous)


def _check_quantized(quantized: Tensor) -> None:
    _check_maps(quantized)
    if quantized.dtype != torch.uint8:
        raise TypeError(f"quantized must be uint8, got {quantized.dtype}; use prepare_maps() first.")
