"""The inference command (examples/cub/infer.py): batches, one forward per batch, top-k boxes, JSON lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "cub"))

import infer  # noqa: E402

from scm_calib import SCMAdapter, boxes_from_maps, localization_maps, save_weights, scale_boxes  # noqa: E402

TINY_MODEL = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
CLASSES = ["a", "b", "c", "d"]
SIZES = [(40, 30), (32, 48), (32, 32), (20, 64), (50, 25)]  # (W, H)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-block, 32-wide stripped ViT at 32 px with 4 classes, saved as train.py saves it."""
    torch.manual_seed(0)
    adapter = SCMAdapter(timm.create_model("vit_tiny_patch16_224", num_classes=4, img_size=32, **TINY_MODEL))
    path = tmp_path_factory.mktemp("model") / "model_stripped.safetensors"
    config = {"model": "vit_tiny_patch16_224", "model_kwargs": TINY_MODEL, "image_size": 32}
    save_weights(adapter.strip(), path, metadata={"config": json.dumps(config), "classes": json.dumps(CLASSES)})
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five noise images of mixed sizes and aspects, each with a bright rectangle."""
    folder = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(0)
    for index, (width, height) in enumerate(SIZES):
        pixels = torch.randint(0, 120, (height, width, 3), dtype=torch.uint8, generator=generator)
        pixels[height // 4 : height // 2, width // 3 : 3 * width // 4] = 230
        Image.fromarray(pixels.numpy()).save(folder / f"{index}.png")
    return folder


def run(weights: Path, images: Path, out: Path, *options: str) -> dict:
    """Runs the command with a fixed threshold and no overlays; returns boxes.json."""
    argv = [str(weights), str(images), "--out", str(out), "--tau", "0.3", "--device", "cpu", "--no-overlays"]
    assert infer.main([*argv, *options]) == 0
    return json.loads((out / "boxes.json").read_text())


def normalised_inputs(images: Path) -> torch.Tensor:
    dataset = infer.ImageFiles(infer.find_images(images), 32, keep_pixels=False)
    return infer.collate([dataset[index] for index in range(len(dataset))]).images


@pytest.mark.parametrize(("batch_size", "num_workers"), [(2, 0), (5, 0), (3, 1)])
def test_batched_results_equal_unbatched(
    batch_size: int, num_workers: int, weights: Path, images: Path, tmp_path: Path
) -> None:
    one = run(weights, images, tmp_path / "one", "--batch-size", "1", "--topk", "2")
    many = run(
        weights,
        images,
        tmp_path / "many",
        "--batch-size",
        str(batch_size),
        "--num-workers",
        str(num_workers),
        "--topk",
        "2",
    )
    assert len(one["predictions"]) == len(SIZES)
    for a, b in zip(one["predictions"], many["predictions"], strict=True):
        assert a["image"] == b["image"]
        for rank_a, rank_b in zip(a["topk"], b["topk"], strict=True):
            assert (rank_a["class_index"], rank_a["boxes"]) == (rank_b["class_index"], rank_b["boxes"])
            assert rank_a["score"] == pytest.approx(rank_b["score"], abs=1e-6)


@pytest.mark.parametrize("all_blobs", [False, True])
def test_top1_equals_the_two_forward_path(all_blobs: bool, weights: Path, images: Path) -> None:
    model, _, _ = infer.load_stripped(weights)
    inputs = normalised_inputs(images)
    found = infer.localize_batch(model, inputs, tau=0.3, topk=1, all_blobs=all_blobs)
    with torch.no_grad():
        probs = model(inputs).softmax(dim=1)
    labels = probs.argmax(dim=1)
    maps = localization_maps(model, inputs, labels, size="input")
    expected = boxes_from_maps(maps, thresholds=[0.3], largest_only=not all_blobs, holes=False)
    for row, (top,) in enumerate(found):
        assert top.label == int(labels[row]) and top.score == pytest.approx(float(probs[row, labels[row]]), abs=1e-6)
        assert torch.equal(top.boxes, expected.boxes[expected.batch_index == row])
        assert torch.equal(top.score_map, maps[row])


@pytest.mark.parametrize("topk", [2, 4])
def test_each_top_k_class_has_the_box_of_its_own_map(topk: int, weights: Path, images: Path) -> None:
    model, _, _ = infer.load_stripped(weights)
    inputs = normalised_inputs(images)
    found = infer.localize_batch(model, inputs, tau=0.3, topk=topk, all_blobs=False)
    with torch.no_grad():
        scores, labels = model(inputs).softmax(dim=1).topk(topk, dim=1)
    for rank in range(topk):
        maps = localization_maps(model, inputs, labels[:, rank], size="input")
        expected = boxes_from_maps(maps, thresholds=[0.3], largest_only=True, holes=False)
        for row, ranked in enumerate(found):
            assert ranked[rank].label == int(labels[row, rank])
            assert ranked[rank].score == pytest.approx(float(scores[row, rank]), abs=1e-6)
            assert torch.equal(ranked[rank].boxes, expected.boxes[row : row + 1])


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_one_model_forward_per_batch(
    batch_size: int, weights: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    load_stripped = infer.load_stripped

    def counting(path: Path) -> tuple[torch.nn.Module, object, list[str]]:
        model, config, classes = load_stripped(path)
        model.encoder.patch_embed.register_forward_hook(lambda *_: calls.append(1))
        return model, config, classes

    monkeypatch.setattr(infer, "load_stripped", counting)
    run(weights, images, tmp_path, "--batch-size", str(batch_size), "--topk", "3")
    assert len(calls) == -(-len(SIZES) // batch_size)


def test_boxes_are_scaled_back_to_each_original_size(weights: Path, images: Path, tmp_path: Path) -> None:
    model, _, _ = infer.load_stripped(weights)
    found = infer.localize_batch(model, normalised_inputs(images), tau=0.3, topk=1, all_blobs=True)
    result = run(weights, images, tmp_path, "--all-blobs")
    for (width, height), record, (top,) in zip(SIZES, result["predictions"], found, strict=True):
        assert record["boxes"] == scale_boxes(top.boxes, (32, 32), (width, height)).tolist()
        assert all(0 <= x0 <= x1 < width and 0 <= y0 <= y1 < height for x0, y0, x1, y1 in record["boxes"])
        assert record["topk"][0] == {key: record[key] for key in ("class_index", "class", "score", "boxes")}


def test_jsonl_streams_one_line_per_image_as_batches_finish(
    weights: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (images_with_bad := tmp_path / "images").mkdir()
    for path in images.iterdir():
        (images_with_bad / path.name).symlink_to(path)
    (images_with_bad / "2b_corrupt.png").write_bytes(b"not an image")
    lines = tmp_path / "nested" / "out.jsonl"
    seen = []
    localize_batch = infer.localize_batch

    def watching(*args: object, **kwargs: object) -> list:
        seen.append(len(lines.read_text().splitlines()))
        return localize_batch(*args, **kwargs)

    monkeypatch.setattr(infer, "localize_batch", watching)
    result = run(weights, images_with_bad, tmp_path / "out", "--batch-size", "2", "--jsonl", str(lines), "--topk", "2")
    assert seen == [0, 2, 4]  # each batch's lines are on disk before the next batch runs
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [Path(row["image"]).name for row in rows] == ["0.png", "1.png", "2.png", "2b_corrupt.png", "3.png", "4.png"]
    assert [row for row in rows if "error" not in row] == result["predictions"]
    assert [row for row in rows if "error" in row] == result["skipped"]


def test_jsonl_to_stdout_holds_only_json_lines(
    weights: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(weights, images, tmp_path, "--jsonl", "-", "--batch-size", "4")
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == len(SIZES) and all(len(row["topk"]) == 1 for row in rows)
    assert "5/5 [" in captured.err and "5 images ->" in captured.err  # the progress bar and the summary


def test_overlays_show_a_panel_per_top_k_class(weights: Path, images: Path, tmp_path: Path) -> None:
    argv = [str(weights), str(images / "2.png"), "--out", str(tmp_path), "--tau", "0.3", "--device", "cpu"]
    assert infer.main([*argv, "--topk", "3"]) == 0
    (overlay,) = (tmp_path / "overlays").glob("*.png")
    with Image.open(overlay) as image:
        assert image.size[0] > 2.5 * image.size[1]  # three square panels side by side


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--topk", "0"], "--topk must be in [1, 4]"),
        (["--topk", "5"], "--topk must be in [1, 4]"),
        (["--num-workers", "-1"], "--num-workers must be >= 0"),
        (["--jsonl", "."], "is a folder"),
    ],
)
def test_bad_option_gives_one_line_error(
    option: list[str], message: str, weights: Path, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert infer.main([str(weights), str(images), *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


class _ClosedAfter:
    """A stdout whose reader leaves after ``lines`` lines, as `| head -n lines` does."""

    def __init__(self, lines: int) -> None:
        self.left = lines

    def write(self, text: str) -> int:
        if self.left == 0:
            raise BrokenPipeError(32, "Broken pipe")
        self.left -= text.count("\n")
        return len(text)

    def flush(self) -> None:
        if self.left <= 0:
            raise BrokenPipeError(32, "Broken pipe")


def test_jsonl_to_a_closed_stdout_stops_quietly_and_keeps_what_was_done(
    weights: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdout", _ClosedAfter(2))
    result = run(weights, images, tmp_path, "--jsonl", "-", "--batch-size", "2")
    assert len(result["predictions"]) + len(result["skipped"]) == 2  # the first batch, then the reader was gone
    assert "stdout was closed after 2 images; stopped." in capsys.readouterr().err
