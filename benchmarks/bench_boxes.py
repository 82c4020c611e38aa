"""Speed of maps to boxes: the pure-torch sweep against the per-image OpenCV loop, side by side.

Both work on the same CAM-like maps (uniform noise on a ``--grid`` x ``--grid`` grid, bicubic to
``--size``). The OpenCV loop is wsolevaluation's: per map, ``cv2.resize`` (bicubic), min-max, uint8,
then for each of 100 thresholds ``cv2.threshold`` + ``findContours`` + the largest contour's box, with
``cv2.setNumThreads(1)``. The torch sweep does more: resize, normalise, quantise and, for all 100
thresholds, the boxes of the largest blob *and* of all blobs and holes, with their best IoU against a
ground-truth box (everything MaxBoxAcc and MaxBoxAccV2 need). On the CPU the sweep is timed with one
worker thread (the library's default; torch ops on torch's thread count) and with one worker per core
(``--threads``; this script then sets ``torch.set_num_threads(1)``, which the library never does); on CUDA
it also reports peak memory. Each sweep rate is
printed next to the GPU target of issue 12, 10,000 maps/s at 224 px.

Run: ``python benchmarks/bench_boxes.py`` (uses CUDA when present; ``--device cpu`` to force the CPU).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from scm_calib.boxes import SweepOptions, best_box_iou, prepare_maps

#: Maps per second that the sweep should reach on one GPU at 224 px.
TARGET_MAPS_PER_S = 10_000


def opencv_loop(grids: np.ndarray, size: int) -> float:
    """Seconds for wsolevaluation's per-map loop (largest contour, 100 thresholds), one thread."""
    import cv2

    cv2.setNumThreads(1)
    taus = np.arange(0, 1, 0.01)
    start = time.perf_counter()
    for grid in grids:
        cam = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        cam = cam - cam.min()
        cam = cam / cam.max()
        quantized = (cam * 255).astype(np.uint8)
        for tau in taus:
            _, binary = cv2.threshold(quantized, int(tau * np.max(quantized)), 255, cv2.THRESH_BINARY)
            contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
            if contours:
                cv2.boundingRect(max(contours, key=cv2.contourArea))
    return time.perf_counter() - start


def torch_sweep(grids: torch.Tensor, size: int, gt: list[torch.Tensor], chunk: int | None, threads: int) -> float:
    """Seconds for resize + normalise + quantise + the full sweep (largest and all blobs, IoU)."""
    if grids.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    quantized = prepare_maps(grids, (size, size), "bicubic")
    best_box_iou(quantized, gt, SweepOptions(chunk_size=chunk, num_threads=threads))
    if grids.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--grid", type=int, default=14)
    parser.add_argument("--num-maps", type=int, default=None, help="default: 4096 on CUDA, 128 on CPU")
    parser.add_argument("--chunk-size", type=int, default=None, help="default: the library's (64 CPU, 512 CUDA)")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=None, help="CPU threads for the sweep; default: 1 and all cores"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    num_maps = args.num_maps or (4096 if cuda else 128)
    cores = torch.get_num_threads()
    threads = [1] if cuda else (args.threads or sorted({1, cores}))

    generator = torch.Generator().manual_seed(0)
    grids = torch.rand(num_maps, args.grid, args.grid, generator=generator)
    corners = torch.randint(0, args.size, (num_maps, 2, 2), generator=generator).sort(dim=1).values
    gt = [c.flatten()[None].to(device) for c in corners]
    shape = f"{args.grid}x{args.grid} -> {args.size}x{args.size}"
    print(f"{num_maps} maps, {shape}, 100 thresholds, device {device}, torch {torch.__version__}")

    on_device = grids.to(device)
    rates = {}
    for count in threads:
        torch.set_num_threads(1 if count > 1 else cores)  # workers run torch ops on one thread each
        warm = min(64, num_maps)
        torch_sweep(on_device[:warm], args.size, gt[:warm], args.chunk_size, count)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        runs = [torch_sweep(on_device, args.size, gt, args.chunk_size, count) for _ in range(args.repeats)]
        rates[count] = num_maps / min(runs)
        label = "torch sweep (largest + all blobs + holes, IoU)" + ("" if cuda else f", {count} worker(s)")
        verdict = "met" if rates[count] >= TARGET_MAPS_PER_S else "missed"
        print(
            f"{label + ':':62} {rates[count]:9.1f} maps/s  {1e3 / rates[count]:7.2f} ms/map  "
            f"(GPU target >= {TARGET_MAPS_PER_S:,} maps/s: {verdict})"
        )
        if cuda:
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            print(f"  peak CUDA memory {peak:.2f} GiB with chunk_size {args.chunk_size or 512}")
    torch.set_num_threads(cores)

    try:
        import cv2  # noqa: F401
    except ImportError:
        print("OpenCV not installed: pip install 'scm_calib[opencv]' for the side-by-side loop")
        return
    loop_maps = grids[: min(num_maps, 128)].numpy()
    loop_seconds = min(opencv_loop(loop_maps, args.size) for _ in range(args.repeats))
    loop_rate = len(loop_maps) / loop_seconds
    print(f"{'OpenCV loop (largest contour, 1 thread):':62} {loop_rate:9.1f} maps/s  {1e3 / loop_rate:7.2f} ms/map")
    for count, rate in rates.items():
        label = "torch" if cuda else f"torch ({count} worker(s))"
        print(f"ratio {label} / OpenCV: {rate / loop_rate:.2f}x")


if __name__ == "__main__":
    main()
