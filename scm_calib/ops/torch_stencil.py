"""SCM's diffusion operator in pure PyTorch, on 5-point stencil planes instead of dense N x N matrices.

Block ``l`` of SCM (Bai et al., ECCV 2022) builds ``M = L * (lambda * Sim - 1)`` from the grid Laplacian
``L`` and the cosine similarity ``Sim`` of the patches' class-score vectors, runs ``K`` Newton-Schulz
iterations ``P_{k+1} = P_k (2I - M P_k)`` from ``P_0 = alpha * M^T`` (detached) and returns ``u = P_K^T a``.
``M`` has the sparsity of the grid, so it is stored as three planes: the centre coefficients ``M_ii``, the
east coefficients ``M_{i, i+1}`` and the south coefficients ``M_{i, i+w}`` (``M`` is symmetric).

Two exact evaluations of the same function and of the same (detached ``P_0``) gradient:

* small ``K`` (``2^K <= CHAIN_MAX_TERMS``): ``P_K = p_K(M)`` with ``p_K(M) = alpha M sum_{j<2^K} R^j``,
  ``R = I - alpha M^2``. A chain of stencil mat-vecs, with a hand-derived backward (see
  ``docs/operator.md``); cost O(2^K * N) per image.
* large ``K``: Newton-Schulz on dense ``P`` (stored transposed, ``T = P^T``), where ``T M`` is a stencil on
  the rows of ``T``: one dense matmul per iteration. The backward uses the residuals ``R^(2^k) = I - M P_k``
  of the forward in a doubling recursion: one dense matmul per iteration. Cost O(K * N^3) per image.
"""

import functools
import warnings

import torch
import torch.nn.functional as F

from scm_calib.ops.grid import grid_degree

#: Largest number of polynomial terms ``2^K`` evaluated by the mat-vec chain (``K <= 6``).
CHAIN_MAX_TERMS = 64

Planes = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def stencil_coefficients(maps: torch.Tensor, lam: torch.Tensor | float, eps: float) -> Planes:
    """The non-zero entries of ``M = L * (lambda * Sim - 1)`` as three planes, in O(N * C) per image.

    Args:
        maps: Class-score maps, shape (B, C, h, w).
        lam: The block's ``lambda`` (a scalar tensor or a float).
        eps: Lower bound of the norm in the cosine similarity (``F.normalize``'s ``eps``).

    Returns:
        ``(centre, east, south)``: ``M_ii`` of shape (B, h, w), ``M_{i, i+1}`` of shape (B, h, w-1) and
        ``M_{i, i+w}`` of shape (B, h-1, w), all in the dtype of ``maps``.
    """
    _, _, h, w = maps.shape
    unit = F.normalize(maps, dim=1, eps=eps)
    # Under torch.compile the graph holds the degree plane: the cache is for eager calls (and Dynamo warns on it).
    degree = (grid_degree.__wrapped__ if torch.compiler.is_compiling() else grid_degree)(h, w, maps.device, maps.dtype)
    centre = degree * (lam * (unit * unit).sum(dim=1) - 1.0)
    east = 1.0 - lam * (unit[..., :, :-1] * unit[..., :, 1:]).sum(dim=1)
    south = 1.0 - lam * (unit[..., :-1, :] * unit[..., 1:, :]).sum(dim=1)
    return centre, east, south


def stencil_matvec(v: torch.Tensor, centre: torch.Tensor, east: torch.Tensor, south: torch.Tensor) -> torch.Tensor:
    """``M v`` for every grid-shaped slice of ``v``, with ``M`` given by its stencil planes.

    Args:
        v: Grid vectors, shape (..., h, w).
        centre: ``M_ii``, shape broadcastable to (..., h, w).
        east: ``M_{i, i+1}``, shape broadcastable to (..., h, w-1).
        south: ``M_{i, i+w}``, shape broadcastable to (..., h-1, w).

    Returns:
        ``M v``, shape (..., h, w).
    """
    out = centre * v
    out = out + F.pad(east * v[..., :, 1:], (0, 1)) + F.pad(east * v[..., :, :-1], (1, 0))
    return out + F.pad(south * v[..., 1:, :], (0, 0, 0, 1)) + F.pad(south * v[..., :-1, :], (0, 0, 1, 0))


def _matvec_inplace(
    v: torch.Tensor, centre: torch.Tensor, east: torch.Tensor, south: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``stencil_matvec`` without autograd support, with in-place slice updates (into ``out`` if given)."""
    out = torch.mul(centre, v, out=out) if out is not None else centre * v
    out[..., :, :-1].addcmul_(east, v[..., :, 1:])
    out[..., :, 1:].addcmul_(east, v[..., :, :-1])
    out[..., :-1, :].addcmul_(south, v[..., 1:, :])
    out[..., 1:, :].addcmul_(south, v[..., :-1, :])
    return out


def _powers(v: torch.Tensor, planes: Planes, num_terms: int, alpha: float) -> torch.Tensor:
    """``R^m v`` for ``m < num_terms`` with ``R = I - alpha M^2``, stacked: shape (num_terms, *v.shape)."""
    out = v.new_empty((num_terms, *v.shape))
    out[0] = v
    for m in range(1, num_terms):
        out[m] = out[m - 1] - alpha * _matvec_inplace(_matvec_inplace(out[m - 1], *planes), *planes)
    return out


class _ChainDiffusion(torch.autograd.Function):
    """``u = p_K(M) a`` by stencil mat-vecs, with the gradient of Newton-Schulz from a detached ``P_0``.

    With ``R = I - alpha M^2``, ``n = 2^K``, ``A_m = M R^m a``, ``G_l = M R^l g`` (``g`` the gradient of
    ``u``) and ``H_k = sum_{l<=k} G_l``: ``grad a = alpha H_{n-1}`` and the gradient of the loss with
    respect to the entry ``M_ij`` is ``-alpha^2 sum_{m=0}^{n-2} A_m[i] H_{n-2-m}[j]``; a symmetric
    coefficient (east, south) collects ``(i, j)`` and ``(j, i)``.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        attn: torch.Tensor,
        centre: torch.Tensor,
        east: torch.Tensor,
        south: torch.Tensor,
        num_iters: int,
        alpha: float,
    ) -> torch.Tensor:
        planes = (centre, east, south)
        powers = _powers(attn, planes, 2**num_iters, alpha)
        ctx.save_for_backward(centre, east, south, powers)
        ctx.alpha = alpha
        return alpha * _matvec_inplace(powers.sum(dim=0), *planes)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_u: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        centre, east, south, powers = ctx.saved_tensors
        planes = (centre, east, south)
        alpha = ctx.alpha
        num_terms = powers.shape[0]
        cumulative = _matvec_inplace(_powers(grad_u.contiguous(), planes, num_terms, alpha), *planes).cumsum(0)
        grad_attn = alpha * cumulative[-1]
        if not any(ctx.needs_input_grad[1:4]):
            return grad_attn, None, None, None, None, None
        left = _matvec_inplace(powers[:-1], *planes)
        right = cumulative[:-1].flip(0)
        scale = -(alpha**2)
        grad_centre = scale * (left * right).sum(dim=0)
        grad_east = scale * (left[..., :, :-1] * right[..., :, 1:] + left[..., :, 1:] * right[..., :, :-1]).sum(0)
        grad_south = scale * (left[..., :-1, :] * right[..., 1:, :] + left[..., 1:, :] * right[..., :-1, :]).sum(0)
        return grad_attn, grad_centre, grad_east, grad_south, None, None


def _dense_operator(planes: Planes, num_nodes: int) -> torch.Tensor:
    """``M`` as a dense matrix, shape (B, N, N), from its stencil planes (B, h, w), (B, h, w-1), (B, h-1, w)."""
    centre = planes[0]
    batch, h, w = centre.shape
    identity = torch.eye(num_nodes, dtype=centre.dtype, device=centre.device).expand(batch, num_nodes, num_nodes)
    rows = _matvec_inplace(identity.reshape(batch, num_nodes, h, w), *(plane.unsqueeze(1) for plane in planes))
    return rows.reshape(batch, num_nodes, num_nodes)


def _times_operator(matrix: torch.Tensor, planes: Planes, out: torch.Tensor | None = None) -> torch.Tensor:
    """``X M`` for a batch of dense matrices ``X`` (B, N, N), as a stencil on the rows of ``X``."""
    batch, h, w = planes[0].shape
    rows_out = None if out is None else out.view(batch, -1, h, w)
    rows = _matvec_inplace(matrix.reshape(batch, -1, h, w), *(plane.unsqueeze(1) for plane in planes), out=rows_out)
    return rows.reshape(matrix.shape)


def _pair_entries(matrix: torch.Tensor, h: int, w: int) -> Planes:
    """The entries of a dense (B, N, N) matrix on the stencil: ``(X_ii, X_{i, i+1}, X_{i, i+w})`` as planes."""
    batch = matrix.shape[0]
    centre = matrix.diagonal(dim1=1, dim2=2).reshape(batch, h, w)
    east = F.pad(matrix.diagonal(offset=1, dim1=1, dim2=2), (0, 1)).reshape(batch, h, w)[..., :, :-1]
    south = matrix.diagonal(offset=w, dim1=1, dim2=2).reshape(batch, h - 1, w)
    return centre, east, south


def _square_matmul(a: torch.Tensor, b: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """``add + a @ b`` for batches of dense (B, N, N) matrices: the O(N^3) work of the Newton-Schulz path.

    Both of its N x N products go through here, so that ``benchmarks/bench_ns_matmul.py`` can time and check the
    path with other matmul precisions.
    """
    return torch.bmm(a, b) if add is None else torch.baddbmm(add, a, b)


def _doubling_sums(vectors: torch.Tensor, residuals: torch.Tensor) -> list[torch.Tensor]:
    """``S_{2^k} V`` for ``k = 0..K-1``, ``S_n = sum_{j<n} R^j``, from ``residuals[k] = R^(2^k)``.

    Args:
        vectors: Columns ``V``, shape (B, N, c).
        residuals: ``R^(2^k)`` (up to rounding symmetric; used as stored), shape (K, B, N, N).

    Returns:
        ``K`` tensors of shape (B, N, c); ``S_{2n} V = S_n V + R^n S_n V``.
    """
    sums = [vectors]
    for residual in residuals[:-1]:
        sums.append(torch.baddbmm(sums[-1], residual, sums[-1]))
    return sums


class _NewtonSchulzDiffusion(torch.autograd.Function):
    """Newton-Schulz on dense ``P`` with stencil products, and a backward with one matmul per iteration.

    Forward: ``T = P^T``, ``T_0 = alpha M``, ``T_{k+1} = 2 T_k - (T_k M) T_k`` with ``T_k M`` a stencil on
    the rows of ``T_k``, i.e. ``T_{k+1} = T_k + E_k^T T_k``; ``u = T_K a``. The residuals
    ``E_k = I - M P_k = R^(2^k)`` (``R = I - alpha M^2``) are kept. Backward (``P_0`` detached): the loss
    gradient with respect to ``M`` is ``-alpha^2 M F M`` with ``F = sum_{m+l<=n-2} R^m a g^T R^l``,
    ``n = 2^K``. Its symmetric part ``W = M (F + F^T) M`` obeys
    ``W_{2n} = E W_n + (E W_n)^T + M S_n a (M S_n g)^T + M S_n g (M S_n a)^T`` with ``S_n = sum_{j<n} R^j``
    (one matmul per level); working on ``M F M`` rather than ``F`` keeps the float32 terms balanced.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        attn: torch.Tensor,
        centre: torch.Tensor,
        east: torch.Tensor,
        south: torch.Tensor,
        num_iters: int,
        alpha: float,
    ) -> torch.Tensor:
        planes = (centre, east, south)
        batch, h, w = attn.shape
        n = h * w
        transposed = alpha * _dense_operator(planes, n)
        residuals = attn.new_empty((num_iters, batch, n, n))
        negated = tuple(-plane for plane in planes)
        for residual in residuals:
            _times_operator(transposed, negated, out=residual).diagonal(dim1=1, dim2=2).add_(1.0)
            transposed = _square_matmul(residual, transposed, add=transposed)
        ctx.save_for_backward(attn, centre, east, south, residuals, transposed)
        ctx.alpha = alpha
        return (transposed @ attn.reshape(batch, n, 1)).reshape(batch, h, w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_u: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        attn, centre, east, south, residuals, transposed = ctx.saved_tensors
        planes = (centre, east, south)
        alpha = ctx.alpha
        batch, h, w = attn.shape
        grad_u = grad_u.reshape(batch, -1, 1)
        grad_attn = (transposed.transpose(1, 2) @ grad_u).reshape(batch, h, w)
        if not any(ctx.needs_input_grad[1:4]):
            return grad_attn, None, None, None, None, None
        vectors = torch.stack((attn, grad_u.view(batch, h, w)), dim=1)
        weighted = _matvec_inplace(vectors, *(plane.unsqueeze(1) for plane in planes)).reshape(batch, 2, -1).mT
        pairs = _doubling_sums(weighted, residuals)
        sandwich = pairs[0] @ pairs[0].flip(2).transpose(1, 2)
        for residual, pair in zip(residuals[1:], pairs[1:], strict=True):
            half = _square_matmul(residual, sandwich)
            sandwich = torch.baddbmm(half + half.transpose(1, 2), pair, pair.flip(2).transpose(1, 2))
        grad_centre, grad_east, grad_south = _pair_entries(sandwich, h, w)
        scale = -(alpha**2)
        return grad_attn, 0.5 * scale * grad_centre, scale * grad_east, scale * grad_south, None, None


def tf32_in_use(device: torch.device) -> bool:
    """Whether float32 matmuls on ``device`` run in TF32: CUDA with ``torch.backends.cuda.matmul.fp32_precision``
    ``"tf32"``. That flag is set by ``torch.set_float32_matmul_precision("high")`` or ``"medium"`` and by
    ``allow_tf32 = True`` too."""
    return device.type == "cuda" and torch.backends.cuda.matmul.fp32_precision == "tf32"


@functools.cache
def _warn_tf32() -> None:
    warnings.warn(
        "scm_calib: float32 matmuls run in TF32 (torch.backends.cuda.matmul.fp32_precision == 'tf32', set by "
        "torch.set_float32_matmul_precision('high') or allow_tf32 = True). The dense Newton-Schulz products of SCM's "
        "blocks with many iterations (the first, K = 16, by default) amplify TF32's rounding: their output and "
        "gradients are then about 2 % off their float32 values (docs/operator.md, 'TF32 and the dense block'). Set "
        "torch.backends.cuda.matmul.fp32_precision = 'ieee' (PyTorch's default) to compute SCM exactly.",
        RuntimeWarning,
        stacklevel=3,
    )


def dense_diffusion(
    attn: torch.Tensor, centre: torch.Tensor, east: torch.Tensor, south: torch.Tensor, num_iters: int, alpha: float
) -> torch.Tensor:
    """``u`` by dense Newton-Schulz (``_NewtonSchulzDiffusion``), for any backend's blocks with large ``K``.

    Warns once per process where the float32 matmuls run in TF32 (see :func:`tf32_in_use`).
    """
    if not torch.compiler.is_compiling() and tf32_in_use(attn.device):
        _warn_tf32()
    return _NewtonSchulzDiffusion.apply(attn, centre, east, south, num_iters, alpha)


def diffuse_torch(
    maps: torch.Tensor, attn: torch.Tensor, lam: torch.Tensor | float, num_iters: int, alpha: float, eps: float
) -> torch.Tensor:
    """SCM's diffusion ``u = P_K^T a`` on the structured pure-PyTorch path (any device).

    Args:
        maps: Class-score maps, shape (B, C, h, w).
        attn: Attention, shape (B, h, w).
        lam: The block's ``lambda``.
        num_iters: Newton-Schulz iterations ``K``.
        alpha: Newton-Schulz step ``alpha`` (``P_0 = alpha * M^T``).
        eps: Lower bound of the norm in the cosine similarity.

    Returns:
        ``u``, shape (B, h, w).
    """
    planes = stencil_coefficients(maps, lam, eps)
    if 2**num_iters <= CHAIN_MAX_TERMS:
        return _ChainDiffusion.apply(attn, *planes, num_iters, alpha)
    return dense_diffusion(attn, *planes, num_iters, alpha)
