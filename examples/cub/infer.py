"""Localize the objects in images with a stripped SCM model (Bai et al., ECCV 2022).

Reads a stripped model saved with ``save_weights(adapter.strip(), path, metadata=...)`` (``train.py`` writes
``model_stripped.safetensors`` with the training config and the class names in its metadata), predicts the
top-1 class of every image, turns its map ``A * S_c`` into boxes at the threshold chosen on the held-out split
(``metrics.json`` next to the weights) and writes ``boxes.json`` (image, class, score, boxes in pixels of the
original image; the files that could not be read under ``skipped``) and one overlay PNG per image.

    python examples/cub/infer.py runs/generated-scm-seed0/model_stripped.safetensors path/to/images --out preds
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from config import TrainConfig
from PIL import Image
from safetensors import safe_open
from train import SetupError, build_model, save_overlay

from scm_calib import CheckpointError, load_weights, localization_maps
from scm_calib.boxes import boxes_from_maps
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


@torch.no_grad()
def localize_batch(
    model: torch.nn.Module, pixels: list[torch.Tensor], image_size: int, tau: float, all_blobs: bool
) -> list[tuple[int, float, torch.Tensor, torch.Tensor]]:
    """Top-1 class, its probability and its boxes for a batch of images.

    Args:
        model: the stripped model, on the device the images go to.
        pixels: (3, H_i, W_i) uint8 images.
        image_size: side of the square network input.
        tau: the map threshold.
        all_blobs: a box per blob instead of the largest only.

    Returns:
        Per image: the class index, its probability, the (N, 4) boxes in pixels of the network input and the
        (S, S) localization map.
    """
    from torchvision import tv_tensors

    device = next(model.parameters()).device
    transform = wsol_eval_transform(image_size)
    images = torch.stack([transform(tv_tensors.Image(p)).as_subclass(torch.Tensor) for p in pixels]).to(device)
    probs = model(images).softmax(dim=1)
    labels = probs.argmax(dim=1)
    maps = localization_maps(model, images, labels, size="input").float().cpu()
    found = boxes_from_maps(maps, thresholds=[tau], largest_only=not all_blobs, holes=False)
    boxes, index = found.boxes.cpu(), found.batch_index.cpu()
    return [
        (int(labels[row]), float(probs[row, labels[row]]), boxes[index == row], maps[row]) for row in range(len(pixels))
    ]


def write_overlay(pixels: torch.Tensor, score_map: torch.Tensor, boxes: torch.Tensor, title: str, path: Path) -> None:
    """The map and boxes over the image at the image's own aspect, the longest side at most OVERLAY_SIDE.

    Args:
        pixels: (3, H, W) uint8 image.
        score_map: (S, S) map at network input resolution.
        boxes: (N, 4) boxes in pixels of the network input.
        title: the text above the image (class and score).
        path: the PNG to write.
    """
    from torchvision.transforms import v2

    height, width = pixels.shape[1:]
    scale = min(1.0, OVERLAY_SIDE / max(height, width))
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    image = v2.functional.resize(pixels, size, antialias=True).permute(1, 2, 0).numpy()
    heatmap = F.interpolate(score_map[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    side = score_map.shape[-1]
    fit = torch.tensor([size[1] / side, size[0] / side] * 2, dtype=torch.float64)
    panel = {"title": title, "map": heatmap, "boxes": (boxes.to(torch.float64) * fit).round()}
    save_overlay([panel], image, torch.zeros(0, 4), path)


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
    args = parser.parse_args(argv)
    try:
        if args.tau is not None and not 0 <= args.tau < 1:
            raise SetupError(f"--tau must be in [0, 1), got {args.tau}.")
        if args.batch_size < 1:
            raise SetupError(f"--batch-size must be >= 1, got {args.batch_size}.")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise SetupError("--device cuda was asked for but CUDA is not available; pass --device cpu.")
        if args.out.exists() and not args.out.is_dir():
            raise SetupError(f"--out {args.out} is a file, not a folder; pass another --out.")
        paths = find_images(args.images)
        model, config, classes = load_stripped(args.weights)
    except (SetupError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tau = args.tau
    if tau is None:
        tau, reason = default_tau(args.weights)
        if reason is not None:
            print(f"warning: {reason}; using the default threshold {tau} (pass --tau to choose).", file=sys.stderr)
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for start in range(0, len(paths), args.batch_size):
        batch: list[tuple[Path, torch.Tensor]] = []
        for path in paths[start : start + args.batch_size]:
            try:
                batch.append((path, torch.from_numpy(load_image(path)).permute(2, 0, 1)))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                skipped.append({"image": str(path), "error": " ".join(str(err).split())})
                print(f"skipped {path}: {skipped[-1]['error']}", file=sys.stderr)
        if not batch:
            continue
        results = localize_batch(model, [pixels for _, pixels in batch], config.image_size, tau, args.all_blobs)
        for (path, pixels), (label, score, boxes, heatmap) in zip(batch, results, strict=True):
            height, width = pixels.shape[1:]
            scale = torch.tensor([width / config.image_size, height / config.image_size] * 2, dtype=torch.float64)
            original = (boxes.to(torch.float64) * scale).round().to(torch.int64)
            records.append(
                {
                    "image": str(path),
                    "class_index": label,
                    "class": classes[label],
                    "score": score,
                    "boxes": original.tolist(),
                }
            )
            name = args.out / "overlays" / f"{len(records) - 1:05d}_{path.stem}.png"
            write_overlay(pixels, heatmap, boxes, f"{classes[label]} ({score:.2f})", name)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"tau": tau, "predictions": records, "skipped": skipped}
    (args.out / "boxes.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"{len(records)} images -> {args.out / 'boxes.json'}" + (f" ({len(skipped)} skipped)" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
