"""Overlays of localization maps with predicted and ground-truth boxes, saved as PNG.

Pure torch plus the standard library (``zlib`` writes the PNG), so no plotting package is needed:

    >>> from scm_calib.viz import overlay, save_png
    >>> score_map, image = torch.rand(32, 48), torch.rand(3, 32, 48)
    >>> boxes, gt = torch.tensor([[4, 4, 20, 16]]), torch.tensor([[6, 2, 22, 18]])
    >>> picture = overlay(score_map, image, pred_boxes=boxes, gt_boxes=gt)
    >>> picture.shape, picture.dtype
    (torch.Size([32, 48, 3]), torch.uint8)
    >>> save_png("cam.png", picture).name
    'cam.png'
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch
from torch import Tensor

from scm_calib.boxes.maps import normalize_maps

__all__ = ["colorize", "draw_boxes", "overlay", "save_png"]

PRED_COLOR = (0, 255, 0)
GT_COLOR = (255, 0, 0)


def colorize(score_map: Tensor) -> Tensor:
    """Jet colour map of a score map (min-max normalised first).

    Args:
        score_map: (H, W) map, any real values.

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    if score_map.dim() != 2:
        raise ValueError(f"score_map must have shape (H, W), got {tuple(score_map.shape)}.")
    v = normalize_maps(score_map[None].float())[0]
    red = (1.5 - (4 * v - 3).abs()).clamp(0, 1)
    green = (1.5 - (4 * v - 2).abs()).clamp(0, 1)
    blue = (1.5 - (4 * v - 1).abs()).clamp(0, 1)
    return (torch.stack([red, green, blue], dim=-1) * 255).round().to(torch.uint8)


def draw_boxes(image: Tensor, boxes: Tensor, color: tuple[int, int, int], width: int = 2) -> Tensor:
    """Draw box outlines ``[x0, y0, x1, y1]`` (inclusive pixels) on a copy of an image.

    Args:
        image: (H, W, 3) uint8 RGB image.
        boxes: (N, 4) boxes.
        color: RGB colour.
        width: Line width in pixels, drawn inside the box.

    Returns:
        (H, W, 3) uint8 image.
    """
    out = image.clone()
    h, w = out.shape[:2]
    value = torch.tensor(color, dtype=torch.uint8, device=out.device)
    for x0, y0, x1, y1 in boxes.reshape(-1, 4).round().long().tolist():
        x0, x1 = max(min(x0, x1), 0), min(max(x0, x1), w - 1)
        y0, y1 = max(min(y0, y1), 0), min(max(y0, y1), h - 1)
        if x0 > x1 or y0 > y1:
            continue
        out[y0 : min(y0 + width, y1 + 1), x0 : x1 + 1] = value
        out[max(y1 - width + 1, y0) : y1 + 1, x0 : x1 + 1] = value
        out[y0 : y1 + 1, x0 : min(x0 + width, x1 + 1)] = value
        out[y0 : y1 + 1, max(x1 - width + 1, x0) : x1 + 1] = value
    return out


def overlay(
    score_map: Tensor,
    image: Tensor | None = None,
    pred_boxes: Tensor | None = None,
    gt_boxes: Tensor | None = None,
    alpha: float = 0.5,
) -> Tensor:
    """Blend a coloured score map over an image and draw predicted (green) and ground-truth (red) boxes.

    Args:
        score_map: (H, W) map at image resolution, any real values.
        image: (H, W, 3) uint8 RGB or (3, H, W) float in [0, 1]; ``None`` shows the map alone.
        pred_boxes: (N, 4) predicted boxes ``[x0, y0, x1, y1]``.
        gt_boxes: (K, 4) ground-truth boxes.
        alpha: Weight of the map in the blend.

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    heat = colorize(score_map.detach().cpu())
    if image is not None:
        image = image.detach().cpu()
        if image.dim() == 3 and image.shape[0] == 3 and image.dtype != torch.uint8:
            image = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8)
        if image.shape != heat.shape:
            raise ValueError(
                f"image must be (H, W, 3) uint8 or (3, H, W) float matching the map "
                f"{tuple(score_map.shape)}, got {tuple(image.shape)}; resize the map to the image first."
            )
        heat = (alpha * heat.float() + (1 - alpha) * image.float()).round().to(torch.uint8)
    if gt_boxes is not None:
        heat = draw_boxes(heat, gt_boxes.cpu(), GT_COLOR)
    if pred_boxes is not None:
        heat = draw_boxes(heat, pred_boxes.cpu(), PRED_COLOR)
    return heat


def save_png(path: str | Path, image: Tensor) -> Path:
    """Write an (H, W, 3) uint8 RGB image as a PNG file (standard library only).

    Args:
        path: Output file.
        image: (H, W, 3) uint8 RGB image.

    Returns:
        The path written.
    """
    if image.dim() != 3 or image.shape[2] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {tuple(image.shape)} {image.dtype}.")
    h, w = image.shape[:2]
    rows = torch.cat([torch.zeros(h, 1, dtype=torch.uint8), image.cpu().reshape(h, w * 3)], dim=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    png += chunk(b"IDAT", zlib.compress(rows.contiguous().numpy().tobytes(), 6)) + chunk(b"IEND", b"")
    path = Path(path)
    path.write_bytes(png)
    return path
