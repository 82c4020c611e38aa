"""ILSVRC-2012 validation boxes in the list-file format of WSOL code bases (TS-CAM, SCM).

One line per image: ``<relative path> <label> <x0> <y0> <x1> <y1> [<x0> <y0> <x1> <y1> ...]``, all boxes of
the image in pixels of the original image, labels 0-based (``label_base=1`` for 1-based files).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scm_calib.data.base import WSOLDataset
from scm_calib.data.records import (
    DatasetFormatError,
    ImageRecord,
    parse_box,
    parse_image_path,
    parse_int,
    read_lines,
    split_fields,
)

LIST_LAYOUT = "<relative path> <label> <x0> <y0> <x1> <y1> [<x0> <y0> <x1> <y1> ...]"


def read_ilsvrc_list(list_file: str | Path, *, label_base: int = 0, require_boxes: bool = True) -> list[ImageRecord]:
    """Parse a list file of images, labels and boxes.

    Args:
        list_file: the text file.
        label_base: the label of the first class in the file (0 or 1); labels come out 0-based.
        require_boxes: raise on a line without boxes (an evaluation list); False accepts "<path> <label>".

    Returns:
        One record per line, in file order.

    Raises:
        DatasetFormatError: naming the file and line at fault.
    """
    path = Path(list_file)
    records = []
    seen: dict[str, int] = {}
    for number, line in read_lines(path):
        fields = split_fields(path, number, line, LIST_LAYOUT, None)
        num_box_fields = len(fields) - 2
        if num_box_fields < 0 or num_box_fields % 4 or (require_boxes and num_box_fields == 0):
            raise DatasetFormatError(
                f"{path}, line {number}: expected '{LIST_LAYOUT}' (2 + 4k fields, k >= {int(require_boxes)}), "
                f"got {len(fields)} fields in {line!r}."
            )
        image_path = parse_image_path(path, number, fields[0])
        if image_path in seen:
            raise DatasetFormatError(
                f"{path}, line {number}: {image_path} already listed on line {seen[image_path]}; put all boxes "
                "of an image on its one line."
            )
        seen[image_path] = number
        label = parse_int(path, number, fields[1], "label") - label_base
        if label < 0:
            raise DatasetFormatError(
                f"{path}, line {number}: label {fields[1]} is below label_base={label_base}; pass the right "
                "label_base (0 or 1)."
            )
        boxes = tuple(parse_box(path, number, fields[i : i + 4]) for i in range(2, len(fields), 4))
        records.append(ImageRecord(path=image_path, label=label, boxes=boxes, source=f"{path}:{number}"))
    if not records:
        raise DatasetFormatError(f"{path}: lists no images; expected lines '{LIST_LAYOUT}'.")
    return records


class ILSVRCListDataset(WSOLDataset):
    """ILSVRC (or any) images with boxes from a list file; samples as :class:`~scm_calib.data.CUBDataset`.

    Args:
        image_root: folder the list's paths are relative to (e.g. ``ILSVRC2012/val``).
        list_file: the list file.
        label_base: the label of the first class in the file (0 or 1).
        require_boxes: raise on a line without boxes.
        image_size: side of the square network input.
        augment: training transform instead of the eval transform (only when ``transform`` is None).
        transform: a v2 transform replacing the default (see :class:`~scm_calib.data.WSOLDataset`).
        boxes_protocol: also give the protocol's integer boxes; default: on with the default eval transform.
        class_names: the name of every class, index = label; default: the labels as text.
    """

    def __init__(
        self,
        image_root: str | Path,
        list_file: str | Path,
        *,
        label_base: int = 0,
        require_boxes: bool = True,
        image_size: int = 224,
        augment: bool = False,
        transform: Callable[..., Any] | None = None,
        boxes_protocol: bool | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            read_ilsvrc_list(list_file, label_base=label_base, require_boxes=require_boxes),
            image_root,
            image_size=image_size,
            augment=augment,
            transform=transform,
            boxes_protocol=boxes_protocol,
            class_names=class_names,
        )
