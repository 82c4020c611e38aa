"""Deploying a localizer: the stripped model (SCM, Bai et al., ECCV 2022) as one exportable graph.

:class:`Localizer` goes from a normalised image batch to class logits, the localization map ``A * S_c`` of
the top-1 class (at input resolution, min-max normalised) and one box per image at a threshold, with no
data-dependent Python control flow, so :func:`export_localizer` (``torch.export``) and :func:`export_onnx`
(``torch.onnx.export(dynamo=True)``) capture all of it.

The box is the protocol's (:func:`scm_calib.boxes.boxes_from_maps` with ``largest_only=True``): the box of
the 8-connected foreground component of largest contour area, holes included, ties to the component that
starts last in raster order. The library finds components with union-find, whose loop depends on the data;
here they are labelled by a fixed number of propagation steps instead (see :func:`component_labels`), and
``converged`` says, per image, whether the labelling reached its fixed point, which makes the box equal to
the library's.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._renamed import renamed_keywords
from .adapter import SCMAdapter, StrippedViT
from .boxes.maps import INTERPOLATIONS, normalize_maps, resize_maps, threshold_levels
from .calibration import minmax
from .capture import AttentionCapture, check_supported, class_attention, grid_size, patch_tokens
from .heads import LinearHead

__all__ = ["Localization", "Localizer", "component_labels", "export_localizer", "export_onnx", "largest_blob_boxes"]


class Localization(NamedTuple):
    """Names for the five tensors that a :class:`Localizer` and its exported programs return, in this order.

    The module returns a plain tuple, which every runtime keeps as it is (a saved program cannot carry a Python
    type); ``Localization(*localizer(images))`` names its parts.

    Attributes:
        logits: (B, C) class logits.
        classes: (B,) int64 top-1 class.
        maps: (B, H, W) localization map of the top-1 class at input resolution, min-max normalised to [0, 1].
        boxes: (B, 4) int64 box ``[x0, y0, x1, y1]`` of the largest blob above the threshold, in input pixels.
        converged: (B,) bool, the component labelling reached its fixed point: ``boxes`` equal
            :func:`~scm_calib.boxes.boxes_from_maps` with ``largest_only=True``. False asks for more
            ``iterations``.
    """

    logits: Tensor
    classes: Tensor
    maps: Tensor
    boxes: Tensor
    converged: Tensor


def component_labels(mask: Tensor, iterations: int, eight: bool = True) -> tuple[Tensor, Tensor]:
    """Connected components of binary images by a fixed number of label-propagation steps.

    Every pixel of ``mask`` starts with the label ``H * W - i`` (``i`` its flat index, so the largest label is
    the first pixel in raster order); each step takes the largest label among its neighbours in the mask, gives
    the pixel a label names the largest label seen by the pixels that carry it (hooking), then jumps to the label
    of the pixel its label names (pointer jumping). A label always names a pixel of the same component and only
    grows, so the labelling is exact once a step changes nothing. Propagation alone needs as many steps as the
    longest shortest path inside a component (up to its pixel count: a one-pixel-wide spiral); with hooking and
    jumping, such a spiral over 224 x 224 pixels needs 9 steps and smooth maps at most 12 (measured).

    Args:
        mask: (B, H, W) bool images; ``H * W`` must stay below 2**24 (labels are exact float32 integers).
        iterations: Propagation steps.
        eight: 8-connectivity (blobs) or 4 (holes).

    Returns:
        (B, H, W) int64 flat index of the first pixel of each pixel's component (-1 outside ``mask``), and
        (B,) bool whether the labelling is a fixed point (one more step would change nothing).
    """
    b, h, w = mask.shape
    if h * w >= 1 << 24:
        raise ValueError(f"maps of {h} x {w} pixels are too large for float32 labels; keep H * W below 2**24.")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}.")
    inside = mask.float()
    start = (h * w - torch.arange(h * w, device=mask.device, dtype=torch.float32)).view(1, h, w) * inside
    labels = start
    for _ in range(iterations):
        labels = _propagate(labels, inside, eight)
    fixed = (_propagate(labels, inside, eight) == labels).flatten(1).all(dim=1)
    first = torch.where(mask, h * w - labels.long(), -1)
    return first, fixed


def _propagate(labels: Tensor, inside: Tensor, eight: bool) -> Tensor:
    """One step of :func:`component_labels`: the neighbours' largest label, then one pointer jump."""
    b, h, w = labels.shape
    if eight:
        grown = F.max_pool2d(labels[:, None], kernel_size=3, stride=1, padding=1)[:, 0]
    else:
        column = F.max_pool2d(labels[:, None], kernel_size=(3, 1), stride=1, padding=(1, 0))
        row = F.max_pool2d(labels[:, None], kernel_size=(1, 3), stride=1, padding=(0, 1))
        grown = torch.maximum(column, row)[:, 0]
    grown = (grown * inside).flatten(1)
    # Hooking: the pixel a label names takes the largest label seen by the pixels that carry it.
    named = (h * w - labels.flatten(1)).long().clamp(0, h * w - 1)
    hooked = grown.scatter_reduce(1, named, grown, "amax")
    # Pointer jumping: each pixel takes the label of the pixel its label names.
    jumped = torch.gather(hooked, 1, (h * w - hooked).long().clamp(0, h * w - 1))
    return (torch.maximum(hooked, jumped) * inside.flatten(1)).view(b, h, w)


def largest_blob_boxes(quantized: Tensor, levels: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
    """Box of the 8-connected blob of largest contour area of each map, as exportable tensor operations.

    The contour area follows :func:`scm_calib.boxes.boxes_from_maps`: in half units, every square between four
    pixel centres gives 2 to the blob of its corners when all four are foreground and 1 when three are, and 1
    to each of its first two background corners; a hole (4-connected background off the border) adds what its
    pixels get to the blob holding the pixel left of its first pixel. Here each corner gets an equal share of
    its square's units, in twelfths so that the sums stay exact integers.

    Args:
        quantized: (B, H, W) maps quantised to the integers 0..255 (any float or integer dtype).
        levels: (B,) integer levels; the foreground is ``quantized > level``.
        iterations: Propagation steps of :func:`component_labels`.

    Returns:
        (B, 4) int64 boxes ``[x0, y0, x1, y1]`` (``[0, 0, 0, 0]`` without foreground) and (B,) bool whether both
        labellings (blobs and holes) converged.
    """
    b, h, w = quantized.shape
    n = h * w
    fg = quantized > levels.to(quantized.dtype)[:, None, None]
    blob, blob_fixed = component_labels(fg, iterations, eight=True)
    # The background with a ring of it around the map: the ring's corner (flat index 0) is the first pixel of
    # every component that reaches the border, so the holes are the components with other first pixels.
    back, back_fixed = component_labels(F.pad(~fg, (1, 1, 1, 1), value=True), iterations, eight=False)
    back = back[:, 1:-1, 1:-1]
    hole = back > 0
    hole_first = (torch.div(back, w + 2, rounding_mode="floor") - 1) * w + back % (w + 2) - 1

    # Foreground corners per square, each corner's share of its square, and each pixel's sum over its squares.
    count = (F.avg_pool2d(fg.float()[:, None], kernel_size=2, stride=1) * 4).round().long()
    fg_share = torch.tensor([0, 0, 0, 4, 6], device=fg.device)[count].float()
    bg_share = torch.tensor([6, 8, 12, 12, 0], device=fg.device)[count].float()
    fg_mass, bg_mass = (
        (F.avg_pool2d(F.pad(share, (1, 1, 1, 1)), kernel_size=2, stride=1) * 4).round().long()[:, 0]
        for share in (fg_share, bg_share)
    )
    # A hole's first pixel is never in column 0, so its left neighbour belongs to the blob around the hole.
    around = torch.gather(blob.flatten(1), 1, (hole_first - 1).clamp(min=0).flatten(1)).view_as(blob)
    owner = torch.where(fg, blob, torch.where(hole, around, 0)).clamp(min=0).flatten(1)
    mass = torch.where(fg, fg_mass, torch.where(hole, bg_mass, 0)).flatten(1)
    area = torch.zeros_like(mass).scatter_add_(1, owner, mass)

    index = torch.arange(n, device=quantized.device)[None]
    is_first = blob.flatten(1) == index
    score = torch.where(is_first, area, -1)
    best = score.amax(dim=1, keepdim=True)
    winner = torch.where(is_first & (score == best), index, -1).amax(dim=1)  # ties: the last to start
    chosen = blob.flatten(1) == winner[:, None]
    x, y = index % w, torch.div(index, w, rounding_mode="floor")
    x0 = torch.where(chosen, x, n).amin(dim=1)
    y0 = torch.where(chosen, y, n).amin(dim=1)
    x1 = (torch.where(chosen, x, -1).amax(dim=1) + 1).clamp(max=w - 1)
    y1 = (torch.where(chosen, y, -1).amax(dim=1) + 1).clamp(max=h - 1)
    boxes = torch.where((winner >= 0)[:, None], torch.stack([x0, y0, x1, y1], dim=1), 0)
    return boxes, blob_fixed & back_fixed


class Localizer(nn.Module):
    """The stripped localizer as one module: images -> logits, top-1 localization map, one box per image.

    Built from an :class:`~scm_calib.adapter.SCMAdapter` or what its ``strip()`` returns (a
    :class:`~scm_calib.adapter.StrippedViT`, or a timm ViT pooled with ``global_pool="avg"``); it holds a copy
    of the bare model with attention capture attached, so ``model`` stays as it was. The module is put in
    eval mode. The map equals :func:`~scm_calib.localize.localization_maps` (``classes="top1"``,
    ``size="input"``) followed by :func:`~scm_calib.boxes.normalize_maps`; the box equals
    :func:`~scm_calib.boxes.boxes_from_maps` of that map with ``largest_only=True`` wherever ``converged``.
    Non-finite images give non-finite logits and all-zero maps instead of an error.

    Args:
        model: an SCMAdapter, a StrippedViT or a stripped timm ViT.
        threshold: the threshold ``tau`` of the box: the foreground is the quantised map above
            ``int(tau * max)``, as in the protocol (choose it on held-out data, e.g. with
            :class:`~scm_calib.metrics.BoxAccuracy`).
        interpolation: ``"bilinear"`` (SCM, TS-CAM) or ``"bicubic"`` (wsolevaluation) resize of the map.
        iterations: label-propagation steps of :func:`component_labels`; None: ``2 * ceil(log2(max(H, W)))``
            for an input of H x W (16 at 224 px, where smooth maps and a one-pixel spiral need at most 12).
        attention_blocks: encoder blocks whose attention is summed; None: the adapter's setting, or all blocks.
            The keyword ``blocks`` (its name in 0.1) still works for one release and warns.

    Raises:
        TypeError: ``model`` is none of the above.
        ValueError: a bad ``threshold``, ``interpolation`` or ``iterations``.
    """

    @renamed_keywords(blocks="attention_blocks")
    def __init__(
        self,
        model: nn.Module,
        threshold: float,
        interpolation: str = "bilinear",
        iterations: int | None = None,
        attention_blocks: list[int] | None = None,
    ):
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}; the protocol's tau is e.g. 0.5.")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}.")
        if iterations is not None and iterations < 1:
            raise ValueError(f"iterations must be >= 1 or None (chosen from the image size), got {iterations}.")
        self.eps = 1e-8
        if isinstance(model, SCMAdapter):
            if attention_blocks is None:
                attention_blocks = model.capture.block_indices
            self.eps = model.eps
            model = model.strip()
        else:
            model = copy.deepcopy(model)
        if isinstance(model, StrippedViT):
            self.encoder, self.head = model.encoder, model.head
        elif isinstance(getattr(model, "head", None), nn.Linear):
            self.encoder, self.head = model, LinearHead(model.head)
        else:
            raise TypeError(
                f"Localizer needs an SCMAdapter, a StrippedViT or a timm ViT with a linear classifier, got "
                f"{type(model).__name__} (head: {type(getattr(model, 'head', None)).__name__})."
            )
        self.capture = AttentionCapture(check_supported(self.encoder), attention_blocks)
        self.threshold = threshold
        self.interpolation = interpolation
        self.iterations = iterations
        # The level int(tau * max) for every possible maximum 0..255 of a quantised map.
        maxima = torch.arange(256, dtype=torch.uint8).view(256, 1, 1)
        self.register_buffer("levels", threshold_levels(maxima, [threshold])[:, 0], persistent=False)
        self.eval()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Localizes the top-1 class of each image.

        Args:
            images: (B, 3, H, W) normalised images.

        Returns:
            ``(logits, classes, maps, boxes, converged)``, as described by :class:`Localization`.
        """
        size = (images.shape[-2], images.shape[-1])
        grid = grid_size(self.encoder, size)
        with self.capture.recording() as rows:
            tokens = self.encoder.forward_features(images)
        semantic = self.head(patch_tokens(self.encoder, tokens, grid)).float()
        attention = minmax(class_attention(rows, self.encoder.num_prefix_tokens, grid), self.eps)
        logits = semantic.mean(dim=(2, 3))
        classes = logits.argmax(dim=1)
        chosen = torch.gather(semantic, 1, classes[:, None, None, None].expand(-1, 1, *grid))[:, 0]
        maps = normalize_maps(resize_maps(chosen * attention, size, self.interpolation))
        quantized = torch.floor((maps * 255).clamp(0, 255))
        levels = self.levels[quantized.flatten(1).amax(dim=1).long()]
        iterations = self.iterations or 2 * math.ceil(math.log2(max(size)))
        boxes, converged = largest_blob_boxes(quantized, levels, iterations)
        return logits, classes, maps, boxes, converged


def _dynamic_shapes(dynamic_batch: bool) -> tuple[dict[int, object], ...] | None:
    return ({0: torch.export.Dim.DYNAMIC},) if dynamic_batch else None


def _check_localizer(model: nn.Module, example_images: Tensor) -> None:
    if not isinstance(model, Localizer):
        raise TypeError(
            f"export needs a Localizer, got {type(model).__name__}; wrap the model first: "
            "Localizer(model, threshold=tau)."
        )
    if example_images.ndim != 4:
        raise ValueError(f"example_images must have shape (B, 3, H, W), got {tuple(example_images.shape)}.")


def export_localizer(
    model: Localizer, example_images: Tensor, path: str | Path, dynamic_batch: bool = True
) -> torch.export.ExportedProgram:
    """Exports a :class:`Localizer` with ``torch.export`` and saves it with ``torch.export.save``.

    The program is specialised to the example's image size (H, W); the batch size stays free with
    ``dynamic_batch``. Load it with ``torch.export.load(path).module()``; it returns the five tensors that
    :class:`Localization` names, in order.

    Args:
        model: the localizer.
        example_images: (B, 3, H, W) images of the size to deploy.
        path: the ``.pt2`` file to write.
        dynamic_batch: keep the batch size free (else fixed to the example's).

    Returns:
        The exported program.
    """
    _check_localizer(model, example_images)
    program = torch.export.export(model, (example_images,), dynamic_shapes=_dynamic_shapes(dynamic_batch), strict=False)
    torch.export.save(program, path)
    return program


def export_onnx(
    model: Localizer, example_images: Tensor, path: str | Path, dynamic_batch: bool = True
) -> torch.onnx.ONNXProgram:
    """Exports a :class:`Localizer` to ONNX (``torch.onnx.export`` with ``dynamo=True``) and saves it.

    Needs the ``export`` extra (``pip install scm_calib[export]``: onnx, onnxscript; onnxruntime runs the
    file). Input ``images``; outputs ``logits``, ``classes``, ``maps``, ``boxes``, ``converged`` (see
    :class:`Localization`). Specialised to the example's image size; the batch size stays free with
    ``dynamic_batch``.

    Args:
        model: the localizer.
        example_images: (B, 3, H, W) images of the size to deploy.
        path: the ``.onnx`` file to write.
        dynamic_batch: keep the batch size free (else fixed to the example's).

    Returns:
        The ONNX program.
    """
    _check_localizer(model, example_images)
    program = torch.onnx.export(
        model,
        (example_images,),
        dynamo=True,
        input_names=["images"],
        output_names=list(Localization._fields),
        dynamic_shapes=_dynamic_shapes(dynamic_batch),
    )
    program.save(str(path))
    return program
