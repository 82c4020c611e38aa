"""Localize the objects in a folder of images with a stripped SCM model (Bai et al., ECCV 2022).

Reads ``model_stripped.safetensors`` of a training run (its metadata holds the architecture, the input size
and the class names), predicts the top-1 class of every image, turns its map ``A * S_c`` into boxes at the
threshold chosen on the held-out split (``metrics.json`` next to the weights) and writes ``boxes.json``
(image, class, score, boxes in pixels of the original image) and one overlay PNG per image.

    python examples/cub/infer.py runs/generated-scm-seed0/model_stripped.safetensors path/to/images --out preds
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from config import TrainConfig
from safetensors import safe_open
from train import SetupError, build_model, save_overlay

from scm_calib import CheckpointError, load_weights, localization_maps
from scm_calib.boxes import boxes_from_maps
from scm_calib.data import wsol_eval_transform

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_TAU = 0.2


def load_stripped(weights: Path) -> tuple[torch.nn.Module, TrainConfig, list[str]]:
    """The stripped model of a run, its training configuration and its class names.

    Raises:
        SetupError: the file is missing or was not written by ``train.py``.
    """
    if not weights.is_file():
        raise SetupError(f"weights {weights} do not exist; pass the model_stripped.safetensors of a run.")
    try:
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:
        raise SetupError(f"cannot read {weights} as safetensors ({err}).") from err
    if "config" not in metadata or "classes" not in metadata:
        raise SetupError(f"{weights} has no training config in its metadata; pass a file written by train.py.")
    config = TrainConfig(**json.loads(metadata["config"])).updated({"pretrained": False, "checkpoint": None}, "infer")
    classes = json.loads(metadata["classes"])
    model = build_model(config, len(classes)).strip()
    load_weights(model, weights)
    return model.eval(), config, classes


def default_tau(weights: Path) -> float:
    """The GT-known Loc threshold chosen on the held-out split (``metrics.json`` beside the weights), else 0.2."""
    metrics = weights.parent / "metrics.json"
    if metrics.is_file():
        summary = json.loads(metrics.read_text(encoding="utf-8"))
        if "test_at_val_tau" in summary:
            return float(summary["test_at_val_tau"]["tau"])
    return DEFAULT_TAU


@torch.no_grad()
def localize_image(
    model: torch.nn.Module, path: Path, image_size: int, tau: float, all_blobs: bool
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-1 class, its probability and its boxes for one image file.

    Returns:
        The JSON record (boxes in pixels of the original image); for the overlay, the (3, S, S) uint8 resized
        image, the (S, S) localization map and the (N, 4) boxes in its pixels.
    """
    from PIL import Image
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    with Image.open(path) as image:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    height, width = pixels.shape[1:]
    images = wsol_eval_transform(image_size)(tv_tensors.Image(pixels))[None]
    probs = model(images).softmax(dim=1)[0]
    label = int(probs.argmax())
    maps = localization_maps(model, images, torch.tensor([label]), size="input")
    found = boxes_from_maps(maps, thresholds=[tau], largest_only=not all_blobs, holes=False).boxes
    scale = torch.tensor([width / image_size, height / image_size] * 2, dtype=torch.float64)
    boxes = (found.to(torch.float64) * scale).round().to(torch.int64)
    resized = v2.functional.resize(pixels, [image_size, image_size], antialias=True)
    record = {"image": str(path), "class_index": label, "score": float(probs[label]), "boxes": boxes.tolist()}
    return record, resized, maps[0], found


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (2 for bad input, reported in one line)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", type=Path, help="model_stripped.safetensors of a training run")
    parser.add_argument("images", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder")
    parser.add_argument("--tau", type=float, help="map threshold (default: the run's, chosen on held-out data)")
    parser.add_argument("--all-blobs", action="store_true", help="a box per blob instead of the largest only")
    args = parser.parse_args(argv)
    try:
        model, config, classes = load_stripped(args.weights)
        if not args.images.is_dir():
            raise SetupError(f"{args.images} is not a folder; pass a folder of images.")
        paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise SetupError(f"no image ({', '.join(IMAGE_SUFFIXES)}) under {args.images}.")
    except (SetupError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tau = default_tau(args.weights) if args.tau is None else args.tau
    records = []
    for index, path in enumerate(paths):
        record, image, heatmap, boxes = localize_image(model, path, config.image_size, tau, args.all_blobs)
        record["class"] = classes[record["class_index"]]
        records.append(record)
        save_overlay(image, heatmap, boxes, None, args.out / "overlays" / f"{index:05d}_{path.stem}.png")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "boxes.json").write_text(json.dumps({"tau": tau, "predictions": records}, indent=1), encoding="utf-8")
    print(f"{len(records)} images -> {args.out / 'boxes.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
