"""Localization maps from a model: ``A * S_c`` (SCM, Bai et al., ECCV 2022, and TS-CAM).

``A`` is the class-token attention summed over blocks and min-max normalised, ``S_c`` the semantic map
of class ``c``. Works on an :class:`~scm_calib.adapter.SCMAdapter`, on what its ``strip()`` returns
(a :class:`~scm_calib.adapter.StrippedViT` or a plain timm ViT pooled with ``global_pool="avg"``):
for a stripped model, attention capture is attached for the call and removed after it, so the model
stays bare.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .adapter import SCMAdapter, StrippedViT
from .boxes.maps import resize_maps
from .capture import AttentionCapture, check_supported, class_attention, grid_size, normalize_attention, patch_tokens
from .heads import LinearHead

__all__ = ["MapsAndLogits", "localization_maps", "semantic_and_attention"]


@dataclass
class MapsAndLogits:
    """Semantic maps, attention and logits of one batch.

    Attributes:
        logits: (B, C) logits from the raw semantic maps.
        semantic: (B, C, h, w) semantic maps S.
        attention: (B, h, w) min-max normalised class-token attention A.
    """

    logits: torch.Tensor
    semantic: torch.Tensor
    attention: torch.Tensor


def semantic_and_attention(model: nn.Module, images: torch.Tensor, blocks: list[int] | None = None) -> MapsAndLogits:
    """Runs ``model`` on ``images`` and returns the semantic maps, the attention and the logits.

    Args:
        model: an SCMAdapter, a StrippedViT, or a plain timm ViT whose classifier is an ``nn.Linear``.
        images: (B, 3, H, W).
        blocks: blocks whose attention is summed (None: all); ignored for an SCMAdapter (its own setting).

    Returns:
        A :class:`MapsAndLogits`.
    """
    if isinstance(model, SCMAdapter):
        was_training = model.training
        model.eval()
        try:
            out = model(images)
        finally:
            model.train(was_training)
        return MapsAndLogits(out.logits, out.semantic.float(), out.attention)
    if isinstance(model, StrippedViT):
        encoder, head = model.encoder, model.head
    elif isinstance(getattr(model, "head", None), nn.Linear):
        encoder, head = model, LinearHead(model.head)
    else:
        raise TypeError(
            f"localization needs an SCMAdapter, a StrippedViT or a timm ViT with a linear classifier, got "
            f"{type(model).__name__} (head: {type(getattr(model, 'head', None)).__name__})."
        )
    capture = AttentionCapture(check_supported(encoder), blocks)
    try:
        with capture.recording() as rows:
            tokens = encoder.forward_features(images)
        grid = grid_size(encoder, (images.shape[-2], images.shape[-1]))
        semantic = head(patch_tokens(encoder, tokens, grid)).float()
        attention = normalize_attention(class_attention(rows, encoder.num_prefix_tokens, grid))
    finally:
        capture.remove()
    return MapsAndLogits(semantic.mean(dim=(2, 3)), semantic, attention)


@torch.no_grad()
def localization_maps(
    model: nn.Module,
    images: torch.Tensor,
    classes: str | int | torch.Tensor = "top1",
    size: tuple[int, int] | str | None = None,
    interpolation: str = "bilinear",
    blocks: list[int] | None = None,
) -> torch.Tensor:
    """Localization maps ``A * S_c`` of a model for chosen classes.

    Args:
        model: an SCMAdapter, a StrippedViT or a stripped timm ViT (see :func:`semantic_and_attention`).
        images: (B, 3, H, W) normalised images.
        classes: ``"top1"`` (the predicted class), an int k (the top-k predicted classes, in order),
            a (B,) tensor of class indices (e.g. the ground truth), or ``"all"``.
        size: None keeps the patch grid (h, w); ``"input"`` resizes to (H, W); or an explicit (H, W).
        interpolation: ``"bilinear"`` or ``"bicubic"`` for the resize.
        blocks: blocks whose attention is summed (None: all).

    Returns:
        (B, h, w) for ``"top1"`` or a class tensor; (B, k, h, w) for top-k; (B, C, h, w) for ``"all"``
        (spatial size ``size`` when given).
    """
    result = semantic_and_attention(model, images, blocks)
    semantic, attention = result.semantic, result.attention
    num_classes = semantic.shape[1]
    if isinstance(classes, str) and classes == "all":
        index = None
    elif isinstance(classes, str) and classes == "top1":
        index = result.logits.argmax(dim=1)
    elif isinstance(classes, int) and not isinstance(classes, bool):
        if not 1 <= classes <= num_classes:
            raise ValueError(f"classes={classes} asks for the top-{classes} of {num_classes} classes.")
        index = result.logits.topk(classes, dim=1).indices
    elif isinstance(classes, torch.Tensor):
        index = classes.to(semantic.device).long()
        if index.shape != (semantic.shape[0],) or index.min() < 0 or index.max() >= num_classes:
            raise ValueError(
                f"classes must hold one class index in [0, {num_classes}) per image, a ({semantic.shape[0]},) "
                f"tensor; got shape {tuple(index.shape)}."
            )
    else:
        raise ValueError(f"classes must be 'top1', 'all', an int k or a (B,) tensor, got {classes!r}.")
    if index is None:
        chosen = semantic
    elif index.ndim == 1:
        chosen = semantic[torch.arange(semantic.shape[0], device=semantic.device), index]
    else:
        chosen = torch.gather(semantic, 1, index[:, :, None, None].expand(-1, -1, *semantic.shape[2:]))
    maps = chosen * (attention if chosen.ndim == 3 else attention[:, None])
    if size is None:
        return maps
    target = (images.shape[-2], images.shape[-1]) if size == "input" else tuple(size)
    return resize_maps(maps.flatten(0, maps.ndim - 3), target, interpolation).view(*maps.shape[:-2], *target)
