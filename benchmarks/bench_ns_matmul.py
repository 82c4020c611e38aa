"""What the dense Newton-Schulz block of SCM could gain from tensor cores: matmul speed and diffusion accuracy.

SCM's first block (K = 16 Newton-Schulz iterations, Bai et al., ECCV 2022) runs on the dense path on every
backend: at batch 128, 200 classes and a 14 x 14 grid it performs 60.4 GFLOP of batched 196 x 196 float32
matmuls (forward and backward; ``--flops`` counts them), all the matmul work of the 4 SCM blocks. This script
measures in one run, for the path's N x N products (``torch_stencil._square_matmul``) in float32, in TF32 and
in 3xTF32 (three TF32 products of the inputs split into a TF32 part and a remainder):

1. one batched matmul of that shape (and bfloat16 on CUDA, for scale): milliseconds, TFLOP/s and the
   largest relative difference from float64;
2. the K = 16 diffusion (torch operator, forward + backward) with those products: its time and its largest
   relative difference from float64 over the values and the gradients (the tests' tolerance is 1e-4).

On CUDA the TF32 products run on the tensor cores. On a CPU they are emulated: the inputs are rounded to TF32
(10 mantissa bits, to nearest) and multiplied in float32, which is what a tensor core computes up to the
order of accumulation; the times then mean nothing, the differences do.

    python benchmarks/bench_ns_matmul.py --flops                 # CUDA: B=128, 14x14
    python benchmarks/bench_ns_matmul.py --device cpu --batch 4  # the accuracy, emulated
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "tests")]

from benchmark import measure  # noqa: E402  (median ms, the benchmarks' one timer)
from reference_scm import ReferenceSCM  # noqa: E402  (the dense formulas of the official code)

from scm_calib import SCM  # noqa: E402
from scm_calib.ops import diffuse, torch_stencil  # noqa: E402
from scm_calib.ops.selection import _relative_error as largest_difference  # noqa: E402  (the tolerance's measure)


@contextlib.contextmanager
def fp32_matmul(precision: str) -> Iterator[None]:
    """float32 matmuls on CUDA in ``"ieee"`` (float32) or ``"tf32"`` for the block (a no-op on the CPU)."""
    previous = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = precision
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = previous


def to_tf32(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to the nearest TF32 value (10 mantissa bits), still stored as float32."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def tf32_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of TF32 values: on the tensor cores on CUDA, in float32 elsewhere (the same products)."""
    if a.is_cuda:
        with fp32_matmul("tf32"):
            return torch.bmm(a, b)
    return torch.bmm(a, b)


def matmul_3xtf32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` from three TF32 products: ``hi(a) hi(b) + (hi(a) lo(b) + lo(a) hi(b))``."""
    a_hi, b_hi = to_tf32(a), to_tf32(b)
    return tf32_product(a_hi, b_hi) + (tf32_product(a_hi, to_tf32(b - b_hi)) + tf32_product(to_tf32(a - a_hi), b_hi))


#: The N x N products compared: float32 (what the library runs), TF32, 3xTF32.
PRODUCTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "float32": torch.bmm,
    "TF32": lambda a, b: tf32_product(to_tf32(a), to_tf32(b)),
    "3xTF32": matmul_3xtf32,
}


@contextlib.contextmanager
def square_products(product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """The Newton-Schulz path's N x N products computed by ``product`` for the block."""
    chosen = torch_stencil._square_matmul
    torch_stencil._square_matmul = lambda a, b, add=None: product(a, b) if add is None else add + product(a, b)
    try:
        yield
    finally:
        torch_stencil._square_matmul = chosen


def diffusion_step(
    maps: torch.Tensor, attn: torch.Tensor, probe: torch.Tensor, iters: int, dtype: torch.dtype
) -> Callable[[], list[torch.Tensor]]:
    """The K-iteration diffusion (torch operator) in ``dtype``: its values and the gradients of maps, attention
    and lambda."""

    def run() -> list[torch.Tensor]:
        m, a = maps.to(dtype).requires_grad_(), attn.to(dtype).requires_grad_()
        lam = torch.tensor(1.3, dtype=dtype, device=maps.device, requires_grad=True)
        u = diffuse(m, a, lam, iters, backend="torch")
        return [u.detach(), *torch.autograd.grad((u * probe.to(dtype)).sum(), (m, a, lam))]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--grid", type=int, default=14)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--iters", type=int, default=16, help="Newton-Schulz iterations of the dense block")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--flops", action="store_true", help="also count the matmul FLOPs of the 4 SCM blocks")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    n, batch = args.grid**2, args.batch
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{name}, torch {torch.__version__}: batch {batch}, {args.grid}x{args.grid} grid (N = {n}), K = {args.iters}")
    if args.flops:
        maps = torch.randn(batch, args.classes, args.grid, args.grid, device=device, requires_grad=True)
        attn = torch.rand(batch, args.grid, args.grid, device=device, requires_grad=True)
        for label, scm in [
            ("scm_calib", SCM(backend="torch")),
            ("dense formulas (tests/reference_scm.py)", ReferenceSCM()),
        ]:
            with FlopCounterMode(display=False) as counter:
                out, updated = scm.to(device)(maps, attn)
                (out.sum() + updated.sum()).backward()
            blocks = {k: sum(v.values()) for k, v in counter.get_flop_counts().items() if ".blocks." in k}
            by_block = ", ".join(
                f"block {int(k.rsplit('.', 1)[1]) + 1}: {v / 1e9:.1f}" for k, v in sorted(blocks.items())
            )
            print(f"matmul GFLOP of the 4 SCM blocks, forward + backward, {args.classes} classes, {label}: "
                  f"{counter.get_total_flops() / 1e9:.1f}" + (f" ({by_block})" if by_block else ""))  # fmt: skip

    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(batch, n, n, generator=generator).to(device) for _ in range(2))
    flop = 2 * batch * n**3
    variants = {label: (lambda p=product: p(a, b)) for label, product in PRODUCTS.items()}
    if cuda:
        a16, b16 = a.bfloat16(), b.bfloat16()
        variants["bfloat16"] = lambda: torch.bmm(a16, b16)
    if not cuda:
        print("TF32 emulated: inputs rounded to TF32, products in float32 (the differences hold, the times do not)")
    exact = torch.bmm(a.double(), b.double())
    print("\n| batched matmul | ms | TFLOP/s | largest relative difference from float64 |")
    print("|---|---|---|---|")
    for label, fn in variants.items():
        with fp32_matmul("ieee"):
            ms = measure(fn, device, args.repeats, warmup=1)[0]
            error = ((fn().double() - exact).abs().max() / exact.abs().max()).item()
        print(f"| {label} | {ms:.3f} | {flop / ms / 1e9:.2f} | {error:.1e} |")

    maps, attn, probe = (
        torch.randn(batch, 32, args.grid, args.grid, generator=generator).to(device),
        torch.rand(batch, args.grid, args.grid, generator=generator).to(device),
        torch.randn(batch, args.grid, args.grid, generator=generator).to(device),
    )
    print(f"\n| N x N products of the K = {args.iters} diffusion (forward + backward, 32 classes) | ms | "
          "largest relative difference from float64 (tolerance 1e-4) |")  # fmt: skip
    print("|---|---|---|")
    expected = diffusion_step(maps, attn, probe, args.iters, torch.float64)()
    step = diffusion_step(maps, attn, probe, args.iters, torch.float32)
    for label, product in PRODUCTS.items():
        with fp32_matmul("ieee"), square_products(product):
            error = largest_difference(step(), expected)
            ms = measure(step, device, args.repeats, warmup=1)[0]
        print(f"| {label} | {ms:.2f} | {error:.1e} |")


if __name__ == "__main__":
    main()
