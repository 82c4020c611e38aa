"""Tests of scm_calib.evaluation: evaluate over a loader, the centre prior, and the held-out-threshold summary."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_input, tiny_model

from scm_calib import SCMAdapter
from scm_calib import metrics as M
from scm_calib.data import WSOLBatch
from scm_calib.evaluation import centre_prior_map, evaluate, summarize
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
        indices=torch.arange(3),
        paths=["a", "b", "c"],
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
