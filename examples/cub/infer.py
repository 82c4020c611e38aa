"""Localize the objects in images with a stripped SCM model (Bai et al., ECCV 2022).

Reads a stripped model saved with ``save_weights(adapter.strip(), path, metadata=...)`` (``train.py`` writes
``model_stripped.safetensors`` with the training config and the class names in its metadata), reads the images
in batches (a DataLoader, ``--num-workers`` processes), runs the model once per batch, takes the top-k classes of
every image (``--topk``, default 1) and turns the map ``A * S_c`` of each into boxes at the threshold chosen on
the held-out split (``metrics.json`` next to the weights). Writes ``boxes.json`` (image, class, score, boxes in
pixels of the original image, all top-k classes under ``topk``; the files that could not be read under
``skipped``), one overlay PNG per image (``--no-overlays`` to skip them) and, with ``--jsonl``, one JSON line per
image as soon as its batch is done. Progress, with images/s and the time left, goes to stderr.

    python examples/cub/infer.py runs/generated-scm-seed0/model_stripped.safetensors path/to/images --out preds
    python examples/cub/infer.py model.safetensors images/ --topk 5 --jsonl - --no-overlays --num-workers 8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import torch
import torch.nn.functional as F
from config import TrainConfig
from PIL import Image
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from train import SetupError, build_model, save_overlay

from scm_calib import CheckpointError, load_weights, scale_boxes, select_maps, semantic_and_attention
from scm_calib.boxes import boxes_from_maps, resize_maps
from scm_calib.data import load_image, wsol_eval_transform

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_TAU = 0.2
OVERLAY_SIDE = 512  # longest side of an overlay; smaller images keep their size


def model_settings(weights: Path, metadata: dict[str, str], shapes: dict[str, list[int]]) -> TrainConfig:
    """What rebuilds the model: the ``config`` metadata (any subset of :class:`TrainConfig`'s fields; at least
    ``model``), else the timm architecture that ``save_weights`` records, at the input size its position
    embeddings were trained at.

    Raises:
        SetupError: the metadata names no architecture.
    """
    known = {f.name for f in fields(TrainConfig)}
    if "config" in metadata:
        saved = json.loads(metadata["config"])
        values = {key: value for key, value in saved.items() if key in known}
    elif metadata.get("format") == "scm_calib" and "architecture" in metadata:
        prefix = "encoder." if metadata.get("module") == "StrippedViT" else ""
        values = {"model": metadata["architecture"], "head": "conv" if prefix else "linear"}
        pos_embed, patch = shapes.get(f"{prefix}pos_embed"), shapes.get(f"{prefix}patch_embed.proj.weight")
        if pos_embed is not None and patch is not None:
            grid = math.isqrt(pos_embed[1])  # the prefix tokens make pos_embed one or a few rows longer
            values["image_size"] = grid * patch[-1]
    else:
        raise SetupError(
            f"{weights} does not say which model it holds; save it with save_weights(adapter.strip(), path, "
            "metadata={'config': json.dumps({'model': ..., 'model_kwargs': ..., 'image_size': ..., 'head': ...}), "
            "'classes': json.dumps(class_names)}) or pass the model_stripped.safetensors of a train.py run."
        )
    if "model" not in values:
        raise SetupError(f"{weights}: the config in its metadata has no 'model' (the timm model name).")
    return TrainConfig().updated({**values, "pretrained": False, "checkpoint": None, "drop_path": 0.0}, "infer")


def load_stripped(weights: Path) -> tuple[torch.nn.Module, TrainConfig, list[str]]:
    """The stripped model of a file, the settings it was rebuilt with and its class names.

    Raises:
        SetupError: the file is missing, unreadable, or does not say which model it holds.
        CheckpointError: the weights do not fit the model rebuilt from the metadata.
    """
    if not weights.is_file():
        raise SetupError(f"weights {weights} do not exist; pass the model_stripped.safetensors of a run.")
    try:
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
            names = list(f.keys())  # a safe_open handle cannot be iterated
            shapes = {key: list(f.get_slice(key).get_shape()) for key in names}
    except Exception as err:
        raise SetupError(f"cannot read {weights} as safetensors ({err}).") from err
    config = model_settings(weights, metadata, shapes)
    if "classes" in metadata:
        classes = json.loads(metadata["classes"])
    elif metadata.get("num_classes", "").isdigit():
        classes = [str(index) for index in range(int(metadata["num_classes"]))]
    else:
        raise SetupError(f"{weights} records no classes; save it with metadata={{'classes': json.dumps(names)}}.")
    model = build_model(config, len(classes)).strip()
    try:
        load_weights(model, weights)
    except CheckpointError as err:
        if "config" in metadata:
            raise
        raise SetupError(
            f"{err} The file has no config in its metadata and was rebuilt as {config.model} at "
            f"{config.image_size} px; save it with metadata={{'config': json.dumps({{'model': ..., 'model_kwargs': "
            "..., 'image_size': ..., 'head': ...}), 'classes': json.dumps(class_names)}."
        ) from err
    return model.eval(), config, classes


def default_tau(weights: Path) -> tuple[float, str | None]:
    """The GT-known Loc threshold chosen on the held-out split (``metrics.json`` beside the weights), else 0.2.

    Returns:
        The threshold and, when it is the fallback, why.
    """
    metrics = weights.parent / "metrics.json"
    if not metrics.is_file():
        return DEFAULT_TAU, f"no {metrics}"
    try:
        summary = json.loads(metrics.read_text(encoding="utf-8"))
        return float(summary["test_at_val_tau"]["tau"]), None
    except (ValueError, KeyError, TypeError):
        return DEFAULT_TAU, f"{metrics} has no threshold chosen on a held-out split (test_at_val_tau.tau)"


def find_images(path: Path) -> list[Path]:
    """``path`` itself when it is a file, else the image files under it (recursively, sorted).

    Raises:
        SetupError: the path does not exist or holds no image.
    """
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SetupError(f"{path} does not exist; pass an image or a folder of images.")
    paths = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
    if not paths:
        raise SetupError(f"no image ({', '.join(IMAGE_SUFFIXES)}) under {path}.")
    return paths


class Loaded(NamedTuple):
    """One image file as :class:`ImageFiles` returns it.

    Attributes:
        path: the file.
        image: (3, S, S) normalised network input; None when the file could not be read.
        size: original (W, H).
        pixels: (3, H, W) uint8 original image when kept for overlays.
        error: why the file could not be read, else None.
    """

    path: Path
    image: torch.Tensor | None
    size: tuple[int, int]
    pixels: torch.Tensor | None
    error: str | None


class ImageFiles(Dataset):
    """Image files read and resized with the evaluation transform; a file that cannot be read gives its error.

    Args:
        paths: the image files.
        image_size: side of the square network input.
        keep_pixels: also return the original uint8 image (for overlays).
    """

    def __init__(self, paths: list[Path], image_size: int, keep_pixels: bool) -> None:
        self.paths = paths
        self.transform = wsol_eval_transform(image_size)
        self.keep_pixels = keep_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Loaded:
        from torchvision import tv_tensors

        path = self.paths[index]
        try:
            pixels = torch.from_numpy(load_image(path)).permute(2, 0, 1)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            return Loaded(path, None, (0, 0), None, " ".join(str(err).split()))
        image = self.transform(tv_tensors.Image(pixels)).as_subclass(torch.Tensor)
        size = (pixels.shape[2], pixels.shape[1])
        return Loaded(path, image, size, pixels if self.keep_pixels else None, None)


class Batch(NamedTuple):
    """A batch of image files, in order, and the network inputs of those that could be read.

    Attributes:
        items: the files, readable or not.
        images: (B, 3, S, S) network inputs of the readable files, in order; None when none could be read.
    """

    items: list[Loaded]
    images: torch.Tensor | None


def collate(items: list[Loaded]) -> Batch:
    """Stacks the inputs of the readable images of a batch (all S x S after the transform)."""
    inputs = [item.image for item in items if item.image is not None]
    return Batch(items, torch.stack(inputs) if inputs else None)


class Found(NamedTuple):
    """One of the top-k classes of an image.

    Attributes:
        label: the class index.
        score: its probability.
        boxes: (N, 4) int64 boxes in pixels of the network input.
        score_map: (S, S) localization map ``A * S_c`` at network input resolution.
    """

    label: int
    score: float
    boxes: torch.Tensor
    score_map: torch.Tensor


@torch.no_grad()
def localize_batch(
    model: torch.nn.Module, images: torch.Tensor, tau: float, topk: int, all_blobs: bool
) -> list[list[Found]]:
    """The top-k classes of every image with a box each, from one forward pass of the model.

    The logits, the semantic maps and the attention come from the same pass; the map of a class is ``A * S_c``
    resized bilinearly to the input (:func:`scm_calib.select_maps`), as :func:`scm_calib.localization_maps`
    computes it.

    Args:
        model: the stripped model, on the device of ``images``.
        images: (B, 3, S, S) normalised images.
        tau: the map threshold.
        topk: classes per image, best first.
        all_blobs: a box per blob instead of the largest only.

    Returns:
        Per image, its ``topk`` classes, best first.
    """
    result = semantic_and_attention(model, images)
    scores, labels = result.logits.softmax(dim=1).topk(topk, dim=1)
    maps = resize_maps(select_maps(result, topk).flatten(0, 1), tuple(images.shape[-2:]), "bilinear")
    found = boxes_from_maps(maps, thresholds=[tau], largest_only=not all_blobs, holes=False)
    boxes, index, maps = found.boxes.cpu(), found.batch_index.cpu(), maps.float().cpu()
    scores, labels = scores.cpu(), labels.cpu()
    return [
        [
            Found(
                int(labels[row, rank]),
                float(scores[row, rank]),
                boxes[index == row * topk + rank],
                maps[row * topk + rank],
            )
            for rank in range(topk)
        ]
        for row in range(images.shape[0])
    ]


def write_overlay(pixels: torch.Tensor, found: list[Found], classes: list[str], path: Path) -> None:
    """The map and boxes of each class over the image, one panel per class, at the image's own aspect, the
    longest side at most OVERLAY_SIDE.

    Args:
        pixels: (3, H, W) uint8 image.
        found: the classes to draw, maps and boxes at network input resolution.
        classes: the class names.
        path: the PNG to write.
    """
    from torchvision.transforms import v2

    height, width = pixels.shape[1:]
    scale = min(1.0, OVERLAY_SIDE / max(height, width))
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    image = v2.functional.resize(pixels, size, antialias=True).permute(1, 2, 0).numpy()
    panels = []
    for item in found:
        heatmap = F.interpolate(item.score_map[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        side = item.score_map.shape[-1]
        title = f"{classes[item.label]} ({item.score:.2f})"
        panels.append({"title": title, "map": heatmap, "boxes": scale_boxes(item.boxes, (side, side), size[::-1])})
    save_overlay(panels, image, torch.zeros(0, 4), path)


def prediction(loaded: Loaded, found: list[Found], classes: list[str], image_size: int) -> dict[str, Any]:
    """The record of one image: its top-1 class, score and boxes (in pixels of the original image, scaled back
    with :func:`scm_calib.scale_boxes`), and all its top-k classes under ``topk``."""
    ranked = [
        {
            "class_index": item.label,
            "class": classes[item.label],
            "score": item.score,
            "boxes": scale_boxes(item.boxes, (image_size, image_size), loaded.size).tolist(),
        }
        for item in found
    ]
    return {"image": str(loaded.path), **ranked[0], "topk": ranked}


def open_jsonl(target: str | None) -> TextIO | None:
    """The stream that ``--jsonl`` names: None, stdout for ``-``, else a new file (its folder created).

    Raises:
        SetupError: the path is a folder or cannot be written.
    """
    if target is None:
        return None
    if target == "-":
        return sys.stdout
    path = Path(target)
    if path.is_dir():
        raise SetupError(f"--jsonl {path} is a folder; pass a file path, or - for stdout.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("w", encoding="utf-8")
    except OSError as err:
        raise SetupError(f"--jsonl {path} cannot be written ({err.strerror}); pass another path.") from err


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (2 for bad input, reported in one line).

    Images that cannot be read are skipped, reported on stderr and listed under ``skipped`` in ``boxes.json``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", type=Path, help="model_stripped.safetensors of a training run")
    parser.add_argument("images", type=Path, help="an image, or a folder of images (searched recursively)")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder")
    parser.add_argument("--tau", type=float, help="map threshold (default: the run's, chosen on held-out data)")
    parser.add_argument("--all-blobs", action="store_true", help="a box per blob instead of the largest only")
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default: CUDA when available")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--num-workers", type=int, default=0, help="processes reading images (0: this one)")
    parser.add_argument("--topk", type=int, default=1, help="classes per image, each with its map and box")
    parser.add_argument("--jsonl", help="also write one JSON line per image as it is done (- for stdout)")
    parser.add_argument("--overlays", action=argparse.BooleanOptionalAction, default=True, help="one PNG per image")
    args = parser.parse_args(argv)
    try:
        if args.tau is not None and not 0 <= args.tau < 1:
            raise SetupError(f"--tau must be in [0, 1), got {args.tau}.")
        if args.batch_size < 1:
            raise SetupError(f"--batch-size must be >= 1, got {args.batch_size}.")
        if args.num_workers < 0:
            raise SetupError(f"--num-workers must be >= 0, got {args.num_workers}.")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise SetupError("--device cuda was asked for but CUDA is not available; pass --device cpu.")
        if args.out.exists() and not args.out.is_dir():
            raise SetupError(f"--out {args.out} is a file, not a folder; pass another --out.")
        paths = find_images(args.images)
        model, config, classes = load_stripped(args.weights)
        if not 1 <= args.topk <= len(classes):
            raise SetupError(f"--topk must be in [1, {len(classes)}] (the model's classes), got {args.topk}.")
        stream = open_jsonl(args.jsonl)
    except (SetupError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    tau = args.tau
    if tau is None:
        tau, reason = default_tau(args.weights)
        if reason is not None:
            print(f"warning: {reason}; using the default threshold {tau} (pass --tau to choose).", file=sys.stderr)
    loader = DataLoader(
        ImageFiles(paths, config.image_size, keep_pixels=args.overlays),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        collate_fn=collate,
    )
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    progress = tqdm(total=len(paths), unit="img", file=sys.stderr, dynamic_ncols=True)
    try:
        for batch in loader:
            inputs = batch.images
            results = iter(
                localize_batch(model, inputs.to(device), tau, args.topk, args.all_blobs) if inputs is not None else []
            )
            for item in batch.items:
                if item.error is not None:
                    skipped.append({"image": str(item.path), "error": item.error})
                    progress.write(f"skipped {item.path}: {item.error}", file=sys.stderr)
                    line = skipped[-1]
                else:
                    found = next(results)
                    records.append(prediction(item, found, classes, config.image_size))
                    line = records[-1]
                    if args.overlays:
                        name = args.out / "overlays" / f"{len(records) - 1:05d}_{item.path.stem}.png"
                        write_overlay(item.pixels, found, classes, name)
                if stream is not None:
                    stream.write(json.dumps(line) + "\n")
            if stream is not None:
                stream.flush()
            progress.update(len(batch.items))
    except BrokenPipeError:  # the reader of --jsonl - left (e.g. `| head`): stop, keep what was done
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing may be flushed to the closed pipe at exit
        stream = None
        progress.write(f"stdout was closed after {len(records) + len(skipped)} images; stopped.", file=sys.stderr)
    finally:
        progress.close()
        if stream is not None and stream is not sys.stdout:
            stream.close()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"tau": tau, "predictions": records, "skipped": skipped}
    (args.out / "boxes.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(
        f"{len(records)} images -> {args.out / 'boxes.json'}" + (f" ({len(skipped)} skipped)" if skipped else ""),
        file=sys.stderr if stream is sys.stdout else sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
