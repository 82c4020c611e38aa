"""Draws the method figure of the docs: a map before and after SCM (Bai et al., ECCV 2022) calibration.

For a few test images of the generated dataset it shows, side by side: the image with its box, the
class-token attention ``A``, the semantic map ``S_c`` of the ground-truth class, the localization map
``A * S_c`` and the SCM-calibrated map (``SCMOutput.calibrated`` of the adapter in training mode).

The model is a run of the example trainer when one is given (``--run``: its ``config.json`` gives the
architecture and the data, its ``checkpoint.pt`` SCM's learned lambda and beta). Without one, a small ViT
is trained here for ``--epochs`` epochs without SCM (the TS-CAM baseline, which learns in a few CPU
minutes), and the last column shows what SCM at its initial lambda and beta makes of that model's maps::

    python docs/scripts/make_figures.py                                  # trains its own small model
    python docs/scripts/make_figures.py --run runs/generated-scm-seed0   # the trainer's default run
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from scm_calib import SCMAdapter, SCMOutput, load_weights  # noqa: E402
from scm_calib.data import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    CUBDataset,
    WSOLBatch,
    collate_wsol,
    ensure_generated_dataset,
)

DOCS = Path(__file__).resolve().parents[1]
# Trained here without --run: a 4-block, 96-wide ViT with 8 px patches on 64 px inputs (an 8 x 8 grid).
MODEL = "vit_tiny_patch16_224"
MODEL_KWARGS = {"patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}
IMAGE_SIZE = 64


def build_adapter(name: str, model_kwargs: dict, image_size: int, num_classes: int) -> SCMAdapter:
    """A timm ViT wrapped with SCM at the paper's constants.

    Args:
        name: timm model name.
        model_kwargs: extra ``timm.create_model`` arguments.
        image_size: side of the square input.
        num_classes: number of classes of the dataset.

    Returns:
        A fresh adapter.
    """
    model = timm.create_model(name, num_classes=num_classes, img_size=image_size, **model_kwargs)
    return SCMAdapter(model)


def load_run(adapter: SCMAdapter, run: Path) -> str:
    """Fills ``adapter`` from a run folder of ``examples/cub/train.py``.

    Args:
        adapter: the adapter of the run's architecture.
        run: the run folder; ``checkpoint.pt`` (with SCM's lambda and beta) is preferred to
            ``model_stripped.safetensors`` (encoder and head only; SCM keeps its initial constants).

    Returns:
        A short description of what was loaded, for the log.
    """
    checkpoint = run / "checkpoint.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        adapter.load_state_dict(state.get("model", state))
        return f"{checkpoint} (encoder, head and SCM)"
    stripped = adapter.strip()
    load_weights(stripped, run / "model_stripped.safetensors")
    adapter.encoder.load_state_dict(stripped.encoder.state_dict())
    adapter.head.load_state_dict(stripped.head.state_dict())
    return f"{run / 'model_stripped.safetensors'} (encoder and head; SCM at its initial lambda and beta)"


def train(adapter: SCMAdapter, loader: DataLoader, epochs: int) -> None:
    """Trains ``adapter`` with cross-entropy on its logits (AdamW, lr 1e-3 with warm-up and cosine decay).

    Args:
        adapter: the adapter to train in place.
        loader: the training batches.
        epochs: passes over the data.
    """
    no_decay = adapter.no_weight_decay()
    named = list(adapter.named_parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if n not in no_decay and p.ndim > 1], "weight_decay": 0.05},
            {"params": [p for n, p in named if n in no_decay or p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=1e-3,
    )
    steps = epochs * len(loader)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    adapter.train()
    start = time.perf_counter()
    for epoch in range(epochs):
        correct = total = 0
        for batch in loader:
            out = adapter(batch.images)
            loss = F.cross_entropy(out.logits, batch.labels)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            correct += int((out.logits.argmax(dim=1) == batch.labels).sum())
            total += batch.labels.numel()
        elapsed = time.perf_counter() - start
        summary = f"loss {loss.item():.3f}, train acc {correct / total:.1%}"
        print(f"epoch {epoch + 1}/{epochs}: {summary}, {elapsed:.0f} s")


def unnormalize(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) normalised images -> (B, H, W, 3) floats in [0, 1] for display."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (images * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def display_map(grid_map: torch.Tensor, size: int) -> np.ndarray:
    """A (h, w) map, bilinearly resized to (size, size) and min-max normalised for display."""
    resized = F.interpolate(grid_map[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    resized = resized[0, 0]
    low, high = resized.min(), resized.max()
    return ((resized - low) / (high - low).clamp_min(1e-8)).numpy()


def draw(batch: WSOLBatch, out: SCMOutput, path: Path) -> None:
    """Writes the figure, a 128-colour PNG: one row per image, columns image / A / S_c / A * S_c / calibrated.

    Args:
        batch: the images, labels and boxes.
        out: the adapter's output on ``batch.images`` in training mode (``calibrated`` set).
        path: the PNG to write.
    """
    size = batch.images.shape[-1]
    rows = len(batch.labels)
    index = torch.arange(rows)
    labels = batch.labels
    columns = [
        ("image and box", None),
        ("attention A", out.attention),
        ("semantic map $S_c$", out.semantic[index, labels]),
        ("$A \\cdot S_c$ (inference map)", out.maps[index, labels]),
        ("SCM-calibrated $S_c$ (training)", out.calibrated[index, labels]),
    ]
    images = unnormalize(batch.images)
    figure, axes = plt.subplots(rows, len(columns), figsize=(2.0 * len(columns), 2.0 * rows), squeeze=False)
    for row in range(rows):
        for column, (title, maps) in enumerate(columns):
            axis = axes[row, column]
            axis.imshow(images[row])
            if maps is None:
                x0, y0, x1, y1 = batch.boxes[row][0].tolist()
                axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.5))
            else:
                axis.imshow(display_map(maps[row], size), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(title, fontsize=8)
    figure.tight_layout(pad=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    Image.open(buffer).convert("RGB").quantize(128).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="run folder of examples/cub/train.py to load")
    parser.add_argument("--data-cache", type=Path, default=Path(".cache/scm_calib/generated"), help="as the trainer's")
    parser.add_argument("--epochs", type=int, default=12, help="epochs when training here (no --run)")
    parser.add_argument("--images", type=int, nargs="+", default=[0, 31, 62, 95], help="test image indices")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DOCS / "figures" / "calibration.png")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    name, model_kwargs, image_size, cache = MODEL, MODEL_KWARGS, IMAGE_SIZE, args.data_cache
    if args.run is not None:
        config = json.loads((args.run / "config.json").read_text(encoding="utf-8"))
        name, model_kwargs, image_size = config["model"], config["model_kwargs"], config["image_size"]
        cache = Path(config["data_cache"])
    root = ensure_generated_dataset(cache / "default")
    train_set = CUBDataset(root, "train", image_size=image_size)
    test_set = CUBDataset(root, "test", image_size=image_size)
    adapter = build_adapter(name, model_kwargs, image_size, train_set.num_classes)
    if args.run is not None:
        print("loaded", load_run(adapter, args.run))
    else:
        generator = torch.Generator().manual_seed(args.seed)
        loader = DataLoader(train_set, batch_size=16, shuffle=True, collate_fn=collate_wsol, generator=generator)
        scm, adapter.scm = adapter.scm, None
        train(adapter, loader, args.epochs)
        adapter.scm = scm
    for number, block in enumerate(adapter.scm.blocks, start=1):
        print(f"SCM block {number}: lambda {block.lambda_.item():.3f}, beta {block.beta.item():.3f}")

    batch = collate_wsol([test_set[i] for i in args.images])
    adapter.train()
    with torch.no_grad():
        out = adapter(batch.images)
        adapter.eval()
        accuracy = (adapter(batch.images).logits.argmax(dim=1) == batch.labels).float().mean()
    print(f"shown images: eval-mode accuracy {accuracy:.0%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(batch, out, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
