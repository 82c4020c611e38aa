"""How well the raw class-token attention of an encoder localizes, before any WSOL training.

Scores the attention ``A`` (summed over blocks, min-max normalised: SCM's semantic-agnostic map) of the shipped
encoder (or ``--weights``) on the test split of each generated WSOL family, against a centred Gaussian map that
ignores the image, with the ``wsol`` protocol's box metrics:

    python examples/pretrain/eval_attention.py                       # the shipped encoder, every family
    python examples/pretrain/eval_attention.py --weights /tmp/try.safetensors --families default
    python examples/pretrain/eval_attention.py --random              # a randomly initialised encoder
    python examples/pretrain/eval_attention.py --pretraining-images 300   # also on the pretraining task's images

``--pretraining-images N`` also scores N images of the pretraining task (:func:`scm_calib.data.shapes.render_shapes`,
96 px, a fixed seed), the box of each being its large object's: whether the encoder learned to find objects of
the kind it was trained on, apart from whether that carries over to the WSOL families.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

import timm
import torch

from scm_calib import SCMAdapter
from scm_calib.data import IMAGENET_MEAN, IMAGENET_STD, CUBDataset, collate_wsol, ensure_generated_dataset
from scm_calib.data.generated import FAMILIES
from scm_calib.data.shapes import STYLES, render_shapes
from scm_calib.evaluation import centre_prior_map
from scm_calib.localize import semantic_and_attention
from scm_calib.metrics import BoxAccuracy
from scm_calib.pretrained import ENCODER_ARCH, ENCODER_KWARGS, create_pretrained_encoder


def score_batches(
    encoder: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, list[torch.Tensor]]], image_size: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Box metrics of the attention and of the centre prior over (normalised images, boxes) batches."""
    adapter = SCMAdapter(encoder, scm=None).eval()
    size = (image_size, image_size)
    attention, prior = BoxAccuracy("wsol", size=size), BoxAccuracy("wsol", size=size)
    for images, boxes in batches:
        with torch.no_grad():
            maps = semantic_and_attention(adapter, images).attention
        attention.update(maps, boxes)
        prior.update(centre_prior_map(maps.shape[-2:]).expand_as(maps), boxes)
    return attention.compute(), prior.compute()


def score(encoder: torch.nn.Module, root: Path, image_size: int, batch_size: int = 64) -> dict[str, float]:
    """MaxBoxAccV2 / MaxBoxAcc of the attention and of the centre prior on the test split of ``root``."""
    test = CUBDataset(root, "test", image_size=image_size, masks=False)
    batches = (
        collate_wsol([test[i] for i in range(start, min(start + batch_size, len(test)))])
        for start in range(0, len(test), batch_size)
    )
    found, reference = score_batches(encoder, ((b.images, b.boxes_protocol) for b in batches), image_size)
    return {
        "attention MaxBoxAccV2": found["MaxBoxAccV2"],
        "attention MaxBoxAcc": found["MaxBoxAcc"],
        "centre prior MaxBoxAccV2": reference["MaxBoxAccV2"],
        "centre prior MaxBoxAcc": reference["MaxBoxAcc"],
    }


def score_pretraining_images(
    encoder: torch.nn.Module, count: int, style: str, image_size: int, batch_size: int = 64
) -> dict[str, float]:
    """MaxBoxAccV2 of the attention and of the centre prior on ``count`` pretraining images (boxes: the object's)."""
    batch = render_shapes(torch.Generator().manual_seed(123), count, size=image_size, style=style)
    boxes = []
    for mask in batch.masks:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        boxes.append(torch.stack([xs.min(), ys.min(), xs.max(), ys.max()])[None].float())
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    images = (batch.images - mean) / std
    batches = (
        (images[start : start + batch_size], boxes[start : start + batch_size]) for start in range(0, count, batch_size)
    )
    found, reference = score_batches(encoder, batches, image_size)
    return {"attention MaxBoxAccV2": found["MaxBoxAccV2"], "centre prior MaxBoxAccV2": reference["MaxBoxAccV2"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="encoder weights (default: the shipped file)")
    parser.add_argument("--random", action="store_true", help="a randomly initialised encoder instead")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--data-cache", default=".cache/scm_calib/generated")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pretraining-images", type=int, default=0, help="also score this many pretraining images")
    parser.add_argument("--style", default="classic", choices=STYLES, help="the look of those images")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {}

    def encoder_() -> torch.nn.Module:
        if args.random:
            return timm.create_model(ENCODER_ARCH, num_classes=10, img_size=args.image_size, **ENCODER_KWARGS)
        return create_pretrained_encoder(10, img_size=args.image_size, weights=args.weights)

    if args.pretraining_images > 0:
        found = score_pretraining_images(encoder_(), args.pretraining_images, args.style, args.image_size)
        results["pretraining images"] = {k: round(v, 2) for k, v in found.items()}
        print(f"pretraining images ({args.style})", json.dumps(results["pretraining images"]), flush=True)
    for family in args.families:
        root = ensure_generated_dataset(Path(args.data_cache) / family, family=family)
        results[family] = {k: round(v, 2) for k, v in score(encoder_(), root, args.image_size).items()}
        print(family, json.dumps(results[family]), flush=True)


if __name__ == "__main__":
    main()
