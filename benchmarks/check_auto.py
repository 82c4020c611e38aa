"""What ``backend="auto"`` decides: the self-check of ``scm_calib.ops.select_backend``, printed as a table.

For each grid, the torch and the Triton operator compute SCM's diffusion (Bai et al., ECCV 2022) and its
gradients on one small problem; the table gives Triton's largest relative difference from torch (the
tolerance is the tests'), both median forward + backward times, and the backend ``auto`` then runs.

    python benchmarks/check_auto.py                     # CUDA: 14x14 and 28x28 grids, float32
    python benchmarks/check_auto.py --device cpu --grid 2 3 --batch 2 --classes 3 --iters 1 --repeats 1

On the CPU the Triton kernels run under the Triton interpreter (the script sets ``TRITON_INTERPRET=1``),
so only tiny problems finish quickly, and torch wins on time.
"""

from __future__ import annotations

import argparse
import os
import warnings

import torch

from scm_calib.ops import RTOL, clear_selections, select_backend, selection, triton_available


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--grid", type=int, nargs=2, action="append", help="h w (repeatable); default 14 14, 28 28")
    parser.add_argument("--batch", type=int, default=selection.CHECK_BATCH)
    parser.add_argument("--classes", type=int, default=selection.CHECK_CLASSES)
    parser.add_argument("--iters", type=int, default=selection.CHECK_ITERS, help="Newton-Schulz iterations K")
    parser.add_argument("--repeats", type=int, default=selection.CHECK_REPEATS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if not triton_available():
        raise SystemExit("triton is not importable: backend='auto' runs torch everywhere; pip install triton")
    if device.type == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # read when scm_calib.ops.triton_kernels is first imported
    selection.CHECK_BATCH, selection.CHECK_CLASSES = args.batch, args.classes
    selection.CHECK_ITERS, selection.CHECK_REPEATS = args.iters, args.repeats
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, Triton interpreter"
    print(
        f"auto self-check on {device} ({name}), float32, torch {torch.__version__}: batch {args.batch}, "
        f"{args.classes} classes, K={args.iters}, median of {args.repeats} forward + backward; tolerance {RTOL:.0e}"
    )
    print("| grid | triton difference | torch ms | triton ms | triton / torch | auto runs |")
    print("|---|---|---|---|---|---|")
    reasons = []
    for h, w in args.grid or [(14, 14), (28, 28)]:
        clear_selections()
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            chosen = select_backend(device, torch.float32, (h, w))
        error = chosen.errors.get("triton")
        times = chosen.times_ms
        triton_ms = f"{times['triton']:.3f}" if "triton" in times else "-"
        ratio = f"{times['triton'] / times['torch']:.2f}x" if "triton" in times else "-"
        difference = f"{error:.1e}" if error is not None else f"failed: {chosen.failures.get('triton')}"
        print(f"| {h}x{w} | {difference} | {times['torch']:.3f} | {triton_ms} | {ratio} | {chosen.backend} |")
        if chosen.reason:
            reasons.append(chosen.reason)
    for reason in reasons:
        print(reason)


if __name__ == "__main__":
    main()
