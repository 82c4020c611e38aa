"""Training and evaluation loops for SCM (Bai et al., ECCV 2022) and its TS-CAM baseline, DDP-ready.

The pieces a WSOL trainer needs besides the model: process-group setup that works under ``torchrun`` on
GPUs (NCCL) and CPUs (gloo), reproducible seeding with RNG states that survive ``torch.load(weights_only=True)``,
an epoch of training with gradient accumulation and bf16 autocast, a checkpoint that resumes to the same
result, and an evaluation pass that feeds the streaming metrics of :mod:`scm_calib.metrics` on each process's
shard and sums their states across processes. ``examples/cub/train.py`` is a thin command line over them.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from scm_calib.adapter import SCMAdapter
from scm_calib.checkpoint import atomic_write
from scm_calib.localize import semantic_and_attention
from scm_calib.metrics import BoxAccuracy, LocalizationAccuracy, PixelAveragePrecision

if TYPE_CHECKING:
    from scm_calib.data import WSOLBatch

__all__ = [
    "DistributedContext",
    "evaluate",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "setup_distributed",
    "shard",
    "train_one_epoch",
    "unwrap",
    "without_calibration",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly single-process) job.

    Attributes:
        rank: global rank (0 without ``torchrun``).
        world_size: number of processes.
        local_rank: rank on this node; picks the GPU.
        device: the device this process trains on.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group with more than one process is in use."""
        return self.world_size > 1


def setup_distributed(device: str | None = None) -> DistributedContext:
    """Joins the process group that ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), if any.

    Args:
        device: ``"cuda"``, ``"cpu"`` or None (CUDA when available). Each process takes GPU ``LOCAL_RANK``.
            The backend is NCCL on CUDA and gloo on CPU.

    Returns:
        The context; a single process (rank 0 of 1) when ``WORLD_SIZE`` is unset or 1.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; pass device='cpu'.")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = torch.device(device, local_rank) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, torch_device)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


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


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global RNG states as tensors and plain types, so a checkpoint loads with ``weights_only=True``.

    Returns:
        ``{"python": list, "numpy": dict, "torch": uint8 tensor, "cuda": list of uint8 tensors}``.
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores the global RNG states saved by :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def shard(dataset: torch.utils.data.Dataset, context: DistributedContext) -> torch.utils.data.Dataset:
    """Every ``world_size``-th sample from ``rank`` on: an evaluation shard with no padding or duplicates."""
    if not context.distributed:
        return dataset
    return torch.utils.data.Subset(dataset, range(context.rank, len(dataset), context.world_size))


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Writes a training state with ``torch.save`` atomically (a temporary file renamed over ``path``).

    Args:
        path: the checkpoint file.
        state: tensors, state dicts and plain types only (see :func:`rng_state`), so that
            :func:`load_checkpoint` reads it with ``weights_only=True``.

    Returns:
        The written path.
    """
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a state written by :func:`save_checkpoint` with ``torch.load(weights_only=True)`` onto the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the checkpoint.pt of an earlier run.")
    return torch.load(path, map_location="cpu", weights_only=True)


def train_one_epoch(
    model: nn.Module,
    loader: Sized,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    context: DistributedContext,
    global_step: int,
    accumulation: int = 1,
    clip_grad: float | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> tuple[dict[str, float], int]:
    """One epoch of cross-entropy training on the adapter's logits (calibrated by SCM when it has one).

    Args:
        model: an :class:`~scm_calib.adapter.SCMAdapter`, possibly wrapped in DDP or ``torch.compile``.
        loader: yields :class:`~scm_calib.data.WSOLBatch` es and has a length.
        optimizer: the optimizer.
        scheduler: a timm scheduler made with ``step_on_epochs=False`` (stepped per update), or None.
        context: the process's place in the job (device, world size).
        global_step: optimizer updates done before this epoch.
        accumulation: micro-batches per optimizer update (gradients summed; DDP syncs on the last only).
        clip_grad: max gradient norm; None or 0 for no clipping.
        on_step: called after every micro-batch with ``{"loss", "acc", "lr", "images"}`` of that batch.

    Returns:
        ``{"loss", "acc", "images_per_s"}`` over the epoch, summed over processes; and the new global step.
    """
    if accumulation < 1:
        raise ValueError(f"accumulation must be >= 1 micro-batches per update, got {accumulation}.")
    model.train()
    device = context.device
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, images
    num_batches = len(loader)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for index, batch in enumerate(loader):
        batch = batch.to(device, non_blocking=True)
        last_micro = (index + 1) % accumulation == 0 or index + 1 == num_batches
        sync = last_micro or not isinstance(model, nn.parallel.DistributedDataParallel)
        with nullcontext() if sync else model.no_sync():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(batch.images).logits
            loss = F.cross_entropy(logits.float(), batch.labels)
            (loss / accumulation).backward()
        if last_micro:
            if clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            if scheduler is not None:
                scheduler.step_update(num_updates=global_step)
        count = batch.labels.numel()
        correct = (logits.detach().argmax(dim=1) == batch.labels).sum()
        totals += torch.stack([loss.detach().double() * count, correct.double(), torch.tensor(count, device=device)])
        if on_step is not None:
            on_step(
                {
                    "loss": float(loss.detach()),
                    "acc": float(correct) / count * 100,
                    "lr": optimizer.param_groups[0]["lr"],
                    "images": count * context.world_size,
                }
            )
    if context.distributed:
        dist.all_reduce(totals)
    elapsed = time.perf_counter() - start
    loss_sum, correct_sum, images = totals.tolist()
    stats = {"loss": loss_sum / images, "acc": correct_sum / images * 100, "images_per_s": images / elapsed}
    return stats, global_step


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    context: DistributedContext,
    image_size: tuple[int, int],
    protocol: str = "wsol",
    centre_prior: bool = False,
    boxes: bool = True,
    pxap: bool = False,
) -> dict[str, Any]:
    """Box, localization and mask metrics of a model on a dataset (each process feeds its own shard).

    Maps are ``A * S_c`` at the patch grid, resized to the input size by the protocol's interpolation.
    The metric states are summed over processes, so every process returns the global numbers.

    Args:
        model: an SCMAdapter or a stripped model (DDP / compile wrappers are looked through).
        loader: yields :class:`~scm_calib.data.WSOLBatch` es with ``boxes_protocol`` (the eval transform).
        context: the process's place in the job.
        protocol: ``"wsol"``, ``"scm"`` or ``"tscam"`` (see :mod:`scm_calib.metrics`).
        image_size: (H, W) of the input images, the size the maps are resized to.
        centre_prior: also score :func:`centre_prior_map` (the same map for every image, with the model's
            class predictions for Top-k Loc): the reference a map must beat to say anything about the image.
        boxes: score boxes (the box and localization metrics); False for a dataset with masks only (OpenImages).
        pxap: also score PxAP of the ground-truth class's map against the batches' ``masks``, leaving out their
            ``ignore`` pixels (:class:`~scm_calib.metrics.PixelAveragePrecision`, maps resized to ``image_size``).

    Returns:
        The dicts of :meth:`~scm_calib.metrics.BoxAccuracy.compute` and
        :meth:`~scm_calib.metrics.LocalizationAccuracy.compute` merged (``best_tau`` is GT-known Loc's;
        MaxBoxAcc's is ``best_tau/MaxBoxAcc``) and, with ``pxap``, ``PxAP`` and its ``precision`` and ``recall``;
        with ``centre_prior``, the centre prior's under ``"centre_prior"``.
    """
    model = unwrap(model)
    scorers = {"model": _Scorers(protocol, image_size, boxes, pxap)}
    if centre_prior:
        scorers["centre_prior"] = _Scorers(protocol, image_size, boxes, pxap)
    device = context.device
    for batch in loader:
        if boxes and batch.boxes_protocol is None:
            raise ValueError("evaluation needs boxes_protocol in the batches; build the dataset with augment=False.")
        if pxap and batch.masks is None:
            raise ValueError("pxap=True needs masks in the batches; build the dataset with its masks (mask_root).")
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            result = semantic_and_attention(model, batch.images)
        maps = result.attention.float()[:, None] * result.semantic.float()  # (B, C, h, w)
        k = min(5, maps.shape[1])
        top = result.logits.float().topk(k, dim=1).indices
        maps_topk = torch.gather(maps, 1, top[:, :, None, None].expand(-1, -1, *maps.shape[2:]))
        maps_gt = maps[torch.arange(maps.shape[0], device=device), batch.labels]
        scorers["model"].update(result.logits.float(), batch, maps_topk, maps_gt)
        if centre_prior:
            prior = centre_prior_map(maps.shape[-2:], device).expand_as(maps_gt)
            prior_topk = prior[:, None].expand_as(maps_topk)
            scorers["centre_prior"].update(result.logits.float(), batch, prior_topk, prior)
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
    """The box, localization and mask metrics of one kind of map, summed over processes at ``compute``."""

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
            self.boxes.sync()
            self.localization.sync()
            metrics = self.boxes.compute()
            metrics["best_tau/MaxBoxAcc"] = metrics.pop("best_tau")
            metrics |= self.localization.compute()
        if self.pixels is not None:
            self.pixels.sync()
            metrics |= self.pixels.compute()
        return metrics
