"""Streaming WSOL metrics: accumulate the counts of :mod:`scm_calib.metrics.functional` over batches and processes.

A metric declares its states with :meth:`Metric.add_state`; every state is a sum, over the batches fed to
:meth:`~Metric.update` and, inside :meth:`~Metric.compute`, over the processes of an initialised
``torch.distributed`` group. So each process feeds its own shard and calls ``compute()`` (all of them, as for any
collective), and every process gets the global numbers; the local state is left as it was.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .functional import (
    _LOC_COUNTS,
    _box_accuracy_compute,
    _box_accuracy_update,
    _box_protocol,
    _localization_compute,
    _localization_update,
    _pxap_compute,
    _pxap_edges,
    _pxap_update,
)
from .protocols import Protocol, get_protocol, protocol_thresholds

__all__ = ["BoxAccuracy", "LocalizationAccuracy", "Metric", "PixelAveragePrecision"]


class Metric(ABC):
    """Named state tensors that sum over batches and processes; ``update()`` per batch, ``compute()``, ``reset()``.

    Subclasses declare their states with :meth:`add_state` in ``__init__``, add a batch's counts to them in
    ``update`` and turn the summed states into numbers in ``_compute``.
    """

    def __init__(self) -> None:
        self._states: list[str] = []
        self._counted: list[str] = []

    def add_state(self, name: str, default: Tensor, counts_images: bool = False) -> None:
        """Declares a state: a tensor of zeros (counts or histograms) that is summed across processes.

        Args:
            name: Attribute name of the state.
            default: Its zero value, which :meth:`reset` restores.
            counts_images: The state counts images, so it is never above the state ``count``.
        """
        setattr(self, name, default)
        self._states.append(name)
        if counts_images:
            self._counted.append(name)

    def reset(self) -> None:
        """Zero the state; the next ``update()`` starts a new evaluation."""
        for name in self._states:
            getattr(self, name).zero_()

    def _add(self, increments: dict[str, Tensor | int], device: torch.device) -> None:
        """Adds a batch's counts to the states, which move to ``device`` (that of the batch's maps)."""
        for name in self._states:
            setattr(self, name, getattr(self, name).to(device))
        for name, value in increments.items():
            setattr(self, name, getattr(self, name) + value)

    def compute(self) -> dict[str, float | Tensor]:
        """The metrics of everything fed so far, summed over all processes when ``torch.distributed`` is initialised.

        Call it on every process of the group (it all-reduces); the local state stays unchanged.

        Raises:
            RuntimeError: Nothing fed yet.
        """
        states = {name: getattr(self, name).clone() for name in self._states}
        if dist.is_available() and dist.is_initialized():
            for value in states.values():
                dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return self._compute(states)

    @abstractmethod
    def _compute(self, states: dict[str, Tensor]) -> dict[str, float | Tensor]:
        """The metrics of summed states."""

    def state_dict(self) -> dict[str, Tensor]:
        """The state tensors of this process, e.g. to save or to add up across processes by hand."""
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


class _ProtocolMetric(Metric):
    """A metric that sweeps (or fixes) the threshold of a :class:`~scm_calib.metrics.Protocol`."""

    def __init__(
        self,
        protocol: Protocol,
        size: tuple[int, int] | None,
        chunk_size: int | None,
    ) -> None:
        super().__init__()
        self.protocol = protocol
        self.thresholds = protocol_thresholds(protocol)
        self.size = size
        self.chunk_size = chunk_size


class BoxAccuracy(_ProtocolMetric):
    """MaxBoxAcc (V1), MaxBoxAccV2 and BoxAcc at a fixed threshold, streamed (see
    :func:`~scm_calib.metrics.box_accuracy` for the definitions).

    Args:
        protocol: ``"wsol"``, ``"scm"``, ``"tscam"`` or a :class:`~scm_calib.metrics.Protocol`.
        tau: Fixed threshold (e.g. the best ``tau`` of a held-out split); ``None`` keeps the protocol's.
        step: Threshold grid step; ``None`` keeps the protocol's.
        size: ``(H, W)`` to resize the maps to (e.g. grid maps); ``None`` takes them at image size.
        chunk_size: Maps turned into boxes at once, which bounds memory; default 64 on the CPU, 512 on a GPU.
    """

    def __init__(
        self,
        protocol: str | Protocol = "wsol",
        tau: float | None = None,
        step: float | None = None,
        size: tuple[int, int] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(_box_protocol(protocol, tau, step), size, chunk_size)
        shape = (self.thresholds.numel(), len(self.protocol.iou_thresholds))
        self.add_state("hits_largest", torch.zeros(shape, dtype=torch.int64), counts_images=True)
        self.add_state("hits_all", torch.zeros(shape, dtype=torch.int64), counts_images=True)
        self.add_state("count", torch.zeros((), dtype=torch.int64))

    def update(self, maps: Tensor | np.ndarray, gt_boxes: Sequence[Tensor | np.ndarray]) -> None:
        """Add a batch (arguments and errors as :func:`~scm_calib.metrics.box_accuracy`).

        Args:
            maps: (B, H, W) localization maps of the ground-truth class.
            gt_boxes: One (K_i, 4) tensor or array ``[x0, y0, x1, y1]`` per image.
        """
        hits_largest, hits_all, count = _box_accuracy_update(
            maps, gt_boxes, self.protocol, self.thresholds, self.size, self.chunk_size
        )
        self._add({"hits_largest": hits_largest, "hits_all": hits_all, "count": count}, hits_all.device)

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float | Tensor]:
        return _box_accuracy_compute(
            states["hits_largest"], states["hits_all"], int(states["count"]), self.thresholds, self.protocol
        )


class LocalizationAccuracy(_ProtocolMetric):
    """Top-1 / Top-5 / GT-known Loc and Top-1 / Top-5 classification, streamed (see
    :func:`~scm_calib.metrics.localization_accuracy` for the definitions).

    Args:
        protocol: ``"wsol"``, ``"scm"``, ``"tscam"`` or a :class:`~scm_calib.metrics.Protocol`.
        tau: Fixed threshold; ``None`` keeps the protocol's.
        step: Threshold grid step; ``None`` keeps the protocol's.
        size: ``(H, W)`` to resize the maps to; ``None`` takes them at image size.
        chunk_size: Maps turned into boxes at once, which bounds memory; default 64 on the CPU, 512 on a GPU.
    """

    def __init__(
        self,
        protocol: str | Protocol = "wsol",
        tau: float | None = None,
        step: float | None = None,
        size: tuple[int, int] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(get_protocol(protocol, tau=tau, step=step), size, chunk_size)
        num = self.thresholds.numel()
        for name in _LOC_COUNTS:
            per_threshold = name in ("top1_loc", "top5_loc", "gt_known")
            state = torch.zeros(num if per_threshold else (), dtype=torch.int64)
            self.add_state(name, state, counts_images=name != "count")
        # Images scored with top-5 maps: Top-5 Loc is reported when there are any, on every process alike.
        self.add_state("top5_maps", torch.zeros((), dtype=torch.int64), counts_images=True)

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
        """Add a batch: pass ``maps`` (every class's map) or ``maps_topk`` (arguments and errors as
        :func:`~scm_calib.metrics.localization_accuracy`).

        Args:
            logits: (B, C) class scores.
            labels: (B,) ground-truth classes, integers in ``[0, C)``.
            gt_boxes: One (K_i, 4) tensor or array of ground-truth boxes per image.
            maps_topk: (B, k, H, W) localization maps of the top-k classes of ``logits``, best first.
            maps_gt: (B, H, W) localization maps of the ground-truth classes.
            maps: (B, C, H, W) localization maps of all classes (keyword only).
        """
        counts, k = _localization_update(
            logits,
            labels,
            gt_boxes,
            maps_topk,
            maps_gt,
            maps,
            self.protocol,
            self.thresholds,
            self.size,
            self.chunk_size,
        )
        counts["top5_maps"] = counts["count"] if k >= 5 else torch.zeros_like(counts["count"])
        self._add(counts, counts["count"].device)

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float | Tensor]:
        k = 5 if int(states["top5_maps"]) > 0 else 1
        return _localization_compute(states, k, self.thresholds, self.protocol)


class PixelAveragePrecision(Metric):
    """PxAP: pixel-wise average precision of score maps against masks, streamed (see
    :func:`~scm_calib.metrics.pixel_average_precision`).

    Args:
        step: Threshold grid step (wsolevaluation uses 0.001 for PxAP).
        size: ``(H, W)`` to resize the maps to (bicubic); ``None`` takes them at mask size.
    """

    def __init__(self, step: float = 0.001, size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.edges = _pxap_edges(step)
        self.size = size
        self.add_state("object_hist", torch.zeros(self.edges.numel() - 1, dtype=torch.float64))
        self.add_state("background_hist", torch.zeros(self.edges.numel() - 1, dtype=torch.float64))

    def update(self, maps: Tensor, masks: Tensor, ignore: Tensor | None = None) -> None:
        """Add a batch.

        Args:
            maps: (B, H, W) score maps, any real values; min-max normalised per map.
            masks: (B, H, W) ground-truth object masks (nonzero = object).
            ignore: (B, H, W) pixels to leave out (nonzero), e.g. OpenImages' ignore regions.
        """
        object_hist, background_hist = _pxap_update(maps, masks, ignore, self.edges, self.size)
        self._add({"object_hist": object_hist, "background_hist": background_hist}, maps.device)

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float | Tensor]:
        return _pxap_compute(states["object_hist"], states["background_hist"])
