"""One table of SCM's cost next to the bare timm model: training step, SCM blocks alone, inference.

Runs on CPU and GPU; on a GPU it is the single command of the device check::

    python benchmarks/benchmark.py                      # CUDA: DeiT-S, batch 128, 224 px, bf16 and fp32
    python benchmarks/benchmark.py --batch 8 --steps 3  # CPU: the same table at a size this machine can run

Rows (each timed side by side in one run, ratios to the bare timm model of the same precision):
training step (bare timm; an original-like adapter that keeps every attention matrix and runs the dense
operator; the adapter with the torch operator; with the Triton operator on CUDA), SCM blocks alone
(forward + backward), inference forward (bare, stripped, localization maps). Before the inference rows,
each backend's SCM is checked against the dense formulas (values and gradients). The last column compares
a row with its target (issue 12): training step <= 1.05x the bare model's time and <= 1.15x its peak memory,
the 4 SCM blocks <= 1.4 ms forward + backward (a batch-128 GPU figure), localization maps at inference
<= 1.05x time and <= 1.2x memory. The table is printed and, with ``--out``, appended to a Markdown file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference_scm import ReferenceSCM  # noqa: E402  (the dense formulas, the original's cost)

from scm_calib import SCM, SCMAdapter, localization_maps  # noqa: E402
from scm_calib.ops import triton_available  # noqa: E402


@dataclass(frozen=True)
class Target:
    """Upper bounds of a row: time and peak memory as ratios to the bare model, or time in milliseconds."""

    time_ratio: float | None = None
    memory_ratio: float | None = None
    ms: float | None = None

    def verdict(self, ms: float, peak: float | None, bare: tuple[float, float | None]) -> str:
        """``"<= 1.05x time, <= 1.15x memory: met"``, ``"...: missed (time)"``; memory only where measured."""
        checks = []
        if self.time_ratio is not None:
            checks.append((f"<= {self.time_ratio}x time", "time", ms / bare[0] <= self.time_ratio))
        if self.ms is not None:
            checks.append((f"<= {self.ms} ms", "time", ms <= self.ms))
        if self.memory_ratio is not None:
            measured = peak is not None and bool(bare[1])
            label = f"<= {self.memory_ratio}x memory" + ("" if measured else " (not measured)")
            checks.append((label, "memory", not measured or peak / bare[1] <= self.memory_ratio))
        missed = [what for _, what, ok in checks if not ok]
        return ", ".join(label for label, _, _ in checks) + (f": missed ({', '.join(missed)})" if missed else ": met")


TRAIN_TARGET = Target(time_ratio=1.05, memory_ratio=1.15)
BLOCKS_TARGET = Target(ms=1.4)
MAPS_TARGET = Target(time_ratio=1.05, memory_ratio=1.2)


def measure(fn: Callable[[], object], device: torch.device, steps: int, warmup: int) -> tuple[float, float | None]:
    """Median milliseconds per call and peak GiB allocated above the start (CUDA only)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else None
    return sorted(times)[len(times) // 2], peak


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: contextlib.AbstractContextManager):
    """One AdamW step; ``model`` returns logits or an SCMOutput."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.05)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = model(x)
            logits = out if isinstance(out, torch.Tensor) else out.logits
            loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()

    return step


def _scalar_grads(scm: torch.nn.Module) -> list[torch.Tensor]:
    """Gradients of the lambdas, then the betas, in block order, whatever the module's parameter layout."""

    def key(item: tuple[str, torch.nn.Parameter]) -> tuple[int, int]:
        name = item[0]
        return ("beta" in name, int("".join(c for c in name if c.isdigit())))

    return [p.grad for _, p in sorted(scm.named_parameters(), key=key)]


def check_operators(backends: list[str], device: torch.device, batch: int, classes: int, grid: int) -> list[str]:
    """Largest relative differences of each SCM (fp32) from the dense formulas in float64, values and gradients.

    The dense formulas in float32 are listed too: some lambda and beta gradients are sums with heavy
    cancellation, where float32 itself is off by more than 1e-4.
    """
    torch.manual_seed(1)
    maps = torch.randn(batch, classes, grid, grid, device=device)
    attn = torch.rand(batch, grid, grid, device=device)
    variants = [("float64", ReferenceSCM().double(), torch.float64), ("dense fp32", ReferenceSCM(), torch.float32)]
    variants += [(b, SCM(backend=b), torch.float32) for b in backends]
    results = {}
    for label, scm, dtype in variants:
        scm = scm.to(device)
        x, a = maps.to(dtype, copy=True).requires_grad_(), attn.to(dtype, copy=True).requires_grad_()
        out, out_a = scm(x, a)
        weights = torch.linspace(-1, 1, out.numel(), device=device, dtype=dtype).view_as(out)
        ((out * weights).sum() + out_a.square().sum()).backward()
        results[label] = [out, out_a, x.grad, a.grad, *_scalar_grads(scm)]
    names = [
        "values",
        "attention",
        "grad maps",
        "grad attn",
        *(f"grad {n}" for n in ("lambda", "beta") for _ in "1234"),
    ]
    lines = []
    for label in results:
        if label == "float64":
            continue
        errors = [
            ((mine.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
            for mine, ref in zip(results[label], results["float64"], strict=True)
        ]
        worst = max(range(len(errors)), key=errors.__getitem__)
        lines.append(
            f"operator check, {label} vs float64 dense (batch {batch}, {classes} classes, {grid}x{grid}): largest "
            f"relative difference {errors[worst]:.2e} ({names[worst]}); values and map/attention gradients "
            f"{max(errors[:4]):.2e} (target 1e-4)"
        )
    return lines


def run(args: argparse.Namespace) -> list[str]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    size = args.img_size
    x = torch.randn(args.batch, 3, size, size, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    backends = ["torch"] + (["triton"] if device.type == "cuda" and triton_available() else [])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    lines = [
        f"### {datetime.date.today()} - {name}, {args.model}, batch {args.batch}, {size} px, {args.classes} classes, "
        f"median of {args.steps} steps after {args.warmup} warm-up, torch {torch.__version__}, timm {timm.__version__}",
        "",
        "| run | precision | ms | peak GiB | time / bare | memory / bare | target |",
        "|---|---|---|---|---|---|---|",
    ]

    def model() -> torch.nn.Module:
        return timm.create_model(args.model, num_classes=args.classes, img_size=size, **args.model_kwargs).to(device)

    def row(
        label: str,
        precision: str,
        result: tuple[float, float | None],
        bare: tuple[float, float | None],
        target: Target | None = None,
    ) -> None:
        ms, peak = result
        ratio_t = f"{ms / bare[0]:.2f}x"
        ratio_m = f"{peak / bare[1]:.2f}x" if peak is not None and bare[1] else "-"
        lines.append(
            f"| {label} | {precision} | {ms:.2f} | {f'{peak:.2f}' if peak is not None else '-'} | "
            f"{ratio_t} | {ratio_m} | {target.verdict(ms, peak, bare) if target else '-'} |"
        )
        print(lines[-1], flush=True)

    print("\n".join(lines), flush=True)
    for precision in args.precision:
        dtype = torch.bfloat16 if precision == "bf16" else None
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        bare = measure(train_step(model(), x, y, autocast), device, args.steps, args.warmup)
        row("train step: bare timm", precision, bare, bare)
        variants = [("original-like: attention maps + dense operator", "probs", ReferenceSCM(), None)]
        variants += [(f"{b} operator", "auto", SCM(backend=b), TRAIN_TARGET) for b in backends]
        for label, capture, scm, target in variants:
            adapter = SCMAdapter(model(), scm=scm.to(device), capture_mode=capture)
            row(
                f"train step: adapter, {label}",
                precision,
                measure(train_step(adapter, x, y, autocast), device, args.steps, args.warmup),
                bare,
                target,
            )
        grid = size // 16
        maps = torch.randn(args.batch, args.classes, grid, grid, device=device, requires_grad=True)
        attn = torch.rand(args.batch, grid, grid, device=device, requires_grad=True)
        for label, scm in [("dense", ReferenceSCM())] + [(b, SCM(backend=b)) for b in backends]:
            scm = scm.to(device)
            target = BLOCKS_TARGET if label != "dense" else None

            def blocks(scm: torch.nn.Module = scm, maps=maps, attn=attn, autocast=autocast) -> None:
                with autocast:
                    out, a = scm(maps, attn)
                (out.sum() + a.sum()).backward()

            result = measure(blocks, device, args.steps, args.warmup)
            row(f"SCM blocks alone, fwd+bwd: {label}", precision, result, bare, target)
    checks = check_operators(backends, device, min(args.batch, 16), args.classes, size // 16)
    lines += ["", *checks, ""]
    print("\n".join(checks), flush=True)
    with torch.no_grad():
        bare_model = model().eval()
        bare = measure(lambda: bare_model(x), device, args.steps, args.warmup)
        row("inference: bare timm forward", "fp32", bare, bare)
        stripped = SCMAdapter(model(), head_type="linear").strip().eval()
        row("inference: stripped forward", "fp32", measure(lambda: stripped(x), device, args.steps, args.warmup), bare)
        row(
            "inference: localization maps (top-1)",
            "fp32",
            measure(lambda: localization_maps(stripped, x), device, args.steps, args.warmup),
            bare,
            MAPS_TARGET,
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=None, help="default: 128 on CUDA, 8 on CPU")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument(
        "--precision", nargs="+", choices=["bf16", "fp32"], default=None, help="default: bf16 fp32 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 on CUDA, 1 on CPU)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--depth", type=int, default=None, help="override the model depth (quick CPU runs)")
    parser.add_argument("--out", type=Path, default=None, help="append the table to this Markdown file")
    args = parser.parse_args()
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    args.batch = args.batch or (128 if cuda else 8)
    args.precision = args.precision or (["bf16", "fp32"] if cuda else ["fp32"])
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.model_kwargs = {"depth": args.depth} if args.depth else {}
    lines = run(args)
    if args.out:
        with args.out.open("a") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
