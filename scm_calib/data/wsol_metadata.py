"""The metadata format of wsolevaluation (Choe et al., "Evaluating WSOL Methods Right", CVPR 2020).

A split folder ``<metadata root>/<dataset>/<split>/`` holds ``image_ids.txt`` (one relative image path per
line), ``class_labels.txt`` ("<path>,<label>", 0-based), ``image_sizes.txt`` ("<path>,<width>,<height>") and
``localization.txt`` ("<path>,<x0>,<y0>,<x1>,<y1>", one line per box; for OpenImages "<path>,<mask>,<ignore>", one
line per instance mask, the ignore mask on the first line of an image only). Its held-out "train-fullsup" splits
(CUBV2, ImageNetV2) are where the threshold of a principled evaluation is chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scm_calib.data.base import WSOLDataset
from scm_calib.data.records import (
    Box,
    DatasetFormatError,
    ImageRecord,
    parse_box,
    parse_image_path,
    parse_int,
    read_lines,
    split_fields,
)


def read_wsol_metadata(split_dir: str | Path, *, require_boxes: bool = True) -> list[ImageRecord]:
    """Parse and cross-check the four files of a wsolevaluation split folder.

    Args:
        split_dir: the folder holding ``image_ids.txt`` and the others.
        require_boxes: ``localization.txt`` must exist and give every image at least one box (or mask); False
            reads splits without boxes (``localization.txt`` is then read only if present).

    Returns:
        One record per line of ``image_ids.txt``, in its order, with the image size (None for every image when
        ``image_sizes.txt`` is empty, as OpenImages ships it) and its boxes or mask files.

    Raises:
        DatasetFormatError: naming the file and line at fault (missing file, malformed line, duplicate id, a
            path that ``image_ids.txt`` does not list, an image without label, size or box).
    """
    root = Path(split_dir)
    ids_path = root / "image_ids.txt"
    ids: dict[str, int] = {}
    for number, line in read_lines(ids_path):
        if line in ids:
            raise DatasetFormatError(f"{ids_path}, line {number}: {line} already listed on line {ids[line]}.")
        ids[parse_image_path(ids_path, number, line)] = number
    if not ids:
        raise DatasetFormatError(f"{ids_path}: lists no images; expected one relative image path per line.")

    def known(path: Path, number: int, image_id: str) -> str:
        if image_id not in ids:
            raise DatasetFormatError(
                f"{path}, line {number}: {image_id} is not in {ids_path}; every file of a split must use the "
                "ids of image_ids.txt."
            )
        return image_id

    def once(path: Path, layout: str, count: int) -> dict[str, tuple[list[str], int]]:
        rows: dict[str, tuple[list[str], int]] = {}
        for number, line in read_lines(path):
            fields = split_fields(path, number, line, layout, count, sep=",")
            image_id = known(path, number, fields[0])
            if image_id in rows:
                raise DatasetFormatError(
                    f"{path}, line {number}: {image_id} already listed on line {rows[image_id][1]}."
                )
            rows[image_id] = (fields[1:], number)
        return rows

    labels_path, sizes_path, boxes_path = (
        root / name for name in ("class_labels.txt", "image_sizes.txt", "localization.txt")
    )
    labels = once(labels_path, "<path>,<label>", 2)
    sizes = once(sizes_path, "<path>,<width>,<height>", 3)
    boxes: dict[str, list[Box]] = {image_id: [] for image_id in ids}
    masks: dict[str, list[str]] = {image_id: [] for image_id in ids}
    ignores: dict[str, str] = {}
    if require_boxes or boxes_path.is_file():
        layouts = {5: "<path>,<x0>,<y0>,<x1>,<y1>", 3: "<path>,<mask path>,<ignore path>"}
        lines = read_lines(boxes_path)
        count = 3 if lines and len(lines[0][1].split(",")) == 3 else 5  # the first line tells masks from boxes
        for number, line in lines:
            fields = split_fields(boxes_path, number, line, layouts[count], count, sep=",")
            image_id = known(boxes_path, number, fields[0])
            if count != 3:
                boxes[image_id].append(parse_box(boxes_path, number, fields[1:]))
                continue
            masks[image_id].append(parse_image_path(boxes_path, number, fields[1]))
            if fields[2]:
                if image_id in ignores:
                    raise DatasetFormatError(
                        f"{boxes_path}, line {number}: a second ignore mask for {image_id}; give it on the image's "
                        "first line only."
                    )
                ignores[image_id] = parse_image_path(boxes_path, number, fields[2])

    records = []
    for image_id, number in ids.items():
        for path, rows in ((labels_path, labels), (sizes_path, sizes)):
            if image_id not in rows and (rows or path != sizes_path):
                raise DatasetFormatError(
                    f"{path}: has no line for {image_id} ({ids_path} line {number}); every image needs one."
                )
        if require_boxes and not boxes[image_id] and not masks[image_id]:
            raise DatasetFormatError(
                f"{boxes_path}: has no box or mask for {image_id} ({ids_path} line {number}); pass "
                "require_boxes=False for a split without boxes."
            )
        (label_text,), label_line = labels[image_id]
        label = parse_int(labels_path, label_line, label_text, "label")
        if label < 0:
            raise DatasetFormatError(f"{labels_path}, line {label_line}: label must be >= 0 (0-based), got {label}.")
        size = None
        if sizes:
            (width_text, height_text), size_line = sizes[image_id]
            width, height = (
                parse_int(sizes_path, size_line, text, name)
                for text, name in ((width_text, "width"), (height_text, "height"))
            )
            if min(width, height) < 1:
                raise DatasetFormatError(
                    f"{sizes_path}, line {size_line}: width and height must be >= 1, got {(width, height)}."
                )
            size = (width, height)
        records.append(
            ImageRecord(
                path=image_id,
                label=label,
                boxes=tuple(boxes[image_id]),
                source=f"{ids_path}:{number}",
                size=size,
                masks=tuple(masks[image_id]),
                ignore=ignores.get(image_id),
            )
        )
    return records


class WSOLMetadataDataset(WSOLDataset):
    """Images of a wsolevaluation split; samples as :class:`~scm_calib.data.CUBDataset`.

    The image size of ``image_sizes.txt`` is checked against each image when it is read. A split whose
    ``localization.txt`` lists masks (OpenImages) gives each sample the union of its instance masks as ``mask``
    and its ignore region as ``ignore``.

    Args:
        image_root: folder the metadata's paths are relative to.
        split_dir: the split folder (``image_ids.txt``, ``class_labels.txt``, ``image_sizes.txt``,
            ``localization.txt``).
        require_boxes: every image must have a box.
        image_size: side of the square network input.
        augment: training transform instead of the eval transform (only when ``transform`` is None).
        transform: a v2 transform replacing the default (see :class:`~scm_calib.data.WSOLDataset`).
        boxes_protocol: also give the protocol's integer boxes; default: on with the default eval transform.
        mask_root: folder of PNG masks mirroring the images, or the folder the mask files of ``localization.txt``
            are relative to (default then: ``image_root``, where wsolevaluation unpacks OpenImages); None for no
            masks.
        class_names: the name of every class, index = label; default: the labels as text.
    """

    def __init__(
        self,
        image_root: str | Path,
        split_dir: str | Path,
        *,
        require_boxes: bool = True,
        image_size: int = 224,
        augment: bool = False,
        transform: Callable[..., Any] | None = None,
        boxes_protocol: bool | None = None,
        mask_root: str | Path | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        records = read_wsol_metadata(split_dir, require_boxes=require_boxes)
        if mask_root is None and any(record.masks for record in records):
            mask_root = image_root
        super().__init__(
            records,
            image_root,
            image_size=image_size,
            augment=augment,
            transform=transform,
            boxes_protocol=boxes_protocol,
            mask_root=mask_root,
            class_names=class_names,
        )
