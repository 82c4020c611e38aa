"""Evaluation of a WSOL model over a data loader: the box and localization metrics of :mod:`scm_calib.metrics`
on the localization maps ``A * S_c`` (SCM, Bai et al., ECCV 2022), a centre-prior reference map, the report
that reads the test split at the thresholds chosen on a held-out split (Choe et al., CVPR 2020), and the per-image
diagnostics with TS-CAM's breakdown of localization outcomes (Gao et al., ICCV 2021) at one threshold.

Example:
    >>> import timm
    >>> from scm_calib import SCMAdapter
    >>> from scm_calib.data import WSOLBatch
    >>> encoder = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3)
    >>> boxes = [torch.tensor([[4, 4, 20, 24]]), torch.tensor([[8, 0, 31, 15]])]
    >>> batch = WSOLBatch(torch.rand(2, 3, 32, 32), torch.tensor([0, 2]), boxes, torch.tensor([[32, 32]] * 2),
    ...                   torch.arange(2), ["a.jpg", "b.jpg"], boxes_protocol=boxes)
    >>> loader = [batch]                                  # a DataLoader of the eval transform, usually
    >>> adapter = SCMAdapter(encoder)
    >>> val = evaluate(adapter, loader, image_size=(32, 32))
    >>> test = evaluate(adapter, loader, image_size=(32, 32), centre_prior=True)
    >>> summary = summarize(val, test, "wsol")  # summary["test_at_val_tau"]: test at the val split's tau
    >>> sorted(summary)
    ['centre_prior', 'protocol', 'test', 'test_at_val_tau', 'val']
    >>> held_out = summary["test_at_val_tau"]                 # the threshold chosen on the held-out split
    >>> found = diagnose(adapter, loader, image_size=(32, 32), tau=held_out["tau"])
    >>> len(found["images"]), sorted(found["outcomes"])[:2]    # one row per image; percent per outcome
    (2, ['count', 'multi_instance'])
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from .adapter import SCMOutput
from .diagnostics import ImageDiagnosis, LocalizationOutcomes, OutcomeThresholds, diagnose_images
from .interop import write_score_maps
from .localize import select_maps, semantic_and_attention
from .metrics import BoxAccuracy, LocalizationAccuracy, PixelAveragePrecision, get_protocol

if TYPE_CHECKING:
    from .data import WSOLBatch

__all__ = ["centre_prior_map", "diagnose", "evaluate", "summarize"]

_IOU_NAMES = ("30", "50", "70")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    image_size: tuple[int, int],
    protocol: str = "wsol",
    centre_prior: bool = False,
    device: torch.device | str | None = None,
    boxes: bool = True,
    pxap: bool = False,
    scoremaps: str | Path | None = None,
) -> dict[str, Any]:
    """Box, localization and mask metrics of a model on a dataset (under ``torch.distributed``, each process its shard).

    The localization maps are ``A * S_c`` at the patch grid (:func:`~scm_calib.localize.select_maps` of the top-5
    and of the ground-truth classes), resized to the input size by the protocol's interpolation. Under an
    initialised process group the metric states are summed over processes, so every process (all must call it)
    returns the global numbers.

    Args:
        model: an SCMAdapter or a stripped model (DDP / ``torch.compile`` wrappers are looked through).
        loader: yields :class:`~scm_calib.data.WSOLBatch` es with ``boxes_protocol`` (the eval transform).
        image_size: (H, W) of the input images, the size the maps are resized to.
        protocol: ``"wsol"``, ``"scm"`` or ``"tscam"`` (see :mod:`scm_calib.metrics`).
        centre_prior: also score :func:`centre_prior_map` (the same map for every image, with the model's
            class predictions for Top-k Loc): the reference a map must beat to say anything about the image.
        device: where the batches go; None: the device of the model's first parameter.
        boxes: score boxes (the box and localization metrics); False for a dataset with masks only (OpenImages).
        pxap: also score PxAP of the ground-truth class's map against the batches' ``masks``, leaving out their
            ``ignore`` pixels (:class:`~scm_calib.metrics.PixelAveragePrecision`, maps resized to ``image_size``).
        scoremaps: also write the ground-truth class's map of every image, as scored, to
            ``<scoremaps>/<path>.npy`` (:func:`~scm_calib.interop.write_score_maps`: 224 x 224, min-max
            normalised; each process its shard), the score maps clovaai wsolevaluation's ``evaluation.py`` reads.

    Returns:
        The dicts of :func:`~scm_calib.metrics.box_accuracy` and :func:`~scm_calib.metrics.localization_accuracy`
        merged (``best_tau`` is GT-known Loc's; MaxBoxAcc's is ``best_tau/MaxBoxAcc``) and, with ``pxap``,
        ``PxAP`` and its ``precision`` and ``recall``; with ``centre_prior``, the centre prior's under
        ``"centre_prior"``.

    Raises:
        ValueError: A batch without ``boxes_protocol`` (a training transform), or without ``masks`` with ``pxap``.
    """
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    scorers = {"model": _Scorers(protocol, image_size, boxes, pxap)}
    if centre_prior:
        scorers["centre_prior"] = _Scorers(protocol, image_size, boxes, pxap)
    for batch in loader:
        if boxes and batch.boxes_protocol is None:
            raise ValueError("evaluation needs boxes_protocol in the batches; build the dataset with augment=False.")
        if pxap and batch.masks is None:
            raise ValueError("pxap=True needs masks in the batches; build the dataset with its masks (mask_root).")
        batch = batch.to(device)
        output = _forward(model, batch, device)
        logits = output.logits
        maps_topk = select_maps(output, min(5, logits.shape[1]))
        maps_gt = select_maps(output, batch.labels)
        scorers["model"].update(logits, batch, maps_topk, maps_gt)
        if scoremaps is not None:
            write_score_maps(scoremaps, batch.paths, maps_gt, interpolation=get_protocol(protocol).interpolation)
        if centre_prior:
            prior = centre_prior_map(maps_gt.shape[-2:], device).expand_as(maps_gt)
            prior_topk = prior[:, None].expand_as(maps_topk)
            scorers["centre_prior"].update(logits, batch, prior_topk, prior)
    metrics = scorers.pop("model").compute()
    for name, scorer in scorers.items():
        metrics[name] = scorer.compute()
    return metrics


def _forward(model: nn.Module, batch: WSOLBatch, device: torch.device) -> SCMOutput:
    """The model's maps and float32 logits of a batch on ``device`` (bf16 autocast on CUDA)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        output = semantic_and_attention(model, batch.images)
    return output._replace(logits=output.logits.float())


@torch.no_grad()
def diagnose(
    model: nn.Module,
    loader: Iterable[Any],
    image_size: tuple[int, int],
    tau: float,
    protocol: str = "wsol",
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """The per-image table and TS-CAM's breakdown of localization outcomes (:mod:`scm_calib.diagnostics`) at ``tau``.

    A pass of its own after :func:`evaluate`: the threshold to read the boxes at (the held-out split's
    ``best_tau``, else the test split's) is known only once the evaluation's sweep is done, and one forward pass at
    one threshold costs less than keeping every image's box at every threshold of the sweep.

    Args:
        model: an SCMAdapter or a stripped model (DDP / ``torch.compile`` wrappers are looked through).
        loader: yields :class:`~scm_calib.data.WSOLBatch` es with ``boxes_protocol`` (the eval transform).
        image_size: (H, W) of the input images, the size the maps are resized to.
        tau: the threshold the top-1 class's map is read at.
        protocol: ``"wsol"``, ``"scm"`` or ``"tscam"``: its interpolation, and TS-CAM's ``IoU > 0.5`` for
            ``right`` with ``"tscam"`` (else ``IoU >= 0.5``, so ``right`` equals Top-1 Loc at ``tau``).
        device: where the batches go; None: the device of the model's first parameter.

    Returns:
        ``"outcomes"``: the percent of images per outcome and ``count`` (summed over processes), and
        ``"images"``: one :class:`~scm_calib.diagnostics.ImageDiagnosis` per image in dataset order (the rows of
        every process, gathered with ``all_gather_object`` under an initialised process group).

    Raises:
        ValueError: A batch without ``boxes_protocol`` (a training transform).
    """
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    preset = get_protocol(protocol)
    rule = OutcomeThresholds(strict_iou=preset.strict_iou)
    outcomes = LocalizationOutcomes(tau, image_size, preset.interpolation, rule)
    rows: list[tuple[int, ImageDiagnosis]] = []
    for batch in loader:
        if batch.boxes_protocol is None:
            raise ValueError("diagnostics need boxes_protocol in the batches; build the dataset with augment=False.")
        batch = batch.to(device)
        output = _forward(model, batch, device)
        found = diagnose_images(
            select_maps(output, "top1"),
            output.logits,
            batch.labels,
            batch.boxes_protocol,
            batch.paths,
            tau,
            size=image_size,
            interpolation=preset.interpolation,
            thresholds=rule,
        )
        outcomes.update_from(found)
        rows += zip(batch.indices.tolist(), found, strict=True)
    if dist.is_available() and dist.is_initialized():
        shards: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(shards, rows)
        rows = [row for shard in shards for row in shard]
    return {"outcomes": outcomes.compute(), "images": [row for _, row in sorted(rows, key=lambda pair: pair[0])]}


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
    """The box, localization and mask metrics of one kind of map."""

    def __init__(self, protocol: str, image_size: tuple[int, int], boxes: bool, pxap: bool) -> None:
        self.boxes = BoxAccuracy(protocol, size=image_size) if boxes else None
        self.localization = LocalizationAccuracy(protocol, size=image_size) if boxes else None
        self.pixels = PixelAveragePrecision(size=image_size) if pxap else None

    def update(self, logits: torch.Tensor, batch: WSOLBatch, maps_topk: torch.Tensor, maps_gt: torch.Tensor) -> None:
        if self.boxes is not None and self.localization is not None:
            self.boxes.update(maps_gt, batch.boxes_protocol)
            self.localization.update(logits, batch.labels, batch.boxes_protocol, maps_topk, maps_gt)
        if self.pixels is not None:
            self.pixels.update(maps_gt, batch.masks, batch.ignore)

    def compute(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        if self.boxes is not None and self.localization is not None:
            metrics = self.boxes.compute()
            metrics["best_tau/MaxBoxAcc"] = metrics.pop("best_tau")
            metrics |= self.localization.compute()
        if self.pixels is not None:
            metrics |= self.pixels.compute()
        return metrics


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {name: value for name, value in metrics.items() if isinstance(value, (int, float))}


def summarize(val: dict[str, Any] | None, test: dict[str, Any], protocol: str) -> dict[str, Any]:
    """The headline numbers: the test metrics as the protocol defines them and, with a held-out split, the test
    split read at the thresholds chosen on it (the principled report of Choe et al.).

    Args:
        val: :func:`evaluate` of the held-out split (e.g. wsolevaluation's ``train-fullsup``), or None.
        test: :func:`evaluate` of the test split, with the same protocol and threshold grid.
        protocol: the protocol both were evaluated with; ``"tscam"`` has one fixed ``tau``, so nothing to choose.

    Returns:
        ``{"protocol", "test"}`` (the scalar test metrics, best ``tau`` on test), ``"centre_prior"`` when ``test``
        holds it, ``"val"`` (the scalar val metrics) with ``val``, and, with ``val`` holding boxes (not ``"tscam"``),
        ``"test_at_val_tau"``: ``MaxBoxAccV2`` (each
        IoU term at the val split's ``best_tau@30`` / ``@50`` / ``@70``), ``GTKnownLoc`` and ``Top1Loc`` at the val
        split's ``best_tau``, and that ``tau``.
    """
    summary: dict[str, Any] = {"protocol": protocol, "test": _scalars(test)}
    if "centre_prior" in test:
        summary["centre_prior"] = _scalars(test["centre_prior"])
    if val is not None:
        summary["val"] = _scalars(val)
    if val is not None and protocol != "tscam" and "best_tau" in val:
        taus = test["thresholds"]
        at = {name: int((taus - val[f"best_tau@{name}"]).abs().argmin()) for name in _IOU_NAMES}
        v2 = [float(test["curve_v2"][at[name], d]) for d, name in enumerate(_IOU_NAMES)]
        index = int((taus - val["best_tau"]).abs().argmin())
        summary["test_at_val_tau"] = {
            "MaxBoxAccV2": sum(v2) / 3,
            "GTKnownLoc": float(test["curve/GTKnownLoc"][index]),
            "Top1Loc": float(test["curve/Top1Loc"][index]),
            "tau": float(taus[index]),
        }
    return summary
