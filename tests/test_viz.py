"""Tests of scm_calib.viz: colours, boxes, blending and a PNG that decoders read back."""

import zlib

import numpy as np
import pytest
import torch

from scm_calib import viz


def test_colorize_runs_blue_to_red() -> None:
    rgb = viz.colorize(torch.tensor([[0.0, 1.0, 2.0]]))
    assert rgb.shape == (1, 3, 3) and rgb.dtype == torch.uint8
    assert rgb[0, 0, 2] > rgb[0, 0, 0]  # low: blue
    assert rgb[0, 2, 0] > rgb[0, 2, 2]  # high: red


def test_overlay_draws_gt_and_pred_boxes() -> None:
    score = torch.zeros(20, 20)
    image = torch.full((20, 20, 3), 100, dtype=torch.uint8)
    pred, gt = torch.tensor([[2, 2, 10, 10]]), torch.tensor([[5, 5, 15, 15]])
    out = viz.overlay(score, image, pred_boxes=pred, gt_boxes=gt)
    assert out[2, 6].tolist() == list(viz.PRED_COLOR)
    assert out[15, 12].tolist() == list(viz.GT_COLOR)
    assert out[18, 1].tolist() != list(viz.GT_COLOR)


def test_overlay_rejects_mismatched_image() -> None:
    with pytest.raises(ValueError, match="resize the map"):
        viz.overlay(torch.zeros(8, 8), torch.zeros(9, 9, 3, dtype=torch.uint8))


def test_save_png_round_trip(tmp_path: object) -> None:
    image = torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    path = viz.save_png(tmp_path / "x.png", image)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    idat_start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[idat_start - 8 : idat_start - 4], "big")
    raw = np.frombuffer(zlib.decompress(data[idat_start : idat_start + length]), dtype=np.uint8)
    rows = raw.reshape(5, 1 + 7 * 3)
    assert (rows[:, 0] == 0).all()
    assert np.array_equal(rows[:, 1:].reshape(5, 7, 3), image.numpy())
    cv2 = pytest.importorskip("cv2")
    decoded = cv2.imread(str(path))
    assert np.array_equal(decoded[..., ::-1], image.numpy())
