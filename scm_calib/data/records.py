"""What a metadata file says about an image, and how its files are read: :class:`ImageRecord`, the
line parsers of every reader (``cub``, ``ilsvrc``, ``wsol_metadata``) and :func:`load_image`.

Every error is a :class:`DatasetFormatError` that names the file and line at fault.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

Box = tuple[float, float, float, float]


class DatasetFormatError(ValueError):
    """A dataset file is missing, malformed or inconsistent with another, or an image cannot be read.

    The message names the file (and the line) at fault.
    """


@dataclass(frozen=True)
class ImageRecord:
    """One image as a metadata file lists it.

    Attributes:
        path: image path relative to the dataset's image root.
        label: 0-based class index.
        boxes: boxes (x0, y0, x1, y1) in pixels of the original image; may be empty for splits without boxes.
        source: ``"<file>:<line>"`` of the line that listed the image, for error messages.
        size: original (width, height) when the metadata gives it (checked against the image), else None.
        masks: instance mask files (PNG, relative to the dataset's mask root) whose union is the object mask, as
            wsolevaluation lists OpenImages; empty when the masks mirror the images or there are none.
        ignore: the mask file of the pixels to leave out of PxAP (OpenImages' ignore regions), or None.
    """

    path: str
    label: int
    boxes: tuple[Box, ...]
    source: str
    size: tuple[int, int] | None = None
    masks: tuple[str, ...] = ()
    ignore: str | None = None


def parse_image_path(path: Path, number: int, text: str) -> str:
    """Check an image path of a metadata line: relative to the image folder and staying inside it.

    Raises:
        DatasetFormatError: an absolute path, a drive, or a ``..`` part, naming the file and line.
    """
    posix = PurePosixPath(text.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(text).drive or ".." in posix.parts:
        raise DatasetFormatError(
            f"{path}, line {number}: image path {text!r} leaves the image folder; paths must be relative to it, "
            "without a leading '/', a drive or '..'."
        )
    return text


# Pillow's modes of 16-bit grayscale images (PNG, TIFF); "I" is how older Pillow versions read 16-bit PNGs.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def load_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """Reads an image file as uint8, (H, W, 3) for mode ``"RGB"``, (H, W) for mode ``"L"``.

    16-bit grayscale images are scaled to 8 bits (``value // 257``); Pillow's own conversion would clip every
    value above 255 to white.

    Args:
        path: the image file.
        mode: ``"RGB"`` or ``"L"``.

    Raises:
        OSError, ValueError, SyntaxError: from Pillow (a missing, corrupt or truncated file).
        PIL.Image.DecompressionBombError: more than twice Pillow's ``MAX_IMAGE_PIXELS``.
    """
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(
            "scm_calib.data reads images with Pillow; install it with `pip install scm_calib[examples]`."
        ) from error
    with Image.open(path) as image:
        if image.mode in SIXTEEN_BIT_MODES:
            values = np.asarray(image, dtype=np.int64).clip(0, 65535) // 257
            return np.array(Image.fromarray(values.astype(np.uint8), "L").convert(mode), dtype=np.uint8)
        return np.array(image.convert(mode), dtype=np.uint8)


def read_lines(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of a text file with their 1-based numbers.

    Args:
        path: the file.

    Returns:
        (line number, stripped text) pairs.

    Raises:
        DatasetFormatError: the file is missing or is not UTF-8 text.
    """
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file not found; check the dataset root and that the download is complete.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetFormatError(f"{path}: cannot be read as UTF-8 text ({error}).") from error
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def split_fields(
    path: Path, number: int, line: str, layout: str, count: int | None, sep: str | None = None
) -> list[str]:
    """Split a line into fields and check their count.

    Args:
        path: file of the line (for the message).
        number: 1-based line number.
        line: the stripped line.
        layout: the expected layout, e.g. ``"<id> <x> <y> <width> <height>"`` (for the message).
        count: the number of fields expected; None to accept any.
        sep: separator; None for runs of whitespace.

    Returns:
        The fields, stripped.
    """
    fields = [field.strip() for field in line.split(sep)]
    if count is not None and len(fields) != count:
        raise DatasetFormatError(
            f"{path}, line {number}: expected {count} fields '{layout}', got {len(fields)} in {line!r}."
        )
    return fields


def parse_int(path: Path, number: int, text: str, name: str) -> int:
    """Parse an integer field, or raise :class:`DatasetFormatError` naming the file and line."""
    try:
        return int(text)
    except ValueError:
        raise DatasetFormatError(f"{path}, line {number}: {name} must be an integer, got {text!r}.") from None


def parse_float(path: Path, number: int, text: str, name: str) -> float:
    """Parse a finite float field, or raise :class:`DatasetFormatError` naming the file and line."""
    try:
        value = float(text)
    except ValueError:
        raise DatasetFormatError(f"{path}, line {number}: {name} must be a number, got {text!r}.") from None
    if not math.isfinite(value):
        raise DatasetFormatError(f"{path}, line {number}: {name} must be finite, got {text!r}.")
    return value


def parse_box(path: Path, number: int, fields: Sequence[str]) -> Box:
    """Parse four fields (x0, y0, x1, y1) into a box with x0 <= x1 and y0 <= y1."""
    x0, y0, x1, y1 = (
        parse_float(path, number, text, name) for text, name in zip(fields, ("x0", "y0", "x1", "y1"), strict=True)
    )
    if x1 < x0 or y1 < y0:
        raise DatasetFormatError(
            f"{path}, line {number}: box ({x0}, {y0}, {x1}, {y1}) has x1 < x0 or y1 < y0; boxes are "
            "(x0, y0, x1, y1) with the top-left corner first."
        )
    return (x0, y0, x1, y1)
