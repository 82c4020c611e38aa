"""SCM, the Spatial Calibration Module of Bai et al., "Weakly Supervised Object Localization via Transformer
with Implicit Spatial Calibration" (ECCV 2022).

At training time SCM diffuses the class-token attention along the semantic similarity of neighbouring
patches and gates the class-score maps with the result; at inference it is removed. Each block has two
learnable scalars, ``lambda_`` and ``beta``; the diffusion operator lives in ``scm_calib.ops``.
"""

import contextlib
import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scm_calib.ops import BACKENDS, diffuse


def spatial_gate(
    u: torch.Tensor, attn: torch.Tensor, beta: torch.Tensor | float, eps: float = 1e-8, beta_min: float = 1e-4
) -> torch.Tensor:
    """SCM's gate ``minmax(tanhshrink(u / (beta * max_n a)))``, min-max per image.

    The gate uses ``|beta|`` floored at ``beta_min`` (see :func:`effective_beta`), and ``max_n a`` and
    ``max - min`` are clamped to ``eps``, so ``beta <= 0``, a zero attention and a constant ``u`` give finite
    values (a constant ``u`` gives zeros).

    Args:
        u: Diffusion output, shape (B, h, w).
        attn: Attention, shape (B, h, w).
        beta: The block's ``beta``.
        eps: Lower bound of ``max_n a`` and of ``max - min``.
        beta_min: Lower bound of ``beta``.

    Returns:
        The gate, shape (B, h, w), in [0, 1].
    """
    beta = effective_beta(torch.as_tensor(beta, dtype=u.dtype, device=u.device), beta_min)
    peak = attn.flatten(1).amax(dim=1).clamp_min(eps)[:, None, None]
    return minmax(F.tanhshrink(u / (beta * peak)), eps)


def effective_beta(beta: torch.Tensor, beta_min: float = 1e-4) -> torch.Tensor:
    """The ``beta`` that the gate divides by: ``max(|beta|, beta_min)``, with the gradient of ``|beta|`` (+1 at 0).

    For ``beta >= beta_min`` this is ``beta`` itself, value and gradient (the official code). Below, the floor
    passes the gradient straight through, so a ``beta`` that an optimizer pushed to or below zero keeps
    learning instead of sitting at a zero gradient.

    Args:
        beta: The block's ``beta``, a scalar tensor.
        beta_min: The floor, positive.

    Returns:
        The positive ``beta``, a scalar tensor.
    """
    magnitude = torch.where(beta < 0, -beta, beta)
    return magnitude + (magnitude.clamp_min(beta_min) - magnitude).detach()


def newton_schulz_bound(lambda_: float) -> float:
    """Gershgorin bound of ``|M|`` for a given ``lambda``, over every grid and every class-score map.

    Newton-Schulz from ``P_0 = alpha * M^T`` converges while ``alpha * |M|^2 < 2``; ``|M_ii| <= 4 max(|lambda - 1|,
    1)`` and each of at most 4 neighbours has ``|M_ij| <= 1 + |lambda|``.

    Args:
        lambda_: A block's ``lambda``.

    Returns:
        The bound of the spectral radius of ``M``.
    """
    return 4.0 * max(abs(lambda_ - 1.0), 1.0) + 4.0 * (1.0 + abs(lambda_))


def minmax(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max normalises each sample of (B, ...) to [0, 1]; ``max - min`` is clamped to ``eps``, so a
    constant sample becomes zeros, never NaN."""
    flat = x.flatten(1)
    low = flat.amin(dim=1, keepdim=True)
    span = (flat.amax(dim=1, keepdim=True) - low).clamp_min(eps)
    return ((flat - low) / span).view_as(x)


class SCMBlock(nn.Module):
    """One SCM block: diffusion, gate and residual update ``X = X * (1 + u)``, ``a = a + u``.

    Args:
        num_iters: Newton-Schulz iterations ``K`` of the diffusion.
        alpha: Newton-Schulz step (``P_0 = alpha * M^T``).
        lambda_init: Initial ``lambda`` (weight of the similarity in ``M``).
        beta_init: Initial ``beta`` (temperature of the gate).
        eps: Numerical lower bound (cosine similarity norm, ``max a``, min-max range).
        beta_min: Lower bound of ``beta`` in the gate.
        backend: Diffusion backend, ``"auto"``, ``"torch"`` or ``"triton"``.
    """

    def __init__(
        self,
        num_iters: int,
        alpha: float = 0.002,
        lambda_init: float = 1.0,
        beta_init: float = 0.5,
        eps: float = 1e-8,
        beta_min: float = 1e-4,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if isinstance(num_iters, bool) or not isinstance(num_iters, numbers.Integral) or num_iters < 1:
            raise ValueError(f"num_iters must be an int of at least 1, got {num_iters!r}")
        for name, value in (("alpha", alpha), ("beta_init", beta_init), ("eps", eps), ("beta_min", beta_min)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not math.isfinite(lambda_init):
            raise ValueError(f"lambda_init must be a finite number, got {lambda_init!r}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
        self.num_iters, self.alpha, self.eps, self.beta_min, self.backend = num_iters, alpha, eps, beta_min, backend
        self.lambda_ = nn.Parameter(torch.tensor(float(lambda_init)))
        self.beta = nn.Parameter(torch.tensor(float(beta_init)))

    def forward(self, maps: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibrate once.

        Args:
            maps: Class-score maps, shape (B, C, h, w).
            attn: Attention, shape (B, h, w).

        Returns:
            Calibrated maps (B, C, h, w) and attention (B, h, w), in the dtype of the inputs; an empty batch
            gives empty outputs.
        """
        if maps.shape[0] == 0:
            return maps, attn
        lam, beta = self.lambda_.to(maps.dtype), self.beta.to(maps.dtype)
        u = diffuse(maps, attn, lam, self.num_iters, self.alpha, self.eps, self.backend)
        if u.device.type == "cpu":
            self._check_converged(u, maps, attn)
        u = spatial_gate(u, attn, beta, self.eps, self.beta_min)
        return maps * (1.0 + u.unsqueeze(1)), attn + u

    def _check_converged(self, u: torch.Tensor, maps: torch.Tensor, attn: torch.Tensor) -> None:
        """Raises if the Newton-Schulz iteration diverged, i.e. ``u`` is larger than any converged run can give.

        Converged (every eigenvalue ``mu`` of ``M`` with ``alpha mu^2 <= 2``), ``u = f(M) a`` with
        ``|f(mu)| <= min(alpha |mu| 2^K, 2 / |mu|) <= sqrt(2 alpha 2^K)``, so ``|u| <= sqrt(2 alpha 2^K) |a|`` per
        image. Only called for CPU tensors, where the check costs no host synchronisation; on a GPU a diverged
        block shows as non-finite or exploding logits.
        """
        limit = 2.0 * math.sqrt(2.0 * self.alpha * 2.0**self.num_iters)
        if (u.flatten(1).norm(dim=1) <= limit * attn.flatten(1).norm(dim=1)).all():
            return
        if not (torch.isfinite(maps).all() and torch.isfinite(attn).all()):
            raise ValueError("maps or attn contains NaN or infinite values; check the model outputs upstream")
        lam = self.lambda_.item()
        raise FloatingPointError(
            f"the Newton-Schulz iteration diverged at lambda={lam:.4g}: it converges while alpha * |M|^2 < 2, i.e. "
            f"|M| < {math.sqrt(2.0 / self.alpha):.3g} for alpha={self.alpha:g}, and this lambda allows |M| up to "
            f"{newton_schulz_bound(lam):.3g}. Keep lambda within that bound (lower its learning rate), or use a "
            "smaller alpha."
        )

    def extra_repr(self) -> str:
        return f"num_iters={self.num_iters}, alpha={self.alpha}, backend={self.backend!r}"


class SCM(nn.Module):
    """The Spatial Calibration Module: a stack of ``SCMBlock``s (paper defaults: 4 blocks, 16/4/4/4 iterations).

    Works for any grid ``h x w`` (square or not), any number of classes and any batch size. The module
    computes in float32 (float64 inputs stay float64): autocast is disabled inside and half-precision
    inputs are cast up, so under bf16 autocast the outputs are float32.

    Args:
        num_blocks: Number of blocks.
        num_iters: Newton-Schulz iterations per block (one entry per block).
        alpha: Newton-Schulz step.
        lambda_init: Initial ``lambda`` of every block.
        beta_init: Initial ``beta`` of every block.
        eps: Numerical lower bound (cosine similarity norm, ``max a``, min-max range).
        beta_min: Lower bound of ``beta`` in the gate.
        backend: Diffusion backend, ``"auto"`` (torch, except float32 on CUDA, where the Triton operator is
            used once a self-check on the device has found it equal to torch and faster; see
            :func:`scm_calib.ops.select_backend`), ``"torch"`` or ``"triton"``.

    Raises:
        ValueError: an impossible value (``alpha``, ``beta_init``, ``eps`` or ``beta_min`` not positive and
            finite, ``lambda_init`` not finite, fewer than one block or iteration); the message names it.
    """

    def __init__(
        self,
        num_blocks: int = 4,
        num_iters: Sequence[int] = (16, 4, 4, 4),
        alpha: float = 0.002,
        lambda_init: float = 1.0,
        beta_init: float = 0.5,
        eps: float = 1e-8,
        beta_min: float = 1e-4,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, numbers.Integral) or num_blocks < 1:
            raise ValueError(f"num_blocks must be an int of at least 1, got {num_blocks!r}")
        if not isinstance(num_iters, Sequence) or len(num_iters) != num_blocks:
            raise ValueError(
                f"num_iters needs one entry per block: got {num_iters!r} for num_blocks={num_blocks}; pass a tuple "
                "such as (16, 4, 4, 4)"
            )
        self.blocks = nn.ModuleList(
            SCMBlock(k, alpha, lambda_init, beta_init, eps, beta_min, backend) for k in num_iters
        )

    def forward(self, maps: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibrate class-score maps with the attention, and the attention with itself.

        Args:
            maps: Class-score maps, shape (B, C, h, w).
            attn: Semantic-agnostic attention, shape (B, h, w), expected in [0, 1].

        Returns:
            Calibrated maps (B, C, h, w) and updated attention (B, h, w), float32 (float64 for float64
            inputs).

        Raises:
            FloatingPointError: (CPU tensors) a block's Newton-Schulz iteration diverged; names the block and
                its ``lambda``.
        """
        _check_inputs(maps, attn)
        dtype = torch.promote_types(maps.dtype, torch.float32)
        with _autocast_disabled(maps.device.type):
            maps, attn = maps.to(dtype), attn.to(dtype)
            for index, block in enumerate(self.blocks):
                try:
                    maps, attn = block(maps, attn)
                except FloatingPointError as err:
                    raise FloatingPointError(f"SCM block {index}: {err}") from None
        return maps, attn


def _autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device_type``; nothing to switch off where it has none (``meta``).

    CUDA and the CPU are named first: torch.compile folds the comparison, where torch 2.11's Dynamo cannot trace
    ``is_autocast_available`` (a warning and a graph break in every compiled SCM)."""
    if device_type in ("cuda", "cpu") or torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _check_inputs(maps: torch.Tensor, attn: torch.Tensor) -> None:
    if maps.ndim != 4:
        raise ValueError(f"maps must be (B, C, h, w), got shape {tuple(maps.shape)}")
    if attn.ndim != 3:
        raise ValueError(f"attn must be (B, h, w), got shape {tuple(attn.shape)}; reshape tokens to the grid")
    if attn.shape != (maps.shape[0], *maps.shape[2:]):
        raise ValueError(
            f"attn {tuple(attn.shape)} must match maps {tuple(maps.shape)} in B, h and w: expected "
            f"{(maps.shape[0], *maps.shape[2:])}"
        )
    if not (maps.is_floating_point() and attn.is_floating_point()):
        raise TypeError(f"maps and attn must be floating point, got {maps.dtype} and {attn.dtype}")
    # Reading values is free on the CPU; on an accelerator it is a host sync, so it runs only while debugging.
    if maps.device.type != "cpu" and not torch.is_anomaly_enabled():
        return
    for name, tensor in (("maps", maps), ("attn", attn)):
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name} contains NaN or infinite values; check the model outputs upstream")
