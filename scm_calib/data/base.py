"""The sample format shared by every WSOL dataset of ``scm_calib``, the dataset over parsed records, collation.

A dataset file is parsed eagerly into :class:`~scm_calib.data.records.ImageRecord` s (see
:mod:`scm_calib.data.records`); :class:`WSOLDataset` turns them into :class:`WSOLSample` s (image, label, boxes that
followed the transforms, original size, optional protocol boxes and mask) and :func:`collate_wsol` batches samples
with different numbers of boxes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scm_calib.boxes import scale_boxes
from scm_calib.data.records import Box, DatasetFormatError, ImageRecord, load_image
from scm_calib.data.transforms import require_torchvision, wsol_eval_transform, wsol_train_transform


@dataclass
class WSOLSample:
    """One transformed image with its annotations.

    Attributes:
        image: (3, H, W) float32, normalised by the transform.
        label: 0-based class index.
        boxes: (K, 4) float32 boxes (x0, y0, x1, y1) in pixels of ``image``; they followed every geometric
            transform (a crop clamps them to the image).
        image_size: original (width, height) in pixels.
        index: position of the sample in its dataset.
        path: image path relative to the dataset's image root.
        boxes_protocol: (K, 4) int64 boxes in the evaluation protocol's convention (each original coordinate
            times the input size over the original size, truncated), or None when not asked for.
        mask: (H, W) bool object mask in pixels of ``image`` (stored mask value > 127), or None without masks.
        ignore: (H, W) bool pixels to leave out of PxAP (ignore mask > 127 outside the object; all False without
            an ignore file) for records that list their mask files (OpenImages), else None.
    """

    image: torch.Tensor
    label: int
    boxes: torch.Tensor
    image_size: tuple[int, int]
    index: int
    path: str
    boxes_protocol: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    ignore: torch.Tensor | None = None


@dataclass
class WSOLBatch:
    """A batch of :class:`WSOLSample` s, from :func:`collate_wsol`.

    Attributes:
        images: (B, 3, H, W) float32.
        labels: (B,) int64 0-based class indices.
        boxes: B tensors (K_i, 4) float32, (x0, y0, x1, y1) in pixels of ``images``.
        image_sizes: (B, 2) int64 original (width, height).
        indices: (B,) int64 positions in the dataset.
        paths: B relative image paths.
        boxes_protocol: B tensors (K_i, 4) int64 in the protocol's convention, or None.
        masks: (B, H, W) bool, or None.
        ignore: (B, H, W) bool pixels to leave out of PxAP, or None.
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: list[torch.Tensor]
    image_sizes: torch.Tensor
    indices: torch.Tensor
    paths: list[str]
    boxes_protocol: list[torch.Tensor] | None = None
    masks: torch.Tensor | None = None
    ignore: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> WSOLBatch:
        """Move every tensor to ``device``.

        Args:
            device: target device.
            non_blocking: passed to ``Tensor.to``.

        Returns:
            A new batch on ``device``.
        """

        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(device, non_blocking=non_blocking)

        return WSOLBatch(
            images=move(self.images),
            labels=move(self.labels),
            boxes=[move(boxes) for boxes in self.boxes],
            image_sizes=move(self.image_sizes),
            indices=move(self.indices),
            paths=list(self.paths),
            boxes_protocol=None if self.boxes_protocol is None else [move(b) for b in self.boxes_protocol],
            masks=None if self.masks is None else move(self.masks),
            ignore=None if self.ignore is None else move(self.ignore),
        )

    def pin_memory(self) -> WSOLBatch:
        """Pin every tensor (called by ``DataLoader(pin_memory=True)``).

        Returns:
            A new batch in pinned host memory.
        """
        return WSOLBatch(
            images=self.images.pin_memory(),
            labels=self.labels.pin_memory(),
            boxes=[boxes.pin_memory() for boxes in self.boxes],
            image_sizes=self.image_sizes.pin_memory(),
            indices=self.indices.pin_memory(),
            paths=list(self.paths),
            boxes_protocol=None if self.boxes_protocol is None else [b.pin_memory() for b in self.boxes_protocol],
            masks=None if self.masks is None else self.masks.pin_memory(),
            ignore=None if self.ignore is None else self.ignore.pin_memory(),
        )


def collate_wsol(samples: Sequence[WSOLSample]) -> WSOLBatch:
    """Batch samples that may have different numbers of boxes (pass as a DataLoader's ``collate_fn``).

    Args:
        samples: samples of one dataset, with images of one size.

    Returns:
        The batch; boxes stay a list of (K_i, 4) tensors.
    """
    if not samples:
        raise ValueError("collate_wsol got an empty list of samples; give it at least one.")
    for name in ("boxes_protocol", "mask", "ignore"):
        present = [getattr(sample, name) is not None for sample in samples]
        if any(present) and not all(present):
            raise ValueError(
                f"collate_wsol got samples with and without {name!r}; build every sample of a batch from one "
                "dataset with the same options."
            )
    first = samples[0]
    return WSOLBatch(
        images=torch.stack([sample.image for sample in samples]),
        labels=torch.tensor([sample.label for sample in samples], dtype=torch.int64),
        boxes=[sample.boxes for sample in samples],
        image_sizes=torch.tensor([sample.image_size for sample in samples], dtype=torch.int64),
        indices=torch.tensor([sample.index for sample in samples], dtype=torch.int64),
        paths=[sample.path for sample in samples],
        boxes_protocol=None if first.boxes_protocol is None else [s.boxes_protocol for s in samples],
        masks=None if first.mask is None else torch.stack([sample.mask for sample in samples]),
        ignore=None if first.ignore is None else torch.stack([sample.ignore for sample in samples]),
    )


class WSOLDataset(torch.utils.data.Dataset):
    """Images, labels and boxes from parsed records, with the paper's transforms by default.

    Subclasses (:class:`~scm_calib.data.CUBDataset`, :class:`~scm_calib.data.ILSVRCListDataset`,
    :class:`~scm_calib.data.WSOLMetadataDataset`) parse a file format into records; images are read in
    ``__getitem__`` (an unreadable image raises :class:`DatasetFormatError` naming it and its metadata line).

    Args:
        records: the images, parsed.
        image_root: folder the record paths are relative to.
        image_size: side of the square network input.
        augment: use the training transform (random crop and flip) instead of the eval transform; only
            used when ``transform`` is None.
        transform: a v2 transform called as ``transform(image, boxes)`` or ``transform(image, boxes, mask)``
            on ``tv_tensors`` (uint8 image (3, H, W), XYXY boxes, uint8 mask (1, H, W)); it must return a
            float (3, S, S) image. Default: :func:`wsol_train_transform` or :func:`wsol_eval_transform`.
        boxes_protocol: also give the protocol's integer boxes (valid when the geometric transform resizes the
            whole image, as the eval transform does). Default: on with the default eval transform.
        mask_root: folder of the masks, which mirror the images as PNG (``a/b.jpg`` -> ``a/b.png``), or that the
            records' ``masks`` and ``ignore`` files are relative to; None for no masks.
        class_names: the name of every class, index = label; default: ``"0"``, ``"1"``, ... up to the largest
            label of ``records``.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        image_root: str | Path,
        *,
        image_size: int = 224,
        augment: bool = False,
        transform: Callable[..., Any] | None = None,
        boxes_protocol: bool | None = None,
        mask_root: str | Path | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        require_torchvision()
        self.records = list(records)
        if class_names is None:
            class_names = [str(label) for label in range(max(self.labels, default=-1) + 1)]
        self.class_names = list(class_names)
        self.image_root = Path(image_root)
        self.mask_root = None if mask_root is None else Path(mask_root)
        if transform is None:
            transform = wsol_train_transform(image_size) if augment else wsol_eval_transform(image_size)
            if boxes_protocol is None:
                boxes_protocol = not augment
        self.transform = transform
        self.boxes_protocol = bool(boxes_protocol)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        """Number of classes (named in ``class_names``)."""
        return len(self.class_names)

    @property
    def labels(self) -> list[int]:
        """0-based labels of every image, in order (for samplers and class counts)."""
        return [record.label for record in self.records]

    def check_images(self) -> list[str]:
        """Reads the header of every image (and mask) without decoding the pixels, to find early what
        ``__getitem__`` would refuse: a missing or unreadable file, a size other than the metadata's, a box
        entirely outside its image. A file whose pixel data is truncated still passes.

        Returns:
            One message per image at fault, in order; empty when every image passes.
        """
        from PIL import Image

        problems = []
        for record in self.records:
            files = [self.image_root / record.path, *self._mask_files(record)]
            try:
                for path in files:
                    try:
                        with Image.open(path) as image:
                            width, height = image.size
                    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                        raise DatasetFormatError(
                            f"{path} (listed in {record.source}) cannot be read as an image: {error}."
                        ) from error
                    if path == files[0]:
                        if record.size is not None and record.size != (width, height):
                            raise DatasetFormatError(
                                f"{record.source}: gives the size of {record.path} as {record.size[0]}x"
                                f"{record.size[1]} but the image is {width}x{height}."
                            )
                        _boxes_in_image(record, width, height)
            except DatasetFormatError as error:
                problems.append(str(error))
        return problems

    def _mask_files(self, record: ImageRecord) -> list[Path]:
        """The mask files of a record (its instance masks, then its ignore mask), or the one mask that mirrors its
        image; empty without a mask root."""
        if self.mask_root is None:
            return []
        if not record.masks:
            return [(self.mask_root / record.path).with_suffix(".png")]
        ignore = [] if record.ignore is None else [record.ignore]
        return [self.mask_root / path for path in (*record.masks, *ignore)]

    def __getitem__(self, index: int) -> WSOLSample:
        from torchvision import tv_tensors

        record = self.records[index]
        image = _read_image(self.image_root / record.path, record, mode="RGB")
        height, width = image.shape[:2]
        if record.size is not None and record.size != (width, height):
            raise DatasetFormatError(
                f"{record.source}: gives the size of {record.path} as {record.size[0]}x{record.size[1]} "
                f"(width x height) but the image is {width}x{height}; fix the metadata or the image."
            )
        in_image, clipped = _boxes_in_image(record, width, height)
        if clipped:
            warnings.warn(
                f"{record.source}: a box of {record.path} reaches outside the {width}x{height} image; clipped to "
                f"{[list(box) for box in in_image]}.",
                stacklevel=2,
            )
        boxes = torch.tensor(in_image, dtype=torch.float64).reshape(-1, 4)
        inputs: list[Any] = [
            tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
            tv_tensors.BoundingBoxes(boxes.to(torch.float32), format="XYXY", canvas_size=(height, width)),
        ]
        masks = []
        for mask_path in self._mask_files(record):
            mask = _read_image(mask_path, record, mode="L")
            if mask.shape != (height, width):
                raise DatasetFormatError(
                    f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {record.path} "
                    f"(listed in {record.source}) is {width}x{height}; masks must match their images."
                )
            masks.append(torch.from_numpy(mask) > 127)
        has_ignore = record.ignore is not None and self.mask_root is not None
        if masks:
            # The object is the union of the instance masks; the ignore region leaves the object out, as
            # wsolevaluation's get_mask. Both travel as one (2, H, W) mask through the transform.
            instances = masks[: len(masks) - has_ignore]
            union = torch.stack(instances).any(dim=0)
            ignore = masks[-1] & ~union if has_ignore else torch.zeros_like(union)
            inputs.append(tv_tensors.Mask(torch.stack([union, ignore]).to(torch.uint8) * 255))
        outputs = self.transform(*inputs)
        out_image = outputs[0].as_subclass(torch.Tensor)
        return WSOLSample(
            image=out_image,
            label=record.label,
            boxes=outputs[1].as_subclass(torch.Tensor).to(torch.float32),
            image_size=(width, height),
            index=index,
            path=record.path,
            boxes_protocol=(
                scale_boxes(boxes, (width, height), (out_image.shape[-1], out_image.shape[-2]))
                if self.boxes_protocol
                else None
            ),
            mask=outputs[2].as_subclass(torch.Tensor)[0] > 127 if masks else None,
            ignore=outputs[2].as_subclass(torch.Tensor)[1] > 127 if masks and record.masks else None,
        )


def _boxes_in_image(record: ImageRecord, width: int, height: int) -> tuple[tuple[Box, ...], bool]:
    """The record's boxes clipped to the image, ``[0, width] x [0, height]``, and whether any was clipped.

    Raises:
        DatasetFormatError: a box lies entirely outside the image (a box for another image or another size).
    """
    clipped = []
    for box in record.boxes:
        x0, y0, x1, y1 = box
        if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
            raise DatasetFormatError(
                f"{record.source}: box {list(box)} of {record.path} lies entirely outside the {width}x{height} "
                "image; fix the box (x0, y0, x1, y1 in pixels of this image) or remove the image's lines."
            )
        clipped.append((max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)))
    return tuple(clipped), tuple(clipped) != tuple(record.boxes)


def _read_image(path: Path, record: ImageRecord, mode: str) -> np.ndarray:
    """:func:`load_image`, with errors as :class:`DatasetFormatError` naming the image and its metadata line."""
    from PIL import Image

    try:
        return load_image(path, mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DatasetFormatError(
            f"{path} (listed in {record.source}) cannot be read as an image: {error}; check that the file exists "
            "and is a valid image, or remove its line."
        ) from error
