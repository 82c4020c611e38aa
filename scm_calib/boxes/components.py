"""The component engine: connected components of quantised maps at every threshold level at once.

The foregrounds of a threshold sweep are nested (a lower level only adds pixels), so the whole sweep is
done at once: every pixel points to its highest neighbour, which cuts the map into basins that stay
connected at every level; a per-basin table of what each basin holds by each level, and the first level
at which each pair of basins touch, are all the work over pixels. Levels are then walked top down,
joining the basins of a few hundred pairs per map. Holes (4-connected background off the border) are the
same computation bottom up, and contour areas come from the 2x2 squares between pixel centres (see
:func:`_quad_mass`), equal to OpenCV's ``cv2.contourArea`` of ``findContours(RETR_TREE)``.

``docs/evaluation.md`` ("How the sweep is computed") walks through the steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .maps import threshold_levels

__all__ = ["Components", "component_tables", "first_touch", "level_table", "merge_steps"]


class Components(NamedTuple):
    """Connected components of the foregrounds (or backgrounds) of quantised maps, one row per component
    and level.

    Attributes:
        batch_index: (R,) int64 map of each component.
        level_index: (R,) int64 index of its level.
        x0: (R,) int64 least x of its pixels.
        y0: (R,) int64 least y.
        x1: (R,) int64 greatest x (inclusive).
        y1: (R,) int64 greatest y (inclusive).
        area: (R,) int64 pixel count (0 for holes).
        contour_area: (R,) float64 area enclosed by its OpenCV contour (``cv2.contourArea``).
        first: (R,) int64 flat index of its first pixel in raster order, over all maps.
    """

    batch_index: Tensor
    level_index: Tensor
    x0: Tensor
    y0: Tensor
    x1: Tensor
    y1: Tensor
    area: Tensor
    contour_area: Tensor
    first: Tensor

    def select(self, index: Tensor) -> Components:
        """The rows picked by a boolean mask or an index tensor."""
        return Components(*(field[index] for field in self))


def level_table(quantized: Tensor, thresholds: Tensor | Sequence[float]) -> tuple[Tensor, Tensor]:
    """The distinct levels of a batch, and the index among them of each (map, threshold)'s level.

    Args:
        quantized: (B, H, W) uint8 maps.
        thresholds: (T,) thresholds ``tau`` in [0, 1].

    Returns:
        (L,) sorted int64 levels (see :func:`scm_calib.boxes.maps.threshold_levels`) and (B, T) int64 index
        of each (map, threshold)'s level among them.
    """
    per_map = threshold_levels(quantized, thresholds)
    levels, index = torch.unique(per_map, sorted=True, return_inverse=True)
    return levels, index


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
    lower, upper, first_step = first_touch(torch.minimum(a, c), torch.maximum(a, c), step, num_basins, num_steps)

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


def first_touch(
    lower: Tensor, upper: Tensor, step: Tensor, num_basins: int, num_steps: int, dense: bool | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct pairs of touching basins and the least step at which each pair touches.

    Args:
        lower: (E,) int64 lower basin of each touching pixel pair.
        upper: (E,) int64 upper basin, ``lower < upper``; basin ``num_basins`` stands for never-present pixels.
        step: (E,) step at which the pixel pair touches; ``num_steps`` for never.
        num_basins: Number of basins.
        num_steps: Number of steps.
        dense: Reduce into a table over all pairs, which is cheaper than sorting the pixel pairs; default
            when that table has at most 4M entries. Both ways give the same result.

    Returns:
        (P,) lower and (P,) upper basin of each distinct pair that touches at some step, and (P,) int64 its
        least step, ordered by ``(lower, upper)``.
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
) -> Components:
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
        The components of all steps, ``level_index`` holding the step.
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
    comp_at = merge_steps(lower, upper, first_step, num_basins, num_steps)

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
    contour_area = (total >> 32).to(torch.float64) / 2  # half units: exact in float64
    return Components(map_of, step_of, x0, y0, x1, y1, total & 0xFFFFFFFF, contour_area, first)


def component_tables(
    quantized: Tensor, levels: Tensor, holes: bool = True, maps_at_once: int | None = None, workers: int = 1
) -> tuple[Components, Components]:
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
    empty = torch.zeros(0, dtype=torch.int64, device=quantized.device)
    hole_rows = Components(*[empty] * 7, empty.to(torch.float64), empty)
    extra_mass = None
    if holes:
        rows = _sweep(hole_parts, (b, h, w), num_levels)
        hole_rows = rows.select((rows.x0 > 0) & (rows.y0 > 0) & (rows.x1 < w - 1) & (rows.y1 < h - 1))
        hole_rows = hole_rows.select(torch.argsort(hole_rows.first))
        half_units = (hole_rows.contour_area * 2).to(torch.int64)
        extra_mass = (num_levels - 1 - hole_rows.level_index, hole_rows.first - 1, half_units)
    blobs = _sweep(blob_parts, (b, h, w), num_levels, extra_mass)
    blobs = blobs._replace(level_index=num_levels - 1 - blobs.level_index)
    return blobs, hole_rows._replace(area=torch.zeros_like(hole_rows.area))


def merge_steps(
    lower: Tensor, upper: Tensor, first_step: Tensor, num_nodes: int, num_steps: int, use_numpy: bool | None = None
) -> Tensor:
    """The component (its least node) of every node at every step, as the edges of each step join them.

    Args:
        lower: (E,) lower node of each edge, edges sorted by the step at which they join.
        upper: (E,) upper node of each edge.
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
