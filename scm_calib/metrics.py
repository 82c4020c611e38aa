"""Streaming WSOL metrics and the protocol presets that published numbers were computed with.

Box metrics follow Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right"
(CVPR 2020): MaxBoxAcc, MaxBoxAccV2 and PxAP. Top-1 / Top-5 / GT-known Loc follow the CAM literature,
with the presets of TS-CAM (ICCV 2021) and SCM (Bai et al., ECCV 2022). ``docs/evaluation.md`` explains
each preset and metric with worked numbers.

Every metric is a streaming object: ``update()`` once per batch, ``compute()`` at the end, ``reset()``.
Its state is a few integer (or float histogram) tensors on the maps' device; ``sync()`` sums them over
the processes of an initialised ``torch.distributed`` group, so each process can feed its own shard.

Example:
    >>> maps = torch.zeros(2, 14, 14)
    >>> maps[:, 3:10, 4:12] = 1.0                         # (B, h, w) score maps of two images
    >>> gt_boxes = [torch.tensor([[4, 3, 11, 9]])] * 2   # (K, 4) boxes of each image, in pixels of the maps
    >>> val = BoxAccuracy(protocol="wsol")
    >>> val.update(maps, gt_boxes)                        # once per batch
    >>> best = val.compute()["best_tau"]                  # threshold chosen on a held-out split
    >>> test = BoxAccuracy(protocol="wsol", tau=best)     # applied, fixed, to the test split
    >>> val.compute()["MaxBoxAcc"]
    100.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from scm_calib.boxes import INTERPOLATIONS, best_box_iou, normalize_maps, prepare_maps, resize_maps, wsol_thresholds

__all__ = [
    "PROTOCOLS",
    "BoxAccuracy",
    "LocalizationAccuracy",
    "PixelAveragePrecision",
    "Protocol",
    "accuracy_curve",
    "box_accuracy",
    "get_protocol",
]


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
        **overrides: Fields to replace, e.g. ``tau=0.12`` (TS-CAM on ILSVRC) or ``step=0.001``.

    Returns:
        The protocol.
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


def _thresholds(protocol: Protocol) -> Tensor:
    if protocol.tau is not None:
        if not 0.0 <= protocol.tau < 1.0:
            raise ValueError(f"tau must be in [0, 1), got {protocol.tau}.")
        return torch.tensor([float(protocol.tau)], dtype=torch.float64)
    return wsol_thresholds(protocol.step)


def _hits(iou: Tensor, delta: float, strict: bool) -> Tensor:
    return iou > delta if strict else iou >= delta


def accuracy_curve(best_iou: Tensor, iou_threshold: float = 0.5, strict: bool = False) -> Tensor:
    """Box accuracy (percent) at every threshold from per-image best IoUs.

    Args:
        best_iou: (N, T) best IoU of each image at each threshold (see :func:`scm_calib.boxes.best_box_iou`).
        iou_threshold: IoU threshold ``delta``.
        strict: Count ``IoU > delta`` instead of ``IoU >= delta``.

    Returns:
        (T,) float64 accuracy in percent.
    """
    return _hits(best_iou, iou_threshold, strict).to(torch.float64).mean(dim=0) * 100


def _check_labels(labels: Tensor, batch: int, num_classes: int) -> None:
    """Labels are (B,) integer classes in ``[0, C)``."""
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape (B,) = ({batch},) to fit the logits, got {tuple(labels.shape)}.")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}; convert with labels.long().")
    outside = (labels < 0) | (labels >= num_classes)
    if bool(outside.any()):
        image = int(outside.nonzero()[0, 0])
        raise ValueError(
            f"image {image}: label {int(labels[image])} is outside [0, {num_classes}) of the logits' {num_classes} "
            "classes; use 0-based labels (CUB's image_class_labels.txt is 1-based) and logits of every class."
        )


class _Streaming:
    """Named state tensors that sum across processes; subclasses list them in ``_states``."""

    _states: tuple[str, ...] = ()
    _counted: tuple[str, ...] = ()  # states that count images, so at most ``count``

    def reset(self) -> None:
        """Zero the state; the next :meth:`update` starts a new evaluation."""
        for name in self._states:
            getattr(self, name).zero_()

    def _to(self, device: torch.device) -> None:
        for name in self._states:
            setattr(self, name, getattr(self, name).to(device))

    def sync(self) -> None:
        """Sum the state over all processes when ``torch.distributed`` is initialised (else no-op).

        Call it on every process before :meth:`compute`; the states then hold the global totals.
        """
        if dist.is_available() and dist.is_initialized():
            for name in self._states:
                dist.all_reduce(getattr(self, name), op=dist.ReduceOp.SUM)

    def state_dict(self) -> dict[str, Tensor]:
        """The state tensors, e.g. to save or to add up across processes by hand."""
        return {name: getattr(self, name).clone() for name in self._states}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Replace the state with ``state`` (from :meth:`state_dict`, or a sum of them).

        Raises:
            KeyError: A state is missing.
            ValueError: A state has another shape, holds a negative, non-finite or fractional count, or counts
                more images than ``count``.
        """
        missing = set(self._states) - set(state)
        if missing:
            raise KeyError(f"state misses {sorted(missing)}; pass state_dict() of the same metric.")
        values = {name: torch.as_tensor(state[name]).detach() for name in self._states}
        for name, value in values.items():
            current = getattr(self, name)
            if value.shape != current.shape:
                raise ValueError(
                    f"state {name!r} has shape {tuple(value.shape)}, expected {tuple(current.shape)}; "
                    "was it saved with another protocol or threshold grid?"
                )
            as_float = value.double()
            bad = ~torch.isfinite(as_float) | (as_float < 0)
            if not current.dtype.is_floating_point:
                bad |= as_float != as_float.round()
            if bool(bad.any()):
                raise ValueError(
                    f"state {name!r} holds {as_float[bad][0].item()}, not a count (whole, >= 0); pass "
                    "state_dict() of this metric or sums of them."
                )
        for name in self._counted:
            if bool((values[name] > values["count"]).any()):
                raise ValueError(
                    f"state {name!r} counts more images ({int(values[name].max())}) than 'count' "
                    f"({int(values['count'])}); pass state_dict() of this metric or sums of them."
                )
        for name, value in values.items():
            current = getattr(self, name)
            setattr(self, name, value.to(current.device, current.dtype).clone())


class BoxAccuracy(_Streaming):
    """MaxBoxAcc (V1), MaxBoxAccV2 and BoxAcc at a fixed threshold, streamed.

    MaxBoxAcc: the box of the largest blob, IoU threshold 0.5, best ``tau``. MaxBoxAccV2: the boxes of
    all blobs (any box hitting any ground-truth box counts), best ``tau`` chosen separately for each IoU
    threshold 0.3 / 0.5 / 0.7, mean of the three.

    Args:
        protocol: ``"wsol"``, ``"scm"``, ``"tscam"`` or a :class:`Protocol`.
        tau: Fixed threshold (e.g. the best ``tau`` of a held-out split); ``None`` keeps the protocol's.
        step: Threshold grid step; ``None`` keeps the protocol's.
        size: ``(H, W)`` to resize the maps to (e.g. grid maps); ``None`` takes them at image size.
        chunk_size: Maps turned into boxes at once, which bounds memory; default 64 on the CPU, 512 on a GPU.
    """

    _states = ("hits_largest", "hits_all", "count")
    _counted = ("hits_largest", "hits_all")

    def __init__(
        self,
        protocol: str | Protocol = "wsol",
        tau: float | None = None,
        step: float | None = None,
        size: tuple[int, int] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        self.protocol = get_protocol(protocol, tau=tau, step=step)
        if 0.5 not in self.protocol.iou_thresholds:
            raise ValueError(f"iou_thresholds need 0.5 for MaxBoxAcc, got {self.protocol.iou_thresholds}.")
        self.thresholds = _thresholds(self.protocol)
        self.size = size
        self.chunk_size = chunk_size
        shape = (self.thresholds.numel(), len(self.protocol.iou_thresholds))
        self.hits_largest = torch.zeros(shape, dtype=torch.int64)
        self.hits_all = torch.zeros(shape, dtype=torch.int64)
        self.count = torch.zeros((), dtype=torch.int64)

    def update(self, maps: Tensor | np.ndarray, gt_boxes: Sequence[Tensor | np.ndarray]) -> None:
        """Add a batch.

        Args:
            maps: (B, H, W) score maps of the ground-truth class at image resolution, any real values
                (or at any resolution with ``size`` set); a tensor or an array.
            gt_boxes: One (K_i, 4) tensor or array ``[x0, y0, x1, y1]`` (pixels of the ``H x W`` image,
                inclusive) per image.

        Raises:
            ValueError: Maps not (B, H, W), not one box set per map, or a ground-truth box that is NaN,
                negative, inverted or outside the ``H x W`` frame (e.g. 224 px boxes on grid maps without
                ``size``); the message names the image and the box.
        """
        maps = torch.as_tensor(maps)
        self._to(maps.device)
        quantized = prepare_maps(maps.detach(), self.size, self.protocol.interpolation)
        largest, every = best_box_iou(
            quantized,
            gt_boxes,
            self.thresholds.to(maps.device),
            self.protocol.holes,
            self.chunk_size,
            clip=self.protocol.clip,
        )
        if not self.protocol.multi_contour:
            every = largest
        for d, delta in enumerate(self.protocol.iou_thresholds):
            self.hits_largest[:, d] += (largest >= delta).sum(dim=0)
            self.hits_all[:, d] += (every >= delta).sum(dim=0)
        self.count += quantized.shape[0]

    def compute(self) -> dict[str, float | Tensor]:
        """The metrics so far.

        Returns:
            ``MaxBoxAcc`` and ``MaxBoxAccV2`` (percent), ``MaxBoxAccV2@30`` / ``@50`` / ``@70`` (one per IoU
            threshold), ``best_tau`` (of MaxBoxAcc) and ``best_tau@30`` / ``@50`` / ``@70`` (of each V2
            term), ``thresholds`` (T,) and the accuracy-vs-threshold curves ``curve`` (T, D) (largest blob)
            and ``curve_v2`` (T, D) (all blobs), in percent, D = number of IoU thresholds. With a fixed
            ``tau`` (T = 1), ``MaxBoxAcc`` is BoxAcc at that ``tau``.
        """
        if int(self.count) == 0:
            raise RuntimeError("compute() before any update(); feed at least one batch.")
        taus = self.thresholds
        curve = self.hits_largest.to(torch.float64).cpu() / int(self.count) * 100
        curve_v2 = self.hits_all.to(torch.float64).cpu() / int(self.count) * 100
        half = self.protocol.iou_thresholds.index(0.5)
        result: dict[str, float | Tensor] = {
            "MaxBoxAcc": float(curve[:, half].max()),
            "best_tau": float(taus[int(curve[:, half].argmax())]),
        }
        terms = []
        for d, delta in enumerate(self.protocol.iou_thresholds):
            name = f"@{round(delta * 100)}"
            terms.append(float(curve_v2[:, d].max()))
            result[f"MaxBoxAccV2{name}"] = terms[-1]
            result[f"best_tau{name}"] = float(taus[int(curve_v2[:, d].argmax())])
        result["MaxBoxAccV2"] = sum(terms) / len(terms)
        result.update(thresholds=taus.clone(), curve=curve, curve_v2=curve_v2)
        return result


def box_accuracy(
    maps: Tensor,
    gt_boxes: Sequence[Tensor],
    protocol: str | Protocol = "wsol",
    tau: float | None = None,
    size: tuple[int, int] | None = None,
) -> dict[str, float | Tensor]:
    """MaxBoxAcc, MaxBoxAccV2 and their curves of one set of maps (see :class:`BoxAccuracy`).

    Args:
        maps: (B, H, W) score maps of the ground-truth class.
        gt_boxes: One (K_i, 4) tensor of ground-truth boxes per image.
        protocol: Preset name or :class:`Protocol`.
        tau: Fixed threshold; ``None`` sweeps.
        size: ``(H, W)`` to resize the maps to.

    Returns:
        The dict of :meth:`BoxAccuracy.compute`.
    """
    metric = BoxAccuracy(protocol, tau=tau, size=size)
    metric.update(maps, gt_boxes)
    return metric.compute()


class LocalizationAccuracy(_Streaming):
    """Top-1 / Top-5 / GT-known Loc and Top-1 / Top-5 classification, streamed.

    GT-known Loc: the box of the ground-truth class's map has IoU >= 0.5 with a ground-truth box. Top-1
    Loc: the top-1 class is right and its map's box hits. Top-5 Loc: one of the top-5 classes is the
    ground truth and that class's map's box hits. Boxes are those of the largest blob.

    Args:
        protocol: ``"wsol"``, ``"scm"``, ``"tscam"`` or a :class:`Protocol`.
        tau: Fixed threshold; ``None`` keeps the protocol's.
        step: Threshold grid step; ``None`` keeps the protocol's.
        size: ``(H, W)`` to resize the maps to; ``None`` takes them at image size.
        chunk_size: Maps turned into boxes at once, which bounds memory; default 64 on the CPU, 512 on a GPU.
    """

    _states = ("top1_loc", "top5_loc", "gt_known", "top1_cls", "top5_cls", "count")
    _counted = ("top1_loc", "top5_loc", "gt_known", "top1_cls", "top5_cls")

    def __init__(
        self,
        protocol: str | Protocol = "wsol",
        tau: float | None = None,
        step: float | None = None,
        size: tuple[int, int] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        self.protocol = get_protocol(protocol, tau=tau, step=step)
        self.thresholds = _thresholds(self.protocol)
        self.size = size
        self.chunk_size = chunk_size
        num = self.thresholds.numel()
        self.top1_loc = torch.zeros(num, dtype=torch.int64)
        self.top5_loc = torch.zeros(num, dtype=torch.int64)
        self.gt_known = torch.zeros(num, dtype=torch.int64)
        self.top1_cls = torch.zeros((), dtype=torch.int64)
        self.top5_cls = torch.zeros((), dtype=torch.int64)
        self.count = torch.zeros((), dtype=torch.int64)
        self._k = 0

    def update(
        self,
        logits: Tensor | np.ndarray,
        labels: Tensor | np.ndarray,
        gt_boxes: Sequence[Tensor | np.ndarray],
        maps_topk: Tensor | np.ndarray | None = None,
        maps_gt: Tensor | np.ndarray | None = None,
        *,
        maps: Tensor | np.ndarray | None = None,
    ) -> None:
        """Add a batch: pass ``maps`` (every class's map, as WSOL code bases have them) or ``maps_topk``.

        Args:
            logits: (B, C) class scores; their top-k order gives the classes of ``maps_topk``.
            labels: (B,) ground-truth classes, integers in ``[0, C)``.
            gt_boxes: One (K_i, 4) tensor or array of ground-truth boxes per image.
            maps_topk: (B, k, H, W) maps of the top-k classes of ``logits``, best first; k >= 5 for
                Top-5 Loc (k = 1 is enough for Top-1 Loc and, under ``"scm"``, GT-known Loc).
            maps_gt: (B, H, W) maps of the ground-truth classes, for GT-known Loc with ``maps_topk``.
                ``None`` takes the ground-truth class's map from ``maps_topk`` (it must be there) or, under
                ``"scm"``, the top-1 map.
            maps: (B, C, H, W) maps of all classes (keyword only), instead of ``maps_topk`` and ``maps_gt``:
                the top-5 and ground-truth maps are taken from it.

        Raises:
            ValueError: Shapes that do not fit together, labels outside ``[0, C)``, or a bad ground-truth box
                (see :meth:`BoxAccuracy.update`).
        """
        logits, labels = torch.as_tensor(logits).detach(), torch.as_tensor(labels)
        if logits.dim() != 2:
            raise ValueError(f"logits must have shape (B, C), got {tuple(logits.shape)}.")
        b, num_classes = logits.shape
        _check_labels(labels, b, num_classes)
        if len(gt_boxes) != b:
            raise ValueError(f"got {len(gt_boxes)} ground-truth box sets for {b} images; pass one per image.")
        if (maps is None) == (maps_topk is None):
            raise ValueError("pass either maps= (B, C, H, W) of all classes or maps_topk (B, k, H, W), not both.")
        if maps is not None:
            maps = torch.as_tensor(maps).detach()
            if maps.dim() != 4 or tuple(maps.shape[:2]) != (b, num_classes):
                raise ValueError(
                    f"maps must have shape (B, C, H, W) = ({b}, {num_classes}, H, W) to fit logits "
                    f"{tuple(logits.shape)}, got {tuple(maps.shape)}."
                )
            top = logits.topk(min(5, num_classes), dim=1).indices.to(maps.device)
            maps_topk = maps[torch.arange(b, device=maps.device)[:, None], top]
            in_top = (top == labels.to(maps.device)[:, None]).any(dim=1).all()
            maps_gt = None if bool(in_top) else maps[torch.arange(b, device=maps.device), labels.to(maps.device)]
        maps_topk = torch.as_tensor(maps_topk).detach()
        if maps_topk.dim() != 4 or maps_topk.shape[0] != b or not 1 <= maps_topk.shape[1] <= num_classes:
            raise ValueError(
                f"maps_topk must have shape (B, k, H, W) with B = {b} and 1 <= k <= C = {num_classes} to fit "
                f"logits {tuple(logits.shape)}, got {tuple(maps_topk.shape)}."
            )
        if maps_gt is not None:
            maps_gt = torch.as_tensor(maps_gt).detach()
            if maps_gt.dim() != 3 or maps_gt.shape[0] != b:
                raise ValueError(f"maps_gt must have shape (B, H, W) with B = {b}, got {tuple(maps_gt.shape)}.")
        k = maps_topk.shape[1]
        device = maps_topk.device
        self._to(device)
        labels = labels.to(device)
        ranked = logits.topk(min(5, num_classes), dim=1).indices.to(device)
        correct = ranked == labels[:, None]  # (B, min(5, C))
        iou = torch.stack([self._largest_iou(maps_topk[:, j], gt_boxes) for j in range(k)], dim=1)  # (B, k, T)
        hits = _hits(iou, 0.5, self.protocol.strict_iou)
        found = correct[:, :k]
        self.top1_loc += (hits[:, 0] & found[:, :1]).sum(dim=0)
        self.top5_loc += (hits[:, :5] & found[:, :5, None]).any(dim=1).sum(dim=0)
        if self.protocol.gt_known_from_top1:
            known = iou[:, 0]
        elif maps_gt is not None:
            known = self._largest_iou(maps_gt, gt_boxes)
        elif bool(found.any(dim=1).all()):
            known = iou[torch.arange(b, device=device), found.to(torch.int64).argmax(dim=1)]
        else:
            raise ValueError(
                "maps_gt is needed for GT-known Loc: the ground-truth class is not among the top-k maps of "
                f"{int((~found.any(dim=1)).sum())} images; pass maps_gt (B, H, W)."
            )
        self.gt_known += (known >= 0.5).sum(dim=0)
        self.top1_cls += correct[:, 0].sum()
        self.top5_cls += correct.any(dim=1).sum()
        self.count += b
        self._k = max(self._k, k)

    def _largest_iou(self, maps: Tensor, gt_boxes: Sequence[Tensor | np.ndarray]) -> Tensor:
        """(B, T) IoU of the largest blob's box of each map with its best ground-truth box."""
        quantized = prepare_maps(maps, self.size, self.protocol.interpolation)
        largest, _ = best_box_iou(
            quantized,
            gt_boxes,
            self.thresholds.to(maps.device),
            holes=False,
            chunk_size=self.chunk_size,
            clip=self.protocol.clip,
        )
        return largest

    def compute(self) -> dict[str, float | Tensor]:
        """The metrics so far, in percent.

        Returns:
            ``Top1Loc``, ``Top5Loc``, ``GTKnownLoc``, ``Top1Cls``, ``Top5Cls``; ``best_tau`` (the threshold
            of GT-known Loc, at which the Loc metrics are read) or, under ``"scm"``, ``best_tau`` of each
            metric as ``best_tau/Top1Loc`` etc. (and ``best_tau`` of GT-known Loc); ``thresholds`` and the
            curves ``curve/Top1Loc`` etc. (T,). ``Top5Loc`` is omitted when fewer than 5 maps were given.
        """
        if int(self.count) == 0:
            raise RuntimeError("compute() before any update(); feed at least one batch.")
        n = int(self.count)
        curves = {
            "Top1Loc": self.top1_loc.cpu().to(torch.float64) / n * 100,
            "GTKnownLoc": self.gt_known.cpu().to(torch.float64) / n * 100,
        }
        if self._k >= 5:
            curves["Top5Loc"] = self.top5_loc.cpu().to(torch.float64) / n * 100
        best = int(curves["GTKnownLoc"].argmax())
        result: dict[str, float | Tensor] = {"best_tau": float(self.thresholds[best])}
        for name, curve in curves.items():
            index = int(curve.argmax()) if self.protocol.tau_per_metric else best
            result[name] = float(curve[index])
            if self.protocol.tau_per_metric:
                result[f"best_tau/{name}"] = float(self.thresholds[index])
            result[f"curve/{name}"] = curve
        result["Top1Cls"] = float(self.top1_cls) / n * 100
        result["Top5Cls"] = float(self.top5_cls) / n * 100
        result["thresholds"] = self.thresholds.clone()
        return result


class PixelAveragePrecision(_Streaming):
    """PxAP: pixel-wise average precision of score maps against masks, streamed (wsolevaluation).

    Scores are binned by the threshold grid with right edges ``[step, ..., 1 - step, 1, 2, 3]``, as
    wsolevaluation's ``MaskEvaluator``; precision and recall follow from the cumulative histograms.

    Args:
        step: Threshold grid step (wsolevaluation uses 0.001 for PxAP).
        size: ``(H, W)`` to resize the maps to (bicubic); ``None`` takes them at mask size.
    """

    _states = ("object_hist", "background_hist")

    def __init__(self, step: float = 0.001, size: tuple[int, int] | None = None) -> None:
        taus = wsol_thresholds(step)
        self.edges = torch.cat([taus, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)])
        self.size = size
        self.object_hist = torch.zeros(self.edges.numel() - 1, dtype=torch.float64)
        self.background_hist = torch.zeros(self.edges.numel() - 1, dtype=torch.float64)

    def update(self, maps: Tensor, masks: Tensor, ignore: Tensor | None = None) -> None:
        """Add a batch.

        Args:
            maps: (B, H, W) score maps, any real values; min-max normalised per map.
            masks: (B, H, W) ground-truth object masks (nonzero = object).
            ignore: (B, H, W) pixels to leave out (nonzero), e.g. OpenImages' ignore regions.
        """
        device = maps.device
        self._to(device)
        if self.size is not None:
            maps = resize_maps(maps.detach(), self.size, "bicubic")
        maps = normalize_maps(maps.detach()).to(torch.float64)
        if masks.shape != maps.shape:
            raise ValueError(f"masks {tuple(masks.shape)} must match the maps {tuple(maps.shape)} (B, H, W).")
        keep = torch.ones_like(maps, dtype=torch.bool) if ignore is None else ~ignore.to(device).bool()
        bins = torch.bucketize(maps, self.edges.to(device), right=True) - 1
        bins = bins.clamp(max=self.edges.numel() - 2)
        is_object = masks.to(device).bool()
        num_bins = self.edges.numel() - 1
        self.object_hist += torch.bincount(bins[is_object & keep], minlength=num_bins).to(torch.float64)
        self.background_hist += torch.bincount(bins[~is_object & keep], minlength=num_bins).to(torch.float64)

    def compute(self) -> dict[str, float | Tensor]:
        """PxAP so far.

        Returns:
            ``PxAP`` (percent) and the curve ``precision``, ``recall`` (from the highest threshold down).
        """
        tp = self.object_hist.cpu().flip(0).cumsum(0)
        fp = self.background_hist.cpu().flip(0).cumsum(0)
        if tp[-1] <= 0:
            raise RuntimeError("no object pixel in the masks so far; PxAP needs positive ground truth.")
        predicted = tp + fp
        precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
        recall = tp / tp[-1]
        terms = precision[1:] * torch.diff(recall)
        value = float(terms[predicted[1:] > 0].sum()) * 100
        return {"PxAP": value, "precision": precision, "recall": recall}
