"""CUB-200-2011 (Wah et al., 2011) in its published directory layout, the WSOL benchmark of SCM (ECCV 2022).

``<root>/images.txt`` ("<id> <relative path>"), ``image_class_labels.txt`` ("<id> <label 1..C>"),
``train_test_split.txt`` ("<id> <1 train | 0 test>"), ``bounding_boxes.txt`` ("<id> <x> <y> <width>
<height>", float pixels of the original image), ``classes.txt`` ("<label> <name>"), images under ``images/``
and, optionally, masks under ``segmentations/`` (PNG, same relative path, 255 = object). The generated
default dataset (:mod:`scm_calib.data.generated`) is written in this layout too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from scm_calib.data.base import WSOLDataset
from scm_calib.data.records import (
    DatasetFormatError,
    ImageRecord,
    parse_float,
    parse_image_path,
    parse_int,
    read_lines,
    split_fields,
)

CUB_FILES: tuple[str, ...] = (
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "bounding_boxes.txt",
    "classes.txt",
)


def read_cub_classes(root: str | Path) -> list[str]:
    """Class names of a CUB-layout folder, in label order.

    Args:
        root: the folder holding ``classes.txt``.

    Returns:
        C names; label ``i`` (0-based) is ``names[i]``.
    """
    path = Path(root) / "classes.txt"
    names = []
    for number, line in read_lines(path):
        fields = split_fields(path, number, line, "<label> <name>", None, sep=None)
        if len(fields) < 2:
            raise DatasetFormatError(f"{path}, line {number}: expected '<label> <name>', got {line!r}.")
        label = parse_int(path, number, fields[0], "label")
        if label != len(names) + 1:
            raise DatasetFormatError(
                f"{path}, line {number}: labels must run 1, 2, 3, ... in order; expected {len(names) + 1}, got {label}."
            )
        names.append(line.split(None, 1)[1].strip())
    if not names:
        raise DatasetFormatError(f"{path}: lists no classes; expected lines '<label> <name>'.")
    return names


def read_cub_records(root: str | Path, split: Literal["train", "test", "all"] = "all") -> list[ImageRecord]:
    """Parse and cross-check the CUB text files of a folder.

    Every file is read completely: a missing file, a malformed line, a duplicate id, an id that one file
    lists and another does not, a label outside ``classes.txt`` or a split value other than 0/1 raises.

    Args:
        root: the ``CUB_200_2011``-like folder.
        split: ``"train"`` (split value 1), ``"test"`` (0) or ``"all"``.

    Returns:
        Records in ``images.txt`` order; labels 0-based; the box (x, y, w, h) becomes (x, y, x + w, y + h).

    Raises:
        DatasetFormatError: naming the file and line at fault.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}.")
    root = Path(root)
    num_classes = len(read_cub_classes(root))

    images_path = root / "images.txt"
    paths: dict[int, tuple[str, int]] = {}
    for number, line in read_lines(images_path):
        fields = line.split(None, 1)
        if len(fields) != 2:
            raise DatasetFormatError(
                f"{images_path}, line {number}: expected 2 fields '<id> <relative path>', got {line!r}."
            )
        image_id = parse_int(images_path, number, fields[0], "image id")
        if image_id in paths:
            raise DatasetFormatError(
                f"{images_path}, line {number}: image id {image_id} already listed on line {paths[image_id][1]}."
            )
        paths[image_id] = (parse_image_path(images_path, number, fields[1].strip()), number)
    if not paths:
        raise DatasetFormatError(f"{images_path}: lists no images; expected lines '<id> <relative path>'.")

    def per_id(name: str, layout: str, count: int) -> dict[int, tuple[list[str], int]]:
        path = root / name
        rows: dict[int, tuple[list[str], int]] = {}
        for number, line in read_lines(path):
            fields = split_fields(path, number, line, layout, count)
            image_id = parse_int(path, number, fields[0], "image id")
            if image_id not in paths:
                raise DatasetFormatError(
                    f"{path}, line {number}: image id {image_id} is not in {images_path}; the files of a CUB "
                    "folder must list the same ids."
                )
            if image_id in rows:
                raise DatasetFormatError(
                    f"{path}, line {number}: image id {image_id} already listed on line {rows[image_id][1]}."
                )
            rows[image_id] = (fields[1:], number)
        for image_id, (image_path, number) in paths.items():
            if image_id not in rows:
                raise DatasetFormatError(
                    f"{path}: has no line for image id {image_id} ({image_path}, {images_path} line {number}); "
                    "the files of a CUB folder must list the same ids."
                )
        return rows

    labels = per_id("image_class_labels.txt", "<id> <label>", 2)
    splits = per_id("train_test_split.txt", "<id> <1 train | 0 test>", 2)
    boxes = per_id("bounding_boxes.txt", "<id> <x> <y> <width> <height>", 5)

    records = []
    for image_id, (image_path, images_line) in paths.items():
        (label_text,), label_line = labels[image_id]
        label_path = root / "image_class_labels.txt"
        label = parse_int(label_path, label_line, label_text, "label")
        if not 1 <= label <= num_classes:
            raise DatasetFormatError(
                f"{label_path}, line {label_line}: label {label} is outside 1..{num_classes} "
                f"(the labels of {root / 'classes.txt'})."
            )
        (split_text,), split_line = splits[image_id]
        split_path = root / "train_test_split.txt"
        is_train = parse_int(split_path, split_line, split_text, "split value")
        if is_train not in (0, 1):
            raise DatasetFormatError(
                f"{split_path}, line {split_line}: split value must be 1 (train) or 0 (test), got {is_train}."
            )
        box_fields, box_line = boxes[image_id]
        box_path = root / "bounding_boxes.txt"
        x, y, width, height = (
            parse_float(box_path, box_line, text, name)
            for text, name in zip(box_fields, ("x", "y", "width", "height"), strict=True)
        )
        if width < 0 or height < 0:
            raise DatasetFormatError(
                f"{box_path}, line {box_line}: width and height must be >= 0, got {width} and {height}."
            )
        if split == "all" or (split == "train") == bool(is_train):
            records.append(
                ImageRecord(
                    path=image_path,
                    label=label - 1,
                    boxes=((x, y, x + width, y + height),),
                    source=f"{images_path}:{images_line}",
                )
            )
    return records


class CUBDataset(WSOLDataset):
    """CUB-200-2011 (or the generated dataset) from its published layout.

    Samples are :class:`~scm_calib.data.WSOLSample` s: the image after the paper's transform, the 0-based
    label, the box following the transform, the original size, the protocol boxes (eval transform) and the
    mask when ``segmentations/`` exists.

    Args:
        root: the ``CUB_200_2011``-like folder.
        split: ``"train"``, ``"test"`` or ``"all"``.
        image_size: side of the square network input (224 in the paper).
        augment: training transform (random crop, flip) instead of the eval transform; default: on for
            ``split="train"``. Only used when ``transform`` is None.
        transform: a v2 transform replacing the default (see :class:`~scm_calib.data.WSOLDataset`).
        boxes_protocol: also give the protocol's integer boxes; default: on with the default eval transform.
        masks: read masks from ``<root>/segmentations``; default: when that folder exists.
    """

    def __init__(
        self,
        root: str | Path,
        split: Literal["train", "test", "all"] = "train",
        *,
        image_size: int = 224,
        augment: bool | None = None,
        transform: Callable[..., Any] | None = None,
        boxes_protocol: bool | None = None,
        masks: bool | None = None,
    ) -> None:
        root = Path(root)
        self.root = root
        self.split = split
        mask_root = root / "segmentations"
        if masks is None:
            masks = mask_root.is_dir()
        elif masks and not mask_root.is_dir():
            raise DatasetFormatError(
                f"{mask_root}: folder not found but masks=True; add the CUB segmentations there or pass masks=False."
            )
        super().__init__(
            read_cub_records(root, split),
            root / "images",
            image_size=image_size,
            augment=split == "train" if augment is None else augment,
            transform=transform,
            boxes_protocol=boxes_protocol,
            mask_root=mask_root if masks else None,
            class_names=read_cub_classes(root),
        )
