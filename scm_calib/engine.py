"""Evaluation of SCM (Bai et al., ECCV 2022) and its TS-CAM baseline over a loader, DDP-ready.

An evaluation pass that feeds the streaming metrics of :mod:`scm_calib.metrics` on each process's shard and
sums their states across processes, and a switch that trains an adapter without its SCM for a while. The
training loop, DDP setup and seeding are the example trainer's (``examples/cub/engine.py``); training states
are saved with :func:`scm_calib.checkpoint.save_checkpoint`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from timm.utils import unwrap_model
from torch import nn

from scm_calib.adapter import SCMAdapter
from scm_calib.localize import semantic_and_attention
from scm_calib.metrics import BoxAccuracy, LocalizationAccuracy

__all__ = ["centre_prior_map", "evaluate", "without_calibration"]


@contextmanager
def without_calibration(adapter: SCMAdapter, enabled: bool = True) -> Iterator[None]:
    """Trains ``adapter`` without its SCM inside the block (its parameters stay, unused), e.g. to warm up an
    encoder trained from scratch before calibration starts, as the paper starts from a pretrained one.

    Under DistributedDataParallel the SCM parameters get no gradient in the block: build DDP with
    ``find_unused_parameters=True``.

    Args:
        adapter: the bare adapter (not a DDP wrapper).
        enabled: False leaves SCM on (a no-op block).
    """
    scm = adapter.scm
    if enabled:
        adapter.scm = None
    try:
        yield
    finally:
        adapter.scm = scm


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    context: Any,
    image_size: tuple[int, int],
    protocol: str = "wsol",
    centre_prior: bool = False,
) -> dict[str, Any]:
    """Box and localization metrics of a model on a dataset (each process feeds its own shard).

    Maps are ``A * S_c`` at the patch grid, resized to the input size by the protocol's interpolation.
    The metric states are summed over processes, so every process returns the global numbers.

    Args:
        model: an SCMAdapter or a stripped model (DDP / compile wrappers are looked through).
        loader: yields :class:`~scm_calib.data.WSOLBatch` es with ``boxes_protocol`` (the eval transform).
        context: the process's place in the job (anything with a ``device``: the trainer's DistributedContext).
        protocol: ``"wsol"``, ``"scm"`` or ``"tscam"`` (see :mod:`scm_calib.metrics`).
        image_size: (H, W) of the input images, the size the maps are resized to.
        centre_prior: also score :func:`centre_prior_map` (the same map for every image, with the model's
            class predictions for Top-k Loc): the reference a map must beat to say anything about the image.

    Returns:
        The dicts of :meth:`~scm_calib.metrics.BoxAccuracy.compute` and
        :meth:`~scm_calib.metrics.LocalizationAccuracy.compute` merged (``best_tau`` is GT-known Loc's;
        MaxBoxAcc's is ``best_tau/MaxBoxAcc``); with ``centre_prior``, the centre prior's under ``"centre_prior"``.
    """
    model = unwrap_model(model)
    scorers = {"model": _Scorers(protocol, image_size)}
    if centre_prior:
        scorers["centre_prior"] = _Scorers(protocol, image_size)
    device = context.device
    for batch in loader:
        if batch.boxes_protocol is None:
            raise ValueError("evaluation needs boxes_protocol in the batches; build the dataset with augment=False.")
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            result = semantic_and_attention(model, batch.images)
        maps = result.attention.float()[:, None] * result.semantic.float()  # (B, C, h, w)
        k = min(5, maps.shape[1])
        top = result.logits.float().topk(k, dim=1).indices
        maps_topk = torch.gather(maps, 1, top[:, :, None, None].expand(-1, -1, *maps.shape[2:]))
        maps_gt = maps[torch.arange(maps.shape[0], device=device), batch.labels]
        scorers["model"].update(result.logits.float(), batch.labels, batch.boxes_protocol, maps_topk, maps_gt)
        if centre_prior:
            prior = centre_prior_map(maps.shape[-2:], device).expand_as(maps_gt)
            prior_topk = prior[:, None].expand_as(maps_topk)
            scorers["centre_prior"].update(result.logits.float(), batch.labels, batch.boxes_protocol, prior_topk, prior)
    metrics = scorers.pop("model").compute()
    for name, scorer in scorers.items():
        metrics[name] = scorer.compute()
    return metrics


def centre_prior_map(size: tuple[int, int] | torch.Size, device: torch.device | str = "cpu") -> torch.Tensor:
    """A centred Gaussian (standard deviation a quarter of each side), the same for every image: (1, h, w).

    Its level sets are the ellipses centred in the image, so any box metric that sweeps the threshold scores
    every centred box of the image's aspect; a map that localizes must beat it.
    """
    h, w = int(size[0]), int(size[1])
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h - 0.5
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w - 0.5
    return torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * 0.25**2))[None]


class _Scorers:
    """The box and localization metrics of one kind of map, summed over processes at ``compute``."""

    def __init__(self, protocol: str, image_size: tuple[int, int]) -> None:
        self.boxes = BoxAccuracy(protocol, size=image_size)
        self.localization = LocalizationAccuracy(protocol, size=image_size)

    def update(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        gt_boxes: list[torch.Tensor],
        maps_topk: torch.Tensor,
        maps_gt: torch.Tensor,
    ) -> None:
        self.boxes.update(maps_gt, gt_boxes)
        self.localization.update(logits, labels, gt_boxes, maps_topk, maps_gt)

    def compute(self) -> dict[str, Any]:
        self.boxes.sync()
        self.localization.sync()
        box_metrics = self.boxes.compute()
        box_metrics["best_tau/MaxBoxAcc"] = box_metrics.pop("best_tau")
        return {**box_metrics, **self.localization.compute()}
