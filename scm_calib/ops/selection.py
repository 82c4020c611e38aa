"""The self-check behind ``backend="auto"``: run every candidate operator once, keep the fastest that agrees.

The first time ``auto`` meets a (device, dtype, grid), the candidates (the torch operator first, then the
Triton one) compute SCM's diffusion (Bai et al., ECCV 2022) and its gradients on one small problem of that
grid. A candidate counts only if it agrees with the first one within ``RTOL`` (the tolerance of the tests)
in values and in the gradients of the maps, the attention and ``lambda``; of those, the fastest forward +
backward wins. When the first candidate wins although others were offered, one warning says why. The
decision is cached for the process; the check itself synchronises the device, once per key.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from scm_calib.ops.torch_stencil import diffuse_torch

#: A diffusion operator ``(maps, attn, lam, num_iters, alpha, eps) -> u``, the contract of ``diffuse_torch``.
Operator = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | float, int, float, float], torch.Tensor]

#: Largest accepted ``|actual - expected| / (|expected| + max |expected|)``, per tensor: the float32
#: tolerance of ``tests/test_ops.py`` (``rtol = 1e-4``, ``atol = rtol * max |expected|``).
RTOL = 1e-4

#: The checked problem on the grid: batch, classes, Newton-Schulz iterations (the chain of blocks 2-4),
#: and the number of timed forward + backward runs per candidate (the median counts).
CHECK_BATCH, CHECK_CLASSES, CHECK_ITERS, CHECK_REPEATS = 16, 32, 4, 5

_ALPHA, _EPS, _LAMBDA = 0.002, 1e-8, 1.3


@dataclass(frozen=True)
class Selection:
    """The backend that ``auto`` runs for one (device, dtype, grid), and the evidence.

    Attributes:
        backend: Name of the chosen candidate.
        errors: Largest relative difference of each candidate that ran from the first one, over values
            and gradients (see ``RTOL``); ``inf`` for a non-finite result.
        times_ms: Median forward + backward milliseconds of each candidate that agreed.
        failures: Error message of each candidate that raised.
        reason: Why the first candidate was kept although others were offered; empty otherwise.
    """

    backend: str
    errors: dict[str, float]
    times_ms: dict[str, float]
    failures: dict[str, str]
    reason: str


_SELECTIONS: dict[tuple[torch.device, torch.dtype, tuple[int, int]], Selection] = {}


def clear_selections() -> None:
    """Forgets every cached decision, so the next ``auto`` call checks again (for tests and benchmarks)."""
    _SELECTIONS.clear()


def default_candidates() -> dict[str, Operator]:
    """The torch operator (the reference and the fallback), then the Triton one (needs Triton)."""
    from scm_calib.ops.triton_kernels import diffuse_triton

    return {"torch": diffuse_torch, "triton": diffuse_triton}


def select_backend(
    device: torch.device,
    dtype: torch.dtype,
    grid: tuple[int, int],
    candidates: Mapping[str, Operator] | None = None,
) -> Selection:
    """The backend for a (device, dtype, grid): checked and timed once per process, then cached.

    Args:
        device: Device of the inputs.
        dtype: Dtype of the inputs.
        grid: Patch grid ``(h, w)``.
        candidates: Operators by name, the reference (and fallback) first; ``None`` for
            ``default_candidates()``. The cache is keyed by (device, dtype, grid) only: call
            ``clear_selections()`` before passing other candidates for a key already decided.

    Returns:
        The cached ``Selection``; its ``reason`` was issued once as a warning when the decision was made.
    """
    key = (torch.device(device), dtype, (int(grid[0]), int(grid[1])))
    if key not in _SELECTIONS:
        selection = _check(*key, dict(candidates or default_candidates()))
        if selection.reason:
            warnings.warn(selection.reason, RuntimeWarning, stacklevel=2)
        _SELECTIONS[key] = selection
    return _SELECTIONS[key]


def _check(
    device: torch.device, dtype: torch.dtype, grid: tuple[int, int], candidates: dict[str, Operator]
) -> Selection:
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        generator = torch.Generator().manual_seed(0)
        shape = (CHECK_BATCH, *grid)
        maps = torch.randn(CHECK_BATCH, CHECK_CLASSES, *grid, generator=generator, dtype=dtype).to(device)
        attn = torch.rand(shape, generator=generator, dtype=dtype).to(device)
        probe = torch.randn(shape, generator=generator, dtype=dtype).to(device)
        steps = {name: _forward_backward(op, maps, attn, probe) for name, op in candidates.items()}
        reference, *others = steps
        expected = steps[reference]()
        errors, failures = {reference: 0.0}, {}
        for name in others:
            try:
                errors[name] = _relative_error(steps[name](), expected)
            except Exception as error:  # a candidate that cannot run here is not chosen; the reason is kept
                failures[name] = f"{type(error).__name__}: {error}".splitlines()[0]
        agreeing = [name for name, error in errors.items() if error <= RTOL]
        times_ms = _median_ms({name: steps[name] for name in agreeing}, device)
    backend = min(agreeing, key=times_ms.__getitem__)
    if backend != reference or not others:
        return Selection(backend, errors, times_ms, failures, "")
    reasons = [f"{name!r} failed ({message})" for name, message in failures.items()]
    reasons += [
        f"{name!r} differs from {reference!r} by {error:.1e} (tolerance {RTOL:.0e})"
        for name, error in errors.items()
        if error > RTOL
    ]
    reasons += [
        f"{name!r} is not faster ({times_ms[name]:.3f} ms against {times_ms[reference]:.3f} ms forward + backward)"
        for name in agreeing
        if name != reference
    ]
    where = f"{device}, {str(dtype).removeprefix('torch.')}, {grid[0]}x{grid[1]} grid"
    reason = f"scm_calib: backend='auto' runs {reference!r} on {where}: {'; '.join(reasons)}"
    return Selection(backend, errors, times_ms, failures, reason)


def _forward_backward(
    op: Operator, maps: torch.Tensor, attn: torch.Tensor, probe: torch.Tensor
) -> Callable[[], tuple[torch.Tensor, ...]]:
    """One call of ``op`` and the gradients of ``(u * probe).sum()`` for maps, attention and lambda."""

    def step() -> tuple[torch.Tensor, ...]:
        leaves = (maps.detach().requires_grad_(), attn.detach().requires_grad_())
        lam = torch.tensor(_LAMBDA, dtype=maps.dtype, device=maps.device, requires_grad=True)
        u = op(*leaves, lam, CHECK_ITERS, _ALPHA, _EPS)
        return (u.detach(), *torch.autograd.grad((u * probe).sum(), (*leaves, lam)))

    return step


def _relative_error(actual: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...]) -> float:
    """Largest ``|a - e| / (|e| + max |e|)`` over the tensors; a non-finite result or a wrong shape is ``inf``."""
    worst = 0.0
    for a, e in zip(actual, expected, strict=True):
        if a.shape != e.shape:
            return float("inf")
        scale = (e.abs() + e.abs().max()).clamp_min(torch.finfo(e.dtype).tiny)
        error = ((a - e).abs() / scale).max()
        worst = max(worst, error.item() if torch.isfinite(error) else float("inf"))
    return worst


def _median_ms(steps: dict[str, Callable[[], object]], device: torch.device) -> dict[str, float]:
    """Median milliseconds of each step; the steps take turns, so a shared machine slows all alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(CHECK_REPEATS):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}
