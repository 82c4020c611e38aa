"""Tests of scm_calib.boxes: hand-built maps with known boxes, the component engine, and the torch path
against OpenCV."""

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from scm_calib import boxes as B
from scm_calib.boxes import opencv as cv2_backend
from scm_calib.boxes.components import component_tables, first_touch, level_table, merge_steps


def _box_set(result: B.BlobBoxes, image: int = 0, threshold: int = 0) -> list[list[int]]:
    keep = (result.batch_index == image) & (result.threshold_index == threshold)
    return sorted(result.boxes[keep].tolist())


def _cv2_set(quantized: torch.Tensor, tau: float) -> list[list[int]]:
    pytest.importorskip("cv2")
    return sorted(cv2_backend.map_boxes_cv2(quantized.numpy(), tau, largest_only=False).tolist())


def test_box_iou_inclusive_convention() -> None:
    iou = B.box_iou(torch.tensor([[1, 2, 5, 6]]), torch.tensor([[3, 1, 4, 5], [1, 2, 5, 6], [6, 7, 8, 9]]))
    assert iou[0, 0].item() == pytest.approx(8 / 27, abs=1e-15)
    assert iou[0, 1].item() == 1.0
    assert iou[0, 2].item() == 0.0


def test_single_rectangle_gives_one_pixel_wider_box() -> None:
    maps = torch.zeros(1, 10, 12)
    maps[0, 2:5, 3:8] = 1.0  # x 3..7, y 2..4
    result = B.boxes_from_maps(maps, thresholds=[0.5])
    assert result.boxes.tolist() == [[3, 2, 8, 5]]
    assert result.area.tolist() == [15]
    assert _box_set(result) == _cv2_set(B.prepare_maps(maps)[0], 0.5)


def test_two_blobs_all_and_largest() -> None:
    maps = torch.zeros(1, 16, 16)
    maps[0, 1:3, 1:3] = 1.0
    maps[0, 8:14, 6:12] = 0.9
    quantized = B.prepare_maps(maps)
    every = B.blob_boxes(quantized, thresholds=[0.5])
    assert _box_set(every) == [[1, 1, 3, 3], [6, 8, 12, 14]] == _cv2_set(quantized[0], 0.5)
    largest = B.blob_boxes(quantized, thresholds=[0.5, 0.95], largest_only=True)
    assert largest.boxes.tolist() == [[6, 8, 12, 14], [1, 1, 3, 3]]


def test_diagonal_pixels_are_one_blob() -> None:
    quantized = torch.zeros(1, 6, 6, dtype=torch.uint8)
    quantized[0, 1, 1] = quantized[0, 2, 2] = quantized[0, 3, 3] = 255
    result = B.blob_boxes(quantized, thresholds=[0.5])
    assert _box_set(result) == [[1, 1, 4, 4]] == _cv2_set(quantized[0], 0.5)


def test_ring_gives_outer_and_hole_boxes_like_opencv() -> None:
    quantized = torch.zeros(1, 12, 12, dtype=torch.uint8)
    quantized[0, 2:9, 2:10] = 200
    quantized[0, 4:7, 5:7] = 0  # hole x 5..6, y 4..6
    with_holes = B.blob_boxes(quantized, thresholds=[0.5])
    assert _box_set(with_holes) == [[2, 2, 10, 9], [4, 3, 8, 8]] == _cv2_set(quantized[0], 0.5)
    assert _box_set(B.blob_boxes(quantized, thresholds=[0.5], holes=False)) == [[2, 2, 10, 9]]


def test_holes_are_four_connected_and_border_background_is_no_hole() -> None:
    quantized = torch.full((1, 7, 7), 255, dtype=torch.uint8)
    quantized[0, 2:4, 2] = 0
    quantized[0, 4, 3] = 0  # touches the other hole only diagonally: a second hole
    quantized[0, 3, 5:7] = 0  # reaches the border: not a hole
    result = B.blob_boxes(quantized, thresholds=[0.5])
    assert _box_set(result) == _cv2_set(quantized[0], 0.5)
    assert len(_box_set(result)) == 3


def test_map_touching_the_border_is_clipped() -> None:
    maps = torch.zeros(1, 8, 9)
    maps[0, 5:, 6:] = 1.0
    result = B.boxes_from_maps(maps, thresholds=[0.5])
    assert result.boxes.tolist() == [[6, 5, 8, 7]]
    assert _box_set(result) == _cv2_set(B.prepare_maps(maps)[0], 0.5)


@pytest.mark.parametrize("value", [0.0, 3.5, float("nan")])
def test_constant_or_nan_map_has_no_foreground(value: float) -> None:
    maps = torch.full((1, 6, 6), value)
    maps[0, 0, 0] = value if value == value else 1.0  # one NaN is enough to zero a map
    assert B.normalize_maps(maps).abs().sum() == 0
    result = B.boxes_from_maps(maps, thresholds=[0.0, 0.5])
    assert result.boxes.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0]]
    assert result.area.tolist() == [0, 0]


def test_threshold_is_strict_and_truncated() -> None:
    quantized = torch.zeros(1, 6, 6, dtype=torch.uint8)
    quantized[0, 1, 1:3] = 127  # int(0.5 * 255) = 127: background at tau = 0.5
    quantized[0, 4, 4] = 255
    assert B.threshold_levels(quantized, [0.5]).tolist() == [[127]]
    assert _box_set(B.blob_boxes(quantized, thresholds=[0.5])) == [[4, 4, 5, 5]]
    assert _box_set(B.blob_boxes(quantized, thresholds=[0.49])) == [[1, 1, 3, 2], [4, 4, 5, 5]]


def test_quantisation_truncates() -> None:
    maps = torch.tensor([[[0.0, 0.5, 0.999, 1.0]]])
    assert B.quantize_maps(maps).tolist() == [[[0, 127, 254, 255]]]


def test_threshold_levels_match_numpy_int() -> None:
    taus = B.wsol_thresholds(0.001)
    quantized = torch.tensor([[[0, 255]], [[0, 200]]], dtype=torch.uint8)
    expected = [[int(t * m) for t in np.arange(0, 1, 0.001)] for m in (np.uint8(255), np.uint8(200))]
    assert B.threshold_levels(quantized, taus).tolist() == expected


def test_chunking_and_batching_do_not_change_boxes() -> None:
    torch.manual_seed(0)
    quantized = B.prepare_maps(torch.rand(5, 5, 5), size=(24, 24))
    whole = B.blob_boxes(quantized, chunk_size=16)
    for chunk_size in (1, 2):
        part = B.blob_boxes(quantized, chunk_size=chunk_size)
        assert all(torch.equal(a, b) for a, b in zip(whole, part, strict=True))


def test_threads_and_parts_do_not_change_boxes() -> None:
    torch.manual_seed(2)
    quantized = B.prepare_maps(torch.rand(7, 5, 5), size=(30, 26))
    one = B.blob_boxes(quantized, num_threads=1)
    two = B.blob_boxes(quantized, num_threads=2)
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    levels, _ = level_table(quantized, B.wsol_thresholds())
    whole = component_tables(quantized, levels, maps_at_once=7)
    for maps_at_once in (1, 3):
        parts = component_tables(quantized, levels, maps_at_once=maps_at_once)
        for rows_whole, rows_parts in zip(whole, parts, strict=True):
            order_whole = torch.argsort(rows_whole.level_index * 10**7 + rows_whole.first)
            order_parts = torch.argsort(rows_parts.level_index * 10**7 + rows_parts.first)
            for a, b in zip(rows_whole, rows_parts, strict=True):
                assert torch.equal(a[order_whole], b[order_parts])


def test_level_merges_are_the_same_in_torch_and_numpy() -> None:
    generator = torch.Generator().manual_seed(3)
    lower = torch.randint(0, 40, (120,), generator=generator)
    upper = torch.randint(0, 40, (120,), generator=generator)
    lower, upper = torch.minimum(lower, upper), torch.maximum(lower, upper) + 1
    step = torch.sort(torch.randint(0, 10, (120,), generator=generator)).values
    bounds = torch.searchsorted(step, torch.arange(11)).tolist()
    in_numpy = merge_steps(lower, upper, step, 41, 10, use_numpy=True)
    in_torch = merge_steps(lower, upper, step, 41, 10, use_numpy=False)
    assert torch.equal(in_numpy, in_torch)
    # Each step's labels are the least node of each connected component of the edges so far.
    for s in (0, 4, 9):
        joined = torch.arange(41)
        for a, c in zip(lower[: bounds[s + 1]].tolist(), upper[: bounds[s + 1]].tolist(), strict=True):
            low, high = min(joined[a], joined[c]), max(joined[a], joined[c])
            joined[joined == high] = low
        assert torch.equal(in_numpy[s], joined)


def test_first_touch_is_the_same_dense_and_sorted() -> None:
    generator = torch.Generator().manual_seed(4)
    a, c = torch.randint(0, 30, (500,), generator=generator), torch.randint(0, 31, (500,), generator=generator)
    lower, upper = torch.minimum(a, c), torch.maximum(a, c)
    keep = lower < upper
    step = torch.randint(0, 12, (500,), generator=generator, dtype=torch.int16)[keep]
    dense = first_touch(lower[keep], upper[keep], step, 30, 10, dense=True)
    sorted_ = first_touch(lower[keep], upper[keep], step, 30, 10, dense=False)
    assert all(torch.equal(x, y) for x, y in zip(dense, sorted_, strict=True))
    expected: dict[tuple[int, int], int] = {}
    for pair in zip(lower[keep].tolist(), upper[keep].tolist(), step.tolist(), strict=True):
        if pair[2] < 10:  # step 10 (and later) is never
            expected[pair[:2]] = min(expected.get(pair[:2], 99), pair[2])
    assert sorted(expected.items()) == [((a, c), s) for a, c, s in zip(*(t.tolist() for t in dense), strict=True)]


@pytest.mark.parametrize("size", [(7, 9), (16, 16), (33, 20)])
def test_contour_areas_and_boxes_equal_opencv_on_noise(size: tuple[int, int]) -> None:
    """Binary noise: thin lines, single pixels, diagonal touches and holes of every shape."""
    cv2 = pytest.importorskip("cv2")
    generator = torch.Generator().manual_seed(size[0])
    masks = (torch.rand(40, *size, generator=generator) < 0.55).to(torch.uint8) * 255
    levels = torch.tensor([127])
    blobs, holes = component_tables(masks, levels)
    for i, mask in enumerate(masks.numpy()):
        contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        expected = sorted(cv2.contourArea(contour) for contour in contours)
        ours = blobs.contour_area[blobs.batch_index == i].tolist() + holes.contour_area[holes.batch_index == i].tolist()
        assert sorted(ours) == expected
        result = B.blob_boxes(masks[i : i + 1], thresholds=[0.5])
        assert _box_set(result) == _cv2_set(masks[i], 0.5)
        largest = B.blob_boxes(masks[i : i + 1], thresholds=[0.5], largest_only=True)
        assert largest.boxes.tolist() == cv2_backend.map_boxes_cv2(mask, 0.5, largest_only=True).tolist()


def test_an_empty_batch_gives_empty_results() -> None:
    empty = torch.zeros(0, 5, 5, dtype=torch.uint8)
    result = B.blob_boxes(empty)
    assert result.boxes.shape == (0, 4) and result.batch_index.numel() == 0
    largest, every = B.best_box_iou(empty, [])
    assert largest.shape == every.shape == (0, 100)


def test_largest_only_has_one_row_per_map_and_threshold() -> None:
    torch.manual_seed(1)
    quantized = B.prepare_maps(torch.rand(3, 6, 6), size=(30, 30))
    result = B.blob_boxes(quantized, largest_only=True)
    assert result.boxes.shape == (3 * 100, 4)
    assert result.threshold_index.view(3, 100).tolist() == [list(range(100))] * 3


def test_scale_boxes_truncates() -> None:
    boxes = torch.tensor([[10.7, 20.2, 300.0, 499.0]])
    scaled = B.scale_boxes(boxes, original_size=(500, 500))
    assert scaled.tolist() == [[int(10.7 * 224 / 500), int(20.2 * 224 / 500), 134, 223]]


def test_bad_inputs_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="shape \\(B, H, W\\)"):
        B.boxes_from_maps(torch.zeros(4, 4))
    with pytest.raises(TypeError, match="prepare_maps"):
        B.blob_boxes(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="at least one"):
        B.best_box_iou(torch.zeros(1, 4, 4, dtype=torch.uint8), [torch.zeros(0, 4)])


def test_torch_path_matches_opencv_on_random_smooth_maps() -> None:
    """1,000 CAM-like maps (7x7 or 14x14 noise, bicubic to 40x40), random ground-truth boxes."""
    pytest.importorskip("cv2")
    generator = torch.Generator().manual_seed(0)
    size = 40
    grids = [torch.rand(500, g, g, generator=generator) for g in (7, 14)]
    quantized = torch.cat([B.prepare_maps(grid, size=(size, size)) for grid in grids])
    corners = torch.randint(0, size, (len(quantized), 2, 2), generator=generator).sort(dim=1).values
    gt = [c.flatten()[None] for c in corners]  # [[x0, y0], [x1, y1]] -> [x0, y0, x1, y1]

    largest, every = B.best_box_iou(quantized, gt)
    largest_cv2, every_cv2 = cv2_backend.best_box_iou_cv2(quantized, gt)

    def max_box_acc(iou: torch.Tensor, deltas: tuple[float, ...]) -> float:
        return float(np.mean([(iou >= d).double().mean(0).max() * 100 for d in deltas]))

    assert abs(max_box_acc(every, (0.3, 0.5, 0.7)) - max_box_acc(every_cv2, (0.3, 0.5, 0.7))) <= 0.1
    assert abs(max_box_acc(largest, (0.5,)) - max_box_acc(largest_cv2, (0.5,))) <= 0.2
    assert (every.amax(1) == every_cv2.amax(1)).double().mean() >= 0.995
    assert (largest.amax(1) == largest_cv2.amax(1)).double().mean() >= 0.995
    # In fact equal for every map and threshold: same boxes, holes and contour areas as OpenCV.
    assert torch.equal(every, every_cv2) and torch.equal(largest, largest_cv2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    """The GPU path (whole chunks at once, the vectorised merge over steps) against the CPU path."""
    torch.manual_seed(0)
    for maps, size in ((torch.rand(4, 7, 7), (56, 56)), (torch.rand(40, 14, 14), (224, 224))):
        quantized = B.prepare_maps(maps, size=size)
        gt = [torch.tensor([[5, 5, 30, 40]])] * len(maps)
        cpu = B.best_box_iou(quantized, gt)
        gpu = B.best_box_iou(quantized.cuda(), [g.cuda() for g in gt], chunk_size=16)
        assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu, strict=True))
        cpu_boxes, gpu_boxes = B.blob_boxes(quantized), B.blob_boxes(quantized.cuda())
        assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu_boxes, gpu_boxes, strict=True))


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ([9, 2, 3, 8], r"image 1: ground-truth box \[9\.0, 2\.0, 3\.0, 8\.0\].*inverted"),  # x1 < x0
        ([2, 9, 8, 3], r"image 1: .*inverted"),  # y1 < y0
        ([float("nan"), 2, 3, 8], r"image 1: ground-truth box \[nan"),
        ([-1, 2, 3, 8], r"image 1: .*negative"),
        ([2, 2, 30, 8], r"image 1: ground-truth box \[2\.0, 2\.0, 30\.0, 8\.0\] lies outside the 16 x 16"),
        ([2, 2, 8, 8, 3, 3, 9, 9], r"image 1: .*shape \(K, 4\).*\(8,\)"),  # a flat list of two boxes
    ],
)
def test_bad_ground_truth_box_names_the_image_and_the_box(box: list[float], message: str) -> None:
    quantized = torch.zeros(2, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match=message):
        B.best_box_iou(quantized, [torch.tensor([[1, 1, 5, 5]]), torch.tensor(box)])


@pytest.mark.parametrize("grid", [7, 14])
def test_grid_maps_with_image_boxes_say_pass_size(grid: int) -> None:
    maps = torch.rand(2, grid, grid, generator=torch.Generator().manual_seed(0))
    gt = [torch.tensor([[30, 40, 180, 200]])] * 2
    with pytest.raises(ValueError, match=r"image 0: .*outside.*pass size=\(H, W\)"):
        B.best_box_iou(B.prepare_maps(maps), gt)


def test_a_single_box_as_a_flat_4_vector_and_the_edge_are_accepted() -> None:
    quantized = B.prepare_maps(torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0)))
    flat, _ = B.best_box_iou(quantized, [np.array([2, 3, 16, 16])])  # x1 = W: a box written as x + width
    table, _ = B.best_box_iou(quantized, [torch.tensor([[2, 3, 16, 16]])])
    assert torch.equal(flat, table)


@pytest.mark.parametrize(("x", "width", "expected"), [(55, 110, 112), (10.7, 500, 4), (499, 500, 223), (3, 7, 96)])
def test_scale_boxes_follows_wsolevaluation_resize_bbox(x: float, width: int, expected: int) -> None:
    # resize_bbox: int(x * new_w / w); x * (new_w / w) gives 111 for x = 55 of 110.
    assert int(x * 224.0 / width) == expected
    boxes = torch.tensor([[x, x, x, x]], dtype=torch.float64)
    assert B.scale_boxes(boxes, (width, width)).tolist() == [[expected] * 4]


def test_sweep_options_equal_the_same_keywords_and_keywords_override_them() -> None:
    quantized = B.prepare_maps(torch.rand(2, 12, 12, generator=torch.Generator().manual_seed(5)))
    options = B.SweepOptions(thresholds=[0.2, 0.6], holes=False, chunk_size=1)
    by_object = B.blob_boxes(quantized, options)
    by_keywords = B.blob_boxes(quantized, thresholds=[0.2, 0.6], holes=False, chunk_size=1)
    assert all(torch.equal(a, b) for a, b in zip(by_object, by_keywords, strict=True))
    overridden = B.blob_boxes(quantized, options, thresholds=[0.6])
    assert torch.equal(overridden.boxes, by_object.boxes[by_object.threshold_index == 1])


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_sweep_options_carry_the_interpolation_of_boxes_from_maps(interpolation: str) -> None:
    maps = torch.rand(2, 7, 7, generator=torch.Generator().manual_seed(6))
    options = B.SweepOptions(thresholds=[0.4], interpolation=interpolation)
    found = B.boxes_from_maps(maps, options, size=(28, 28))
    expected = B.blob_boxes(B.prepare_maps(maps, (28, 28), interpolation), thresholds=[0.4])
    assert all(torch.equal(a, b) for a, b in zip(found, expected, strict=True))


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"chunk_size": 0}, ValueError, r"chunk_size must be >= 1 or None, got 0"),
        ({"num_threads": 0}, ValueError, r"num_threads must be >= 1, got 0"),
        ({"interpolation": "nearest"}, ValueError, r"interpolation must be one of .*'nearest'"),
        ({"thresholds": []}, ValueError, r"thresholds is empty; pass e\.g\. scm_calib\.boxes\.wsol_thresholds"),
        ({"thresholds": [0.5, 1.5]}, ValueError, r"thresholds must lie in \[0, 1\]"),
    ],
)
def test_bad_sweep_options_say_what_to_do(options: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        B.SweepOptions(**options)
    with pytest.raises(error, match=message):  # the same check when given as keywords
        B.blob_boxes(torch.zeros(1, 4, 4, dtype=torch.uint8), **options)


def test_positional_thresholds_equal_the_keyword() -> None:
    quantized = B.prepare_maps(torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(3)))
    gt = [torch.tensor([[1, 1, 4, 4]])] * 3
    for positional in ([0.2, 0.5], torch.tensor([0.2, 0.5])):
        assert all(
            torch.equal(a, b)
            for a, b in zip(
                B.blob_boxes(quantized, positional), B.blob_boxes(quantized, thresholds=[0.2, 0.5]), strict=True
            )
        )
        assert all(
            torch.equal(a, b)
            for a, b in zip(
                B.best_box_iou(quantized, gt, positional),
                B.best_box_iou(quantized, gt, thresholds=[0.2, 0.5]),
                strict=True,
            )
        )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda q: B.blob_boxes(q, [0.5], thresholds=[0.5]), r"thresholds given twice"),
        (lambda q: B.blob_boxes(q, 0.5), r"options must be a SweepOptions or the thresholds, got float"),
        (lambda q: B.blob_boxes(q, threshold=[0.5]), r"unknown sweep option\(s\) \['threshold'\].*'thresholds'"),
    ],
)
def test_bad_options_and_misspelt_options_say_what_to_do(call, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        call(torch.zeros(1, 4, 4, dtype=torch.uint8))


def test_worker_threads_leave_torch_thread_count_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(count: int) -> None:
        raise AssertionError(f"the library called torch.set_num_threads({count})")

    monkeypatch.setattr(torch, "set_num_threads", refuse)
    quantized = B.prepare_maps(torch.rand(9, 5, 5, generator=torch.Generator().manual_seed(7)), size=(20, 20))
    gt = [torch.tensor([[2, 2, 12, 15]])] * 9
    one = B.best_box_iou(quantized, gt, num_threads=1)
    three = B.best_box_iou(quantized, gt, num_threads=3)
    assert all(torch.equal(a, b) for a, b in zip(one, three, strict=True))
    assert B.blob_boxes(quantized, num_threads=3).boxes.shape[1] == 4


def test_component_table_fields_are_named() -> None:
    quantized = torch.zeros(1, 6, 8, dtype=torch.uint8)
    quantized[0, 1:5, 2:7] = 200
    quantized[0, 2:4, 4] = 0  # a hole x 4, y 2..3
    levels, _ = level_table(quantized, [0.5])
    blobs, holes = component_tables(quantized, levels)
    assert (blobs.x0.tolist(), blobs.y0.tolist(), blobs.x1.tolist(), blobs.y1.tolist()) == ([2], [1], [6], [4])
    assert blobs.area.tolist() == [18] and blobs.first.tolist() == [1 * 8 + 2]
    assert (holes.x0.tolist(), holes.y0.tolist(), holes.x1.tolist(), holes.y1.tolist()) == ([4], [2], [4], [3])
    assert holes.area.tolist() == [0]
    assert blobs.contour_area.dtype == torch.float64


@pytest.mark.parametrize("module", ["maps", "components", "extract", "iou", "opencv"])
def test_boxes_modules_are_small_and_maps_stands_alone(module: str) -> None:
    import ast
    import importlib
    from pathlib import Path

    source = Path(importlib.import_module(f"scm_calib.boxes.{module}").__file__).read_text()
    assert source.count("\n") < 500
    if module == "maps":
        imports = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)]
        assert all(node.level == 0 and not (node.module or "").startswith("scm_calib") for node in imports)


def _dispatched_ops(fn: Callable[[], object]) -> int:
    """How many aten ops ``fn`` dispatches (each a kernel launch on a GPU)."""

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.ops


def test_pad_boxes_pads_like_a_loop_over_the_images() -> None:
    generator = torch.Generator().manual_seed(0)
    gt = [torch.randint(0, 50, (1 + i % 3, 2, 2), generator=generator).sort(dim=1).values.flatten(1) for i in range(7)]
    gt[2] = gt[2].numpy()  # arrays and float tensors too
    gt[3] = gt[3].float()
    out, valid = B.pad_boxes(gt)
    assert out.shape == (7, 3, 4) and out.dtype == torch.float64 and valid.sum() == sum(len(g) for g in gt)
    for i, boxes in enumerate(gt):
        k = len(boxes)
        assert torch.equal(out[i, :k], torch.as_tensor(boxes, dtype=torch.float64))
        assert valid[i, :k].all() and not valid[i, k:].any() and not out[i, k:].any()


def test_pad_boxes_works_on_the_whole_batch_at_once() -> None:
    """A fixed number of ops whatever the batch: per-image ops cost a kernel launch (and a sync) each on a GPU."""
    boxes = torch.tensor([[1, 2, 5, 6]])
    for per_image in ([boxes] * 8, [boxes.repeat(1 + i % 2, 1) for i in range(8)]):
        small, large = per_image[:4], per_image * 50
        assert _dispatched_ops(lambda s=small: B.pad_boxes(s)) == _dispatched_ops(lambda s=large: B.pad_boxes(s))
