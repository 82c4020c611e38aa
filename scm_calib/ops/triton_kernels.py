"""Triton kernels for SCM's diffusion operator (Bai et al., ECCV 2022): the stencil mat-vec chain.

For the blocks with few Newton-Schulz iterations (``2^K <= CHAIN_MAX_TERMS``) one program per image runs
the whole chain ``R^m a`` (``R = I - alpha M^2``, ``M`` given by its 5-point stencil) and, in the backward,
the hand-derived gradient of ``torch_stencil._ChainDiffusion``; the grid vector of an image lives in
registers (up to ``MAX_NODES`` patches), and neighbours are read back from a per-image buffer in global
memory (cache resident). The stencil coefficients come from ``torch_stencil.stencil_coefficients``
(O(N * C), autograd); blocks with many iterations use the dense Newton-Schulz path (cuBLAS matmuls).
Importing this module needs Triton; ``scm_calib.ops`` imports it only when the Triton backend runs.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from scm_calib.ops.torch_stencil import (
    CHAIN_MAX_TERMS,
    _ChainDiffusion,
    dense_diffusion,
    stencil_coefficients,
)

#: Largest grid (h * w patches) that one Triton program holds in registers.
MAX_NODES = 4096


@triton.jit
def _matvec(src, centre, east, west, south, north, offs, col, row, width, height, num_nodes):
    """``M v`` at the nodes ``offs`` of one image; ``v`` is read from ``src`` (with its neighbours)."""
    inside = offs < num_nodes
    out = centre * tl.load(src + offs, mask=inside, other=0.0)
    out += east * tl.load(src + offs + 1, mask=inside & (col < width - 1), other=0.0)
    out += west * tl.load(src + offs - 1, mask=inside & (col > 0), other=0.0)
    out += south * tl.load(src + offs + width, mask=inside & (row < height - 1), other=0.0)
    out += north * tl.load(src + offs - width, mask=inside & (row > 0), other=0.0)
    return out


@triton.jit
def _load_planes(centre_ptr, east_ptr, south_ptr, base, offs, col, row, width, num_nodes):
    """The five stencil coefficients of every node: centre, east, west, south, north (zero off the grid)."""
    inside = offs < num_nodes
    centre = tl.load(centre_ptr + base + offs, mask=inside, other=0.0)
    east = tl.load(east_ptr + base + offs, mask=inside, other=0.0)
    west = tl.load(east_ptr + base + offs - 1, mask=inside & (col > 0), other=0.0)
    south = tl.load(south_ptr + base + offs, mask=inside, other=0.0)
    north = tl.load(south_ptr + base + offs - width, mask=inside & (row > 0), other=0.0)
    return centre, east, west, south, north


@triton.jit
def _image_nodes(batch, height, width, BLOCK: tl.constexpr):
    """This program's image: its offset in the (B, h, w) planes, the stride between stacked planes, and its nodes
    (indices, which are on the grid, column, row)."""
    num_nodes = height * width
    base = tl.program_id(0) * num_nodes
    offs = tl.arange(0, BLOCK)
    return num_nodes, base, batch * num_nodes, offs, offs < num_nodes, offs % width, offs // width


@triton.jit
def _chain_forward_kernel(
    attn_ptr, centre_ptr, east_ptr, south_ptr, powers_ptr, scratch_ptr, out_ptr,
    batch, height, width, num_terms, alpha, BLOCK: tl.constexpr,
):  # fmt: skip
    num_nodes, base, stride, offs, inside, col, row = _image_nodes(batch, height, width, BLOCK)
    centre, east, west, south, north = _load_planes(
        centre_ptr, east_ptr, south_ptr, base, offs, col, row, width, num_nodes
    )
    v = tl.load(attn_ptr + base + offs, mask=inside, other=0.0)
    total = v
    tl.store(powers_ptr + base + offs, v, mask=inside)
    tl.debug_barrier()
    for m in range(1, num_terms):
        previous = powers_ptr + (m - 1) * stride + base
        mv = _matvec(previous, centre, east, west, south, north, offs, col, row, width, height, num_nodes)
        tl.store(scratch_ptr + base + offs, mv, mask=inside)
        tl.debug_barrier()
        mmv = _matvec(scratch_ptr + base, centre, east, west, south, north, offs, col, row, width, height, num_nodes)
        v = v - alpha * mmv
        total += v
        tl.store(powers_ptr + m * stride + base + offs, v, mask=inside)
        tl.debug_barrier()
    tl.store(scratch_ptr + base + offs, total, mask=inside)
    tl.debug_barrier()
    u = _matvec(scratch_ptr + base, centre, east, west, south, north, offs, col, row, width, height, num_nodes)
    tl.store(out_ptr + base + offs, alpha * u, mask=inside)


@triton.jit
def _chain_backward_kernel(
    grad_ptr, centre_ptr, east_ptr, south_ptr, powers_ptr, cumulative_ptr, scratch_ptr,
    grad_attn_ptr, grad_centre_ptr, grad_east_ptr, grad_south_ptr,
    batch, height, width, num_terms, alpha, BLOCK: tl.constexpr,
):  # fmt: skip
    num_nodes, base, stride, offs, inside, col, row = _image_nodes(batch, height, width, BLOCK)
    has_east = inside & (col < width - 1)
    has_south = inside & (row < height - 1)
    centre, east, west, south, north = _load_planes(
        centre_ptr, east_ptr, south_ptr, base, offs, col, row, width, num_nodes
    )
    scratch = scratch_ptr + base
    # H_l = sum_{j<=l} M R^j g, kept for every l; v runs through R^l g.
    v = tl.load(grad_ptr + base + offs, mask=inside, other=0.0)
    cumulative = tl.full((BLOCK,), 0.0, tl.float32)
    for term in range(num_terms):
        tl.store(scratch + offs, v, mask=inside)
        tl.debug_barrier()
        mv = _matvec(scratch, centre, east, west, south, north, offs, col, row, width, height, num_nodes)
        cumulative += mv
        tl.store(cumulative_ptr + term * stride + base + offs, cumulative, mask=inside)
        tl.debug_barrier()
        tl.store(scratch + offs, mv, mask=inside)
        tl.debug_barrier()
        v = v - alpha * _matvec(scratch, centre, east, west, south, north, offs, col, row, width, height, num_nodes)
        tl.debug_barrier()
    tl.store(grad_attn_ptr + base + offs, alpha * cumulative, mask=inside)
    # dL/dM_ij = -alpha^2 sum_{m<=n-2} A_m[i] H_{n-2-m}[j] with A_m = M R^m a.
    grad_centre = tl.full((BLOCK,), 0.0, tl.float32)
    grad_east = tl.full((BLOCK,), 0.0, tl.float32)
    grad_south = tl.full((BLOCK,), 0.0, tl.float32)
    for m in range(num_terms - 1):
        power = powers_ptr + m * stride + base
        a = _matvec(power, centre, east, west, south, north, offs, col, row, width, height, num_nodes)
        tl.store(scratch + offs, a, mask=inside)
        tl.debug_barrier()
        partner = cumulative_ptr + (num_terms - 2 - m) * stride + base
        h_here = tl.load(partner + offs, mask=inside, other=0.0)
        h_east = tl.load(partner + offs + 1, mask=has_east, other=0.0)
        h_south = tl.load(partner + offs + width, mask=has_south, other=0.0)
        a_east = tl.load(scratch + offs + 1, mask=has_east, other=0.0)
        a_south = tl.load(scratch + offs + width, mask=has_south, other=0.0)
        grad_centre += a * h_here
        grad_east += a * h_east + a_east * h_here
        grad_south += a * h_south + a_south * h_here
        tl.debug_barrier()
    scale = -alpha * alpha
    tl.store(grad_centre_ptr + base + offs, scale * grad_centre, mask=inside)
    tl.store(grad_east_ptr + base + offs, scale * grad_east, mask=has_east)
    tl.store(grad_south_ptr + base + offs, scale * grad_south, mask=has_south)


#: Whether the kernels were built for the Triton interpreter (``TRITON_INTERPRET=1`` at import).
_INTERPRETED = type(_chain_forward_kernel).__name__ == "InterpretedFunction"


def _launch_config(num_nodes: int) -> tuple[int, int]:
    block = triton.next_power_of_2(num_nodes)
    return block, min(8, max(1, block // 256))


class _TritonChainDiffusion(torch.autograd.Function):
    """The Triton version of ``torch_stencil._ChainDiffusion`` on full-size planes (B, h, w), float32.

    ``east`` and ``south`` are zero in the last column and the last row (no neighbour there).
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
        batch, h, w = attn.shape
        attn, centre, east, south = (t.contiguous() for t in (attn, centre, east, south))
        num_terms = 2**num_iters
        powers = attn.new_empty((num_terms, batch, h, w))
        scratch = torch.empty_like(attn)
        out = torch.empty_like(attn)
        block, num_warps = _launch_config(h * w)
        _chain_forward_kernel[(batch,)](
            attn, centre, east, south, powers, scratch, out, batch, h, w, num_terms, alpha,
            BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
        ctx.save_for_backward(centre, east, south, powers)
        ctx.alpha = alpha
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_u: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        centre, east, south, powers = ctx.saved_tensors
        num_terms, batch, h, w = powers.shape
        grad_u = grad_u.contiguous()
        cumulative = torch.empty_like(powers)
        scratch = torch.empty_like(grad_u)
        grad_attn = torch.empty_like(grad_u)
        grad_centre = torch.empty_like(centre)
        grad_east = torch.zeros_like(east)
        grad_south = torch.zeros_like(south)
        block, num_warps = _launch_config(h * w)
        _chain_backward_kernel[(batch,)](
            grad_u, centre, east, south, powers, cumulative, scratch,
            grad_attn, grad_centre, grad_east, grad_south,
            batch, h, w, num_terms, ctx.alpha, BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
        return grad_attn, grad_centre, grad_east, grad_south, None, None


def diffuse_triton(
    maps: torch.Tensor, attn: torch.Tensor, lam: torch.Tensor | float, num_iters: int, alpha: float, eps: float
) -> torch.Tensor:
    """SCM's diffusion ``u = P_K^T a`` with the Triton chain kernels (same contract as ``diffuse_torch``).

    Float32 only (the module computes in float32). Grids above ``MAX_NODES`` patches use the torch chain,
    and blocks with ``2^K > CHAIN_MAX_TERMS`` the dense Newton-Schulz path (cuBLAS), both on the same device.

    Args:
        maps: Class-score maps, shape (B, C, h, w), float32.
        attn: Attention, shape (B, h, w), float32.
        lam: The block's ``lambda``.
        num_iters: Newton-Schulz iterations ``K``.
        alpha: Newton-Schulz step.
        eps: Lower bound of the norm in the cosine similarity.

    Returns:
        ``u``, shape (B, h, w).
    """
    if maps.device.type != "cuda" and not _INTERPRETED:
        raise RuntimeError(
            f"backend='triton' got {maps.device.type} tensors: it runs on CUDA, or on CPU under the Triton "
            "interpreter (TRITON_INTERPRET=1 set before scm_calib.ops.triton_kernels is imported); "
            "use backend='torch' on CPU"
        )
    if maps.dtype != torch.float32 or attn.dtype != torch.float32:
        raise TypeError(
            f"the Triton backend computes in float32, got maps {maps.dtype} and attn {attn.dtype}; "
            "cast to float32 or use backend='torch'"
        )
    centre, east, south = stencil_coefficients(maps, lam, eps)
    _, h, w = attn.shape
    if 2**num_iters > CHAIN_MAX_TERMS:
        return dense_diffusion(attn, centre, east, south, num_iters, alpha)
    if h * w > MAX_NODES:
        return _ChainDiffusion.apply(attn, centre, east, south, num_iters, alpha)
    east, south = F.pad(east, (0, 1)), F.pad(south, (0, 0, 0, 1))
    return _TritonChainDiffusion.apply(attn, centre, east, south, num_iters, alpha)
