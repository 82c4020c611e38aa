"""Exchange score maps with clovaai wsolevaluation (Choe et al., "Evaluating Weakly Supervised Object Localization
Methods Right", CVPR 2020), so a run of this library can be re-scored with the reference code and a folder of
reference score maps can be scored with :mod:`scm_calib.metrics`.

The layout is the one the reference's ``evaluation.py`` reads (its file and line numbers below are of the
[clovaai/wsolevaluation](https://github.com/clovaai/wsolevaluation) repository):

- a score map per image at ``<scoremap_root>/<image_id>.npy`` (``CamDataset._load_cam``, ``evaluation.py:177``:
  the image id *with* its extension, then ``.npy``, e.g. ``001.Black/x.jpg.npy``, as its ``inference.py:90-93``
  writes them), a 2-D array with values in ``[0, 1]`` (``check_scoremap_validity``, ``util.py:48-63``) of
  224 x 224 pixels: the ground-truth boxes are scaled to 224 (``_RESIZE_LENGTH``, ``evaluation.py:41``) and the
  maps are batched by a ``DataLoader`` (``evaluation.py:419-425``), so every map must have that one shape;
- a metadata folder ``<metadata_root>/<dataset_name>/<split>/`` (``evaluation.py:465``) with ``image_ids.txt``,
  ``class_labels.txt``, ``image_sizes.txt`` and ``localization.txt`` (see :mod:`scm_calib.data.wsol_metadata`).

The reference quantises ``map * 255`` in float64 (``evaluation.py:132`` after ``t2n``), this library in float32;
the two truncations differ only on a value within one float32 step below a multiple of 1/255 (none of the
2.5 million pixels of 50 bicubic-resized noise maps, seed 0).

Example:
    >>> from scm_calib.data import ImageRecord
    >>> from scm_calib.metrics import BoxAccuracy
    >>> records = [ImageRecord("001.Bird/a.jpg", 0, ((10.0, 20.0, 100.0, 120.0),), "test:1", size=(200, 150))]
    >>> maps = torch.rand(1, 14, 14)                                     # one score map per image
    >>> command = write_wsolevaluation("run/wsol", records, maps, dataset_name="CUB", split="test")
    >>> metric = BoxAccuracy(protocol="wsol", size=(224, 224))
    >>> for batch in read_wsolevaluation("run/wsol/scoremaps", "run/wsol/metadata/CUB/test"):
    ...     metric.update(batch.maps, batch.gt_boxes)
    >>> 0.0 <= metric.compute()["MaxBoxAccV2"] <= 100.0
    True
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from scm_calib.boxes import normalize_maps, resize_maps, scale_boxes
from scm_calib.data import ImageRecord, read_wsol_metadata

__all__ = [
    "DATASET_NAMES",
    "RESIZE_LENGTH",
    "ScoreMapBatch",
    "read_wsolevaluation",
    "score_map_path",
    "write_score_maps",
    "write_wsol_metadata",
    "write_wsolevaluation",
    "wsolevaluation_command",
]

RESIZE_LENGTH = 224
"""Side of the maps the reference scores: it scales the ground-truth boxes to 224 x 224."""

DATASET_NAMES = ("CUB", "ILSVRC")
"""Box datasets of the reference's ``evaluation.py`` (its third, OpenImages, is scored with masks)."""


class ScoreMapBatch(NamedTuple):
    """A batch of score maps read back from a wsolevaluation folder.

    Attributes:
        image_ids: B image ids (paths relative to the image root), in ``image_ids.txt`` order.
        maps: (B, H, W) score maps as stored (224 x 224, values in [0, 1]).
        labels: (B,) int64 0-based class labels.
        gt_boxes: B (K_i, 4) int64 ground-truth boxes scaled to the maps' size as the reference's
            ``resize_bbox`` does (:func:`scm_calib.boxes.scale_boxes`).
    """

    image_ids: list[str]
    maps: Tensor
    labels: Tensor
    gt_boxes: list[Tensor]


def score_map_path(scoremap_root: str | Path, image_id: str) -> Path:
    """Where the reference looks for an image's score map: ``<scoremap_root>/<image_id>.npy``.

    Args:
        scoremap_root: The score map folder (``--scoremap_root``).
        image_id: The image's id (its path relative to the image root), extension included.

    Returns:
        The ``.npy`` path.
    """
    parts = Path(image_id).parts
    if not parts or Path(image_id).is_absolute() or ".." in parts:
        raise ValueError(f"image id {image_id!r} must be a relative path inside the image root, without '..'.")
    return Path(scoremap_root) / f"{image_id}.npy"


def write_score_maps(
    scoremap_root: str | Path,
    image_ids: Sequence[str],
    maps: Tensor | np.ndarray,
    *,
    interpolation: str = "bicubic",
) -> list[Path]:
    """Write a batch of score maps as the reference's ``.npy`` files: resized to 224 x 224, min-max normalised.

    The maps are what :class:`~scm_calib.metrics.BoxAccuracy` scores: resized like the protocol's maps (a
    no-op at 224 x 224), then min-max normalised (a constant or NaN map becomes all zeros), float32.

    Args:
        scoremap_root: The score map folder; sub-folders of the image ids are created.
        image_ids: B image ids, extension included (e.g. ``"001.Black_footed_Albatross/x.jpg"``).
        maps: (B, h, w) score maps of the class to score (the ground-truth class for MaxBoxAcc), any values.
        interpolation: ``"bicubic"`` (wsolevaluation, the ``"wsol"`` protocol) or ``"bilinear"``.

    Returns:
        The B written paths.
    """
    maps = torch.as_tensor(maps).detach()
    if maps.dim() != 3 or maps.shape[0] != len(image_ids):
        raise ValueError(
            f"maps must have shape (B, h, w) with B = {len(image_ids)} (one per image id), got {tuple(maps.shape)}."
        )
    side = (RESIZE_LENGTH, RESIZE_LENGTH)
    ready = normalize_maps(resize_maps(maps, side, interpolation)).cpu().numpy()
    paths = []
    for image_id, score_map in zip(image_ids, ready, strict=True):
        path = score_map_path(scoremap_root, image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, score_map)
        paths.append(path)
    return paths


def _whole(value: float, record: ImageRecord) -> int:
    if value != int(value):
        raise ValueError(
            f"{record.source}: box coordinate {value} of {record.path} is not a whole pixel; localization.txt "
            "holds integers (the reference parses them with int()): round the record's boxes first."
        )
    return int(value)


def write_wsol_metadata(
    split_dir: str | Path,
    records: Sequence[ImageRecord],
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
) -> None:
    """Write the four metadata files of a split folder for the given images, in their order.

    ``image_ids.txt`` ("<path>"), ``class_labels.txt`` ("<path>,<label>"), ``image_sizes.txt``
    ("<path>,<width>,<height>") and ``localization.txt`` ("<path>,<x0>,<y0>,<x1>,<y1>", one line per box), as
    :func:`scm_calib.data.read_wsol_metadata` reads them back.

    Args:
        split_dir: The folder to write, ``<metadata_root>/<dataset_name>/<split>``; created if missing.
        records: The images (e.g. a dataset's ``records``), each with at least one box of whole pixels.
        image_sizes: Original ``(width, height)`` by image path, for records without ``size`` (CUB's files
            give none: collect ``batch.image_sizes`` by ``batch.paths``).
    """
    lines: dict[str, list[str]] = {name: [] for name in ("image_ids", "class_labels", "image_sizes", "localization")}
    for record in records:
        if "," in record.path or "\n" in record.path:
            raise ValueError(f"{record.source}: image path {record.path!r} holds a comma or newline; rename it.")
        size = record.size if record.size is not None else (image_sizes or {}).get(record.path)
        if size is None:
            raise ValueError(
                f"{record.source}: no image size for {record.path}; pass image_sizes={{path: (width, height)}}."
            )
        if not record.boxes:
            raise ValueError(f"{record.source}: {record.path} has no box; the reference needs one per image.")
        lines["image_ids"].append(record.path)
        lines["class_labels"].append(f"{record.path},{record.label}")
        lines["image_sizes"].append(f"{record.path},{size[0]},{size[1]}")
        for box in record.boxes:
            lines["localization"].append(",".join([record.path, *(str(_whole(v, record)) for v in box)]))
    if not lines["image_ids"]:
        raise ValueError("records is empty; pass at least one image.")
    root = Path(split_dir)
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in lines.items():
        (root / f"{name}.txt").write_text("".join(f"{row}\n" for row in rows), encoding="utf-8")


def wsolevaluation_command(
    root: str | Path, dataset_name: str = "CUB", split: str = "test", *, multi_contour: bool = False, step: float = 0.01
) -> str:
    """The reference's command that scores a folder written by :func:`write_wsolevaluation`.

    Run it in a checkout of clovaai/wsolevaluation. Its ``util.py`` uses ``np.float``, removed in NumPy 1.24:
    run it with ``numpy<1.24`` (its README pins 1.18.1), OpenCV and ``munch``.

    Args:
        root: The folder given to :func:`write_wsolevaluation`.
        dataset_name: ``"CUB"`` or ``"ILSVRC"``.
        split: The split folder's name.
        multi_contour: Score all contours, averaged over IoU 30 / 50 / 70 (``--multi_contour_eval
            --multi_iou_eval``): it prints :class:`~scm_calib.metrics.BoxAccuracy`'s ``MaxBoxAccV2``; without,
            the largest contour at IoU 50: ``MaxBoxAcc``.
        step: ``--cam_curve_interval``, the threshold step (the ``"wsol"`` protocol's 0.01).

    Returns:
        The command line.
    """
    if dataset_name not in DATASET_NAMES:
        raise ValueError(
            f"dataset_name must be one of {DATASET_NAMES} (the reference's box datasets), got {dataset_name!r}."
        )
    root = Path(root)
    args = [
        "python",
        "evaluation.py",
        f"--scoremap_root={root / 'scoremaps'}",
        f"--metadata_root={root / 'metadata'}",
        f"--mask_root={root}",
        f"--dataset_name={dataset_name}",
        f"--split={split}",
        f"--cam_curve_interval={step}",
    ]
    if multi_contour:
        args += ["--multi_contour_eval=True", "--multi_iou_eval=True"]
    return shlex.join(args)


def write_wsolevaluation(
    root: str | Path,
    records: Sequence[ImageRecord],
    maps: Tensor | np.ndarray | Iterable[Tensor | np.ndarray],
    *,
    dataset_name: str = "CUB",
    split: str = "test",
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    interpolation: str = "bicubic",
) -> str:
    """Write a run's score maps and metadata as a folder the reference's ``evaluation.py`` scores.

    Writes ``<root>/scoremaps/<image_id>.npy`` (:func:`write_score_maps`) and
    ``<root>/metadata/<dataset_name>/<split>/`` (:func:`write_wsol_metadata`).

    Args:
        root: The output folder.
        records: The images, in the order of ``maps``.
        maps: (N, h, w) score maps of the records' classes, or an iterable of (B, h, w) batches in that order
            (e.g. a generator over an evaluation loop, so the maps of a large split are never all in memory).
        dataset_name: ``"CUB"`` or ``"ILSVRC"`` (``--dataset_name``).
        split: The split folder's name (``--split``).
        image_sizes: Original ``(width, height)`` by path for records without ``size``.
        interpolation: Resize of maps not at 224 x 224, ``"bicubic"`` or ``"bilinear"``.

    Returns:
        The reference's command for MaxBoxAcc (:func:`wsolevaluation_command`).
    """
    command = wsolevaluation_command(root, dataset_name, split)
    root = Path(root)
    write_wsol_metadata(root / "metadata" / dataset_name / split, records, image_sizes)
    batches = [maps] if isinstance(maps, Tensor | np.ndarray) else maps
    done = 0
    for batch in batches:
        batch_ids = [record.path for record in records[done : done + len(batch)]]
        write_score_maps(root / "scoremaps", batch_ids, batch, interpolation=interpolation)
        done += len(batch_ids)
    if done != len(records):
        raise ValueError(f"got maps for {done} images and {len(records)} records; pass one map per record.")
    return command


def _load_score_map(path: Path) -> np.ndarray:
    """One stored map, checked as the reference's ``check_scoremap_validity`` would."""
    if not path.is_file():
        raise FileNotFoundError(f"no score map at {path}; the reference expects <scoremap_root>/<image_id>.npy.")
    score_map = np.load(path)
    if score_map.ndim != 2 or not np.issubdtype(score_map.dtype, np.floating):
        raise ValueError(f"{path}: a score map is a 2-D float array, got {score_map.dtype} {score_map.shape}.")
    if np.isnan(score_map).any() or (score_map < 0).any() or (score_map > 1).any():
        raise ValueError(
            f"{path}: values must lie in [0, 1] without NaN, got {np.nanmin(score_map)} to {np.nanmax(score_map)}; "
            "min-max normalise the map (write_score_maps does)."
        )
    return score_map


def read_wsolevaluation(
    scoremap_root: str | Path, split_dir: str | Path, *, batch_size: int = 128
) -> Iterator[ScoreMapBatch]:
    """Read a folder of reference score maps back, in batches the library's metrics take.

    Args:
        scoremap_root: The score map folder (``--scoremap_root``).
        split_dir: The split's metadata folder, ``<metadata_root>/<dataset_name>/<split>``.
        batch_size: Maps per batch (the reference's loader uses 128).

    Yields:
        Batches in ``image_ids.txt`` order; ``BoxAccuracy().update(batch.maps, batch.gt_boxes)`` scores them.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    records = read_wsol_metadata(split_dir)
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        arrays = [_load_score_map(score_map_path(scoremap_root, record.path)) for record in chunk]
        shapes = {array.shape for array in arrays}
        if len(shapes) > 1:
            raise ValueError(f"score maps of one batch must share a shape, got {sorted(shapes)} under {scoremap_root}.")
        height, width = arrays[0].shape
        gt_boxes = [
            scale_boxes(torch.tensor(record.boxes, dtype=torch.float64), record.size, (width, height))
            for record in chunk
        ]
        yield ScoreMapBatch(
            image_ids=[record.path for record in chunk],
            maps=torch.from_numpy(np.stack(arrays)),
            labels=torch.tensor([record.label for record in chunk], dtype=torch.int64),
            gt_boxes=gt_boxes,
        )
