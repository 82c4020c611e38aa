"""Tests of scm_calib.interop: the clovaai wsolevaluation layout, written and read back, scored equal."""

import numpy as np
import pytest
import torch

from scm_calib import interop
from scm_calib.boxes import resize_maps, scale_boxes
from scm_calib.data import ImageRecord, read_wsol_metadata
from scm_calib.metrics import BoxAccuracy, PixelAveragePrecision

SIZES = [(300, 200), (224, 224), (500, 375), (120, 160), (640, 480), (333, 250), (250, 333)]


def _run(n: int = 7, seed: int = 0) -> tuple[list[ImageRecord], torch.Tensor]:
    """Records of images of several sizes (some with two boxes) and CAM-like 14 x 14 maps for them."""
    generator = torch.Generator().manual_seed(seed)
    records = []
    for i in range(n):
        width, height = SIZES[i % len(SIZES)]
        boxes = []
        for _ in range(1 + i % 2):
            x0, x1 = (
                torch.randint(0, width // 3, (2,), generator=generator) + torch.tensor([0, 2 * width // 3])
            ).tolist()
            y0, y1 = (
                torch.randint(0, height // 3, (2,), generator=generator) + torch.tensor([0, 2 * height // 3])
            ).tolist()
            boxes.append((float(x0), float(y0), float(x1), float(y1)))
        records.append(
            ImageRecord(f"{i:03d}.class/img_{i}.jpg", label=i % 3, boxes=tuple(boxes), source=f"test:{i}", size=None)
        )
    grid = torch.rand(n, 4, 4, generator=generator)
    grid[:, 1:3, 1:3] += 1.0  # a central object, as the boxes are
    maps = resize_maps(grid, (14, 14), "bilinear") * 5 - 2  # smooth, not in [0, 1]
    return records, maps


def _sizes(records: list[ImageRecord]) -> dict[str, tuple[int, int]]:
    return {record.path: SIZES[i % len(SIZES)] for i, record in enumerate(records)}


def _direct_gt(records: list[ImageRecord]) -> list[torch.Tensor]:
    sizes = _sizes(records)
    return [scale_boxes(torch.tensor(record.boxes), sizes[record.path]) for record in records]


@pytest.mark.parametrize(("batch_size", "as_batches"), [(128, False), (1, True), (3, True)])
def test_written_maps_read_back_score_equal_direct_scoring(tmp_path, batch_size: int, as_batches: bool) -> None:
    records, maps = _run()
    given = [maps[:4], maps[4:]] if as_batches else maps
    interop.write_wsolevaluation(tmp_path, records, given, image_sizes=_sizes(records))
    direct = BoxAccuracy("wsol", step=0.05, size=(224, 224))
    direct.update(maps, _direct_gt(records))
    read_back = BoxAccuracy("wsol", step=0.05)
    ids = []
    for batch in interop.read_wsolevaluation(
        tmp_path / "scoremaps", tmp_path / "metadata/CUB/test", batch_size=batch_size
    ):
        read_back.update(batch.maps, batch.gt_boxes)
        ids += batch.image_ids
        assert batch.labels.tolist() == [int(i[:3]) % 3 for i in batch.image_ids]
    assert ids == [record.path for record in records]
    for state, value in direct.state_dict().items():
        assert torch.equal(read_back.state_dict()[state], value), state


def test_pxap_of_read_back_maps_equals_direct(tmp_path) -> None:
    records, maps = _run(4, seed=1)
    interop.write_wsolevaluation(tmp_path, records, maps, image_sizes=_sizes(records))
    masks = torch.zeros(4, 224, 224, dtype=torch.bool)
    masks[:, 50:150, 60:170] = True
    direct = PixelAveragePrecision(size=(224, 224))
    direct.update(maps, masks)
    (batch,) = interop.read_wsolevaluation(tmp_path / "scoremaps", tmp_path / "metadata/CUB/test")
    read_back = PixelAveragePrecision()
    read_back.update(batch.maps, masks)
    assert read_back.compute()["PxAP"] == pytest.approx(direct.compute()["PxAP"], abs=1e-9)


def _reference_box_acc_curve(scoremap_root, split_dir, step: float) -> np.ndarray:
    """wsolevaluation's BoxEvaluator, restated: load <root>/<id>.npy, check it, float64 quantisation, largest
    contour (OpenCV), ground truth scaled to 224 with resize_bbox: accuracy (percent) at IoU 0.5 per threshold."""
    boxes_cv2 = pytest.importorskip("scm_calib.boxes.opencv")
    pytest.importorskip("cv2")
    lines = {
        name: (split_dir / f"{name}.txt").read_text().splitlines()
        for name in ("image_ids", "image_sizes", "localization")
    }
    sizes = {
        fields[0]: (int(fields[1]), int(fields[2])) for fields in (line.split(",") for line in lines["image_sizes"])
    }
    gt: dict[str, list] = {}
    for fields in (line.split(",") for line in lines["localization"]):
        (w, h), box = sizes[fields[0]], [float(v) for v in fields[1:]]
        gt.setdefault(fields[0], []).append(
            [int(box[0] * 224 / w), int(box[1] * 224 / h), int(box[2] * 224 / w), int(box[3] * 224 / h)]
        )
    taus = np.arange(0, 1, step)
    hits = np.zeros(len(taus))
    for image_id in lines["image_ids"]:
        score_map = np.load(scoremap_root / f"{image_id}.npy").astype(np.float64)
        assert score_map.shape == (224, 224) and score_map.min() >= 0 and score_map.max() <= 1
        quantized = (score_map * 255).astype(np.uint8)
        for t, tau in enumerate(taus):
            box = boxes_cv2.map_boxes_cv2(quantized, float(tau), largest_only=True)
            ious = [_iou(box[0], g) for g in gt[image_id]]
            hits[t] += max(ious) >= 0.5
    return hits / len(lines["image_ids"]) * 100


def _iou(a, b) -> float:
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = width * height
    return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)


def test_reference_evaluator_on_written_folder_equals_library(tmp_path) -> None:
    records, maps = _run(6, seed=2)
    interop.write_wsolevaluation(tmp_path, records, maps, image_sizes=_sizes(records))
    library = BoxAccuracy("wsol", step=0.05, size=(224, 224))
    library.update(maps, _direct_gt(records))
    reference = _reference_box_acc_curve(tmp_path / "scoremaps", tmp_path / "metadata/CUB/test", step=0.05)
    curve = library.compute()["curve"][:, 1].numpy()  # IoU 0.5
    assert 0 < reference.max() < 100
    np.testing.assert_array_equal(reference, curve)


def test_layout_and_command(tmp_path) -> None:
    records, maps = _run(3)
    command = interop.write_wsolevaluation(
        tmp_path, records, maps, dataset_name="ILSVRC", split="val", image_sizes=_sizes(records)
    )
    assert (tmp_path / "scoremaps/000.class/img_0.jpg.npy").is_file()
    saved = np.load(tmp_path / "scoremaps/001.class/img_1.jpg.npy")
    assert saved.shape == (224, 224) and saved.dtype == np.float32 and saved.min() == 0 and saved.max() == 1
    split_dir = tmp_path / "metadata/ILSVRC/val"
    assert (split_dir / "class_labels.txt").read_text().splitlines()[1] == "001.class/img_1.jpg,1"
    assert (split_dir / "image_sizes.txt").read_text().splitlines()[0] == "000.class/img_0.jpg,300,200"
    read = read_wsol_metadata(split_dir)
    assert [(r.path, r.label, r.boxes) for r in read] == [(r.path, r.label, r.boxes) for r in records]
    assert command == (
        f"python evaluation.py --scoremap_root={tmp_path}/scoremaps --metadata_root={tmp_path}/metadata "
        f"--mask_root={tmp_path} --dataset_name=ILSVRC --split=val --cam_curve_interval=0.01"
    )
    v2 = interop.wsolevaluation_command(tmp_path, "CUB", "test", multi_contour=True)
    assert v2.endswith("--multi_contour_eval=True --multi_iou_eval=True")


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda r: ImageRecord(r.path, r.label, ((1.5, 2.0, 3.0, 4.0),), r.source), ValueError, "not a whole pixel"),
        (lambda r: ImageRecord("a,b.jpg", r.label, r.boxes, r.source), ValueError, "comma"),
        (lambda r: ImageRecord("elsewhere.jpg", r.label, r.boxes, r.source), ValueError, "no image size"),
        (lambda r: ImageRecord(r.path, r.label, (), r.source), ValueError, "has no box"),
    ],
    ids=["fractional-box", "comma", "no-size", "no-box"],
)
def test_metadata_that_the_reference_cannot_read_is_an_error(tmp_path, change, error, message) -> None:
    records, _ = _run(2)
    with pytest.raises(error, match=message):
        interop.write_wsol_metadata(tmp_path, [records[0], change(records[1])], image_sizes=_sizes(records))


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        (np.full((224, 224), 1.5, np.float32), r"in \[0, 1\]"),
        (np.zeros((2, 224, 224), np.float32), "2-D float"),
        (None, "no score map"),
    ],
    ids=["above-one", "3-d", "missing"],
)
def test_maps_the_reference_would_reject_are_an_error(tmp_path, stored, message) -> None:
    records, maps = _run(2)
    interop.write_wsolevaluation(tmp_path, records, maps, image_sizes=_sizes(records))
    path = interop.score_map_path(tmp_path / "scoremaps", records[1].path)
    if stored is None:
        path.unlink()
    else:
        np.save(path, stored)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        list(interop.read_wsolevaluation(tmp_path / "scoremaps", tmp_path / "metadata/CUB/test"))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda root, records, maps: interop.write_wsolevaluation(root, records, maps[:1]), "maps for 1 images"),
        (
            lambda root, records, maps: interop.write_wsolevaluation(root, records, maps, dataset_name="OpenImages"),
            "CUB",
        ),
        (lambda root, records, maps: interop.score_map_path(root, "../x.jpg"), "relative path"),
    ],
    ids=["too-few-maps", "dataset", "outside"],
)
def test_wrong_arguments_are_errors(tmp_path, call, message) -> None:
    records, maps = _run(2)
    records = [ImageRecord(r.path, r.label, r.boxes, r.source, size=(224, 224)) for r in records]
    with pytest.raises(ValueError, match=message):
        call(tmp_path, records, maps)
