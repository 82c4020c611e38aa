"""Tests of scm_calib.data.generated: the drawn dataset in the CUB layout, determinism, safe generation."""

from __future__ import annotations

import colorsys
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scm_calib.data import (
    CUBDataset,
    WSOLMetadataDataset,
    collate_wsol,
    ensure_generated_dataset,
    generated,
    read_cub_records,
    read_wsol_metadata,
    render_object_image,
)

SMALL = {
    "num_classes": 3,
    "train_per_class": 4,
    "test_per_class": 2,
    "val_per_class": 2,
    "min_size": 48,
    "max_size": 64,
}


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_generated_dataset(tmp_path_factory.mktemp("gen") / "CUB_200_2011", seed=0, **SMALL)


def test_cub_loader_reads_the_generated_folder(small_root: Path) -> None:
    train = CUBDataset(small_root, "train", image_size=32)
    test = CUBDataset(small_root, "test", image_size=32)
    assert (len(train), len(test), train.num_classes) == (12, 6, 3)
    assert Counter(train.labels) == {0: 4, 1: 4, 2: 4}
    assert Counter(test.labels) == {0: 2, 1: 2, 2: 2}
    batch = collate_wsol([test[i] for i in range(len(test))])
    assert batch.images.shape == (6, 3, 32, 32) and batch.masks.shape == (6, 32, 32)
    assert all(boxes.shape == (1, 4) for boxes in batch.boxes_protocol)


def test_boxes_are_the_extent_of_the_masks(small_root: Path) -> None:
    for record in read_cub_records(small_root):
        mask = np.array(Image.open(small_root / "segmentations" / record.path)) == 255
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        assert record.boxes == ((cols[0], rows[0], cols[-1] + 1.0, rows[-1] + 1.0),)
        width, height = Image.open(small_root / "images" / record.path).size
        assert 48 <= width <= 64 and 48 <= height <= 64


def test_val_split_is_held_out_and_readable(small_root: Path) -> None:
    val = read_wsol_metadata(small_root / "wsol_metadata" / "val")
    cub_paths = {record.path for record in read_cub_records(small_root)}
    assert len(val) == 6 and not {record.path for record in val} & cub_paths
    dataset = WSOLMetadataDataset(
        small_root / "images",
        small_root / "wsol_metadata" / "val",
        image_size=32,
        mask_root=small_root / "segmentations",
    )
    sample = dataset[5]
    assert sample.label == 2 and sample.mask is not None and sample.boxes_protocol is not None
    test = read_wsol_metadata(small_root / "wsol_metadata" / "test")
    cub_test = read_cub_records(small_root, "test")
    assert [(r.path, r.label, r.boxes) for r in test] == [(r.path, r.label, r.boxes) for r in cub_test]


def test_generation_is_deterministic_per_seed(tmp_path: Path, small_root: Path) -> None:
    again = ensure_generated_dataset(tmp_path / "again", seed=0, **SMALL)
    other = ensure_generated_dataset(tmp_path / "other", seed=1, **SMALL)
    assert _digest(again) == _digest(small_root)
    assert _digest(other) != _digest(small_root)


def test_head_hue_codes_the_class_and_is_a_small_part_of_the_object() -> None:
    num_classes = 6
    for label in range(num_classes):
        for index in range(3):
            image, mask = render_object_image(np.random.default_rng([7, label, index]), label, num_classes)
            rgb = image[mask].astype(float) / 255
            hsv = np.array([colorsys.rgb_to_hsv(*pixel) for pixel in rgb])
            head = hsv[:, 1] > 0.6
            assert 0.03 < head.mean() < 0.4
            hue = np.angle(np.exp(2j * np.pi * hsv[head, 0]).mean()) / (2 * np.pi) % 1.0
            distance = min(abs(hue - label / num_classes), 1 - abs(hue - label / num_classes))
            assert distance < 0.5 / num_classes


def test_existing_dataset_is_reused_not_regenerated(small_root: Path) -> None:
    first = small_root / "images.txt"
    before = first.stat().st_mtime_ns
    assert ensure_generated_dataset(small_root, seed=0, **SMALL) == small_root
    assert first.stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="not with the requested"):
        ensure_generated_dataset(small_root, seed=1, **SMALL)


def test_foreign_folder_is_not_overwritten_but_empty_one_is_filled(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a complete generated dataset"):
        ensure_generated_dataset(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (ensure_generated_dataset(empty, **SMALL) / generated.MARKER).is_file()


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return render_object_image(*args, **kwargs)

    monkeypatch.setattr(generated, "render_object_image", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure_generated_dataset(tmp_path / "data", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_finisher_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    write = generated._write_dataset

    def write_then_race(out: Path, spec: generated._Spec) -> None:
        write(out, spec)
        if not root.exists():
            write(root.parent / "other", spec)
            (root.parent / "other").rename(root)

    monkeypatch.setattr(generated, "_write_dataset", write_then_race)
    assert ensure_generated_dataset(root, **SMALL) == root
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"min_size": 16}, "min_size"),
        ({"min_size": 80}, "min_size"),
        ({"test_per_class": -1}, "test_per_class"),
        ({"train_per_class": 0, "test_per_class": 0}, "train_per_class"),
    ],
)
def test_bad_arguments_are_rejected(tmp_path: Path, changes: dict[str, int], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ensure_generated_dataset(tmp_path / "data", **{**SMALL, **changes})
    assert not (tmp_path / "data").exists()


def test_train_samples_batch_through_a_dataloader(small_root: Path) -> None:
    loader = torch.utils.data.DataLoader(
        CUBDataset(small_root, "train", image_size=32), batch_size=5, shuffle=True, collate_fn=collate_wsol
    )
    batches = list(loader)
    assert sum(len(batch.paths) for batch in batches) == 12
    assert batches[0].boxes_protocol is None and batches[0].masks.dtype == torch.bool


@pytest.mark.parametrize("family", generated.FAMILIES)
def test_every_family_draws_a_deterministic_object_inside_the_image(family: str) -> None:
    low, high = generated.FAMILY_SIZES[family]
    for label in range(10):
        image, mask = render_object_image(np.random.default_rng([3, label]), label, 10, low, high, family=family)
        again, _ = render_object_image(np.random.default_rng([3, label]), label, 10, low, high, family=family)
        assert np.array_equal(image, again)
        assert image.dtype == np.uint8 and image.shape[:2] == mask.shape
        assert low <= min(mask.shape) and max(mask.shape) <= high
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        assert mask.sum() > 50 and rows[0] > 0 and cols[0] > 0
        assert rows[-1] < mask.shape[0] - 1 and cols[-1] < mask.shape[1] - 1


def test_a_family_dataset_is_refused_for_another_family(tmp_path: Path) -> None:
    root = ensure_generated_dataset(tmp_path / "blobs", family="blobs", **SMALL)
    assert "band_hue" in (root / "classes.txt").read_text()
    with pytest.raises(FileExistsError, match="blobs"):
        ensure_generated_dataset(root, **SMALL)
    with pytest.raises(ValueError, match="unknown data family"):
        ensure_generated_dataset(tmp_path / "x", family="birds", **SMALL)


def test_no_held_out_images_writes_no_val_metadata(tmp_path: Path) -> None:
    root = ensure_generated_dataset(tmp_path / "d", **{**SMALL, "val_per_class": 0})
    assert not (root / "wsol_metadata" / "val").exists()
    assert (root / "wsol_metadata" / "test" / "image_ids.txt").read_text().strip()
