"""Tests of scm_calib.metrics: hand-built cases, streaming and summing states, and OpenCV references."""

import numpy as np
import pytest
import torch
import torch.distributed as dist

from scm_calib import boxes as B
from scm_calib import metrics as M


def _square_map(size: int, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    """A (size, size) map that is 1 on the pixels x0..x1, y0..y1 (inclusive) and 0 elsewhere."""
    maps = torch.zeros(size, size)
    maps[y0 : y1 + 1, x0 : x1 + 1] = 1.0
    return maps


def _random_batch(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    maps = B.resize_maps(torch.rand(n, 7, 7, generator=generator), (size, size))
    corners = torch.randint(0, size, (n, 2, 2), generator=generator).sort(dim=1).values
    return maps, [c.flatten()[None] for c in corners]


def test_box_accuracy_hand_built() -> None:
    # Blob x 2..9, y 2..9 gives the box [2, 2, 10, 10]; ground truth [2, 2, 10, 10] is a perfect hit.
    maps = torch.stack([_square_map(16, 2, 2, 9, 9), _square_map(16, 2, 2, 9, 9)])
    gt = [torch.tensor([[2, 2, 10, 10]]), torch.tensor([[12, 12, 15, 15]])]
    result = M.box_accuracy(maps, gt)
    assert result["MaxBoxAcc"] == 50.0
    assert result["MaxBoxAccV2"] == 50.0
    assert result["best_tau"] == 0.0
    assert result["curve"].shape == (100, 3)


def test_any_ground_truth_box_counts() -> None:
    maps = _square_map(16, 2, 2, 9, 9)[None]
    gt_miss = [torch.tensor([[12, 12, 15, 15]])]
    gt_both = [torch.tensor([[12, 12, 15, 15], [2, 2, 10, 10]])]
    assert M.box_accuracy(maps, gt_miss)["MaxBoxAcc"] == 0.0
    assert M.box_accuracy(maps, gt_both)["MaxBoxAcc"] == 100.0


def test_v2_counts_every_blob_but_v1_only_the_largest() -> None:
    maps = (_square_map(32, 1, 1, 4, 4) + _square_map(32, 10, 10, 25, 25))[None]
    gt = [torch.tensor([[1, 1, 5, 5]])]  # the small blob's box
    result = M.box_accuracy(maps, gt)
    assert result["MaxBoxAcc"] == 0.0
    assert result["MaxBoxAccV2"] == 100.0


def test_tscam_top_k_loc_is_strict_but_gt_known_is_not() -> None:
    # Blob x 0..3, y 0..9 gives the box [0, 0, 4, 10]; vs ground truth [0, 0, 9, 10]: IoU = 55 / 110.
    maps = _square_map(16, 0, 0, 3, 9)[None]
    gt = [torch.tensor([[0, 0, 9, 10]])]
    assert B.box_iou(torch.tensor([[0, 0, 4, 10]]), gt[0]).item() == 0.5
    assert M.box_accuracy(maps, gt, protocol="tscam")["MaxBoxAcc"] == 100.0  # TS-CAM: iou >= 0.5
    metric = M.LocalizationAccuracy("tscam")
    metric.update(torch.tensor([[2.0, 1.0]]), torch.tensor([0]), gt, maps[:, None])
    result = metric.compute()
    assert (result["Top1Loc"], result["GTKnownLoc"]) == (0.0, 100.0)  # TS-CAM: Top-k Loc needs iou > 0.5


def test_streaming_equals_one_shot_and_states_sum() -> None:
    maps, gt = _random_batch(24)
    whole = M.BoxAccuracy()
    whole.update(maps, gt)
    first, second = M.BoxAccuracy(), M.BoxAccuracy()
    first.update(maps[:10], gt[:10])
    second.update(maps[10:], gt[10:])
    merged = M.BoxAccuracy()
    merged.load_state_dict({k: first.state_dict()[k] + second.state_dict()[k] for k in first.state_dict()})
    for key in ("MaxBoxAcc", "MaxBoxAccV2", "best_tau", "best_tau@70"):
        assert merged.compute()[key] == whole.compute()[key]
    whole.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        whole.compute()


def test_compute_inside_a_process_group_leaves_the_state(tmp_path: object) -> None:
    metric = M.BoxAccuracy()
    maps, gt = _random_batch(4)
    metric.update(maps, gt)
    before, expected = metric.state_dict(), metric.compute()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        result = metric.compute()
    finally:
        dist.destroy_process_group()
    assert all(torch.equal(before[k], v) for k, v in metric.state_dict().items())
    assert (result["MaxBoxAcc"], result["MaxBoxAccV2"]) == (expected["MaxBoxAcc"], expected["MaxBoxAccV2"])


def _fed(kind: str) -> M.Metric:
    maps, gt = _random_batch(4)
    if kind == "boxes":
        metric: M.Metric = M.BoxAccuracy()
        metric.update(maps, gt)
    elif kind == "localization":
        logits, labels, gt, maps_topk, maps_gt = _loc_batch()
        metric = M.LocalizationAccuracy()
        metric.update(logits, labels, gt, maps_topk, maps_gt)
    else:
        metric = M.PixelAveragePrecision(step=0.01)
        metric.update(maps, maps > 0.5)
    return metric


@pytest.mark.parametrize("kind", ["boxes", "localization", "pxap"])
def test_compute_sums_the_states_of_every_process(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes that fed the same batch: compute() all-reduces, so it equals one process fed twice."""
    twice = _fed(kind)
    twice.load_state_dict({name: value * 2 for name, value in twice.state_dict().items()})
    metric = _fed(kind)
    before = metric.state_dict()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op: tensor.mul_(2))
    result, expected = metric.compute(), twice.compute()
    assert all(torch.equal(before[name], value) for name, value in metric.state_dict().items())
    for name, value in expected.items():
        assert torch.equal(torch.as_tensor(result[name]), torch.as_tensor(value)), name
    assert not hasattr(metric, "sync")


def test_threshold_from_held_out_split_is_applied_fixed() -> None:
    maps, gt = _random_batch(16)
    val = M.BoxAccuracy()
    val.update(maps, gt)
    best = val.compute()
    test = M.BoxAccuracy(tau=best["best_tau"])
    test.update(maps, gt)
    assert test.thresholds.tolist() == [best["best_tau"]]
    assert test.compute()["MaxBoxAcc"] == best["MaxBoxAcc"]


def test_box_accuracy_matches_opencv_reference() -> None:
    pytest.importorskip("cv2")
    from scm_calib.boxes import opencv as cv2_backend

    grids = torch.rand(40, 7, 7, generator=torch.Generator().manual_seed(3))
    _, gt = _random_batch(40, size=48, seed=3)
    result = M.box_accuracy(grids, gt, size=(48, 48))
    largest, every = cv2_backend.best_box_iou_cv2(cv2_backend.prepare_maps_cv2(grids, (48, 48)), gt)
    v1 = float((largest >= 0.5).double().mean(0).max() * 100)
    v2 = float(np.mean([(every >= d).double().mean(0).max() * 100 for d in (0.3, 0.5, 0.7)]))
    assert result["MaxBoxAcc"] == pytest.approx(v1, abs=1e-9)
    assert result["MaxBoxAccV2"] == pytest.approx(v2, abs=1e-9)


def _loc_batch() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Three images, 6 classes. Good map: box [2, 2, 10, 10]; bad map: box [12, 12, 15, 15]."""
    good, bad = _square_map(16, 2, 2, 9, 9), _square_map(16, 12, 12, 15, 15)
    logits = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5],  # label 0 at rank 1
            [9.0, 1, 2, 3, 4, 5],  # label 5 at rank 2
            [9.0, 1, 2, 3, 4, 5],  # label 1 outside the top 5
        ]
    )
    labels = torch.tensor([0, 5, 1])
    maps_topk = torch.stack([torch.stack([good, good, bad, bad, bad]), torch.stack([bad, good] + [bad] * 3)])
    maps_topk = torch.cat([maps_topk, torch.stack([good] * 5)[None]])
    maps_gt = torch.stack([good, good, bad])
    gt = [torch.tensor([[2, 2, 10, 10]])] * 3
    return logits, labels, gt, maps_topk, maps_gt


def test_localization_accuracy_hand_built() -> None:
    logits, labels, gt, maps_topk, maps_gt = _loc_batch()
    metric = M.LocalizationAccuracy("wsol")
    metric.update(logits, labels, gt, maps_topk, maps_gt)
    result = metric.compute()
    assert result["Top1Cls"] == pytest.approx(100 / 3)
    assert result["Top5Cls"] == pytest.approx(200 / 3)
    assert result["Top1Loc"] == pytest.approx(100 / 3)  # image 0
    assert result["Top5Loc"] == pytest.approx(200 / 3)  # images 0 and 1
    assert result["GTKnownLoc"] == pytest.approx(200 / 3)  # ground-truth maps of images 0 and 1

    scm = M.LocalizationAccuracy("scm")
    scm.update(logits, labels, gt, maps_topk)  # GT-known from the top-1 map: images 0 and 2
    assert scm.compute()["GTKnownLoc"] == pytest.approx(200 / 3)
    assert "best_tau/Top1Loc" in scm.compute()

    with pytest.raises(ValueError, match="maps_gt"):
        M.LocalizationAccuracy("wsol").update(logits, labels, gt, maps_topk)


def _pxap_reference(maps: np.ndarray, masks: np.ndarray, step: float = 0.001) -> float:
    """wsolevaluation's MaskEvaluator, restated with numpy."""
    edges = np.append(np.arange(0, 1, step), [1.0, 2.0, 3.0])
    true_hist = np.zeros(len(edges) - 1)
    false_hist = np.zeros(len(edges) - 1)
    for cam, mask in zip(maps, masks, strict=True):
        cam = (cam - cam.min()) / (cam.max() - cam.min())
        true_hist += np.histogram(cam[mask == 1], bins=edges)[0]
        false_hist += np.histogram(cam[mask == 0], bins=edges)[0]
    tp = true_hist[::-1].cumsum()
    fn = true_hist.sum() - tp
    fp = false_hist[::-1].cumsum()
    nonzero = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    return float((precision[1:] * np.diff(recall))[nonzero[1:]].sum() * 100)


def test_pxap_matches_wsolevaluation_reference() -> None:
    maps, _ = _random_batch(6)
    masks = torch.zeros_like(maps, dtype=torch.bool)
    masks[:, 8:20, 5:25] = True
    metric = M.PixelAveragePrecision()
    metric.update(maps[:3], masks[:3])
    metric.update(maps[3:], masks[3:])
    expected = _pxap_reference(maps.double().numpy(), masks.numpy())
    assert metric.compute()["PxAP"] == pytest.approx(expected, abs=1e-6)


def test_pxap_perfect_map_is_100() -> None:
    masks = torch.zeros(2, 16, 16)
    masks[:, 4:9, 3:12] = 1
    metric = M.PixelAveragePrecision()
    metric.update(masks + 0.01 * torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0)), masks)
    assert metric.compute()["PxAP"] == pytest.approx(100.0)


def test_unknown_protocol_names_the_choices() -> None:
    with pytest.raises(ValueError, match="scm"):
        M.BoxAccuracy(protocol="cub")


def _cam_like(n: int, classes: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """CAM-like 14 x 14 maps of every class (1 to 3 Gaussian bumps plus noise), logits, labels and one
    ground-truth box per image around the label's main bump, in pixels of a ``size`` image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:14, 0:14]
    cams = np.zeros((n, classes, 14, 14), dtype=np.float32)
    centres = rng.uniform(2, 16, (n, classes, 3, 2))  # often across the right or bottom edge
    sigmas = rng.uniform(1.0, 4.0, (n, classes, 3))
    for bump in range(3):
        weight = 1.0 if bump == 0 else rng.uniform(0, 0.8, (n, classes, 1, 1))
        d2 = (xx - centres[..., bump, 0, None, None]) ** 2 + (yy - centres[..., bump, 1, None, None]) ** 2
        cams += (weight * np.exp(-d2 / (2 * sigmas[..., bump, None, None] ** 2))).astype(np.float32)
    cams += rng.uniform(0, 0.1, cams.shape).astype(np.float32)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += rng.uniform(0, 2, n)
    scale = size / 14
    boxes = []
    for i, label in enumerate(labels):
        (cx, cy), sigma = centres[i, label, 0] * scale, sigmas[i, label, 0] * scale * rng.uniform(1.0, 2.5)
        box = np.clip(np.array([cx - sigma, cy - sigma, cx + sigma, cy + sigma]), 0, size - 1).astype(np.int64)
        boxes.append(box[None])
    return cams, logits, labels, boxes


def _inclusive_iou(box: list[int], gt: np.ndarray) -> float:
    """Best IoU of one box with the ground-truth boxes, inclusive pixels, as both code bases compute it."""
    iw = np.maximum(np.minimum(box[2], gt[:, 2]) - np.maximum(box[0], gt[:, 0]) + 1, 0)
    ih = np.maximum(np.minimum(box[3], gt[:, 3]) - np.maximum(box[1], gt[:, 1]) + 1, 0)
    inter = iw * ih
    union = (box[2] - box[0] + 1) * (box[3] - box[1] + 1) + (gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1)
    return float(np.max(inter / (union - inter), initial=0.0))


def _resize_normalise(cam: np.ndarray, size: int) -> np.ndarray:
    """Both code bases: cv2's bilinear resize, then min-max."""
    cv2 = pytest.importorskip("cv2")
    cam = cv2.resize(cam, (size, size))
    return (cam - cam.min()) / (cam.max() - cam.min())


def _tscam_reference(cams: np.ndarray, logits: np.ndarray, labels: np.ndarray, gts: list, size: int) -> dict:
    """TS-CAM's ``evaluate_cls_loc`` (lib/cams_deit.py) in other words: the largest contour of the map
    thresholded at ``int(0.1 * max)``, its box ``[x, y, x + w, y + h]`` unclipped, Top-k Loc at IoU > 0.5
    and GT-known Loc at IoU >= 0.5."""
    cv2 = pytest.importorskip("cv2")

    def box(cam: np.ndarray) -> list[int]:
        q = (_resize_normalise(cam, size) * 255).astype(np.uint8)
        _, kept = cv2.threshold(q, int(0.1 * np.max(q)), 255, cv2.THRESH_TOZERO)
        contours = cv2.findContours(kept, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        if not contours:
            return [0, 0, 1, 1]
        x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
        return [x, y, x + w, y + h]

    counts = dict.fromkeys(("Top1Loc", "Top5Loc", "GTKnownLoc", "Top1Cls", "Top5Cls"), 0)
    for cam, scores, label, gt in zip(cams, logits, labels, gts, strict=True):
        top5 = np.argsort(-scores, kind="stable")[:5]
        ious = [_inclusive_iou(box(cam[c]), gt) for c in top5]
        counts["Top1Cls"] += top5[0] == label
        counts["Top5Cls"] += label in top5
        counts["Top1Loc"] += top5[0] == label and ious[0] > 0.5
        counts["Top5Loc"] += any(c == label and iou > 0.5 for c, iou in zip(top5, ious, strict=True))
        counts["GTKnownLoc"] += _inclusive_iou(box(cam[label]), gt) >= 0.5
    return {name: count * 100 / len(cams) for name, count in counts.items()}


def test_tscam_preset_equals_tscam_evaluate_cls_loc() -> None:
    cams, logits, labels, gts = _cam_like(32, 8, 40, seed=0)
    expected = _tscam_reference(cams, logits, labels, gts, 40)
    metric = M.LocalizationAccuracy("tscam", size=(40, 40))
    metric.update(torch.from_numpy(logits), torch.from_numpy(labels), gts, maps=torch.from_numpy(cams))
    result = metric.compute()
    assert {name: result[name] for name in expected} == pytest.approx(expected, abs=1e-9)


def _scm_reference(cams: np.ndarray, logits: np.ndarray, labels: np.ndarray, gts: list, size: int) -> dict:
    """SCM's ``tools_cam/test_cam.py`` (``count`` and ``evaluate``) in other words: the top-5 classes' maps,
    wsolevaluation's largest-contour box (clipped to W - 1, H - 1; none: ``[0, 0, 0, 0]``) at every ``tau`` of
    ``arange(0, 1, 0.01)``, hits at IoU >= delta; "GT-known" and "maxbox_acc" from the top-1 predicted map,
    Top-k Loc when the class is also right, each metric at its own best ``tau``."""
    cv2 = pytest.importorskip("cv2")
    taus = np.arange(0, 1, 0.01)

    def box(q: np.ndarray, tau: float) -> list[int]:
        _, foreground = cv2.threshold(q, int(tau * np.max(q)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(foreground, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        if not contours:
            return [0, 0, 0, 0]
        x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
        return [x, y, min(x + w, size - 1), min(y + h, size - 1)]

    def ious(cam: np.ndarray, gt: np.ndarray) -> np.ndarray:
        q = (_resize_normalise(cam, size) * 255).astype(np.uint8)
        return np.array([_inclusive_iou(box(q, tau), gt) for tau in taus])

    detected = {delta: np.zeros(len(taus)) for delta in (0.3, 0.5, 0.7)}  # top-1 map hits, any class
    located = {k: np.zeros(len(taus)) for k in (1, 5)}
    for cam, scores, label, gt in zip(cams, logits, labels, gts, strict=True):
        top5 = list(np.argsort(-scores, kind="stable")[:5])
        top1_iou = ious(cam[top5[0]], gt)
        for delta in detected:
            detected[delta] += top1_iou >= delta
        if label in top5:  # Top-k Loc counts only the ground-truth class's map
            hit = (top1_iou if top5[0] == label else ious(cam[label], gt)) >= 0.5
            located[5] += hit
            located[1] += hit if top5[0] == label else 0
    n = len(cams)
    maxbox = {delta: hits.max() * 100 / n for delta, hits in detected.items()}
    return {
        "GTKnownLoc": maxbox[0.5],
        "Top1Loc": located[1].max() * 100 / n,
        "Top5Loc": located[5].max() * 100 / n,
        "MaxBoxAcc": maxbox[0.5],
        "MaxBoxAccV2": float(np.mean(list(maxbox.values()))),
    }


def test_scm_preset_equals_scm_test_cam() -> None:
    cams, logits, labels, gts = _cam_like(16, 8, 32, seed=1)
    expected = _scm_reference(cams, logits, labels, gts, 32)
    loc = M.LocalizationAccuracy("scm", size=(32, 32))
    loc.update(torch.from_numpy(logits), torch.from_numpy(labels), gts, maps=torch.from_numpy(cams))
    top1_maps = torch.from_numpy(cams[np.arange(len(cams)), logits.argmax(1)])
    result = {**M.box_accuracy(top1_maps, gts, protocol="scm", size=(32, 32)), **loc.compute()}
    assert {name: result[name] for name in expected} == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("bad_label", [-1, 6, 200])
def test_labels_outside_the_classes_are_an_error(bad_label: int) -> None:
    logits, labels, gt, maps_topk, maps_gt = _loc_batch()
    labels[1] = bad_label
    with pytest.raises(ValueError, match=rf"image 1: label {bad_label} is outside \[0, 6\)"):
        M.LocalizationAccuracy().update(logits, labels, gt, maps_topk, maps_gt)


def test_float_labels_are_an_error() -> None:
    logits, labels, gt, maps_topk, maps_gt = _loc_batch()
    with pytest.raises(TypeError, match="integer class indices"):
        M.LocalizationAccuracy().update(logits, labels.float(), gt, maps_topk, maps_gt)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("count", -3, "holds -3"),
        ("hits_largest", -1, "holds -1"),
        ("hits_all", 0.5, "holds 0.5"),
        ("hits_largest", 99, "counts more images"),
    ],
)
def test_loaded_state_must_hold_counts(name: str, value: float, message: str) -> None:
    metric = M.BoxAccuracy()
    maps, gt = _random_batch(4)
    metric.update(maps, gt)
    state = metric.state_dict()
    state[name] = state[name].double()
    state[name].view(-1)[0] = value
    with pytest.raises(ValueError, match=message):
        metric.load_state_dict(state)


def test_pxap_state_rejects_negative_histograms() -> None:
    metric = M.PixelAveragePrecision(step=0.01)
    state = metric.state_dict()
    state["object_hist"][3] = -2.0
    with pytest.raises(ValueError, match="'object_hist' holds -2"):
        metric.load_state_dict(state)


def test_maps_of_all_classes_equal_top_k_and_ground_truth_maps() -> None:
    cams, logits, labels, gts = _cam_like(6, 7, 24, seed=2)
    labels[0] = np.argsort(logits[0])[0]  # the ground truth outside the top 5: GT-known needs its map
    maps = torch.from_numpy(cams)
    top = torch.from_numpy(logits).topk(5, dim=1).indices
    given = M.LocalizationAccuracy(size=(24, 24))
    given.update(
        torch.from_numpy(logits),
        torch.from_numpy(labels),
        gts,
        maps[torch.arange(6)[:, None], top],
        maps[torch.arange(6), torch.from_numpy(labels)],
    )
    gathered = M.LocalizationAccuracy(size=(24, 24))
    gathered.update(logits, labels, gts, maps=cams)  # numpy arrays, as a WSOL code base holds them
    expected = given.state_dict()
    assert all(torch.equal(expected[name], value) for name, value in gathered.state_dict().items())


def test_box_accuracy_takes_numpy_arrays() -> None:
    maps, gt = _random_batch(6)
    expected = M.box_accuracy(maps, gt)
    result = M.box_accuracy(maps.numpy(), [box.numpy() for box in gt])
    assert (result["MaxBoxAcc"], result["MaxBoxAccV2"]) == (expected["MaxBoxAcc"], expected["MaxBoxAccV2"])


def test_an_empty_batch_changes_nothing() -> None:
    logits, labels, gt, maps_topk, maps_gt = _loc_batch()
    metric = M.LocalizationAccuracy()
    metric.update(logits, labels, gt, maps_topk, maps_gt)
    before = metric.state_dict()
    metric.update(logits[:0], labels[:0], [], maps_topk[:0], maps_gt[:0])
    metric.update(logits[:0], labels[:0], [], maps=torch.zeros(0, 6, 16, 16))
    boxes = M.BoxAccuracy()
    boxes.update(torch.zeros(0, 16, 16), [])
    assert all(torch.equal(before[k], v) for k, v in metric.state_dict().items())
    assert int(boxes.count) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "gt_boxes": a["gt_boxes"][:2]}, "2 ground-truth box sets for 3 images"),
        (lambda a: {**a, "maps_gt": a["maps_gt"][:2]}, r"maps_gt must have shape \(B, H, W\) with B = 3"),
        (lambda a: {**a, "maps_topk": a["maps_topk"][:2]}, r"maps_topk must have shape \(B, k, H, W\) with B = 3"),
        (lambda a: {**a, "labels": a["labels"][:2]}, r"labels must have shape \(B,\) = \(3,\)"),
        (lambda a: {**a, "maps": torch.zeros(3, 5, 16, 16)}, "not both"),
        (lambda a: {**a, "maps_topk": None, "maps_gt": None}, "pass either maps="),
        (lambda a: {**a, "maps_topk": None, "maps": torch.zeros(3, 5, 16, 16)}, r"\(3, 6, H, W\)"),
    ],
)
def test_mismatched_batches_are_an_error(change: object, message: str) -> None:
    logits, labels, gt, maps_topk, maps_gt = _loc_batch()
    args = {"logits": logits, "labels": labels, "gt_boxes": gt, "maps_topk": maps_topk, "maps_gt": maps_gt}
    with pytest.raises(ValueError, match=message):
        M.LocalizationAccuracy().update(**change(args))


@pytest.mark.parametrize(
    "overrides",
    [{"tau": 1.5}, {"tau": -0.1}, {"tau": float("nan")}, {"step": 0.0}, {"step": 1.0}],
)
def test_thresholds_outside_the_unit_interval_are_an_error(overrides: dict) -> None:
    with pytest.raises(ValueError, match=r"must be in"):
        M.BoxAccuracy(**overrides)


@pytest.mark.parametrize("deltas", [(0.5, 1.5), (0.0, 0.5), ()])
def test_iou_thresholds_outside_the_unit_interval_are_an_error(deltas: tuple) -> None:
    with pytest.raises(ValueError, match=r"iou_thresholds must lie in \(0, 1\]"):
        M.BoxAccuracy(M.Protocol("custom", iou_thresholds=deltas))


@pytest.mark.parametrize("kind", ["boxes", "localization", "pxap"])
def test_function_equals_the_streaming_class_fed_in_two_batches(kind: str) -> None:
    maps, gt = _random_batch(6)
    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    every = torch.stack([maps.roll(c, dims=-1) for c in range(6)], dim=1)  # (6, 6 classes, H, W)
    if kind == "boxes":
        metric: M.Metric = M.BoxAccuracy("scm")
        batches = [(maps[:2], gt[:2]), (maps[2:], gt[2:])]
        expected = M.box_accuracy(maps, gt, "scm")
    elif kind == "localization":
        metric = M.LocalizationAccuracy("wsol")
        batches = [(logits[:2], labels[:2], gt[:2]), (logits[2:], labels[2:], gt[2:])]
        expected = M.localization_accuracy(logits, labels, gt, maps=every)
    else:
        metric = M.PixelAveragePrecision(step=0.01)
        batches = [(maps[:2], maps[:2] > 0.5), (maps[2:], maps[2:] > 0.4)]
        expected = M.pixel_average_precision(maps, torch.cat([maps[:2] > 0.5, maps[2:] > 0.4]), step=0.01)
    for start, batch in zip((0, 2), batches, strict=True):
        if kind == "localization":
            metric.update(*batch, maps=every[start : start + len(batch[0])])
        else:
            metric.update(*batch)
    result = metric.compute()
    assert result.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(torch.as_tensor(result[name]), torch.as_tensor(value)), name


def test_top5_loc_survives_a_saved_state_and_a_process_without_images() -> None:
    """Whether Top-5 Loc is reported is part of the state: it is saved, loaded and summed like the counts."""
    cams, logits, labels, gts = _cam_like(6, 7, 24, seed=3)
    fed = M.LocalizationAccuracy(size=(24, 24))
    fed.update(logits, labels, gts, maps=cams)
    assert "Top5Loc" in fed.compute()
    loaded = M.LocalizationAccuracy(size=(24, 24))
    loaded.load_state_dict(fed.state_dict())
    assert loaded.compute()["Top5Loc"] == fed.compute()["Top5Loc"]
    idle = M.LocalizationAccuracy(size=(24, 24))  # a process whose shard was empty, then its states summed in
    idle.load_state_dict({name: value + 0 for name, value in fed.state_dict().items()})
    assert idle.compute()["Top5Loc"] == fed.compute()["Top5Loc"]
