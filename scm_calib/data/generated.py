"""A procedurally drawn WSOL dataset in the CUB-200-2011 layout: the default data of ``scm_calib``.

:func:`ensure_generated_dataset` draws the images of one data family (:mod:`scm_calib.data.drawing` says what
each family looks like) and writes them as a dataset folder, once per settings. The folder holds ``images.txt``,
``image_class_labels.txt``, ``train_test_split.txt``, ``bounding_boxes.txt``, ``classes.txt``,
``images/<class dir>/*.png``, optionally ``segmentations/`` (PNG masks, 255 = object) and
``wsol_metadata/{val,test}/`` in the wsolevaluation format. The box and the mask cover the whole object. The "val"
images are drawn like the train images but listed only in ``wsol_metadata/val`` (not in the CUB files), so a
threshold can be chosen on them without touching train or test.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scm_calib.data.drawing import FAMILIES, FAMILY_SIZES, MARKER_SHAPES, render_object_image

MARKER = ".scm_calib_generated.json"
FORMAT_VERSION = 1
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
    if spec.family == "marker" and spec.num_classes > 2 * len(MARKER_SHAPES):
        raise ValueError(
            f"the marker family has {2 * len(MARKER_SHAPES)} classes (marker outlines x white/black), got "
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
        shape = MARKER_SHAPES[label % len(MARKER_SHAPES)]
        return f"{label + 1:03d}.marker_{shape}_{'white' if label < len(MARKER_SHAPES) else 'black'}"
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
