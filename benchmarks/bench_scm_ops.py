"""Speed of SCM (Bai et al., ECCV 2022): the dense reference against the structured operator.

Prints one table row per setting: forward+backward time of the full 4-block SCM module (16/4/4/4
Newton-Schulz iterations) with the dense reference of ``tests/reference_scm.py`` and with
``scm_calib.calibration.SCM`` on each available backend, measured side by side in one run (the
variants take turns, and the median of the repeats is printed).

    python benchmarks/bench_scm_ops.py                  # CPU default: B=16, C=200, 14x14
    python benchmarks/bench_scm_ops.py --device cuda    # adds the Triton backend
    python benchmarks/bench_scm_ops.py --device cuda --num-warps 1 2 4 8   # and Triton at each warp count
    TRITON_INTERPRET=1 python benchmarks/bench_scm_ops.py --batch 2 --repeats 1 --num-warps 1 2  # CPU try-out

``--num-warps`` times the Triton backend once more for each warp count per program (instead of the count
``triton_kernels._launch_config`` picks for the grid), in the same run, as ``triton wN`` columns.

``--graphs`` (CUDA) also times each backend replayed as a CUDA graph (``torch.cuda.make_graphed_callables``,
forward and backward), as ``<backend> graph`` columns: the step without the host's launch overhead. It first
checks the graphed module's outputs and gradients against the eager module's and prints the largest
relative difference.

    python benchmarks/bench_scm_ops.py --device cuda --batch 128 --graphs
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference_scm import ReferenceSCM  # noqa: E402

from scm_calib.calibration import SCM  # noqa: E402
from scm_calib.ops import triton_available  # noqa: E402


def _time_ms(steps: dict[str, Callable[[], None]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median wall time of every step in milliseconds; the steps take turns (fair under a shared CPU)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()
    for _ in range(repeats):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def _with_warps(step: Callable[[], None], num_warps: int) -> Callable[[], None]:
    """``step`` with every Triton chain kernel launched with ``num_warps`` warps per program."""
    from scm_calib.ops import triton_kernels

    def run() -> None:
        chosen = triton_kernels._launch_config
        triton_kernels._launch_config = lambda nodes: (chosen(nodes)[0], num_warps)
        try:
            step()
        finally:
            triton_kernels._launch_config = chosen

    return run


def _forward_backward(module: torch.nn.Module, maps: torch.Tensor, attn: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        calibrated, updated = module(maps, attn)
        (calibrated.mean(dim=(2, 3)).logsumexp(dim=1).sum() + updated.sum()).backward()

    return step


def _graphed(module: torch.nn.Module, maps: torch.Tensor, attn: torch.Tensor, label: str) -> Callable[[], None] | None:
    """``module``'s forward + backward replayed as CUDA graphs, after a check against the eager module (the
    graphing replaces ``module.forward`` in place, so the eager results come first)."""

    def results(run: Callable) -> list[torch.Tensor]:
        x, a = maps.detach().clone().requires_grad_(), attn.detach().clone().requires_grad_()
        calibrated, updated = run(x, a)
        (calibrated.mean(dim=(2, 3)).logsumexp(dim=1).sum() + updated.sum()).backward()
        return [calibrated.detach().clone(), updated.detach().clone(), x.grad, a.grad]

    eager = results(module)
    samples = (maps.detach().clone().requires_grad_(), attn.detach().clone().requires_grad_())
    try:
        graphed = torch.cuda.make_graphed_callables(module, samples)
        replayed = results(graphed)
    except Exception as error:  # noqa: BLE001 - a benchmark reports what failed and goes on
        print(f"{label}: capture failed ({type(error).__name__}: {error})")
        return None
    worst = max(((r - e).abs().max() / e.abs().max()).item() for e, r in zip(eager, replayed, strict=True))
    print(f"{label}: largest relative difference from eager (values, gradients) {worst:.1e}")
    return _forward_backward(graphed, maps, attn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[16])
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--grid", type=int, nargs=2, action="append", help="h w (repeatable); default 14 14")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-warps", type=int, nargs="+", default=[], help="also time Triton at these warp counts")
    parser.add_argument("--graphs", action="store_true", help="also time each backend as a CUDA graph (CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"  # Triton on CPU tensors (slow), to try the script
    backends = ["torch"] + (["triton"] if (device.type == "cuda" or interpreted) and triton_available() else [])
    warps = args.num_warps if "triton" in backends else []
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}, torch {torch.__version__}, SCM 4 blocks (16/4/4/4), forward+backward, float32")
    graphs = args.graphs and device.type == "cuda"
    columns = backends + [f"triton w{n}" for n in warps] + [f"{b} graph" for b in backends if graphs]
    header = f"{'B':>4} {'C':>5} {'grid':>7} {'dense ms':>10}" + "".join(
        f" {c + ' ms':>13} {'x faster':>9}" for c in columns
    )
    print(header)
    for h, w in args.grid or [(14, 14)]:
        for batch in args.batch:
            torch.manual_seed(0)
            maps = torch.randn(batch, args.classes, h, w, device=device, requires_grad=True)
            attn = torch.rand(batch, h, w, device=device, requires_grad=True)
            steps = {"dense": _forward_backward(ReferenceSCM().to(device), maps, attn)}
            for backend in backends:
                steps[backend] = _forward_backward(SCM(backend=backend).to(device), maps, attn)
            for n in warps:
                steps[f"triton w{n}"] = _with_warps(_forward_backward(SCM(backend="triton").to(device), maps, attn), n)
            for backend in backends if graphs else []:
                label = f"{backend} graph"
                graphed = _graphed(SCM(backend=backend).to(device), maps, attn, f"B={batch} {h}x{w} {label}")
                if graphed is not None:
                    steps[label] = graphed
            times = _time_ms(steps, device, args.repeats)
            row = f"{batch:>4} {args.classes:>5} {f'{h}x{w}':>7} {times['dense']:>10.1f}"
            for column in columns:
                if column not in times:
                    row += f" {'-':>13} {'-':>9}"
                    continue
                row += f" {times[column]:>13.2f} {times['dense'] / times[column]:>9.2f}"
            print(row)


if __name__ == "__main__":
    main()
