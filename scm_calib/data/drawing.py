"""Drawing the images of the generated WSOL data: one object on a cluttered background, per data family.

Each family draws one object of a different appearance, so that a claim tuned on one family can be checked on the
others (:data:`FAMILIES`):

- ``"default"``: a grey-ish ellipse "body" (random size, aspect, angle and position; the body colour is drawn from
  one distribution for every class) with a small "head" disc at one end whose hue codes the class; distractors are
  headless bodies and muted blobs (ellipses, rectangles, triangles) of random hue; 96-128 px.
- ``"blobs"``: an irregular striped blob whose class is the hue of a band across it; distractors are blobs
  without a band and muted discs; 112-160 px.
- ``"marker"``: a rounded, shaded slab whose class is the *outline* of a small white or black marker near one
  end (not a colour); distractors are slabs without a marker and muted blobs; 64-96 px.
- ``"tinted"``: ``"default"`` with a faint tint of the class hue over the whole body (and a faint tint of a random
  hue over each headless body): the head is the strong cue, the body a weak one, as a bird's head and plumage
  are. The other families' bodies say nothing about the class; this one tests SCM where its premise holds, a
  semantic map that is class-specific over the whole object (``docs/results.md``).

Only the cue tells the classes apart, so a classifier's map lights up the cue: the partial-activation trap that
weakly supervised object localization methods such as SCM (Bai et al., ECCV 2022) exist to fix. The mask covers the
whole object, body and cue. :mod:`scm_calib.data.generated` writes these images as a dataset folder.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable

import numpy as np

FAMILIES = ("default", "blobs", "marker", "tinted")
"""The data families :func:`render_object_image` draws."""
FAMILY_SIZES = {"default": (96, 128), "blobs": (112, 160), "marker": (64, 96), "tinted": (96, 128)}
"""Each family's default (smallest, largest) image side in pixels."""


def render_object_image(
    rng: np.random.Generator,
    label: int,
    num_classes: int,
    min_size: int = 96,
    max_size: int = 128,
    family: str = "default",
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image of the generated dataset.

    Args:
        rng: the random generator (consumed).
        label: 0-based class; in ``"default"`` and ``"tinted"`` it picks the head hue ``360 * label / num_classes``
            (jittered).
        num_classes: number of classes.
        min_size: smallest image side in pixels.
        max_size: largest image side in pixels.
        family: the data family, one of :data:`FAMILIES`.

    Returns:
        image (H, W, 3) uint8 and mask (H, W) bool of the object (body and cue).
    """
    if family == "blobs":
        return _render_blobs(rng, label, num_classes, min_size, max_size)
    if family == "marker":
        return _render_marker(rng, label, num_classes, min_size, max_size)
    tinted = family == "tinted"
    xs, ys, image, scale = _canvas(rng, min_size, max_size)
    height, width = xs.shape
    class_hue = _class_hue(rng, label, num_classes) if tinted else None

    body = _body_shape(rng, scale)
    head_radius = body["minor"] * rng.uniform(0.5, 0.7)
    side = rng.choice([-1.0, 1.0])
    direction = np.array([np.cos(body["angle"]), np.sin(body["angle"])]) * side
    head_offset = direction * (body["major"] + 0.3 * head_radius)
    # Extent of the object around the body centre: the body's box, widened by the head's disc.
    half_x = np.hypot(body["major"] * np.cos(body["angle"]), body["minor"] * np.sin(body["angle"]))
    half_y = np.hypot(body["major"] * np.sin(body["angle"]), body["minor"] * np.cos(body["angle"]))
    low = np.minimum([-half_x, -half_y], head_offset - head_radius)
    high = np.maximum([half_x, half_y], head_offset + head_radius)
    centre = np.array([rng.uniform(1 - low[0], width - 1 - high[0]), rng.uniform(1 - low[1], height - 1 - high[1])])
    object_box = (*(centre + low - 2), *(centre + high + 2))

    for _ in range(int(rng.random() < 0.6)):
        shape = _body_shape(rng, scale * rng.uniform(0.6, 1.0))
        mask = _place(rng, xs, ys, object_box, shape["major"], lambda cx, cy, s=shape: _ellipse(xs, ys, cx, cy, s))
        if mask is not None:
            _paint(image, mask, _tinted_colour(rng, rng.uniform(0, 1)) if tinted else _body_colour(rng), rng)
    for _ in range(int(rng.integers(1, 4))):
        mask = _blob(rng, xs, ys, object_box, scale)
        if mask is not None:
            hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.15, 0.55), rng.uniform(0.35, 0.95)
            _paint(image, mask, np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255, rng)

    body_mask = _ellipse(xs, ys, centre[0], centre[1], body)
    head_centre = centre + head_offset
    head_mask = (xs - head_centre[0]) ** 2 + (ys - head_centre[1]) ** 2 <= head_radius**2
    _paint(image, body_mask, _tinted_colour(rng, class_hue) if tinted else _body_colour(rng), rng)
    if class_hue is None:
        class_hue = _class_hue(rng, label, num_classes)
    head_colour = np.array(colorsys.hsv_to_rgb(class_hue, rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0))) * 255
    _paint(image, head_mask, head_colour, rng)
    return np.clip(image, 0, 255).round().astype(np.uint8), body_mask | head_mask


def _canvas(rng: np.random.Generator, min_size: int, max_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A random image size in [min_size, max_size]: pixel-centre grids xs, ys (H, W), its background, shorter side."""
    width, height = (int(side) for side in rng.integers(min_size, max_size + 1, size=2))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    return xs, ys, _background(rng, xs, ys), min(width, height)


def _background(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """(H, W, 3) float background: gradient, low-frequency texture, stripes (sometimes), pixel noise."""
    height, width = xs.shape
    start, end = rng.uniform(30, 225, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = xs * np.cos(angle) + ys * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    image = start + (end - start) * ramp[..., None]
    grid = int(rng.integers(3, 9))
    coarse = rng.normal(0.0, 1.0, size=(grid, grid, 3))
    rows = np.linspace(0, grid - 1, height)
    cols = np.linspace(0, grid - 1, width)
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    r1, c1 = np.minimum(r0 + 1, grid - 1), np.minimum(c0 + 1, grid - 1)
    fr, fc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
    texture = (
        coarse[r0][:, c0] * (1 - fr) * (1 - fc)
        + coarse[r0][:, c1] * (1 - fr) * fc
        + coarse[r1][:, c0] * fr * (1 - fc)
        + coarse[r1][:, c1] * fr * fc
    )
    image = image + texture * rng.uniform(10, 35)
    if rng.random() < 0.5:
        stripe_angle = rng.uniform(0, np.pi)
        period = rng.uniform(4, 16)
        phase = (xs * np.cos(stripe_angle) + ys * np.sin(stripe_angle)) * (2 * np.pi / period)
        image = image + (np.sin(phase) * rng.uniform(5, 20))[..., None]
    return image + rng.normal(0.0, rng.uniform(3, 12), size=image.shape)


def _body_shape(rng: np.random.Generator, scale: float) -> dict[str, float]:
    major = scale * rng.uniform(0.17, 0.30)
    return {"major": major, "minor": major * rng.uniform(0.45, 0.75), "angle": rng.uniform(0, np.pi)}


def _body_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(85, 175) + rng.uniform(-12, 12, size=3)


def _class_hue(rng: np.random.Generator, label: int, num_classes: int) -> float:
    """The hue in [0, 1) that codes class ``label``: ``label / num_classes``, jittered by 15 % of the spacing."""
    spacing = 1.0 / num_classes
    return (label * spacing + rng.uniform(-0.15, 0.15) * spacing) % 1.0


def _tinted_colour(rng: np.random.Generator, hue: float) -> np.ndarray:
    """A body colour of the ``_body_colour`` brightness with a faint tint of ``hue``."""
    value = rng.uniform(85, 175) / 255
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.15, 0.3), value)) * 255


def _ellipse(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, shape: dict[str, float]) -> np.ndarray:
    """(H, W) bool: pixel centres inside the rotated ellipse ``shape`` centred at (cx, cy)."""
    cos, sin = np.cos(shape["angle"]), np.sin(shape["angle"])
    u = (xs - cx) * cos + (ys - cy) * sin
    v = -(xs - cx) * sin + (ys - cy) * cos
    return (u / shape["major"]) ** 2 + (v / shape["minor"]) ** 2 <= 1.0


def _place(
    rng: np.random.Generator,
    xs: np.ndarray,
    ys: np.ndarray,
    object_box: tuple[float, float, float, float],
    radius: float,
    draw: Callable[[float, float], np.ndarray],
) -> np.ndarray | None:
    """Draw a distractor at a random centre whose disc of ``radius`` stays clear of the object's box."""
    height, width = xs.shape
    x0, y0, x1, y1 = object_box
    for _ in range(10):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        if cx + radius < x0 or cx - radius > x1 or cy + radius < y0 or cy - radius > y1:
            return draw(cx, cy)
    return None


def _blob(
    rng: np.random.Generator,
    xs: np.ndarray,
    ys: np.ndarray,
    object_box: tuple[float, float, float, float],
    scale: float,
) -> np.ndarray | None:
    """A random ellipse, rectangle or triangle clear of the object's box, or None if none fits."""
    radius = scale * rng.uniform(0.05, 0.14)
    kind = int(rng.integers(3))
    angle = rng.uniform(0, np.pi)
    aspect = rng.uniform(0.5, 1.0)

    def draw(cx: float, cy: float) -> np.ndarray:
        u = (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)
        v = -(xs - cx) * np.sin(angle) + (ys - cy) * np.cos(angle)
        if kind == 0:
            return (u / radius) ** 2 + (v / (radius * aspect)) ** 2 <= 1.0
        if kind == 1:
            return (np.abs(u) <= radius * 0.8) & (np.abs(v) <= radius * 0.8 * aspect)
        corners = [angle + k * 2 * np.pi / 3 for k in range(3)]
        inside = np.ones_like(xs, dtype=bool)
        for k in range(3):
            ax, ay = cx + radius * np.cos(corners[k]), cy + radius * np.sin(corners[k])
            bx, by = cx + radius * np.cos(corners[(k + 1) % 3]), cy + radius * np.sin(corners[(k + 1) % 3])
            inside &= (bx - ax) * (ys - ay) - (by - ay) * (xs - ax) >= 0
        return inside

    return _place(rng, xs, ys, object_box, radius, draw)


def _paint(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator) -> None:
    """Fill ``mask`` with ``colour`` plus a little speckle, in place."""
    image[mask] = colour + rng.normal(0.0, 5.0, size=(int(mask.sum()), 3))


MARKER_SHAPES = ("disc", "triangle", "square", "diamond", "star", "cross", "ring", "bar", "half_disc", "hexagon")


def _star_convex(
    xs: np.ndarray,
    ys: np.ndarray,
    cx: float,
    cy: float,
    radius: np.ndarray | float,
    angle: float,
    aspect: float,
    wobble: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inside test of a rotated star-convex outline ``radius * (1 + sum_k a_k cos(k theta + phi_k))``.

    Returns:
        mask (H, W) bool and the object's frame coordinates u, v (H, W), in units of ``radius``.
    """
    cos, sin = np.cos(angle), np.sin(angle)
    u = ((xs - cx) * cos + (ys - cy) * sin) / radius
    v = (-(xs - cx) * sin + (ys - cy) * cos) / (radius * aspect)
    theta = np.arctan2(v, u)
    outline = 1.0 + sum(a * np.cos((k + 2) * theta + phi) for k, (a, phi) in enumerate(wobble))
    return np.hypot(u, v) <= outline, u, v


def _fit_centre(rng: np.random.Generator, width: int, height: int, extent: float) -> np.ndarray:
    """A centre that keeps a disc of radius ``extent`` inside the image."""
    return np.array([rng.uniform(extent + 1, width - 1 - extent), rng.uniform(extent + 1, height - 1 - extent)])


def _render_blobs(
    rng: np.random.Generator, label: int, num_classes: int, min_size: int, max_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``"blobs"`` family: a striped irregular blob with a class-hued band across it."""
    xs, ys, image, scale = _canvas(rng, min_size, max_size)
    height, width = xs.shape

    def blob(radius: float) -> tuple[dict, float]:
        wobble = np.stack([rng.uniform(-0.18, 0.18, size=3), rng.uniform(0, 2 * np.pi, size=3)], axis=1)
        shape = {"radius": radius, "angle": rng.uniform(0, np.pi), "aspect": rng.uniform(0.55, 0.9), "wobble": wobble}
        return shape, radius * 1.3

    def draw(shape: dict, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _star_convex(xs, ys, cx, cy, shape["radius"], shape["angle"], shape["aspect"], shape["wobble"])

    def paint_body(mask: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        base = _body_colour(rng)
        stripes = np.sin((u * np.cos(rng.uniform(0, np.pi)) + v) * rng.uniform(6, 12))[..., None]
        image[mask] = (base + 18 * stripes)[mask] + rng.normal(0.0, 5.0, size=(int(mask.sum()), 3))

    body, extent = blob(scale * rng.uniform(0.13, 0.24))
    centre = _fit_centre(rng, width, height, extent)
    object_box = (centre[0] - extent, centre[1] - extent, centre[0] + extent, centre[1] + extent)
    for _ in range(int(rng.integers(0, 2))):
        other, other_extent = blob(scale * rng.uniform(0.12, 0.22))
        mask = _place(rng, xs, ys, object_box, other_extent, lambda cx, cy, o=other: draw(o, cx, cy)[0])
        if mask is not None:
            paint_body(mask, xs / scale * 8, ys / scale * 8)
    for _ in range(int(rng.integers(1, 4))):
        radius = scale * rng.uniform(0.04, 0.1)
        mask = _place(rng, xs, ys, object_box, radius, lambda cx, cy, r=radius: np.hypot(xs - cx, ys - cy) <= r)
        if mask is not None:
            colour = np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.1, 0.4), rng.uniform(0.4, 0.9)))
            _paint(image, mask, colour * 255, rng)
    body_mask, u, v = draw(body, centre[0], centre[1])
    paint_body(body_mask, u, v)
    offset, half = rng.uniform(-0.45, 0.45), rng.uniform(0.14, 0.22)
    band = body_mask & (np.abs(u - offset) <= half)
    hue = _class_hue(rng, label, num_classes)
    _paint(image, band, np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0))) * 255, rng)
    return np.clip(image, 0, 255).round().astype(np.uint8), body_mask


def _marker_mask(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of marker outline ``kind`` in its own frame (about the unit disc)."""
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    if kind == "disc":
        return rho <= 1
    if kind in ("triangle", "square", "hexagon", "diamond"):
        n = {"triangle": 3, "square": 4, "hexagon": 6, "diamond": 4}[kind]
        turn = np.pi / 4 if kind == "diamond" else 0.0
        sector = 2 * np.pi / n
        local = np.remainder(theta + turn, sector) - sector / 2
        return rho * np.cos(local) <= np.cos(np.pi / n) * (1.0 if kind != "diamond" else 1.15)
    if kind == "star":
        wave = np.abs(np.remainder(theta, 2 * np.pi / 5) / (np.pi / 5) - 1)
        return rho <= 0.45 + 0.6 * wave
    if kind == "cross":
        return ((np.abs(u) <= 1) & (np.abs(v) <= 0.35)) | ((np.abs(u) <= 0.35) & (np.abs(v) <= 1))
    if kind == "ring":
        return (rho <= 1) & (rho >= 0.55)
    if kind == "bar":
        return (np.abs(u) <= 1) & (np.abs(v) <= 0.4)
    return (rho <= 1) & (v >= 0)  # half_disc


def _render_marker(
    rng: np.random.Generator, label: int, num_classes: int, min_size: int, max_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``"marker"`` family: a rounded, shaded slab with a class-shaped marker near one end."""
    xs, ys, image, scale = _canvas(rng, min_size, max_size)
    height, width = xs.shape

    def slab(half_long: float) -> dict:
        return {"a": half_long, "b": half_long * rng.uniform(0.45, 0.7), "angle": rng.uniform(0, np.pi)}

    def slab_mask(shape: dict, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cos, sin = np.cos(shape["angle"]), np.sin(shape["angle"])
        u = ((xs - cx) * cos + (ys - cy) * sin) / shape["a"]
        v = (-(xs - cx) * sin + (ys - cy) * cos) / shape["b"]
        return np.abs(u) ** 4 + np.abs(v) ** 4 <= 1.0, u, v

    def paint_slab(mask: np.ndarray, u: np.ndarray) -> None:
        base = _body_colour(rng)
        image[mask] = (base + 30 * u[..., None])[mask] + rng.normal(0.0, 4.0, size=(int(mask.sum()), 3))

    body = slab(scale * rng.uniform(0.24, 0.34))
    centre = _fit_centre(rng, width, height, body["a"] * 1.05)
    extent = body["a"] * 1.05
    object_box = (centre[0] - extent, centre[1] - extent, centre[0] + extent, centre[1] + extent)
    for _ in range(int(rng.random() < 0.6)):
        other = slab(scale * rng.uniform(0.15, 0.25))
        mask = _place(rng, xs, ys, object_box, other["a"] * 1.05, lambda cx, cy, o=other: slab_mask(o, cx, cy)[0])
        if mask is not None:
            paint_slab(mask, (xs - xs.mean()) / scale)
    for _ in range(int(rng.integers(1, 4))):
        mask = _blob(rng, xs, ys, object_box, scale)
        if mask is not None:
            colour = np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.15, 0.55), rng.uniform(0.35, 0.95)))
            _paint(image, mask, colour * 255, rng)
    body_mask, u, v = slab_mask(body, centre[0], centre[1])
    paint_slab(body_mask, u)
    end = rng.choice([-1.0, 1.0]) * 0.55
    size = rng.uniform(0.6, 0.75)  # in units of the slab's half width
    turn = rng.uniform(0, 2 * np.pi)
    mu, mv = (u - end) * body["a"] / (body["b"] * size), v / size
    mu, mv = mu * np.cos(turn) + mv * np.sin(turn), -mu * np.sin(turn) + mv * np.cos(turn)
    marker = body_mask & _marker_mask(MARKER_SHAPES[label % len(MARKER_SHAPES)], mu, mv)
    shade = rng.uniform(225, 250) if label < len(MARKER_SHAPES) else rng.uniform(5, 30)
    _paint(image, marker, np.full(3, shade), rng)
    return np.clip(image, 0, 255).round().astype(np.uint8), body_mask
