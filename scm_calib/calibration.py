"""SCM, the Spatial Calibration Module of Bai et al., "Weakly Supervised Object Localization via Transformer
with Implicit Spatial Calibration" (ECCV 2022).

At training time SCM diffuses the class-token attention along the semantic similarity of neighbouring
patches and gates the class-score maps with the result; at inference it is removed. Each block has two
learnable scalars, ``lambda_`` and ``beta``; the diffusion operator lives in ``scm_calib.ops``.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scm_calib.ops import BACKENDS, diffuse


def spatial_gate(
    u: torch.Tensor, attn: torch.Tensor, beta: torch.Tensor | float, eps: float = 1e-8, beta_min: float = 1e-4
) -> torch.Tensor:
    """SCM's gate ``minmax(tanhshrink(u / (beta * max_n a)))``, min-max per image.

    ``beta`` is clamped to ``beta_min``, ``max_n a`` and ``max - min`` to ``eps``, so ``beta <= 0``, a zero
    attention and a constant ``u`` give finite values (a constant ``u`` gives zeros).

    Args:
        u: Diffusion output, shape (B, h, w).
        attn: Attention, shape (B, h, w).
        beta: The block's ``beta``.
        eps: Lower bound of ``max_n a`` and of ``max - min``.
        beta_min: Lower bound of ``beta``.

    Returns:
        The gate, shape (B, h, w), in [0, 1].
    """
    beta = torch.as_tensor(beta, dtype=u.dtype, device=u.device).clamp_min(beta_min)
    peak = attn.flatten(1).amax(dim=1).clamp_min(eps)[:, None, None]
    return minmax(F.tanhshrink(u / (beta * peak)), eps)


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
        if num_iters < 1:
            raise ValueError(f"num_iters must be at least 1, got {num_iters}")
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
            Calibrated maps (B, C, h, w) and attention (B, h, w), in the dtype of the inputs.
        """
        lam, beta = self.lambda_.to(maps.dtype), self.beta.to(maps.dtype)
        u = diffuse(maps, attn, lam, self.num_iters, self.alpha, self.eps, self.backend)
        u = spatial_gate(u, attn, beta, self.eps, self.beta_min)
        return maps * (1.0 + u.unsqueeze(1)), attn + u

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
        backend: Diffusion backend, ``"auto"`` (Triton on CUDA when available, else torch), ``"torch"``
            or ``"triton"``.
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
        if len(num_iters) != num_blocks:
            raise ValueError(f"num_iters needs one entry per block: got {tuple(num_iters)} for num_blocks={num_blocks}")
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
        """
        _check_inputs(maps, attn)
        dtype = torch.promote_types(maps.dtype, torch.float32)
        with torch.autocast(device_type=maps.device.type, enabled=False):
            maps, attn = maps.to(dtype), attn.to(dtype)
            for block in self.blocks:
                maps, attn = block(maps, attn)
        return maps, attn


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
