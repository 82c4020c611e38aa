"""Score maps made ready for the box protocol: resize, min-max normalise, quantise, threshold levels.

Step 1 and 2 of the WSOL evaluation protocol of Choe et al., "Evaluating Weakly Supervised Object
Localization Methods Right" (CVPR 2020): resize a score map to the image size (bicubic or bilinear),
min-max normalise it (a constant or NaN map becomes all zeros), quantise it to uint8 by truncating
``map * 255``; at threshold ``tau`` the foreground is ``q > int(tau * max(q))`` (strict).

This module depends on nothing else in the package, so localization, metrics and overlays can use it
without the box extraction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "INTERPOLATIONS",
    "as_thresholds",
    "check_maps",
    "check_quantized",
    "normalize_maps",
    "prepare_maps",
    "quantize_maps",
    "resize_maps",
    "threshold_levels",
    "wsol_thresholds",
]

#: Resize modes of the protocols: ``"bicubic"`` (wsolevaluation), ``"bilinear"`` (SCM and TS-CAM code).
INTERPOLATIONS = ("bicubic", "bilinear")


def wsol_thresholds(step: float = 0.01) -> Tensor:
    """The protocol's threshold grid ``numpy.arange(0, 1, step)``, bit for bit.

    Args:
        step: Grid step; wsolevaluation uses 0.01 (its evaluation script) or 0.001.

    Returns:
        (T,) float64 thresholds.
    """
    if not 0.0 < step < 1.0:
        raise ValueError(f"step must be in (0, 1), got {step}; the protocol uses 0.01 or 0.001.")
    return torch.from_numpy(np.arange(0, 1, step))


def resize_maps(maps: Tensor, size: tuple[int, int], interpolation: str = "bicubic") -> Tensor:
    """Resize score maps to an image size, as the protocols do before normalising.

    Args:
        maps: (B, h, w) score maps, e.g. at the patch-grid resolution.
        size: Target ``(H, W)``.
        interpolation: ``"bicubic"`` (wsolevaluation) or ``"bilinear"`` (SCM and TS-CAM code),
            both with ``align_corners=False`` like OpenCV's resize.

    Returns:
        (B, H, W) float32 maps.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}.")
    check_maps(maps)
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.float()
    # Interpolation is linear and separable: rows then columns, as two small matrix products (several
    # times faster than F.interpolate on the CPU, equal to float rounding).
    rows = _interpolation_matrix(size[0], maps.shape[-2], interpolation, maps.device)
    cols = _interpolation_matrix(size[1], maps.shape[-1], interpolation, maps.device)
    return rows @ maps.float() @ cols.t()


def _interpolation_matrix(out_size: int, in_size: int, interpolation: str, device: torch.device) -> Tensor:
    """(out_size, in_size) weights of F.interpolate along one axis (``align_corners=False``)."""
    eye = torch.eye(in_size, device=device)[None, None]
    return F.interpolate(eye, size=(out_size, in_size), mode=interpolation, align_corners=False)[0, 0]


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max normalise each map to [0, 1]; a constant map or one with a NaN becomes all zeros.

    Args:
        maps: (B, H, W) score maps, any real values.

    Returns:
        (B, H, W) float32 maps in [0, 1].
    """
    check_maps(maps)
    return _normalize_(maps.float().clone())


def _normalize_(maps: Tensor) -> Tensor:
    """:func:`normalize_maps` in place on float32 maps, without data-dependent control flow (``torch.export``)."""
    flat = maps.flatten(1)
    low, high = flat.amin(dim=1), flat.amax(dim=1)  # NaN propagates to both
    span = high - low
    bad = ~(span > 0) | ~torch.isfinite(span)
    maps.sub_(low[:, None, None]).div_(span[:, None, None])
    return maps.masked_fill_(bad[:, None, None], 0.0)


def quantize_maps(maps: Tensor) -> Tensor:
    """Quantise normalised maps to uint8 by truncating ``map * 255``, as the protocol does.

    Args:
        maps: (B, H, W) maps in [0, 1].

    Returns:
        (B, H, W) uint8 maps.
    """
    check_maps(maps)
    return _quantize_(maps.float().clone())


def _quantize_(maps: Tensor) -> Tensor:
    """:func:`quantize_maps` of float32 maps, changing them in place."""
    return maps.mul_(255).clamp_(0, 255).to(torch.uint8)


def prepare_maps(maps: Tensor, size: tuple[int, int] | None = None, interpolation: str = "bicubic") -> Tensor:
    """Resize (when ``size`` is given), min-max normalise and quantise score maps.

    Args:
        maps: (B, h, w) score maps, any real values; uint8 maps are taken as already quantised.
        size: ``(H, W)`` to resize to; ``None`` keeps the maps' size.
        interpolation: ``"bicubic"`` or ``"bilinear"``.

    Returns:
        (B, H, W) uint8 maps.
    """
    check_maps(maps)
    if maps.dtype == torch.uint8:
        if size is not None and tuple(maps.shape[-2:]) != tuple(size):
            raise ValueError(
                f"uint8 maps are taken as quantised maps at image size, got {tuple(maps.shape)} and "
                f"size={size}; pass float score maps to resize them."
            )
        return maps
    if size is not None and tuple(maps.shape[-2:]) != tuple(size):
        maps = resize_maps(maps, size, interpolation)  # a new tensor, free to change in place
    else:
        maps = maps.float().clone()
    return _quantize_(_normalize_(maps))


def threshold_levels(quantized: Tensor, thresholds: Tensor | Sequence[float]) -> Tensor:
    """Integer levels ``int(tau * max(q))`` of each map: foreground is ``q > level``.

    Args:
        quantized: (B, H, W) uint8 maps.
        thresholds: (T,) thresholds ``tau`` in [0, 1].

    Returns:
        (B, T) int64 levels.
    """
    taus = as_thresholds(thresholds, quantized.device)
    qmax = quantized.flatten(1).amax(dim=1).to(torch.float64)
    return torch.floor(qmax[:, None] * taus[None, :]).to(torch.int64)


def as_thresholds(thresholds: Tensor | Sequence[float], device: torch.device) -> Tensor:
    """Checked thresholds as a flat float64 tensor.

    Args:
        thresholds: (T,) thresholds ``tau`` in [0, 1], a tensor or a sequence.
        device: Device of the result.

    Returns:
        (T,) float64 thresholds.

    Raises:
        ValueError: No threshold, or one outside [0, 1] or NaN.
    """
    taus = torch.as_tensor(thresholds, dtype=torch.float64, device=device).flatten()
    if taus.numel() == 0:
        raise ValueError("thresholds is empty; pass e.g. scm_calib.boxes.wsol_thresholds().")
    if bool(((taus < 0) | (taus > 1) | torch.isnan(taus)).any()):
        raise ValueError(f"thresholds must lie in [0, 1], got values from {taus.min()} to {taus.max()}.")
    return taus


def check_maps(maps: Tensor) -> None:
    """Check that maps are a (B, H, W) batch.

    Args:
        maps: The maps.

    Raises:
        ValueError: Any other number of dimensions.
    """
    if maps.dim() != 3:
        raise ValueError(
            f"maps must have shape (B, H, W), got {tuple(maps.shape)}; add a batch dimension with "
            "maps[None] or flatten extra ones."
        )


def check_quantized(quantized: Tensor) -> None:
    """Check that maps are a (B, H, W) batch of uint8 quantised maps.

    Args:
        quantized: The maps.

    Raises:
        ValueError: Not (B, H, W).
        TypeError: Not uint8.
    """
    check_maps(quantized)
    if quantized.dtype != torch.uint8:
        raise TypeError(f"quantized must be uint8, got {quantized.dtype}; use prepare_maps() first.")
