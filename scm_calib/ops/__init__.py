"""SCM's diffusion operator (Bai et al., ECCV 2022): one dispatch over a pure-PyTorch and a Triton backend.

``diffuse`` returns ``u = P_K^T a`` of one SCM block, the Newton-Schulz approximation of the inverse of
``M = L * (lambda * Sim - 1)`` applied to the attention, with the gradient of the official code
(``P_0`` detached). Both backends compute the same values and gradients as the dense formulation;
``backend="auto"`` checks that once per (device, dtype, grid) on CUDA before it trusts Triton (see
``select_backend``).
"""

import functools

import torch

from scm_calib.ops.selection import RTOL, Selection, clear_selections, select_backend
from scm_calib.ops.torch_stencil import diffuse_torch

BACKENDS = ("auto", "torch", "triton")


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it is optional; the torch backend never needs it)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype, grid: tuple[int, int]) -> str:
    """The backend that ``diffuse`` runs for a requested name and inputs.

    Args:
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
        device: Device of the inputs.
        dtype: Dtype of the inputs.
        grid: Patch grid ``(h, w)``.

    Returns:
        ``"torch"`` or ``"triton"``. ``"auto"`` gives torch except for float32 on CUDA with Triton
        importable, where ``select_backend`` decides (Triton if it agrees with torch and is faster).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    if backend == "auto":
        if device.type == "cuda" and dtype == torch.float32 and triton_available():
            return select_backend(device, dtype, grid).backend
        return "torch"
    if backend == "triton" and not triton_available():
        raise RuntimeError("backend='triton' needs the triton package, which is not importable; use 'torch'")
    return backend


def diffuse(
    maps: torch.Tensor,
    attn: torch.Tensor,
    lam: torch.Tensor | float,
    num_iters: int,
    alpha: float = 0.002,
    eps: float = 1e-8,
    backend: str = "auto",
) -> torch.Tensor:
    """SCM's diffusion of the attention along the class-score similarity of neighbouring patches.

    Computes ``u = P_K^T a`` where ``P_{k+1} = P_k (2I - M P_k)``, ``P_0 = alpha * M^T`` (no gradient
    through ``P_0``), ``M = L * (lambda * Sim - 1)``, ``L`` the 4-neighbour grid Laplacian and ``Sim`` the
    cosine similarity of the C-dimensional class-score vectors of the patches.

    Args:
        maps: Class-score maps, shape (B, C, h, w).
        attn: Attention, shape (B, h, w).
        lam: The block's ``lambda`` (a scalar tensor, differentiable, or a float).
        num_iters: Newton-Schulz iterations ``K`` (at least 1).
        alpha: Newton-Schulz step.
        eps: Lower bound of the norm in the cosine similarity.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (see ``resolve_backend``); ``"auto"`` on CUDA
            synchronises the device once per (device, dtype, grid), for its self-check.

    Returns:
        ``u``, shape (B, h, w), in the dtype of ``maps``.
    """
    if num_iters < 1:
        raise ValueError(f"num_iters must be at least 1, got {num_iters}")
    if maps.ndim != 4 or attn.shape != (maps.shape[0], *maps.shape[2:]):
        raise ValueError(
            f"expected maps (B, C, h, w) and attn (B, h, w), got {tuple(maps.shape)} and {tuple(attn.shape)}"
        )
    if resolve_backend(backend, maps.device, maps.dtype, (maps.shape[2], maps.shape[3])) == "triton":
        from scm_calib.ops.triton_kernels import diffuse_triton

        return diffuse_triton(maps, attn, lam, num_iters, alpha, eps)
    return diffuse_torch(maps, attn, lam, num_iters, alpha, eps)


__all__ = [
    "BACKENDS",
    "RTOL",
    "Selection",
    "clear_selections",
    "diffuse",
    "resolve_backend",
    "select_backend",
    "triton_available",
]
