"""The dense reference of SCM (Bai et al., ECCV 2022): METHOD.md section 2, formula by formula.

Dense (B, N, N) similarity, Laplacian and Newton-Schulz matrices, as in the official code, plus the
numerical fixes of ``scm_calib`` (eps in the cosine similarity, in ``max a`` and in min-max, ``beta``
clamped). This file is the definition of correctness that the fast paths are tested against.
"""

import torch
import torch.nn.functional as F
from torch import nn

from scm_calib.ops.grid import grid_laplacian


def reference_diffuse(
    maps: torch.Tensor,
    attn: torch.Tensor,
    lam: torch.Tensor | float,
    num_iters: int,
    alpha: float = 0.002,
    eps: float = 1e-8,
    initial_from: tuple[torch.Tensor, torch.Tensor | float] | None = None,
) -> torch.Tensor:
    """``u = P_K^T a`` of one SCM block with dense matrices.

    Args:
        maps: Class-score maps, shape (B, C, h, w).
        attn: Attention, shape (B, h, w).
        lam: The block's ``lambda``.
        num_iters: Newton-Schulz iterations ``K``.
        alpha: Newton-Schulz step.
        eps: Lower bound of the norm in the cosine similarity.
        initial_from: ``(maps, lambda)`` to build ``P_0`` from, held constant; default: the inputs (the
            official code). With constants here, finite differences give the detached-``P_0`` gradient.

    Returns:
        ``u``, shape (B, h, w).
    """
    batch, _, h, w = maps.shape
    n = h * w
    operator = _operator(maps, lam, eps)
    identity = torch.eye(n, dtype=maps.dtype, device=maps.device)
    initial = operator if initial_from is None else _operator(*initial_from, eps)
    inverse = alpha * initial.transpose(1, 2).detach()
    for _ in range(num_iters):
        inverse = inverse @ (2.0 * identity - operator @ inverse)
    u = inverse.transpose(1, 2) @ attn.reshape(batch, n, 1)
    return u.reshape(batch, h, w)


def _operator(maps: torch.Tensor, lam: torch.Tensor | float, eps: float) -> torch.Tensor:
    """``M = L * (lambda * Sim - 1)``, shape (B, N, N), from maps (B, C, h, w)."""
    _, _, h, w = maps.shape
    unit = F.normalize(maps.flatten(2).transpose(1, 2), dim=-1, eps=eps)
    similarity = unit @ unit.transpose(1, 2)
    return grid_laplacian(h, w, maps.device, maps.dtype) * (lam * similarity - 1.0)


def reference_gate(
    u: torch.Tensor, attn: torch.Tensor, beta: torch.Tensor | float, eps: float = 1e-8, beta_min: float = 1e-4
) -> torch.Tensor:
    """``minmax(tanhshrink(u / (beta * max_n a)))`` per image, with the eps and beta clamps.

    Args:
        u: Diffusion output, shape (B, h, w).
        attn: Attention, shape (B, h, w).
        beta: The block's ``beta``.
        eps: Lower bound of ``max a`` and of ``max - min``.
        beta_min: Lower bound of ``beta``.

    Returns:
        The gate, shape (B, h, w), in [0, 1].
    """
    beta = torch.as_tensor(beta, dtype=u.dtype, device=u.device).clamp_min(beta_min)
    peak = attn.flatten(1).amax(dim=1).clamp_min(eps).view(-1, 1, 1)
    x = F.tanhshrink(u / (beta * peak))
    low = x.flatten(1).amin(dim=1).view(-1, 1, 1)
    high = x.flatten(1).amax(dim=1).view(-1, 1, 1)
    return (x - low) / (high - low).clamp_min(eps)


class ReferenceSCM(nn.Module):
    """Dense SCM: ``num_blocks`` blocks of diffusion, gate and residual update."""

    def __init__(
        self,
        num_blocks: int = 4,
        num_iters: tuple[int, ...] = (16, 4, 4, 4),
        alpha: float = 0.002,
        lambda_init: float = 1.0,
        beta_init: float = 0.5,
        eps: float = 1e-8,
        beta_min: float = 1e-4,
    ) -> None:
        super().__init__()
        self.num_iters = tuple(num_iters)
        self.alpha, self.eps, self.beta_min = alpha, eps, beta_min
        self.lambda_ = nn.ParameterList([nn.Parameter(torch.tensor(lambda_init)) for _ in range(num_blocks)])
        self.beta = nn.ParameterList([nn.Parameter(torch.tensor(beta_init)) for _ in range(num_blocks)])

    def forward(self, maps: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibrate maps (B, C, h, w) and attention (B, h, w); returns both updated."""
        for lam, beta, num_iters in zip(self.lambda_, self.beta, self.num_iters, strict=True):
            lam, beta = lam.to(maps.dtype), beta.to(maps.dtype)
            u = reference_diffuse(maps, attn, lam, num_iters, self.alpha, self.eps)
            u = reference_gate(u, attn, beta, self.eps, self.beta_min)
            maps = maps * (1.0 + u.unsqueeze(1))
            attn = attn + u
        return maps, attn
