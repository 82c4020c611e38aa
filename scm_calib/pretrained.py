"""The small pretrained encoder shipped with ``scm_calib``: the offline stand-in for ImageNet-pretrained DeiT.

SCM (Bai et al., ECCV 2022) fine-tunes an encoder whose class-token attention already covers objects. No hub
is reachable offline, so the package ships one it made itself: a timm ViT (``vit_tiny_patch16_224`` with
8 px patches, width 96, 6 blocks, 3 heads, 96 px input; 0.7 M parameters) trained on the generated images of
:mod:`scm_calib.data.shapes` by ``examples/pretrain/pretrain.py`` (the command and seed are in the file's
metadata and in docs/pretraining.md). It loads through timm's own pretrained path, so timm resamples the
position embedding for another input size and drops the 64-class head for another number of classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from torch import nn

__all__ = ["ENCODER_ARCH", "ENCODER_KWARGS", "WEIGHTS_FILE", "create_pretrained_encoder"]

ENCODER_ARCH = "vit_tiny_patch16_224"
ENCODER_KWARGS: dict[str, Any] = {"patch_size": 8, "embed_dim": 96, "depth": 6, "num_heads": 3}
WEIGHTS_FILE = Path(__file__).parent / "weights" / "shapes_vit.safetensors"
PRETRAINED_CLASSES = 64


def create_pretrained_encoder(
    num_classes: int, img_size: int = 96, weights: str | Path | None = None, **kwargs: Any
) -> nn.Module:
    """The shipped encoder (or ``weights`` of the same architecture) as a timm model with a new head.

    Args:
        num_classes: classes of the new head (64 keeps the pretraining head).
        img_size: input side; the position embedding is resampled from 96 px by timm.
        weights: another safetensors / .pth file of this architecture (default: the shipped file).
        **kwargs: more ``timm.create_model`` arguments (e.g. ``drop_path_rate``).

    Returns:
        ``timm.create_model(ENCODER_ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=...), ...)``.

    Raises:
        FileNotFoundError: the weights file does not exist.
    """
    path = Path(weights) if weights is not None else WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights {path} do not exist; remake them with `python examples/pretrain/pretrain.py` "
            "or pass weights= a file of this architecture."
        )
    # custom_load=False: the architecture's registry weights are JAX .npz files, and timm before 1.0.31 kept
    # that loader for an overlaid file too (it then failed to read the safetensors file as .npz).
    overlay = {"file": str(path.resolve()), "num_classes": PRETRAINED_CLASSES, "custom_load": False}
    return timm.create_model(
        ENCODER_ARCH,
        pretrained=True,
        pretrained_cfg_overlay=overlay,
        num_classes=num_classes,
        img_size=img_size,
        **{**ENCODER_KWARGS, **kwargs},
    )
