"""Tests of scm_calib.diagnostics: TS-CAM's outcome breakdown (every case, and a restatement of its code on random
boxes), the streaming metric, the per-image table and the worst / best picks."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.distributed as dist

from scm_calib import diagnostics as D
from scm_calib.metrics import LocalizationAccuracy, Metric, get_protocol

GT = torch.tensor([[10, 10, 49, 49]])  # 40 x 40
TWO = torch.tensor([[10, 10, 29, 29], [40, 10, 59, 29]])  # two 20 x 20 objects side by side


@pytest.mark.parametrize(
    ("box", "predicted", "gt", "outcome"),
    [
        ([12, 12, 50, 50], 1, GT, "right"),  # IoU 0.85
        ([12, 12, 50, 50], 2, GT, "wrong_class"),  # class first, whatever the box
        ([8, 8, 61, 31], 1, TWO, "multi_instance"),  # covers both objects, IoU < 0.5 with each
        ([20, 20, 30, 30], 1, GT, "part"),  # inside the object: IoB 1
        ([0, 0, 80, 80], 1, GT, "too_large"),  # the object inside: IoG 1, IoB 0.24
        ([60, 60, 90, 90], 1, GT, "wrong_place"),  # no overlap
        ([40, 40, 70, 70], 1, GT, "wrong_place"),  # a corner: IoB 0.1, IoG 0.06
    ],
)
def test_each_outcome(box, predicted, gt, outcome) -> None:
    code = D.classify_outcomes(torch.tensor([box]), torch.tensor([predicted]), torch.tensor([1]), [gt])
    assert D.OUTCOMES[int(code)] == outcome


@pytest.mark.parametrize(("strict", "outcome"), [(True, "part"), (False, "right")])
def test_iou_exactly_at_the_threshold(strict: bool, outcome: str) -> None:
    # 20 x 40 box inside the 40 x 40 object: IoU 0.5 exactly, IoB 1.
    box = torch.tensor([[10, 10, 29, 49]])
    rule = D.OutcomeThresholds(strict_iou=strict)
    code = D.classify_outcomes(box, torch.tensor([0]), torch.tensor([0]), [GT], rule)
    assert D.OUTCOMES[int(code)] == outcome


def _tscam_badcase(pred: list, gts: list, same_class: bool) -> str:
    """TS-CAM's get_badcase_detail (lib/cams_deit.py:307-345), restated on plain lists."""

    def overlap(a, b):
        width = min(a[2], b[2]) - max(a[0], b[0]) + 1
        height = min(a[3], b[3]) - max(a[1], b[1]) + 1
        inter = max(width, 0.0) * max(height, 0.0)
        area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
        area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
        return inter / (area_a + area_b - inter), inter / area_b, inter / area_a  # IoU, IoG, IoB

    if not same_class:
        return "wrong_class"
    best_iou, best = 0.0, 0
    for i, gt in enumerate(gts):
        if overlap(pred, gt)[0] > best_iou:
            best_iou, best = overlap(pred, gt)[0], i
    if best_iou > 0.5:
        return "right"
    if len(gts) > 1 and sum(overlap(pred, gt)[1] > 0.3 for gt in gts) > 1:
        return "multi_instance"
    _, iog, iob = overlap(pred, gts[best])
    if iob > 0.5:
        return "part"
    return "too_large" if iog >= 0.7 else "wrong_place"


def _random_boxes(generator: torch.Generator, n: int, extent: int = 64) -> torch.Tensor:
    corners = torch.randint(0, extent, (n, 2, 2), generator=generator).sort(dim=1).values
    return corners.transpose(1, 2).flatten(1)[:, [0, 2, 1, 3]]  # [x0, y0, x1, y1]


def test_equals_tscam_code_on_random_boxes() -> None:
    generator = torch.Generator().manual_seed(0)
    n = 400
    pred = _random_boxes(generator, n)
    gts = [_random_boxes(generator, int(k)) for k in torch.randint(1, 4, (n,), generator=generator)]
    labels = torch.zeros(n, dtype=torch.int64)
    predicted = (torch.rand(n, generator=generator) < 0.1).long()
    codes = D.classify_outcomes(pred, predicted, labels, gts)
    expected = [
        _tscam_badcase(p.tolist(), g.tolist(), bool(c == 0)) for p, g, c in zip(pred, gts, predicted, strict=True)
    ]
    assert [D.OUTCOMES[int(c)] for c in codes] == expected
    assert set(expected) == set(D.OUTCOMES)  # every case hit


def _maps_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Four 64 x 64 images, 3 classes; class maps are squares. Image 0 right, 1 wrong class, 2 part, 3 too large."""
    maps = torch.zeros(4, 3, 64, 64)
    maps[0, 1, 10:50, 10:50] = 1  # box [10, 10, 50, 50] on gt [10, 10, 49, 49]
    maps[1, 2, 10:50, 10:50] = 1
    maps[2, 0, 20:31, 20:31] = 1
    maps[3, 2, 2:62, 2:62] = 1
    logits = torch.tensor([[0.0, 5, 1], [0, 1, 5], [5, 0, 1], [0, 1, 5]])
    labels = torch.tensor([1, 1, 0, 2])
    return maps, logits, labels, [GT] * 4


def test_per_image_rows() -> None:
    maps, logits, labels, gt = _maps_batch()
    rows = D.diagnose_images(maps, logits, labels, gt, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], tau=0.5)
    assert [row.outcome for row in rows] == ["right", "wrong_class", "part", "too_large"]
    assert [row.predicted for row in rows] == [1, 2, 0, 2]
    assert rows[0].box == (10, 10, 50, 50) and rows[0].iou == pytest.approx(1600 / 1681)
    assert rows[2].box == (20, 20, 31, 31) and rows[0].tau == 0.5 and rows[3].label == 2
    top1 = maps[torch.arange(4), logits.argmax(dim=1)]
    assert D.diagnose_images(top1, logits, labels, gt, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], tau=0.5) == rows


def test_streaming_equals_function_and_states_sum() -> None:
    maps, logits, labels, gt = _maps_batch()
    whole = D.localization_outcomes(maps, logits, labels, gt, tau=0.5)
    assert whole == {
        "right": 25.0,
        "wrong_class": 25.0,
        "multi_instance": 0.0,
        "part": 25.0,
        "too_large": 25.0,
        "wrong_place": 0.0,
        "count": 4.0,
    }
    first, second = D.LocalizationOutcomes(tau=0.5), D.LocalizationOutcomes(tau=0.5)
    first.update(maps[:1], logits[:1], labels[:1], gt[:1])
    second.update(maps[1:], logits[1:], labels[1:], gt[1:])
    summed = D.LocalizationOutcomes(tau=0.5)
    summed.load_state_dict({"counts": first.state_dict()["counts"] + second.state_dict()["counts"]})
    assert summed.compute() == whole
    summed.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        summed.compute()


def test_right_equals_top1_loc() -> None:
    maps, logits, labels, gt = _maps_batch()
    outcomes = D.localization_outcomes(maps, logits, labels, gt, tau=0.5)
    top1 = LocalizationAccuracy(get_protocol("wsol", tau=0.5, strict_iou=True))
    top1.update(logits, labels, gt, maps=maps)
    assert outcomes["right"] == top1.compute()["Top1Loc"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_table_written_and_read_back(tmp_path, suffix: str) -> None:
    maps, logits, labels, gt = _maps_batch()
    rows = D.diagnose_images(maps, logits, labels, gt, ["x/a.jpg", "x/b,c.jpg", "c.jpg", "d.jpg"], tau=0.5)
    path = D.write_diagnoses(tmp_path / f"table{suffix}", rows)
    if suffix == ".csv":
        with path.open(newline="") as file:
            read = list(csv.DictReader(file))
        assert read[1]["image_id"] == "x/b,c.jpg" and read[2]["outcome"] == "part"
        assert [float(r["iou"]) for r in read] == [row.iou for row in rows]
        assert [int(read[0][k]) for k in ("x0", "y0", "x1", "y1")] == list(rows[0].box)
    else:
        read = [json.loads(line) for line in path.read_text().splitlines()]
        assert [D.ImageDiagnosis(**{**r, "box": tuple(r["box"])}) for r in read] == rows


def test_worst_and_best() -> None:
    rows = [
        D.ImageDiagnosis(str(i), 0, 0, iou, 0.5, (0, 0, 1, 1), "right")
        for i, iou in enumerate([0.3, 0.9, 0.1, 0.9, 0.5])
    ]
    worst, best = D.worst_and_best(rows, k=2)
    assert [r.image_id for r in worst] == ["2", "0"]
    assert [r.image_id for r in best] == ["1", "3"]  # a tie keeps the table's order
    assert D.worst_and_best(rows, k=10)[0] == sorted(rows, key=lambda r: r.iou)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, lo, la, g: D.LocalizationOutcomes(tau=1.0), r"tau must be in \[0, 1\)"),
        (lambda m, lo, la, g: D.localization_outcomes(m, lo[:, :2], la, g, tau=0.5), "C = 2"),
        (lambda m, lo, la, g: D.localization_outcomes(m, lo, la[:3], g, tau=0.5), r"labels must have shape \(B,\)"),
        (lambda m, lo, la, g: D.diagnose_images(m, lo, la, g, ["a"], tau=0.5), "1 image ids for 4 maps"),
        (lambda m, lo, la, g: D.write_diagnoses("table.txt", []), r"\.csv or \.jsonl"),
        (
            lambda m, lo, la, g: D.LocalizationOutcomes(0.5).load_state_dict(
                {"counts": -torch.ones(6, dtype=torch.int64)}
            ),
            r"not a count \(whole, >= 0\)",
        ),
    ],
    ids=["tau", "classes", "labels", "ids", "suffix", "state"],
)
def test_wrong_arguments_are_errors(call, message) -> None:
    maps, logits, labels, gt = _maps_batch()
    with pytest.raises(ValueError, match=message):
        call(maps, logits, labels, gt)


def test_numpy_maps_are_taken() -> None:
    maps, logits, labels, gt = _maps_batch()
    assert D.localization_outcomes(np.asarray(maps), logits, labels, gt, tau=0.5)["right"] == 25.0


def test_an_empty_batch_changes_nothing_and_compute_sums_a_single_process(tmp_path) -> None:
    maps, logits, labels, gt = _maps_batch()
    metric = D.LocalizationOutcomes(tau=0.5)
    metric.update(maps, logits, labels, gt)
    metric.update(maps[:0], logits[:0], labels[:0], [])
    before, local = metric.state_dict(), metric.compute()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        summed = metric.compute()
    finally:
        dist.destroy_process_group()
    assert summed == local
    assert torch.equal(metric.state_dict()["counts"], before["counts"]) and int(before["counts"].sum()) == 4


def test_outcomes_share_the_metrics_base() -> None:
    assert isinstance(D.LocalizationOutcomes(tau=0.5), Metric)


def test_counting_diagnosed_rows_equals_updating_with_the_maps() -> None:
    maps, logits, labels, gt = _maps_batch()
    from_rows = D.LocalizationOutcomes(tau=0.5)
    from_rows.update_from(D.diagnose_images(maps, logits, labels, gt, ["a", "b", "c", "d"], tau=0.5))
    assert from_rows.compute() == D.localization_outcomes(maps, logits, labels, gt, tau=0.5)


def _object_and_background(object_vector: list[float], background_vector: list[float]) -> torch.Tensor:
    """(1, 2, 6, 6) class scores: one vector on the central 2 x 2 patches (the object), another elsewhere."""
    semantic = torch.tensor(background_vector)[None, :, None, None].repeat(1, 1, 6, 6)
    semantic[:, :, 2:4, 2:4] = torch.tensor(object_vector)[:, None, None]
    return semantic


MASK = torch.zeros(1, 24, 24, dtype=torch.bool)
MASK[:, 8:16, 8:16] = True  # the central 2 x 2 patches of a 6 x 6 grid of 4-pixel patches


def test_semantic_affinity_sees_an_edge_only_where_the_class_vectors_change() -> None:
    affinity = D.SemanticAffinity()
    affinity.update(_object_and_background([1.0, 0.0], [0.0, 1.0]), MASK)
    found = affinity.compute()
    assert found["inside"] == pytest.approx(1.0) and found["background"] == pytest.approx(1.0)
    assert found["boundary"] == pytest.approx(0.0)
    # 2 x 2 object: 4 inside pairs; 8 edge-crossing pairs; 60 pairs on the 6 x 6 grid in all.
    assert (found["inside_pairs"], found["boundary_pairs"], found["background_pairs"]) == (4, 8, 48)
    same = D.SemanticAffinity()
    same.update(_object_and_background([2.0, 1.0], [4.0, 2.0]), MASK)  # same direction: no edge to see
    assert same.compute()["boundary"] == pytest.approx(1.0)


def test_semantic_affinity_sums_batches_like_one_batch() -> None:
    first, second = _object_and_background([1.0, 0.0], [0.0, 1.0]), _object_and_background([1.0, 1.0], [0.0, 1.0])
    whole, parts = D.SemanticAffinity(), D.SemanticAffinity()
    whole.update(torch.cat([first, second]), MASK.repeat(2, 1, 1))
    parts.update(first, MASK)
    parts.update(second, MASK)
    assert whole.compute() == pytest.approx(parts.compute())
    assert isinstance(whole, Metric)


def test_semantic_affinity_refuses_bad_input() -> None:
    with pytest.raises(RuntimeError, match="before any update"):
        D.SemanticAffinity().compute()
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        D.SemanticAffinity().update(torch.zeros(2, 6, 6), MASK)
    with pytest.raises(ValueError, match="same B"):
        D.SemanticAffinity().update(torch.zeros(2, 2, 6, 6), MASK)
