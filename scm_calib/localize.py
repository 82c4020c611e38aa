"""Localization maps from a model: ``A * S_c`` (SCM, Bai et al., ECCV 2022, and TS-CAM).

Three kinds of map, one name each (the fields of :class:`~scm_calib.adapter.SCMOutput`):

- ``semantic`` (B, C, h, w): the class-score maps ``S``, one score per patch and class, from the semantic head;
- ``attention`` (B, h, w): the class-token attention ``A``, summed over blocks and min-max normalised;
- a localization map (B, h, w): ``A * S_c``, the attention times the class-score map of one selected class
  ``c`` per image (:func:`select_maps`); ``SCMOutput.maps`` holds it for every class, (B, C, h, w).

Works on an :class:`~scm_calib.adapter.SCMAdapter` and on what its ``strip()`` returns (a
:class:`~scm_calib.adapter.StrippedViT` or a plain timm ViT pooled with ``global_pool="avg"``): for a stripped
model, attention capture is attached for the call and removed after it, so the model stays bare.
"""

from __future__ import annotations

import torch
from timm.utils import unwrap_model
from torch import nn

from ._renamed import renamed_keywords
from .adapter import SCMAdapter, SCMOutput, StrippedViT
from .boxes.maps import resize_maps
from .capture import AttentionCapture, check_supported, class_attention, grid_size, normalize_attention, patch_tokens
from .heads import LinearHead

__all__ = ["localization_maps", "select_maps", "semantic_and_attention"]


@renamed_keywords(blocks="attention_blocks")
def semantic_and_attention(
    model: nn.Module, images: torch.Tensor, attention_blocks: list[int] | None = None
) -> SCMOutput:
    """Runs ``model`` on ``images`` in eval mode and returns its class-score maps, attention and logits.

    Args:
        model: an SCMAdapter, a StrippedViT, or a plain timm ViT whose classifier is an ``nn.Linear``;
            DistributedDataParallel and ``torch.compile`` wrappers are looked through.
        images: (B, 3, H, W).
        attention_blocks: encoder blocks whose attention is summed (None: all); ignored for an SCMAdapter (its own
            setting). The keyword ``blocks`` (its name in 0.1) still works for one release and warns.

    Returns:
        The eval-mode :class:`~scm_calib.adapter.SCMOutput` (no calibrated fields): ``logits`` the average of
        the raw ``semantic`` maps, ``semantic`` in float32, ``attention``, and ``maps`` ``A * S_c`` of every class.
    """
    model = unwrap_model(model)  # DistributedDataParallel and torch.compile wrappers
    if isinstance(model, SCMAdapter):
        was_training = model.training
        model.eval()
        try:
            out = model(images)
        finally:
            model.train(was_training)
        return out._replace(semantic=out.semantic.float())
    if isinstance(model, StrippedViT):
        encoder, head = model.encoder, model.head
    elif isinstance(getattr(model, "head", None), nn.Linear):
        encoder, head = model, LinearHead(model.head)
    else:
        raise TypeError(
            f"localization needs an SCMAdapter, a StrippedViT or a timm ViT with a linear classifier, got "
            f"{type(model).__name__} (head: {type(getattr(model, 'head', None)).__name__})."
        )
    capture = AttentionCapture(check_supported(encoder), attention_blocks)
    try:
        with capture.recording() as rows:
            tokens = encoder.forward_features(images)
        grid = grid_size(encoder, (images.shape[-2], images.shape[-1]))
        semantic = head(patch_tokens(encoder, tokens, grid)).float()
        attention = normalize_attention(class_attention(rows, encoder.num_prefix_tokens, grid))
    finally:
        capture.remove()
    return SCMOutput(semantic.mean(dim=(2, 3)), attention[:, None] * semantic, attention, semantic)


def select_maps(output: SCMOutput, classes: str | int | torch.Tensor = "top1") -> torch.Tensor:
    """Localization maps ``A * S_c``: the attention times the class-score map of the chosen classes of each image.

    Args:
        output: a model's output (:func:`semantic_and_attention` or an :class:`~scm_calib.adapter.SCMAdapter`);
            ``"top1"`` and top-k rank classes by ``output.logits`` as they are (the raw ones in eval mode).
        classes: ``"top1"`` (the predicted class), an int k (the top-k predicted classes, in order),
            a (B,) tensor of class indices (e.g. the ground truth), or ``"all"``.

    Returns:
        (B, h, w) float32 for ``"top1"`` or a class tensor; (B, k, h, w) for top-k; (B, C, h, w) for ``"all"``.

    Raises:
        ValueError: ``classes`` of another kind, k outside ``[1, C]``, or class indices that are not one per image
            in ``[0, C)``.
    """
    semantic, attention = output.semantic.float(), output.attention.float()
    num_classes = semantic.shape[1]
    if isinstance(classes, str) and classes == "all":
        return semantic * attention[:, None]
    if isinstance(classes, str) and classes == "top1":
        index = output.logits.argmax(dim=1)
    elif isinstance(classes, int) and not isinstance(classes, bool):
        if not 1 <= classes <= num_classes:
            raise ValueError(f"classes={classes} asks for the top-{classes} of {num_classes} classes.")
        top = output.logits.topk(classes, dim=1).indices
        return torch.gather(semantic, 1, top[:, :, None, None].expand(-1, -1, *semantic.shape[2:])) * attention[:, None]
    elif isinstance(classes, torch.Tensor):
        index = classes.to(semantic.device).long()
        if index.shape != (semantic.shape[0],) or index.min() < 0 or index.max() >= num_classes:
            raise ValueError(
                f"classes must hold one class index in [0, {num_classes}) per image, a ({semantic.shape[0]},) "
                f"tensor; got shape {tuple(index.shape)}."
            )
    else:
        raise ValueError(f"classes must be 'top1', 'all', an int k or a (B,) tensor, got {classes!r}.")
    return semantic[torch.arange(semantic.shape[0], device=semantic.device), index] * attention


@torch.no_grad()
@renamed_keywords(blocks="attention_blocks")
def localization_maps(
    model: nn.Module,
    images: torch.Tensor,
    classes: str | int | torch.Tensor = "top1",
    size: tuple[int, int] | str | None = None,
    interpolation: str = "bilinear",
    attention_blocks: list[int] | None = None,
) -> torch.Tensor:
    """Localization maps ``A * S_c`` of a model for chosen classes (:func:`select_maps` of its output).

    Args:
        model: an SCMAdapter, a StrippedViT or a stripped timm ViT (see :func:`semantic_and_attention`).
        images: (B, 3, H, W) normalised images.
        classes: ``"top1"`` (the predicted class), an int k (the top-k predicted classes, in order),
            a (B,) tensor of class indices (e.g. the ground truth), or ``"all"``.
        size: None keeps the patch grid (h, w); ``"input"`` resizes to (H, W); or an explicit (H, W).
        interpolation: ``"bilinear"`` or ``"bicubic"`` for the resize.
        attention_blocks: encoder blocks whose attention is summed (None: all). The keyword ``blocks`` (its name
            in 0.1) still works for one release and warns.

    Returns:
        (B, h, w) for ``"top1"`` or a class tensor; (B, k, h, w) for top-k; (B, C, h, w) for ``"all"``
        (spatial size ``size`` when given).
    """
    maps = select_maps(semantic_and_attention(model, images, attention_blocks), classes)
    if size is None:
        return maps
    target = (images.shape[-2], images.shape[-1]) if size == "input" else tuple(size)
    return resize_maps(maps.flatten(0, maps.ndim - 3), target, interpolation).view(*maps.shape[:-2], *target)
