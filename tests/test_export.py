"""The exportable localizer: its boxes equal the protocol's, its exported programs equal the eager module."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import tiny_input, tiny_model

from scm_calib import SCMAdapter, localization_maps
from scm_calib.boxes import boxes_from_maps, normalize_maps, prepare_maps, threshold_levels
from scm_calib.export import (
    Localization,
    Localizer,
    component_labels,
    export_localizer,
    export_onnx,
    largest_blob_boxes,
)

THRESHOLDS = [0.1, 0.3, 0.5, 0.7, 0.9]


def _first_pixels(mask: torch.Tensor, eight: bool) -> torch.Tensor:
    """Reference labelling by flood fill: the flat index of each pixel's component's first pixel, -1 outside."""
    h, w = mask.shape
    out = torch.full((h, w), -1, dtype=torch.int64)
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0) and (eight or dy * dx == 0)]
    for start in range(h * w):
        if not mask.view(-1)[start] or out.view(-1)[start] >= 0:
            continue
        stack = [divmod(start, w)]
        out[stack[0]] = start
        while stack:
            y, x = stack.pop()
            for dy, dx in steps:
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and out[ny, nx] < 0:
                    out[ny, nx] = start
                    stack.append((ny, nx))
    return out


def _spiral(size: int) -> torch.Tensor:
    """A one-pixel-wide spiral path: the longest shortest path a size x size mask can hold, about size**2 / 2."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    lo, hi = 0, size - 1
    while lo <= hi:
        mask[lo, lo : hi + 1] = mask[lo : hi + 1, hi] = mask[hi, lo : hi + 1] = True
        mask[lo + 2 : hi + 1, lo] = True
        if lo + 2 <= hi:
            mask[lo + 2, lo + 1] = True
        lo, hi = lo + 2, hi - 2
    return mask


def _shapes() -> dict[str, torch.Tensor]:
    """Maps with holes, islands, ties and empty or full foregrounds (values 0 or 1, threshold 0.5)."""
    ring = torch.zeros(20, 20)
    ring[2:10, 2:10] = 1.0
    ring[3:9, 3:9] = 0.0  # a ring whose hole makes it the largest contour, though a solid blob has more pixels
    ring[12:17, 10:17] = 1.0
    island = ring.clone()
    island[5:7, 5:7] = 1.0
    tie = torch.zeros(12, 12)
    tie[1:4, 1:4] = tie[6:9, 7:10] = 1.0
    diagonal = torch.zeros(10, 10)
    diagonal[2:5, 2:5] = diagonal[5:8, 5:8] = 1.0  # touching at a corner: one 8-connected blob
    return {
        "ring": ring,
        "island": island,
        "tie": tie,
        "diagonal": diagonal,
        "empty": torch.zeros(8, 8),
        "full": torch.ones(8, 8),
        "spiral": _spiral(15).float(),
    }


@pytest.mark.parametrize("eight", [True, False], ids=["8-connected", "4-connected"])
@pytest.mark.parametrize("seed", [0, 1])
def test_component_labels_equal_flood_fill(eight, seed):
    mask = torch.rand(3, 9, 11, generator=torch.Generator().manual_seed(seed)) > 0.45
    labels, fixed = component_labels(mask, iterations=12, eight=eight)
    assert fixed.all()
    assert torch.equal(labels, torch.stack([_first_pixels(m, eight) for m in mask]))


def test_component_labels_flag_a_labelling_short_of_its_fixed_point():
    labels, fixed = component_labels(_spiral(15)[None], iterations=1)
    assert not fixed.any()
    assert torch.equal(component_labels(_spiral(15)[None], iterations=12)[1], torch.tensor([True]))


@pytest.mark.parametrize("name", list(_shapes()))
def test_largest_blob_boxes_equal_boxes_from_maps_on_shapes(name):
    maps = _shapes()[name][None]
    quantized = prepare_maps(maps)
    boxes, converged = largest_blob_boxes(quantized.float(), threshold_levels(quantized, [0.5])[:, 0], 12)
    assert converged.all()
    assert torch.equal(boxes, boxes_from_maps(maps, thresholds=[0.5], largest_only=True).boxes)


@pytest.mark.parametrize(
    "size, grid, interpolation", [(32, 4, "bilinear"), (64, 4, "bicubic"), (64, 8, "bilinear"), (48, 12, "bicubic")]
)
def test_largest_blob_boxes_equal_boxes_from_maps_on_generated_maps(size, grid, interpolation):
    maps = torch.rand(16, grid, grid, generator=torch.Generator().manual_seed(size + grid))
    quantized = prepare_maps(maps, (size, size), interpolation)
    reference = boxes_from_maps(quantized, THRESHOLDS, largest_only=True).boxes.view(16, len(THRESHOLDS), 4)
    for i, tau in enumerate(THRESHOLDS):
        boxes, converged = largest_blob_boxes(quantized.float(), threshold_levels(quantized, [tau])[:, 0], 12)
        assert converged.all()
        assert torch.equal(boxes, reference[:, i])


def _adapter(head: str = "conv") -> SCMAdapter:
    return SCMAdapter(tiny_model("vit"), head_type=head).eval()


@pytest.mark.parametrize("head", ["conv", "linear"])
@pytest.mark.parametrize("stripped", [False, True], ids=["adapter", "stripped"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_localizer_equals_the_library(head, stripped, interpolation):
    adapter = _adapter(head)
    images = tiny_input("vit", batch=3)
    localizer = Localizer(adapter.strip() if stripped else adapter, threshold=0.4, interpolation=interpolation)
    with torch.no_grad():
        out = Localization(*localizer(images))
        logits = adapter(images).logits
    maps = normalize_maps(localization_maps(adapter, images, size="input", interpolation=interpolation))
    torch.testing.assert_close(out.logits, logits)
    assert torch.equal(out.classes, logits.argmax(dim=1))
    torch.testing.assert_close(out.maps, maps, rtol=0, atol=1e-5)
    assert out.converged.all()
    assert torch.equal(out.boxes, boxes_from_maps(out.maps, [0.4], largest_only=True).boxes)


def test_localizer_leaves_the_model_bare():
    model = _adapter().strip()
    Localizer(model, threshold=0.5)(tiny_input("vit"))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(threshold=1.5), ValueError, "threshold must lie in"),
        (dict(threshold=0.5, interpolation="nearest"), ValueError, "interpolation must be one of"),
        (dict(threshold=0.5, iterations=0), ValueError, "iterations must be >= 1"),
    ],
)
def test_localizer_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Localizer(_adapter(), **kwargs)


@pytest.mark.parametrize("stripped", [False, True], ids=["adapter", "stripped"])
def test_localizer_blocks_keyword_warns_and_means_attention_blocks(stripped):
    model = _adapter().strip() if stripped else _adapter()
    with pytest.warns(DeprecationWarning, match=r"Localizer\(blocks=\.\.\.\).*pass attention_blocks= instead"):
        old = Localizer(model, threshold=0.5, blocks=[-1])
    assert old.capture.block_indices == Localizer(model, threshold=0.5, attention_blocks=[-1]).capture.block_indices
    assert old.capture.block_indices == [1]


def test_localizer_rejects_a_model_without_maps():
    with pytest.raises(TypeError, match="Localizer needs an SCMAdapter"):
        Localizer(torch.nn.Conv2d(3, 3, 1), threshold=0.5)


@pytest.mark.parametrize("export", [export_localizer, export_onnx])
def test_export_needs_a_localizer(export, tmp_path):
    with pytest.raises(TypeError, match=r"wrap the model first: Localizer\(model, threshold=tau\)"):
        export(_adapter(), tiny_input("vit"), tmp_path / "model")


def _assert_same(outputs, expected) -> None:
    for got, want, name in zip(outputs, expected, Localization._fields, strict=True):
        got = torch.as_tensor(got)
        if want.is_floating_point():
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=name)
        else:
            assert torch.equal(got, want), name


@pytest.mark.slow
@pytest.mark.parametrize("dynamic_batch, batches", [(True, [3, 1]), (False, [2])])
def test_exported_program_equals_eager(dynamic_batch, batches, tmp_path):
    localizer = Localizer(_adapter(), threshold=0.3)
    path = tmp_path / "localizer.pt2"
    export_localizer(localizer, tiny_input("vit", batch=2), path, dynamic_batch=dynamic_batch)
    program = torch.export.load(path).module()
    for batch in batches:
        images = tiny_input("vit", batch=batch, seed=batch)
        with torch.no_grad():
            _assert_same(program(images), localizer(images))


@pytest.mark.slow
@pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs the export extra: pip install onnx onnxscript onnxruntime",
)
def test_onnx_program_equals_eager(tmp_path):
    import onnxruntime

    localizer = Localizer(_adapter(), threshold=0.3)
    path = tmp_path / "localizer.onnx"
    export_onnx(localizer, tiny_input("vit", batch=2), path)
    session = onnxruntime.InferenceSession(str(path))
    assert [o.name for o in session.get_outputs()] == list(Localization._fields)
    images = tiny_input("vit", batch=3, seed=3)
    with torch.no_grad():
        _assert_same(session.run(None, {"images": images.numpy()}), localizer(images))


@pytest.mark.parametrize("fill", [3.0, float("nan"), None], ids=["constant", "nan", "random"])
def test_normalize_maps_exports_and_keeps_its_values(fill):
    maps = torch.rand(2, 6, 7, generator=torch.Generator().manual_seed(0))
    if fill is not None:
        maps[1] = 3.0
        maps[1, 2, 2] = fill
    expected = (maps - maps.amin(dim=(1, 2), keepdim=True)) / (maps.amax(dim=(1, 2)) - maps.amin(dim=(1, 2)))[
        :, None, None
    ]
    if fill is not None:
        expected[1] = 0.0
    program = torch.export.export(_Normalize(), (maps,), strict=False)
    assert torch.equal(program.module()(maps), expected) and torch.equal(normalize_maps(maps), expected)


class _Normalize(torch.nn.Module):
    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return normalize_maps(maps)


@pytest.mark.parametrize("threshold, top", [(0.5, 127), (0.0, 0), (1.0, 255)])
def test_localizer_levels_follow_the_protocol(threshold, top):
    assert Localizer(_adapter(), threshold=threshold).levels[255] == top
