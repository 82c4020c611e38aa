"""The published WSOL evaluation protocols as presets: how maps become boxes and how boxes are scored.

``"wsol"`` follows clovaai/wsolevaluation (Choe et al., CVPR 2020), ``"scm"`` SCM's ``tools_cam/test_cam.py``
(Bai et al., ECCV 2022) and ``"tscam"`` TS-CAM's fixed-threshold evaluation (Gao et al., ICCV 2021).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from scm_calib.boxes.maps import INTERPOLATIONS, wsol_thresholds

__all__ = ["PROTOCOLS", "Protocol", "get_protocol", "protocol_thresholds"]


@dataclass(frozen=True)
class Protocol:
    """How maps become boxes and how boxes are scored: one published evaluation protocol.

    Attributes:
        name: Preset name.
        interpolation: Resize mode for maps not already at image size, ``"bicubic"`` or ``"bilinear"``.
        step: Threshold grid step: ``tau`` in ``arange(0, 1, step)``.
        tau: A fixed threshold instead of the sweep (TS-CAM), or ``None`` to sweep.
        iou_thresholds: IoU thresholds ``delta`` of MaxBoxAccV2; Top-k Loc and MaxBoxAcc use 0.5.
        strict_iou: Top-1 / Top-5 Loc count a hit at ``IoU > 0.5`` instead of ``IoU >= 0.5`` (TS-CAM's
            ``cls_loc_err``); GT-known Loc and the box metrics always use ``>=``.
        holes: Count the boxes of hole contours among all blobs (OpenCV ``RETR_TREE``).
        multi_contour: MaxBoxAccV2 scores the boxes of all blobs (wsolevaluation's ``multi_contour_eval``);
            ``False`` scores the largest blob's box at every IoU threshold, as SCM's ``test_cam.py`` does.
        clip: Clip the predicted boxes' ``x1``, ``y1`` to ``W - 1``, ``H - 1`` (wsolevaluation); TS-CAM's
            ``get_bboxes`` keeps ``x + w``, ``y + h``.
        tau_per_metric: Choose the best ``tau`` separately for every Top-k / GT-known metric
            (SCM's code) instead of once, on GT-known Loc, for all of them.
        gt_known_from_top1: Compute "GT-known Loc" from the top-1 predicted class's map (SCM's code)
            instead of the ground-truth class's map.
    """

    name: str
    interpolation: str = "bicubic"
    step: float = 0.01
    tau: float | None = None
    iou_thresholds: tuple[float, ...] = (0.3, 0.5, 0.7)
    strict_iou: bool = False
    holes: bool = True
    multi_contour: bool = True
    clip: bool = True
    tau_per_metric: bool = False
    gt_known_from_top1: bool = False


PROTOCOLS: dict[str, Protocol] = {
    "wsol": Protocol("wsol"),
    "scm": Protocol("scm", interpolation="bilinear", multi_contour=False, tau_per_metric=True, gt_known_from_top1=True),
    "tscam": Protocol("tscam", interpolation="bilinear", tau=0.1, strict_iou=True, multi_contour=False, clip=False),
}


def get_protocol(protocol: str | Protocol, **overrides: object) -> Protocol:
    """A protocol preset by name, with fields overridden.

    Args:
        protocol: ``"wsol"``, ``"scm"``, ``"tscam"`` or a :class:`Protocol`.
        **overrides: Fields to replace, e.g. ``tau=0.12`` (TS-CAM on ILSVRC) or ``step=0.001``; ``None`` values
            keep the preset's.

    Returns:
        The protocol.

    Raises:
        ValueError: An unknown preset, interpolation, or IoU thresholds outside ``(0, 1]``.
    """
    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; use one of {sorted(PROTOCOLS)} or a Protocol.")
        protocol = PROTOCOLS[protocol]
    protocol = replace(protocol, **{key: value for key, value in overrides.items() if value is not None})
    if protocol.interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {protocol.interpolation!r}.")
    if not protocol.iou_thresholds or not all(0.0 < delta <= 1.0 for delta in protocol.iou_thresholds):
        raise ValueError(f"iou_thresholds must lie in (0, 1], got {protocol.iou_thresholds}; e.g. (0.3, 0.5, 0.7).")
    return protocol


def protocol_thresholds(protocol: Protocol) -> Tensor:
    """The thresholds ``tau`` a protocol scores: its fixed ``tau`` alone, or the grid ``arange(0, 1, step)``.

    Returns:
        (T,) float64 thresholds.

    Raises:
        ValueError: A fixed ``tau`` outside ``[0, 1)``.
    """
    if protocol.tau is not None:
        if not 0.0 <= protocol.tau < 1.0:
            raise ValueError(f"tau must be in [0, 1), got {protocol.tau}.")
        return torch.tensor([float(protocol.tau)], dtype=torch.float64)
    return wsol_thresholds(protocol.step)
