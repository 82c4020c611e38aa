"""The 4-neighbour grid graph of an h x w patch grid (SCM's spatial prior, Bai et al., ECCV 2022).

The graph is constant for a grid size, so its degree plane and its dense Laplacian are built once per
``(h, w, device, dtype)`` and cached: repeated calls return the same tensor object, and nothing is
rebuilt on the host per forward.
"""

import functools

import torch


def _check_grid(h: int, w: int) -> None:
    if h < 1 or w < 1:
        raise ValueError(f"grid size must be at least 1 x 1, got h={h}, w={w}; pass the patch grid of the ViT")


@functools.lru_cache(maxsize=64)
def grid_degree(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Degree of every node of the 4-neighbour h x w grid graph (2 in corners, 3 on edges, 4 inside).

    The tensor is cached per arguments; treat it as read-only.

    Args:
        h: Grid height (rows of patches).
        w: Grid width (columns of patches).
        device: Device of the result.
        dtype: Floating dtype of the result.

    Returns:
        Degrees, shape (h, w).
    """
    _check_grid(h, w)
    with torch.inference_mode(False):
        rows = torch.arange(h, device=device)
        cols = torch.arange(w, device=device)
        vertical = (rows > 0).to(dtype) + (rows < h - 1).to(dtype)
        horizontal = (cols > 0).to(dtype) + (cols < w - 1).to(dtype)
        return vertical[:, None] + horizontal[None, :]


@functools.lru_cache(maxsize=16)
def grid_laplacian(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Dense graph Laplacian ``L = D - Adj`` of the 4-neighbour h x w grid, nodes in row-major order.

    The tensor is cached per arguments; treat it as read-only. The fast operator never needs it (it
    works on stencil planes); it is the paper's formulation, used by the dense reference.

    Args:
        h: Grid height (rows of patches).
        w: Grid width (columns of patches).
        device: Device of the result.
        dtype: Floating dtype of the result.

    Returns:
        Laplacian, shape (h*w, h*w), symmetric, zero row sums.
    """
    _check_grid(h, w)
    n = h * w
    with torch.inference_mode(False):
        index = torch.arange(n, device=device).view(h, w)
        adjacency = torch.zeros(n, n, dtype=dtype, device=device)
        east = (index[:, :-1].reshape(-1), index[:, 1:].reshape(-1))
        south = (index[:-1, :].reshape(-1), index[1:, :].reshape(-1))
        for first, second in (east, south):
            adjacency[first, second] = 1.0
            adjacency[second, first] = 1.0
        return torch.diag(adjacency.sum(dim=1)) - adjacency
