"""The image transforms of the SCM paper (Bai et al., ECCV 2022) and of TS-CAM, box-aware.

Built on torchvision's v2 transforms so that the boxes (``tv_tensors.BoundingBoxes``, format XYXY) and the
masks (``tv_tensors.Mask``) of a sample follow every geometric operation with the image. torchvision is an
optional dependency of ``scm_calib`` (the ``examples`` extra): it is imported when a transform is built.

- train: ``Resize((256, 256))`` -> ``RandomCrop(224)`` -> ``RandomHorizontalFlip`` -> float -> ImageNet
  ``Normalize``;
- eval: ``Resize((224, 224))`` -> float -> ``Normalize``.

The evaluation protocol scales ground-truth boxes to the input size and truncates them to integers
(:func:`scm_calib.boxes.scale_boxes`), whereas the v2 ``Resize`` keeps float coordinates.
"""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from scm_calib.boxes import scale_boxes

if TYPE_CHECKING:
    from torchvision.transforms import v2

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def require_torchvision() -> ModuleType:
    """Import torchvision, or say how to install it.

    Returns:
        The ``torchvision`` module.

    Raises:
        ImportError: torchvision is not installed.
    """
    try:
        import torchvision
    except ImportError as error:
        raise ImportError(
            "scm_calib.data needs torchvision>=0.16 for its box-aware transforms and image tensors; "
            "install it with `pip install scm_calib[examples]` (or `pip install torchvision`)."
        ) from error
    return torchvision


def _check_size(name: str, size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{name} must be a positive int (pixels), got {size!r}.")


def wsol_train_transform(image_size: int = 224, resize_size: int | None = None) -> v2.Compose:
    """The paper's training transform, applied jointly to an image, its boxes and its mask.

    Args:
        image_size: side of the square crop fed to the network (224 in the paper).
        resize_size: side of the square the image is first resized to; default ``round(image_size * 256 / 224)``
            (256 for 224, 73 for 64).

    Returns:
        A v2 transform: call it as ``transform(image, boxes)`` or ``transform(image, boxes, mask)`` with
        ``tv_tensors`` inputs (uint8 image (3, H, W)); the image comes out float32, normalised, (3, S, S).
    """
    require_torchvision()
    from torchvision.transforms import v2

    _check_size("image_size", image_size)
    resize_size = round(image_size * 256 / 224) if resize_size is None else resize_size
    _check_size("resize_size", resize_size)
    if resize_size < image_size:
        raise ValueError(
            f"resize_size ({resize_size}) must be at least image_size ({image_size}) so that the random crop "
            "fits; pass a larger resize_size or leave it out."
        )
    return v2.Compose(
        [
            v2.Resize((resize_size, resize_size), antialias=True),
            v2.RandomCrop(image_size),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def wsol_eval_transform(image_size: int = 224) -> v2.Compose:
    """The paper's test transform: a resize of the whole image to a square, applied jointly to boxes and masks.

    Args:
        image_size: side of the square input (224 in the paper).

    Returns:
        A v2 transform, called like the one of :func:`wsol_train_transform`.
    """
    require_torchvision()
    from torchvision.transforms import v2

    _check_size("image_size", image_size)
    return v2.Compose(
        [
            v2.Resize((image_size, image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def protocol_boxes(boxes: torch.Tensor, image_size: tuple[int, int], resized_size: tuple[int, int]) -> torch.Tensor:
    """Deprecated second name of :func:`scm_calib.boxes.scale_boxes` (warns; goes in the next release).

    Args:
        boxes: (K, 4) boxes (x0, y0, x1, y1) in pixels of the original image.
        image_size: original (width, height).
        resized_size: (width, height) of the resized image (e.g. (224, 224)).

    Returns:
        (K, 4) int64 boxes.
    """
    warnings.warn(
        "scm_calib.data.protocol_boxes is deprecated and goes in the next release; call "
        "scm_calib.boxes.scale_boxes(boxes, image_size, resized_size), the one ground-truth rescale.",
        DeprecationWarning,
        stacklevel=2,
    )
    return scale_boxes(boxes, image_size, resized_size)
