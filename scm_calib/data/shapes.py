"""Procedurally drawn pretraining images: an ImageNet-like stand-in for encoders that cannot be downloaded.

SCM (Bai et al., ECCV 2022) fine-tunes an encoder whose class-token attention already covers objects (DeiT-S
pretrained on ImageNet). Offline, ``scm_calib`` makes such an encoder itself: a small ViT is trained to name
the object in images drawn here, fresh for every step (there is no fixed set to memorise).

Each image holds one large object and a few smaller distractors on a cluttered background. The class is the
pair (outline, surface pattern) of the large object: 16 outlines (polygons, stars, flowers, crosses, letters,
arrows, crescents, rings, ...) times 4 patterns (plain, stripes, checks, dots), 64 classes. Colours, size,
aspect, rotation, position, background and distractors are random and say nothing about the class, and the
distractors are drawn from the same outlines and patterns, so the network has to find the *whole* large
object and read both its outline and its surface: the class-token attention learns to cover objects.

Everything is drawn as whole batches of tensors (no per-image Python loop), seeded by a ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["PATTERNS", "SHAPES", "STYLES", "ShapeBatch", "num_shape_classes", "render_shapes"]

SHAPES = (
    "disc",
    "triangle",
    "square",
    "pentagon",
    "hexagon",
    "star4",
    "star5",
    "flower3",
    "flower6",
    "cross",
    "crescent",
    "ring",
    "half_disc",
    "letter_l",
    "letter_t",
    "arrow",
)
PATTERNS = ("plain", "stripes", "checks", "dots")


def num_shape_classes() -> int:
    """Number of classes of :func:`render_shapes`: outlines times patterns."""
    return len(SHAPES) * len(PATTERNS)


@dataclass
class ShapeBatch:
    """One drawn batch.

    Attributes:
        images: (B, 3, S, S) float in [0, 1].
        labels: (B,) int64, ``shape * len(PATTERNS) + pattern``.
        masks: (B, S, S) bool, the large object.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor


def _rect(u: torch.Tensor, v: torch.Tensor, x0: float, x1: float, y0: float, y1: float) -> torch.Tensor:
    return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)


def _outline(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside test of outline ``shape`` in the object's frame (the object fills about the unit disc)."""
    rho = torch.sqrt(u * u + v * v)
    theta = torch.atan2(v, u)
    name = SHAPES[shape]
    if name == "disc":
        return rho <= 1.0
    if name in ("triangle", "square", "pentagon", "hexagon"):
        n = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[name]
        sector = 2 * math.pi / n
        local = torch.remainder(theta, sector) - sector / 2
        return rho * torch.cos(local) <= math.cos(math.pi / n)
    if name in ("star4", "star5"):
        n = 4 if name == "star4" else 5
        sector = 2 * math.pi / n
        wave = (torch.remainder(theta, sector) / (sector / 2) - 1).abs()  # 1 at the tips, 0 between them
        return rho <= 0.42 + 0.58 * wave
    if name in ("flower3", "flower6"):
        n = 3 if name == "flower3" else 6
        return rho <= 0.68 + 0.32 * torch.cos(n * theta)
    if name == "cross":
        return _rect(u, v, -1, 1, -0.32, 0.32) | _rect(u, v, -0.32, 0.32, -1, 1)
    if name == "crescent":
        return (rho <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.8**2)
    if name == "ring":
        return (rho <= 1.0) & (rho >= 0.55)
    if name == "half_disc":
        return (rho <= 1.0) & (v >= -0.15)
    if name == "letter_l":
        return _rect(u, v, -0.8, -0.25, -1, 1) | _rect(u, v, -0.8, 0.8, 0.45, 1)
    if name == "letter_t":
        return _rect(u, v, -0.9, 0.9, -1, -0.45) | _rect(u, v, -0.28, 0.28, -1, 1)
    # arrow: a shaft and a triangular head pointing along +u
    return _rect(u, v, -1, 0.15, -0.22, 0.22) | ((u >= 0.15) & (u <= 1) & (v.abs() <= (1 - u) * 0.75 / 0.85))


def _pattern(pattern: torch.Tensor, u: torch.Tensor, v: torch.Tensor, freq: torch.Tensor) -> torch.Tensor:
    """(B, S, S) float in {0, 1}: which of the object's two colours each pixel takes."""
    stripes = (torch.sin(u * freq) > 0).float()
    checks = ((torch.sin(u * freq) * torch.sin(v * freq)) > 0).float()
    cell = 2 * math.pi / freq
    du = torch.remainder(u, cell) / cell - 0.5
    dv = torch.remainder(v, cell) / cell - 0.5
    dots = (du * du + dv * dv < 0.09).float()
    plain = torch.zeros_like(u)
    choice = pattern[:, None, None]
    return torch.where(choice == 0, plain, torch.where(choice == 1, stripes, torch.where(choice == 2, checks, dots)))


def _smooth_noise(gen: torch.Generator, batch: int, channels: int, size: int, cells: int) -> torch.Tensor:
    coarse = torch.randn(batch, channels, cells, cells, generator=gen)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def _colour(gen: torch.Generator, value: torch.Tensor, saturation: float = 0.6) -> torch.Tensor:
    """(B, 3) random colours of the given mean brightness ``value`` (B,), saturation up to ``saturation``."""
    hue = torch.rand(value.shape[0], 3, generator=gen) - 0.5
    amount = torch.rand(value.shape[0], 1, generator=gen) * saturation
    return (value[:, None] + hue * amount).clamp(0, 1)


def _draw(
    gen: torch.Generator,
    canvas: torch.Tensor,
    shape: torch.Tensor,
    pattern: torch.Tensor,
    centre: torch.Tensor,
    radius: torch.Tensor,
    contrast_to: torch.Tensor,
    varied: bool = False,
) -> torch.Tensor:
    """Paints one object per image onto ``canvas`` (B, 3, S, S) in place; returns its (B, S, S) mask.

    Args:
        shape, pattern: (B,) outline and pattern indices.
        centre: (B, 2) pixel centre; radius: (B,) pixels.
        contrast_to: (B,) brightness the object's first colour stays away from.
        varied: the ``"varied"`` style (:func:`render_shapes`): any saturation, a brightness contrast from faint
            to strong, a wider range of aspects, shading across the body and, on half the objects, a part of
            another colour.
    """
    batch, _, size, _ = canvas.shape
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    angle = torch.rand(batch, generator=gen) * 2 * math.pi
    aspect = (
        (0.45 + 0.55 * torch.rand(batch, generator=gen)) if varied else 0.7 + 0.3 * torch.rand(batch, generator=gen)
    )
    dx = (xs[None] - centre[:, 0, None, None]) / radius[:, None, None]
    dy = (ys[None] - centre[:, 1, None, None]) / radius[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u = dx * cos + dy * sin
    v = (-dx * sin + dy * cos) / aspect[:, None, None]
    mask = torch.zeros(batch, size, size, dtype=torch.bool)
    for index in range(len(SHAPES)):
        chosen = shape == index
        if chosen.any():
            mask[chosen] = _outline(index, u[chosen], v[chosen])
    freq = 2 * math.pi * (1.5 + 2.0 * torch.rand(batch, 1, 1, generator=gen))
    stripe_angle = torch.rand(batch, 1, 1, generator=gen) * math.pi
    pu = u * torch.cos(stripe_angle) + v * torch.sin(stripe_angle)
    pv = -u * torch.sin(stripe_angle) + v * torch.cos(stripe_angle)
    mix = _pattern(pattern, pu, pv, freq)[:, None]
    # First colour well away from the surroundings' brightness, second colour far from the first.
    low = 0.05 if varied else 0.25
    shift = low + (0.6 - low) * torch.rand(batch, generator=gen)
    sign = torch.where(contrast_to > 0.5, -1.0, 1.0)
    first_value = (contrast_to + sign * shift).clamp(0.05, 0.95)
    second_value = torch.where(first_value > 0.5, first_value - 0.45, first_value + 0.45)
    saturation = 1.0 if varied else 0.6
    first, second = _colour(gen, first_value, saturation), _colour(gen, second_value, saturation)
    shading = 0.08 * _smooth_noise(gen, batch, 1, size, 3)
    paint = first[:, :, None, None] * (1 - mix) + second[:, :, None, None] * mix + shading
    if varied:
        # Shading along the body, and on half the objects a part (a disc near the rim) of another, saturated
        # colour: objects have parts; the part says nothing about the class.
        ramp = (0.25 * torch.rand(batch, 1, 1, generator=gen) * u.clamp(-1.5, 1.5))[:, None]
        part_at = torch.rand(batch, 2, generator=gen) * 2 - 1
        part_at = (
            part_at
            / part_at.norm(dim=1, keepdim=True).clamp(min=1e-6)
            * (0.45 + 0.35 * torch.rand(batch, 1, generator=gen))
        )
        part_radius = (0.2 + 0.2 * torch.rand(batch, generator=gen))[:, None, None]
        part = (u - part_at[:, 0, None, None]) ** 2 + (v - part_at[:, 1, None, None]) ** 2 <= part_radius**2
        part = part & (torch.rand(batch, 1, 1, generator=gen) < 0.5)
        part_colour = _colour(gen, 0.3 + 0.5 * torch.rand(batch, generator=gen), 1.6)
        paint = torch.where(part[:, None], part_colour[:, :, None, None], paint + ramp)
    canvas.copy_(torch.where(mask[:, None], paint, canvas))
    return mask


STYLES = ("classic", "varied")
"""The looks :func:`render_shapes` draws; the classes are the same in both."""


def render_shapes(
    gen: torch.Generator,
    batch_size: int,
    size: int = 64,
    distractors: tuple[int, int] = (1, 4),
    style: str = "classic",
) -> ShapeBatch:
    """Draws a batch of pretraining images.

    Args:
        gen: the random generator (consumed); the batch is a function of its state alone.
        batch_size: images B.
        size: image side S in pixels.
        distractors: the smallest and largest number of distractor objects per image (inclusive).
        style: ``"classic"`` (low-saturation objects in strong brightness contrast, distractors a fifth to a
            half of the object's radius) or ``"varied"``: colours of any saturation for objects and background,
            a brightness contrast from faint to strong, a wider range of aspects, shading across the body, a
            part of another colour on half the objects, and distractors up to 70 % of the object's radius.

    Returns:
        A :class:`ShapeBatch`.
    """
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}.")
    low, high = distractors
    if not 0 <= low <= high:
        raise ValueError(f"distractors must be (low, high) with 0 <= low <= high, got {distractors}.")
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}.")
    varied = style == "varied"
    saturation = 1.0 if varied else 0.6
    b = batch_size
    # Background: two-colour smooth field, sometimes stripes, pixel noise.
    base = torch.rand(b, generator=gen) * 0.8 + 0.1
    colour_a = _colour(gen, base, saturation)
    colour_b = _colour(gen, (base + torch.rand(b, generator=gen) * 0.4 - 0.2).clamp(0, 1), saturation)
    blend = torch.sigmoid(2.5 * _smooth_noise(gen, b, 1, size, int(torch.randint(2, 6, (), generator=gen))))
    canvas = colour_a[:, :, None, None] * blend + colour_b[:, :, None, None] * (1 - blend)
    canvas = canvas + 0.12 * _smooth_noise(gen, b, 3, size, 8)
    coords = torch.arange(size, dtype=torch.float32)
    stripe_period = 3 + 6 * torch.rand(b, 1, 1, generator=gen)
    stripe_angle = torch.rand(b, 1, 1, generator=gen) * math.pi
    phase = coords[None, None, :] * torch.cos(stripe_angle) + coords[None, :, None] * torch.sin(stripe_angle)
    stripes = torch.sin(phase * 2 * math.pi / stripe_period) * 0.08 * (torch.rand(b, 1, 1, generator=gen) < 0.4)
    canvas = canvas + stripes[:, None]

    # The object: radius 18 % to 42 % of the side, fully inside the image.
    radius = size * (0.18 + 0.24 * torch.rand(b, generator=gen))
    margin = radius * 1.02
    centre = margin[:, None] + torch.rand(b, 2, generator=gen) * (size - 2 * margin)[:, None]
    shape = torch.randint(len(SHAPES), (b,), generator=gen)
    pattern = torch.randint(len(PATTERNS), (b,), generator=gen)

    # Distractors first (the object is drawn over them): a third to a half of the object's radius.
    counts = torch.randint(low, high + 1, (b,), generator=gen)
    for k in range(high):
        present = counts > k
        d_radius = radius * (0.2 + (0.5 if varied else 0.25) * torch.rand(b, generator=gen))
        d_centre = torch.rand(b, 2, generator=gen) * size
        d_shape = torch.randint(len(SHAPES), (b,), generator=gen)
        d_pattern = torch.randint(len(PATTERNS), (b,), generator=gen)
        before = canvas.clone()
        _draw(gen, canvas, d_shape, d_pattern, d_centre, d_radius, canvas.mean(dim=(1, 2, 3)), varied)
        canvas.copy_(torch.where(present[:, None, None, None], canvas, before))
    surround = canvas.mean(dim=(1, 2, 3))
    mask = _draw(gen, canvas, shape, pattern, centre, radius, surround, varied)
    canvas = canvas + 0.03 * torch.randn(canvas.shape, generator=gen)
    return ShapeBatch(canvas.clamp(0, 1), shape * len(PATTERNS) + pattern, mask)
