"""The example trainer's loop and process helpers: DDP setup, reproducible seeding, one epoch of training.

These are the parts of ``train.py`` that are not about CUB or SCM's settings: process-group setup that works
under ``torchrun`` on GPUs (NCCL) and CPUs (gloo), seeding with RNG states that survive
``torch.load(weights_only=True)``, and an epoch of cross-entropy training with gradient accumulation and bf16
autocast. They stay in the example, as timm keeps its loop in its ``train.py``; the library keeps what another
code base would import (:mod:`scm_calib.checkpoint` for the training state, :mod:`scm_calib.metrics`).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sized
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DistributedContext",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "setup_distributed",
    "shard",
    "train_one_epoch",
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


def shard(dataset: torch.utils.data.Dataset, context: DistributedContext) -> torch.utils.data.Dataset:
    """Every ``world_size``-th sample from ``rank`` on: an evaluation shard with no padding or duplicates."""
    if not context.distributed:
        return dataset
    return torch.utils.data.Subset(dataset, range(context.rank, len(dataset), context.world_size))


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
    log_interval: int = 20,
) -> tuple[dict[str, float], int]:
    """One epoch of cross-entropy training on the adapter's logits (calibrated by SCM when it has one).

    The loss and accuracy are summed on the device; they are read on the host (a device sync) only every
    ``log_interval`` micro-batches and at the end of the epoch, so the device runs ahead of the Python loop.

    Args:
        model: an :class:`~scm_calib.adapter.SCMAdapter`, possibly wrapped in DDP or ``torch.compile``.
        loader: yields :class:`~scm_calib.data.WSOLBatch` es and has a length.
        optimizer: the optimizer.
        scheduler: a timm scheduler made with ``step_on_epochs=False`` (stepped per update), or None.
        context: the process's place in the job (device, world size).
        global_step: optimizer updates done before this epoch.
        accumulation: micro-batches per optimizer update (gradients summed; DDP syncs on the last only).
        clip_grad: max gradient norm; None or 0 for no clipping.
        on_step: called after every micro-batch with ``{"images", "lr"}`` (images of all processes); every
            ``log_interval`` micro-batches and after the last one also with ``"loss"``, this process's mean
            loss over the micro-batches since the previous ``"loss"``.
        log_interval: micro-batches between two reads of the loss for ``on_step``.

    Returns:
        ``{"loss", "acc", "images_per_s"}`` over the epoch, summed over processes; and the new global step.
    """
    if accumulation < 1:
        raise ValueError(f"accumulation must be >= 1 micro-batches per update, got {accumulation}.")
    if log_interval < 1:
        raise ValueError(f"log_interval must be >= 1 micro-batches, got {log_interval}.")
    model.train()
    device = context.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # per-image loss summed over the epoch
    correct = torch.zeros((), dtype=torch.float64, device=device)
    images = 0
    logged_loss, logged_images = 0.0, 0  # loss_sum and images at the last read for on_step
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
        images += count
        loss_sum += loss.detach().double() * count
        correct += (logits.detach().argmax(dim=1) == batch.labels).sum()
        if on_step is not None:
            step = {"images": count * context.world_size, "lr": optimizer.param_groups[0]["lr"]}
            if (index + 1) % log_interval == 0 or index + 1 == num_batches:
                total = float(loss_sum)
                step["loss"] = (total - logged_loss) / (images - logged_images)
                logged_loss, logged_images = total, images
            on_step(step)
    totals = torch.stack([loss_sum, correct, torch.tensor(float(images), dtype=torch.float64, device=device)])
    if context.distributed:
        dist.all_reduce(totals)
    loss_total, correct_total, images_total = totals.tolist()  # waits for the device: the epoch's true time
    elapsed = time.perf_counter() - start
    stats = {"loss": loss_total / images_total, "acc": correct_total / images_total * 100}
    return {**stats, "images_per_s": images_total / elapsed}, global_step
