"""Tests of scm_calib.data: the CUB, ILSVRC list and wsolevaluation readers, boxes through transforms, errors."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from scm_calib.boxes import scale_boxes
from scm_calib.data import (
    CUBDataset,
    DatasetFormatError,
    ILSVRCListDataset,
    WSOLMetadataDataset,
    collate_wsol,
    load_image,
    protocol_boxes,
    read_cub_records,
    read_ilsvrc_list,
    read_wsol_metadata,
    wsol_train_transform,
)
from scm_calib.data.transforms import IMAGENET_MEAN, IMAGENET_STD, require_torchvision

# A 40 x 30 (width x height) image with a white object on columns 10..19 and rows 5..14: box (10, 5, 20, 15).
WIDTH, HEIGHT = 40, 30
OBJECT_BOX = (10.0, 5.0, 20.0, 15.0)


def _object_image() -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[5:15, 10:20] = 255
    return image


def _write_cub(root: Path, num_images: int = 3) -> Path:
    """A CUB folder with ``num_images`` copies of the object image; image 1 is the test image."""
    (root / "images" / "001.a").mkdir(parents=True)
    (root / "segmentations" / "001.a").mkdir(parents=True)
    for i in range(1, num_images + 1):
        Image.fromarray(_object_image()).save(root / "images" / "001.a" / f"{i}.png")
        Image.fromarray(_object_image()[..., 0]).save(root / "segmentations" / "001.a" / f"{i}.png")
    x0, y0, x1, y1 = OBJECT_BOX
    files = {
        "images.txt": [f"{i} 001.a/{i}.png" for i in range(1, num_images + 1)],
        "image_class_labels.txt": [f"{i} {1 + (i % 2)}" for i in range(1, num_images + 1)],
        "train_test_split.txt": [f"{i} {int(i != 1)}" for i in range(1, num_images + 1)],
        "bounding_boxes.txt": [f"{i} {x0} {y0} {x1 - x0} {y1 - y0}" for i in range(1, num_images + 1)],
        "classes.txt": ["1 001.a", "2 002.b"],
    }
    for name, lines in files.items():
        (root / name).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    return _write_cub(tmp_path / "CUB_200_2011")


def test_cub_records_are_parsed_with_zero_based_labels_and_xyxy_boxes(cub_root: Path) -> None:
    records = read_cub_records(cub_root, "all")
    assert [r.label for r in records] == [1, 0, 1]
    assert all(r.boxes == (OBJECT_BOX,) for r in records)
    assert [r.path for r in read_cub_records(cub_root, "test")] == ["001.a/1.png"]
    assert len(read_cub_records(cub_root, "train")) == 2
    assert records[2].source.endswith("images.txt:3")


def test_eval_sample_boxes_follow_resize_and_give_protocol_boxes(cub_root: Path) -> None:
    dataset = CUBDataset(cub_root, "test", image_size=64)
    sample = dataset[0]
    assert sample.image.shape == (3, 64, 64) and sample.image.dtype == torch.float32
    assert sample.image_size == (WIDTH, HEIGHT)
    expected = torch.tensor([[10 * 64 / 40, 5 * 64 / 30, 20 * 64 / 40, 15 * 64 / 30]])
    torch.testing.assert_close(sample.boxes, expected)
    assert sample.boxes_protocol.tolist() == [[16, 10, 32, 32]]
    assert sample.mask is not None and sample.mask.shape == (64, 64)
    rows, cols = torch.nonzero(sample.mask, as_tuple=True)
    assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (16, 11, 32, 32)


def test_protocol_boxes_truncate_the_scaled_coordinates() -> None:
    boxes = torch.tensor([[60.0, 27.0, 385.0, 331.0], [0.0, 0.0, 499.0, 374.0]])
    got = scale_boxes(boxes, (500, 375), (224, 224))
    expected = [[int(60 * 224 / 500), int(27 * 224 / 375), int(385 * 224 / 500), int(331 * 224 / 375)]]
    expected.append([0, 0, int(499 * 224 / 500), int(374 * 224 / 375)])
    assert got.tolist() == expected
    resized = v2.Resize((224, 224))(
        __import__("torchvision").tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(375, 500))
    )
    assert (resized - got).abs().max() < 1.0
    with pytest.raises(ValueError, match=r"\(K, 4\)"):
        scale_boxes(torch.zeros(4), (500, 375), (224, 224))
    with pytest.warns(DeprecationWarning, match=r"call scm_calib\.boxes\.scale_boxes"):
        assert torch.equal(protocol_boxes(boxes, (500, 375), (224, 224)), got)


def test_boxes_follow_a_known_resize_crop_and_flip(cub_root: Path) -> None:
    transform = v2.Compose(
        [
            v2.Resize((60, 80)),
            v2.RandomCrop((40, 50)),
            v2.RandomHorizontalFlip(p=1.0),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    dataset = CUBDataset(cub_root, "train", transform=transform)
    torch.manual_seed(0)
    params = v2.RandomCrop((40, 50)).make_params([torch.zeros(3, 60, 80)])
    torch.manual_seed(0)
    sample = dataset[0]
    top, left = params["top"], params["left"]
    # resize x2 -> (20, 10, 40, 30); crop at (top, left); flip in a 50-wide image.
    x0, y0, x1, y1 = 20 - left, 10 - top, 40 - left, 30 - top
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, 50), min(y1, 40)
    expected = torch.tensor([[50 - x1, y0, 50 - x0, y1]], dtype=torch.float32)
    torch.testing.assert_close(sample.boxes, expected)
    assert sample.boxes_protocol is None
    ys, xs = torch.nonzero(sample.image[0] > 0.5, as_tuple=True)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(int(v) for v in expected[0])


@pytest.mark.parametrize("seed", range(5))
def test_default_train_transform_box_encloses_the_object(cub_root: Path, seed: int) -> None:
    dataset = CUBDataset(cub_root, "train", image_size=32)
    torch.manual_seed(seed)
    sample = dataset[1]
    assert sample.image.shape == (3, 32, 32)
    assert sample.boxes_protocol is None
    image = sample.image * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
    x0, y0, x1, y1 = sample.boxes[0].tolist()
    assert x0 - 1 <= xs.min() and xs.max() + 1 <= x1 + 1
    assert y0 - 1 <= ys.min() and ys.max() + 1 <= y1 + 1
    mask_ys, mask_xs = torch.nonzero(sample.mask, as_tuple=True)
    assert x0 - 1 <= mask_xs.min() and mask_xs.max() + 1 <= x1 + 1
    assert y0 - 1 <= mask_ys.min() and mask_ys.max() + 1 <= y1 + 1


def test_train_transform_checks_its_sizes() -> None:
    assert [type(t).__name__ for t in wsol_train_transform(224).transforms] == [
        "Resize",
        "RandomCrop",
        "RandomHorizontalFlip",
        "ToDtype",
        "Normalize",
    ]
    assert wsol_train_transform(224).transforms[0].size == [256, 256]
    with pytest.raises(ValueError, match="resize_size"):
        wsol_train_transform(64, resize_size=32)
    with pytest.raises(ValueError, match="image_size"):
        wsol_train_transform(0)


def test_collate_keeps_variable_box_counts(tmp_path: Path) -> None:
    image_root = tmp_path / "val"
    image_root.mkdir()
    for name in ("a", "b"):
        Image.fromarray(_object_image()).save(image_root / f"{name}.png")
    list_file = tmp_path / "val.txt"
    list_file.write_text("a.png 3 10 5 20 15\nb.png 7 10 5 20 15 0 0 39 29 1 1 2 2\n")
    dataset = ILSVRCListDataset(image_root, list_file, image_size=32)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_wsol)
    batch = next(iter(loader))
    assert batch.images.shape == (2, 3, 32, 32)
    assert batch.labels.tolist() == [3, 7]
    assert [b.shape for b in batch.boxes] == [(1, 4), (3, 4)]
    assert [b.shape for b in batch.boxes_protocol] == [(1, 4), (3, 4)]
    assert batch.image_sizes.tolist() == [[WIDTH, HEIGHT]] * 2
    assert batch.masks is None and batch.paths == ["a.png", "b.png"]
    moved = batch.to("cpu")
    assert moved.boxes[1].shape == (3, 4)


def test_ilsvrc_list_reads_several_boxes_and_label_base(tmp_path: Path) -> None:
    list_file = tmp_path / "val.txt"
    list_file.write_text("x/1.JPEG 1 1 2 3 4 5 6 7 8\n\nx/2.JPEG 2 0 0 10 10\n")
    records = read_ilsvrc_list(list_file, label_base=1)
    assert [r.label for r in records] == [0, 1]
    assert records[0].boxes == ((1, 2, 3, 4), (5, 6, 7, 8))
    assert records[1].source == f"{list_file}:3"


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("a.JPEG 1 1 2 3\n", "line 1: expected .* got 5 fields"),
        ("a.JPEG 1\n", "line 1: expected"),
        ("a.JPEG 1 1 2 3 4\nb.JPEG one 1 2 3 4\n", "line 2: label must be an integer, got 'one'"),
        ("a.JPEG 1 1 2 3 x\n", "line 1: y1 must be a number, got 'x'"),
        ("a.JPEG 1 5 2 3 4\n", "line 1: box .* x1 < x0"),
        ("a.JPEG 1 1 2 3 4\na.JPEG 1 1 2 3 4\n", "line 2: a.JPEG already listed on line 1"),
    ],
)
def test_ilsvrc_list_errors_name_file_and_line(tmp_path: Path, text: str, pattern: str) -> None:
    list_file = tmp_path / "val.txt"
    list_file.write_text(text)
    with pytest.raises(DatasetFormatError, match=re.escape(str(list_file)) + ", " + pattern):
        read_ilsvrc_list(list_file)


def _write_wsol_split(split_dir: Path, files: dict[str, str] | None = None) -> Path:
    split_dir.mkdir(parents=True, exist_ok=True)
    default = {
        "image_ids.txt": "c/a.png\nc/b.png\n",
        "class_labels.txt": "c/a.png,0\nc/b.png,4\n",
        "image_sizes.txt": f"c/a.png,{WIDTH},{HEIGHT}\nc/b.png,{WIDTH},{HEIGHT}\n",
        "localization.txt": "c/a.png,10,5,20,15\nc/b.png,1,1,5,5\nc/b.png,10,5,20,15\n",
    }
    for name, text in {**default, **(files or {})}.items():
        (split_dir / name).write_text(text)
    return split_dir


def test_wsol_metadata_reads_several_boxes_and_sizes(tmp_path: Path) -> None:
    records = read_wsol_metadata(_write_wsol_split(tmp_path / "val"))
    assert [r.path for r in records] == ["c/a.png", "c/b.png"]
    assert [r.label for r in records] == [0, 4]
    assert records[1].boxes == ((1, 1, 5, 5), (10, 5, 20, 15))
    assert records[0].size == (WIDTH, HEIGHT)


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("class_labels.txt", "c/a.png,0\nc/b.png\n", "class_labels.txt, line 2: expected 2 fields"),
        ("class_labels.txt", "c/a.png,0\nc/b.png,x\n", "class_labels.txt, line 2: label must be an integer"),
        ("class_labels.txt", "c/a.png,0\nc/z.png,1\n", "class_labels.txt, line 2: c/z.png is not in"),
        ("class_labels.txt", "c/a.png,0\n", "class_labels.txt: has no line for c/b.png"),
        ("image_sizes.txt", "c/a.png,4,3\nc/b.png,4,3\nc/a.png,4,3\n", "image_sizes.txt, line 3: c/a.png already"),
        ("localization.txt", "c/a.png,1,1,5,5\nc/q.png,1,1,5,5\n", "localization.txt, line 2: c/q.png is not in"),
        ("localization.txt", "c/a.png,1,1,5,5\n", "localization.txt: has no box or mask for c/b.png"),
        ("localization.txt", "c/a.png,1,1,5\n", "localization.txt, line 1: expected 5 fields"),
    ],
)
def test_wsol_metadata_errors_name_file_and_line(tmp_path: Path, name: str, text: str, pattern: str) -> None:
    split_dir = _write_wsol_split(tmp_path / "val", {name: text})
    with pytest.raises(DatasetFormatError, match=pattern):
        read_wsol_metadata(split_dir)


def test_wsol_metadata_missing_file_and_optional_boxes(tmp_path: Path) -> None:
    split_dir = _write_wsol_split(tmp_path / "val")
    (split_dir / "localization.txt").unlink()
    assert [r.boxes for r in read_wsol_metadata(split_dir, require_boxes=False)] == [(), ()]
    with pytest.raises(DatasetFormatError, match=r"localization.txt: file not found"):
        read_wsol_metadata(split_dir)


def test_wsol_metadata_dataset_checks_image_size(tmp_path: Path) -> None:
    image_root = tmp_path / "images" / "c"
    image_root.mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray(_object_image()).save(image_root / f"{name}.png")
    sizes = f"c/a.png,{WIDTH},{HEIGHT}\nc/b.png,{WIDTH + 1},{HEIGHT}\n"
    dataset = WSOLMetadataDataset(tmp_path / "images", _write_wsol_split(tmp_path / "val", {"image_sizes.txt": sizes}))
    assert dataset[0].boxes.shape == (1, 4)
    assert dataset[1 - 1].label == 0
    with pytest.raises(DatasetFormatError, match=r"image_ids.txt:2: gives the size of c/b.png as 41x30"):
        dataset[1]


def _replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("name", "number", "text", "pattern"),
    [
        ("bounding_boxes.txt", 2, "2 10.0 5.0 10.0", r"bounding_boxes.txt, line 2: expected 5 fields"),
        ("bounding_boxes.txt", 3, "3 10.0 five 10.0 10.0", r"bounding_boxes.txt, line 3: y must be a number"),
        ("bounding_boxes.txt", 1, "1 10.0 5.0 -1.0 10.0", r"bounding_boxes.txt, line 1: width and height"),
        ("bounding_boxes.txt", 3, "9 10.0 5.0 10.0 10.0", r"bounding_boxes.txt, line 3: image id 9 is not in"),
        ("image_class_labels.txt", 2, "2", r"image_class_labels.txt, line 2: expected 2 fields"),
        ("image_class_labels.txt", 2, "2 3", r"image_class_labels.txt, line 2: label 3 is outside 1..2"),
        ("image_class_labels.txt", 2, "1 1", r"image_class_labels.txt, line 2: image id 1 already listed"),
        ("train_test_split.txt", 1, "1 2", r"train_test_split.txt, line 1: split value must be 1"),
        ("train_test_split.txt", 1, "x 1", r"train_test_split.txt, line 1: image id must be an integer"),
        ("images.txt", 3, "3", r"images.txt, line 3: expected 2 fields"),
        ("images.txt", 3, "2 001.a/3.png", r"images.txt, line 3: image id 2 already listed on line 2"),
        ("classes.txt", 2, "3 002.b", r"classes.txt, line 2: labels must run 1, 2, 3"),
    ],
)
def test_cub_malformed_lines_name_file_and_line(
    cub_root: Path, name: str, number: int, text: str, pattern: str
) -> None:
    _replace_line(cub_root / name, number, text)
    with pytest.raises(DatasetFormatError, match=pattern):
        CUBDataset(cub_root)


def test_cub_id_missing_from_one_file(cub_root: Path) -> None:
    path = cub_root / "train_test_split.txt"
    path.write_text("1 0\n3 1\n")
    with pytest.raises(DatasetFormatError, match=r"train_test_split.txt: has no line for image id 2 \(001.a/2.png"):
        CUBDataset(cub_root)


@pytest.mark.parametrize(
    "name",
    ["images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "classes.txt"],
)
def test_cub_missing_file(cub_root: Path, name: str) -> None:
    (cub_root / name).unlink()
    with pytest.raises(DatasetFormatError, match=re.escape(str(cub_root / name)) + ": file not found"):
        CUBDataset(cub_root)


def test_cub_unreadable_and_missing_images_fail_at_getitem(cub_root: Path) -> None:
    (cub_root / "images" / "001.a" / "2.png").write_bytes(b"not a png")
    (cub_root / "images" / "001.a" / "3.png").unlink()
    dataset = CUBDataset(cub_root, "train")
    with pytest.raises(DatasetFormatError, match=r"2.png \(listed in .*images.txt:2\) cannot be read as an image"):
        dataset[0]
    with pytest.raises(DatasetFormatError, match=r"3.png \(listed in .*images.txt:3\) cannot be read as an image"):
        dataset[1]


def test_soft_cub_masks_keep_the_majority_of_annotators(cub_root: Path) -> None:
    soft = _object_image()[..., 0] // 255 * 102
    soft[5:15, 10:15] = 204
    Image.fromarray(soft).save(cub_root / "segmentations" / "001.a" / "1.png")
    mask = CUBDataset(cub_root, "test", image_size=40)[0].mask
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert (cols.min(), cols.max() + 1) == (10, 15)


def test_cub_mask_size_mismatch_and_missing_masks(cub_root: Path) -> None:
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(cub_root / "segmentations" / "001.a" / "1.png")
    with pytest.raises(DatasetFormatError, match=r"1.png: mask is 5x5 but its image 001.a/1.png"):
        CUBDataset(cub_root, "test")[0]
    assert CUBDataset(cub_root, "test", masks=False)[0].mask is None
    (cub_root / "segmentations" / "001.a" / "1.png").unlink()
    with pytest.raises(DatasetFormatError, match=r"segmentations/001.a/1.png \(listed in"):
        CUBDataset(cub_root, "test")[0]


def test_collate_rejects_mixed_samples(cub_root: Path) -> None:
    with_mask = CUBDataset(cub_root, "test", image_size=16)[0]
    without = CUBDataset(cub_root, "test", image_size=16, masks=False)[0]
    with pytest.raises(ValueError, match="with and without 'mask'"):
        collate_wsol([with_mask, without])


def test_missing_torchvision_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError, match=r"pip install scm_calib\[examples\]"):
        require_torchvision()


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path: Path, mode: str) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = load_image(tmp_path / "deep.png", mode)
    expected = np.array([[0, 1, 128, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(image if mode == "L" else image[..., 1], expected)


def test_16_bit_cub_image_is_read_with_its_contrast(cub_root: Path) -> None:
    gray = (_object_image()[..., 0].astype(np.uint16) * 257 // 2).astype(np.uint16)  # object at 32767 of 65535
    Image.fromarray(gray).save(cub_root / "images" / "001.a" / "1.png")
    image = CUBDataset(cub_root, "test", image_size=40, transform=v2.ToImage())[0].image
    assert image.shape == (3, HEIGHT, WIDTH) and sorted(image.unique().tolist()) == [0, 127]


@pytest.mark.parametrize("bad_path", ["../outside.png", "/etc/passwd", "001.a/../../x.png", "C:/x.png"])
@pytest.mark.parametrize("reader", ["cub", "ilsvrc", "wsol"])
def test_image_paths_that_leave_the_dataset_are_refused(
    cub_root: Path, tmp_path: Path, reader: str, bad_path: str
) -> None:
    if reader == "cub":
        _replace_line(cub_root / "images.txt", 2, f"2 {bad_path}")
        with pytest.raises(DatasetFormatError, match=r"images.txt, line 2: image path .* leaves the image folder"):
            read_cub_records(cub_root)
    elif reader == "ilsvrc":
        (tmp_path / "val.txt").write_text(f"a.png 0 1 1 5 5\n{bad_path} 0 1 1 5 5\n")
        with pytest.raises(DatasetFormatError, match=r"val.txt, line 2: image path .* leaves the image folder"):
            read_ilsvrc_list(tmp_path / "val.txt")
    else:
        split_dir = _write_wsol_split(tmp_path / "val", {"image_ids.txt": f"c/a.png\n{bad_path}\n"})
        with pytest.raises(DatasetFormatError, match=r"image_ids.txt, line 2: image path .* leaves the image folder"):
            read_wsol_metadata(split_dir)


@pytest.mark.parametrize(
    ("box", "clipped"),
    [
        ("-4.0 -2.0 20.0 10.0", [0.0, 0.0, 16.0, 8.0]),
        ("30.0 20.0 15.0 15.0", [30.0, 20.0, 40.0, 30.0]),
        ("0.0 0.0 40.0 30.0", None),  # touches every border: kept as it is, no warning
    ],
)
def test_boxes_reaching_outside_the_image_are_clipped_with_a_warning(
    cub_root: Path, box: str, clipped: list[float] | None
) -> None:
    _replace_line(cub_root / "bounding_boxes.txt", 1, f"1 {box}")
    dataset = CUBDataset(cub_root, "test", image_size=40, masks=False, transform=v2.ToImage())
    if clipped is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sample = dataset[0]
        x, y, w, h = (float(v) for v in box.split())
        assert sample.boxes.tolist() == [[x, y, x + w, y + h]]
    else:
        with pytest.warns(UserWarning, match=r"images.txt:1: a box of 001.a/1.png reaches outside the 40x30 image"):
            sample = dataset[0]
        assert sample.boxes.tolist() == [clipped]
    assert dataset.check_images() == []


@pytest.mark.parametrize("box", ["40.0 5.0 10.0 10.0", "10.0 30.0 10.0 10.0", "-20.0 5.0 10.0 10.0"])
def test_boxes_entirely_outside_the_image_are_refused(cub_root: Path, box: str) -> None:
    _replace_line(cub_root / "bounding_boxes.txt", 1, f"1 {box}")
    dataset = CUBDataset(cub_root, "test", masks=False)
    pattern = r"images.txt:1: box .* of 001.a/1.png lies entirely outside the 40x30 image"
    with pytest.raises(DatasetFormatError, match=pattern):
        dataset[0]
    assert len(dataset.check_images()) == 1 and re.search(pattern, dataset.check_images()[0])


def test_check_images_finds_unreadable_missing_and_resized_images(tmp_path: Path, cub_root: Path) -> None:
    (cub_root / "images" / "001.a" / "2.png").write_bytes(b"not a png")
    (cub_root / "images" / "001.a" / "3.png").unlink()
    problems = CUBDataset(cub_root, "train", masks=False).check_images()
    assert [re.search(r"(\d).png \(listed in .*images.txt:(\d)\) cannot be read", p).groups() for p in problems] == [
        ("2", "2"),
        ("3", "3"),
    ]
    image_root = tmp_path / "images" / "c"
    image_root.mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray(_object_image()).save(image_root / f"{name}.png")
    sizes = f"c/a.png,{WIDTH},{HEIGHT}\nc/b.png,{WIDTH + 1},{HEIGHT}\n"
    dataset = WSOLMetadataDataset(tmp_path / "images", _write_wsol_split(tmp_path / "val", {"image_sizes.txt": sizes}))
    assert [p.split(":")[-2][-1:] for p in dataset.check_images()] == ["2"]


def test_a_decompression_bomb_is_a_dataset_error(cub_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 40 x 30 images are > 2x this
    dataset = CUBDataset(cub_root, "test", masks=False)
    with pytest.raises(DatasetFormatError, match=r"1.png \(listed in .*images.txt:1\) cannot be read as an image"):
        dataset[0]
    assert len(dataset.check_images()) == 1


@pytest.mark.parametrize("reader", ["cub", "ilsvrc", "wsol"])
def test_a_list_without_images_is_refused(cub_root: Path, tmp_path: Path, reader: str) -> None:
    if reader == "cub":
        for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"):
            (cub_root / name).write_text("\n")
        with pytest.raises(DatasetFormatError, match=r"images.txt: lists no images"):
            read_cub_records(cub_root)
    elif reader == "ilsvrc":
        (tmp_path / "val.txt").write_text("")
        with pytest.raises(DatasetFormatError, match=r"val.txt: lists no images"):
            read_ilsvrc_list(tmp_path / "val.txt")
    else:
        split_dir = _write_wsol_split(tmp_path / "val", {name: "" for name in ("image_ids.txt", "class_labels.txt")})
        with pytest.raises(DatasetFormatError, match=r"image_ids.txt: lists no images"):
            read_wsol_metadata(split_dir)
