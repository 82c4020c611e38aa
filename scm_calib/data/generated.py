"""A procedurally drawn WSOL dataset in the CUB-200-2011 layout: the default data of ``scm_calib``.

Each image holds one object: a grey-ish ellipse "body" (random size, aspect, angle and position; the body
colour is drawn from one distribution for every class) with a small "head" disc at one end whose hue codes
the class. The box and the mask cover the whole object, body and head. The background is cluttered (two-colour
gradient, low-frequency texture, stripes, pixel noise) and holds distractors that say nothing about the
class: headless bodies and muted blobs (ellipses, rectangles, triangles) of random hue.

Only the head tells the classes apart, so a classifier's map lights up the head: the partial-activation
trap that weakly supervised object localization methods such as SCM (Bai et al., ECCV 2022) exist to fix.

``family`` picks one of several data families of the same kind but of different appearance, so that a claim
tuned on one can be checked on the others (:data:`FAMILIES`):

- ``"default"``: the ellipse body with a coloured head (above), 96-128 px.
- ``"blobs"``: an irregular striped blob whose class is the hue of a band across it; distractors are blobs
  without a band and muted discs; 112-160 px.
- ``"marker"``: a rounded, shaded slab whose class is the *outline* of a small white or black marker near one
  end (not a colour); distractors are slabs without a marker and muted blobs; 64-96 px.

The folder holds ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``, ``bounding_boxes.txt``,
``classes.txt``, ``images/<class dir>/*.png``, optionally ``segmentations/`` (PNG masks, 255 = object)
and ``wsol_metadata/{val,test}/`` in the wsolevaluation format. The "val" images are drawn like the train
images but listed only in ``wsol_metadata/val`` (not in the CUB files), so a threshold can be chosen on
them without touching train or test.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MARKER = ".scm_calib_generated.json"
FORMAT_VERSION = 1
FAMILIES = ("default", "blobs", "marker")
# The image sides of each family when ``min_size`` / ``max_size`` are left at None.
FAMILY_SIZES = {"default": (96, 128), "blobs": (112, 160), "marker": (64, 96)}
_SPLIT_CODES = {"train": 0, "test": 1, "val": 2}


@dataclass(frozen=True)
class _Spec:
    seed: int
    num_classes: int
    train_per_class: int
    test_per_class: int
    val_per_class: int
    min_size: int
    max_size: int
    masks: bool
    format_version: int = FORMAT_VERSION
    family: str = "default"


def ensure_generated_dataset(
    root: str | Path,
    seed: int = 0,
    *,
    num_classes: int = 10,
    train_per_class: int = 60,
    test_per_class: int = 30,
    val_per_class: int = 10,
    min_size: int | None = None,
    max_size: int | None = None,
    masks: bool = True,
    family: str = "default",
) -> Path:
    """Generate the dataset into ``root`` unless a complete one with the same arguments is there.

    Generation writes into a temporary sibling folder, writes the marker file last and renames the folder to
    ``root``: a killed generation never leaves a folder that looks complete, and concurrent callers (e.g.
    DDP ranks) end with one dataset. The output is deterministic for the arguments (same bytes).

    Args:
        root: the dataset folder to create (the ``CUB_200_2011``-like root); its parent is created if needed.
        seed: random seed; each image is drawn from ``(seed, label, split, index)`` alone.
        num_classes: number of classes (head hues), 2 to 36.
        train_per_class: train images per class (split value 1).
        test_per_class: test images per class (split value 0).
        val_per_class: held-out images per class, listed only in ``wsol_metadata/val``.
        min_size: smallest image side in pixels; width and height are drawn in [min_size, max_size]
            (None: the family's, :data:`FAMILY_SIZES`).
        max_size: largest image side in pixels (None: the family's).
        masks: also write ``segmentations/`` (PNG, 255 = object).
        family: the data family, one of :data:`FAMILIES`.

    Returns:
        ``root`` as a Path, to pass to :class:`~scm_calib.data.CUBDataset`.

    Raises:
        FileExistsError: ``root`` exists and is not a complete generated dataset with these arguments.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown data family {family!r}; use one of {FAMILIES}.")
    default_min, default_max = FAMILY_SIZES[family]
    min_size = default_min if min_size is None else min_size
    max_size = default_max if max_size is None else max_size
    spec = _Spec(
        seed, num_classes, train_per_class, test_per_class, val_per_class, min_size, max_size, masks, family=family
    )
    _check_spec(spec)
    root = Path(root)
    if _is_complete(root, spec):
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(
            f"{root} exists and is not a complete generated dataset (no {MARKER}); delete it or pass another root."
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        tmp.chmod(0o755)
        _write_dataset(tmp, spec)
        try:
            os.replace(tmp, root)
        except OSError:
            if not _is_complete(root, spec):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _check_spec(spec: _Spec) -> None:
    if not 2 <= spec.num_classes <= 36:
        raise ValueError(f"num_classes must be in 2..36 (distinct head hues), got {spec.num_classes}.")
    if spec.family == "marker" and spec.num_classes > 2 * len(_MARKERS):
        raise ValueError(
            f"the marker family has {2 * len(_MARKERS)} classes (marker outlines x white/black), got "
            f"num_classes={spec.num_classes}; pass fewer classes or another family."
        )
    for name in ("train_per_class", "test_per_class", "val_per_class"):
        if getattr(spec, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(spec, name)}.")
    if spec.train_per_class + spec.test_per_class < 1:
        raise ValueError("train_per_class + test_per_class must be >= 1 for a non-empty CUB folder.")
    if not 32 <= spec.min_size <= spec.max_size:
        raise ValueError(
            f"need 32 <= min_size <= max_size (pixels), got min_size={spec.min_size}, max_size={spec.max_size}."
        )


def _is_complete(root: Path, spec: _Spec) -> bool:
    """Whether ``root`` holds a finished dataset; raises if it was generated with other arguments."""
    marker = root / MARKER
    if not marker.is_file():
        return False
    found = json.loads(marker.read_text(encoding="utf-8"))
    found.setdefault("family", "default")  # datasets written before families existed
    if found != asdict(spec):
        raise FileExistsError(
            f"{root} holds a generated dataset made with {found}, not with the requested {asdict(spec)}; "
            "pass another root or delete that folder."
        )
    return True


def _class_dir(label: int, num_classes: int, family: str = "default") -> str:
    if family == "marker":
        return (
            f"{label + 1:03d}.marker_{_MARKERS[label % len(_MARKERS)]}_{'white' if label < len(_MARKERS) else 'black'}"
        )
    cue = "head_hue" if family == "default" else "band_hue"
    return f"{label + 1:03d}.{cue}{round(360 * label / num_classes):03d}"


def _write_dataset(out: Path, spec: _Spec) -> None:
    """Draw every image and write the CUB files, the masks, the wsolevaluation metadata and the marker."""
    from PIL import Image

    lines: dict[str, list[str]] = {
        name: [] for name in ("images", "image_class_labels", "train_test_split", "bounding_boxes")
    }
    metadata: dict[str, dict[str, list[str]]] = {
        split: {"image_ids": [], "class_labels": [], "image_sizes": [], "localization": []} for split in ("val", "test")
    }
    counts = {"train": spec.train_per_class, "test": spec.test_per_class, "val": spec.val_per_class}
    image_id = 0
    for label in range(spec.num_classes):
        class_dir = _class_dir(label, spec.num_classes, spec.family)
        (out / "images" / class_dir).mkdir(parents=True)
        if spec.masks:
            (out / "segmentations" / class_dir).mkdir(parents=True)
        for split in ("train", "test", "val"):
            for index in range(counts[split]):
                rng = np.random.default_rng([spec.seed, label, _SPLIT_CODES[split], index])
                image, mask = render_object_image(
                    rng, label, spec.num_classes, spec.min_size, spec.max_size, family=spec.family
                )
                relative = f"{class_dir}/{split}_{index:04d}.png"
                Image.fromarray(image).save(out / "images" / relative, format="PNG")
                if spec.masks:
                    Image.fromarray(mask.astype(np.uint8) * 255).save(out / "segmentations" / relative, format="PNG")
                rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
                x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
                if split in metadata:
                    split_lines = metadata[split]
                    split_lines["image_ids"].append(relative)
                    split_lines["class_labels"].append(f"{relative},{label}")
                    split_lines["image_sizes"].append(f"{relative},{image.shape[1]},{image.shape[0]}")
                    split_lines["localization"].append(f"{relative},{x0},{y0},{x1},{y1}")
                if split == "val":
                    continue
                image_id += 1
                lines["images"].append(f"{image_id} {relative}")
                lines["image_class_labels"].append(f"{image_id} {label + 1}")
                lines["train_test_split"].append(f"{image_id} {int(split == 'train')}")
                lines["bounding_boxes"].append(f"{image_id} {x0:.1f} {y0:.1f} {x1 - x0:.1f} {y1 - y0:.1f}")
    for name, text_lines in lines.items():
        (out / f"{name}.txt").write_text("".join(f"{line}\n" for line in text_lines), encoding="utf-8")
    classes = [f"{label + 1} {_class_dir(label, spec.num_classes, spec.family)}" for label in range(spec.num_classes)]
    (out / "classes.txt").write_text("".join(f"{line}\n" for line in classes), encoding="utf-8")
    for split, files in metadata.items():
        if not files["image_ids"]:
            continue  # no images of this split (e.g. val_per_class=0): no metadata folder, as if it were absent
        (out / "wsol_metadata" / split).mkdir(parents=True)
        for name, text_lines in files.items():
            path = out / "wsol_metadata" / split / f"{name}.txt"
            path.write_text("".join(f"{line}\n" for line in text_lines), encoding="utf-8")
    (out / MARKER).write_text(json.dumps(asdict(spec), indent=1), encoding="utf-8")


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
        label: 0-based class; in ``"default"`` it picks the head hue ``360 * label / num_classes`` (jittered).
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
    xs, ys, image, scale = _canvas(rng, min_size, max_size)
    height, width = xs.shape

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
            _paint(image, mask, _body_colour(rng), rng)
    for _ in range(int(rng.integers(1, 4))):
        mask = _blob(rng, xs, ys, object_box, scale)
        if mask is not None:
            hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.15, 0.55), rng.uniform(0.35, 0.95)
            _paint(image, mask, np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255, rng)

    body_mask = _ellipse(xs, ys, centre[0], centre[1], body)
    head_centre = centre + head_offset
    head_mask = (xs - head_centre[0]) ** 2 + (ys - head_centre[1]) ** 2 <= head_radius**2
    _paint(image, body_mask, _body_colour(rng), rng)
    spacing = 1.0 / num_classes
    hue = (label * spacing + rng.uniform(-0.15, 0.15) * spacing) % 1.0
    head_colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0))) * 255
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


_MARKERS = ("disc", "triangle", "square", "diamond", "star", "cross", "ring", "bar", "half_disc", "hexagon")


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
    spacing = 1.0 / num_classes
    hue = (label * spacing + rng.uniform(-0.15, 0.15) * spacing) % 1.0
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
    marker = body_mask & _marker_mask(_MARKERS[label % len(_MARKERS)], mu, mv)
    shade = rng.uniform(225, 250) if label < len(_MARKERS) else rng.uniform(5, 30)
    _paint(image, marker, np.full(3, shade), rng)
    return np.clip(image, 0, 255).round().astype(np.uint8), body_mask
