"""Pretrain the small ViT that the default WSOL run fine-tunes: the offline stand-in for ImageNet-pretrained DeiT.

The images come from :func:`scm_calib.data.shapes.render_shapes` (64 classes: outline x surface pattern of one
large object among distractors), drawn fresh for every step: batch ``i`` is a function of ``(seed, i)`` alone,
so a resumed run sees the same images as an uninterrupted one. The class token classifies (timm's
``global_pool="token"``, as DeiT), so its attention learns to find the object. Most steps run at a small size
(``--size``, the position embedding resampled on the fly); the last ``--final-fraction`` at ``--final-size``,
the size of the fine-tuning run.

    python examples/pretrain/pretrain.py                      # remakes scm_calib/weights/shapes_vit.safetensors
    python examples/pretrain/pretrain.py --steps 200 --out /tmp/try.safetensors   # a quick try

Writes ``<out>`` (safetensors, the bare encoder with its 64-class head; metadata: the command's settings) and
keeps ``<out>.state.pt`` (model, optimizer, step) every ``--save-every`` steps for ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from scm_calib.checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
from scm_calib.data import IMAGENET_MEAN, IMAGENET_STD
from scm_calib.data.shapes import STYLES, num_shape_classes, render_shapes
from scm_calib.pretrained import ENCODER_ARCH, ENCODER_KWARGS, WEIGHTS_FILE


class ShapeBatches(torch.utils.data.Dataset):
    """Batch ``i`` of the pretraining stream, drawn from ``(seed, i)`` alone (normalised images, labels)."""

    def __init__(
        self, seed: int, batch_size: int, steps: int, size: int, final_size: int, final_from: int, style: str
    ) -> None:
        self.seed, self.batch_size, self.steps, self.style = seed, batch_size, steps, style
        self.size, self.final_size, self.final_from = size, final_size, final_from
        self.mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        self.std = torch.tensor(IMAGENET_STD)[:, None, None]

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        size = self.final_size if step >= self.final_from else self.size
        batch = render_shapes(gen, self.batch_size, size, style=self.style)
        return (batch.images - self.mean) / self.std, batch.labels


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", default=str(WEIGHTS_FILE), help="the safetensors file to write")
    parser.add_argument("--steps", type=int, default=2500, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="image side for most steps")
    parser.add_argument("--final-size", type=int, default=96, help="image side of the last steps (the model's size)")
    parser.add_argument("--final-fraction", type=float, default=0.1, help="share of the steps at --final-size")
    parser.add_argument("--style", default="classic", choices=STYLES, help="the look of the images (render_shapes)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-steps", type=int, default=150)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the training process")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing the images")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--resume", action="store_true", help="continue from <out>.state.pt")
    parser.add_argument("--init", help="start from these weights (a new schedule: a warm restart), not at random")
    args = parser.parse_args()
    for name in ("steps", "batch_size", "size", "final_size", "save_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if not 0 <= args.final_fraction <= 1:
        parser.error(f"--final-fraction must be in [0, 1], got {args.final_fraction}.")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a positive number, got {args.lr}.")
    return args


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    state_path = out.with_name(out.name + ".state.pt")
    model = timm.create_model(
        ENCODER_ARCH,
        num_classes=num_shape_classes(),
        img_size=args.final_size,
        dynamic_img_size=True,
        **ENCODER_KWARGS,
    )
    optimizer = create_optimizer_v2(model, "adamw", lr=args.lr, weight_decay=args.weight_decay)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=args.steps,
        lr_min=args.lr * 0.01,
        warmup_t=args.warmup_steps,
        warmup_lr_init=1e-5,
        t_in_epochs=False,
    )
    start = 0
    if args.init is not None:
        load_weights(model, args.init)
    if args.resume:
        state = load_checkpoint(state_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    final_from = args.steps - round(args.steps * args.final_fraction)
    data = ShapeBatches(args.seed, args.batch_size, args.steps, args.size, args.final_size, final_from, args.style)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(data, range(start, args.steps)),
        batch_size=None,
        num_workers=args.workers,
        prefetch_factor=4 if args.workers else None,
    )
    model.train()
    began, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
    for step, (images, labels) in enumerate(loader, start=start):
        scheduler.step_update(step)
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=args.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        seen += labels.numel()
        loss_sum += float(loss.detach()) * labels.numel()
        correct += int((logits.argmax(1) == labels).sum())
        done = step + 1
        if done % 50 == 0 or done == args.steps:
            rate = seen / (time.perf_counter() - began)
            print(
                f"step {done}/{args.steps} size {images.shape[-1]} lr {optimizer.param_groups[0]['lr']:.2e} "
                f"loss {loss_sum / seen:.3f} acc {100 * correct / seen:.1f} % ({rate:.0f} img/s)",
                flush=True,
            )
            began, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        if done % args.save_every == 0 or done == args.steps:
            save_checkpoint(
                state_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": done}
            )
            metadata = {key: str(value) for key, value in vars(args).items()}
            metadata["step"] = str(done)
            save_weights(model, out, metadata={"pretrain": json.dumps(metadata)})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
