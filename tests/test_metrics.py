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


def test_tscam_iou_is_strict() -> None:
    # Blob x 0..3, y 0..9 gives the box [0, 0, 4, 10]; vs ground truth [0, 0, 9, 10]: IoU = 55 / 110.
    maps = _square_map(16, 0, 0, 3, 9)[None]
    gt = [torch.tensor([[0, 0, 9, 10]])]
    assert B.box_iou(torch.tensor([[0, 0, 4, 10]]), gt[0]).item() == 0.5
    assert M.box_accuracy(maps, gt, protocol="wsol", tau=0.1)["MaxBoxAcc"] == 100.0
    assert M.box_accuracy(maps, gt, protocol="tscam")["MaxBoxAcc"] == 0.0


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


def test_sync_sums_over_a_process_group(tmp_path: object) -> None:
    metric = M.BoxAccuracy()
    maps, gt = _random_batch(4)
    metric.update(maps, gt)
    before = metric.state_dict()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        metric.sync()
    finally:
        dist.destroy_process_group()
    assert all(torch.equal(before[k], v) for k, v in metric.state_dict().items())


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
    from scm_calib import boxes_cv2 as cv2_backend

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
