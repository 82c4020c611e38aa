"""Tests of scm_calib.evaluation: evaluate over a loader, the centre prior, and the held-out-threshold summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_input, tiny_model

from scm_calib import SCMAdapter
from scm_calib import metrics as M
from scm_calib.data import WSOLBatch
from scm_calib.diagnostics import OUTCOMES
from scm_calib.evaluation import centre_prior_map, diagnose, evaluate, summarize
from scm_calib.interop import write_score_maps
from scm_calib.localize import select_maps, semantic_and_attention


def _batch(seed: int, protocol_boxes: bool = True) -> WSOLBatch:
    generator = torch.Generator().manual_seed(seed)
    corners = torch.randint(0, 24, (3, 2, 2), generator=generator).sort(dim=1).values
    boxes = [c.flatten()[None] for c in corners]
    return WSOLBatch(
        images=tiny_input("vit", batch=3, seed=seed),
        labels=torch.tensor([seed % 6, 2, 5]),
        boxes=[b.float() for b in boxes],
        image_sizes=torch.full((3, 2), 64),
        indices=torch.arange(3) + 3 * seed,
        paths=[f"{seed}/{name}.jpg" for name in "abc"],
        boxes_protocol=boxes if protocol_boxes else None,
    )


@pytest.mark.parametrize("protocol", ["wsol", "scm"])
def test_evaluate_equals_the_metrics_of_the_selected_maps(protocol: str) -> None:
    adapter = SCMAdapter(tiny_model("vit", num_classes=6))
    loader = [_batch(0), _batch(1)]
    result = evaluate(adapter, loader, (24, 24), protocol, centre_prior=True)
    outputs = [semantic_and_attention(adapter, batch.images) for batch in loader]
    logits = torch.cat([out.logits for out in outputs])
    labels = torch.cat([batch.labels for batch in loader])
    gt = [box for batch in loader for box in batch.boxes_protocol]
    maps_gt = torch.cat([select_maps(out, batch.labels) for out, batch in zip(outputs, loader, strict=True)])
    maps_topk = torch.cat([select_maps(out, 5) for out in outputs])
    boxes = M.box_accuracy(maps_gt, gt, protocol, size=(24, 24))
    localization = M.localization_accuracy(logits, labels, gt, maps_topk, maps_gt, protocol=protocol, size=(24, 24))
    assert result["MaxBoxAccV2"] == boxes["MaxBoxAccV2"]
    assert result["best_tau/MaxBoxAcc"] == boxes["best_tau"]
    for name in ("GTKnownLoc", "Top1Loc", "Top5Loc", "Top1Cls", "best_tau"):
        assert result[name] == localization[name], name
    prior = centre_prior_map((4, 4)).expand(6, 4, 4)
    assert result["centre_prior"]["MaxBoxAccV2"] == M.box_accuracy(prior, gt, protocol, size=(24, 24))["MaxBoxAccV2"]


def test_evaluate_needs_the_protocol_boxes() -> None:
    adapter = SCMAdapter(tiny_model("vit", num_classes=6))
    with pytest.raises(ValueError, match="augment=False"):
        evaluate(adapter, [_batch(0, protocol_boxes=False)], (24, 24))


@pytest.mark.parametrize("protocol", ["wsol", "scm", "tscam"])
def test_diagnose_right_is_top1_loc_at_tau_and_gives_one_row_per_image(protocol: str) -> None:
    adapter = SCMAdapter(tiny_model("vit", num_classes=6))
    loader = [_batch(0), _batch(1)]
    for batch in loader:  # the first two images of each batch right, with a box the map's blob can hit
        batch.labels[:2] = semantic_and_attention(adapter, batch.images).logits[:2].argmax(dim=1)
        batch.boxes_protocol[0] = torch.tensor([[0, 0, 23, 23]])
    result = evaluate(adapter, loader, (24, 24), protocol)
    index = int(result["curve/Top1Loc"].argmax())
    assert result["curve/Top1Loc"][index] > 0
    tau = float(result["thresholds"][index])
    found = diagnose(adapter, reversed(loader), (24, 24), tau, protocol)  # rows come back in dataset order
    assert found["outcomes"]["right"] == pytest.approx(float(result["curve/Top1Loc"][index]))
    assert sum(found["outcomes"][name] for name in OUTCOMES) == pytest.approx(100.0)
    assert [row.image_id for row in found["images"]] == [path for batch in loader for path in batch.paths]
    assert [row.label for row in found["images"]] == torch.cat([batch.labels for batch in loader]).tolist()
    assert all(row.tau == tau and row.outcome in OUTCOMES for row in found["images"])


def test_diagnose_needs_the_protocol_boxes() -> None:
    adapter = SCMAdapter(tiny_model("vit", num_classes=6))
    with pytest.raises(ValueError, match="augment=False"):
        diagnose(adapter, [_batch(0, protocol_boxes=False)], (24, 24), 0.5)


@pytest.mark.parametrize("protocol", ["wsol", "scm"])
def test_evaluate_writes_the_scored_maps_for_wsolevaluation(protocol: str, tmp_path: Path) -> None:
    adapter = SCMAdapter(tiny_model("vit", num_classes=6))
    loader = [_batch(0)]
    evaluate(adapter, loader, (24, 24), protocol, scoremaps=tmp_path / "scoremaps")
    for batch in loader:
        maps_gt = select_maps(semantic_and_attention(adapter, batch.images), batch.labels)
        expected = write_score_maps(tmp_path / "expected", batch.paths, maps_gt, interpolation="bicubic")
        for path, reference in zip(batch.paths, expected, strict=True):
            stored = np.load(tmp_path / "scoremaps" / f"{path}.npy")
            assert stored.shape == (224, 224) and stored.min() >= 0.0 and stored.max() <= 1.0
            if protocol == "wsol":  # bicubic, as wsolevaluation; "scm" resizes bilinear, as it scores
                np.testing.assert_array_equal(stored, np.load(reference))


def test_centre_prior_peaks_in_the_middle_and_is_symmetric() -> None:
    prior = centre_prior_map((5, 7))
    assert prior.shape == (1, 5, 7)
    assert int(prior[0].argmax()) == 2 * 7 + 3
    assert torch.allclose(prior, prior.flip(-1)) and torch.allclose(prior, prior.flip(-2))


def _curves(values: list[float]) -> dict[str, object]:
    curve = torch.tensor(values, dtype=torch.float64)
    return {
        "MaxBoxAccV2": float(curve.max()),
        "best_tau": 0.3,
        "thresholds": torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=torch.float64),
        "curve_v2": torch.stack([curve, curve + 1, curve + 2], dim=1),
        "curve/GTKnownLoc": curve + 10,
        "curve/Top1Loc": curve + 20,
        "centre_prior": {"MaxBoxAccV2": 1.0, "curve": curve},
    }


@pytest.mark.parametrize(
    ("protocol", "held_out", "expected"),
    [
        ("wsol", True, {"MaxBoxAccV2": 51.0, "GTKnownLoc": 60.0, "Top1Loc": 70.0, "tau": 0.1}),
        ("scm", True, {"MaxBoxAccV2": 51.0, "GTKnownLoc": 60.0, "Top1Loc": 70.0, "tau": 0.1}),
        ("tscam", True, None),
        ("wsol", False, None),
    ],
)
def test_summarize_reads_test_at_the_held_out_threshold(protocol: str, held_out: bool, expected: dict | None) -> None:
    val = {**_curves([0, 1, 2, 3]), "best_tau": 0.1, "best_tau@30": 0.1, "best_tau@50": 0.1, "best_tau@70": 0.1}
    test = _curves([40, 50, 30, 90])
    summary = summarize(val if held_out else None, test, protocol)
    assert summary["test"] == {"MaxBoxAccV2": 90.0, "best_tau": 0.3}
    assert summary["centre_prior"] == {"MaxBoxAccV2": 1.0}
    assert summary.get("test_at_val_tau") == expected
