"""Where a training step's extra time goes with SCM: a torch.profiler table of the adapter against bare timm.

Profiles the same training step (forward, backward, AdamW) as ``benchmarks/benchmark.py`` for the bare timm
model and for ``SCMAdapter`` with each operator, and prints, per operator, the kernels (CUDA) or ops (CPU) whose own
time grows most from the bare model to the adapter (the time SCM adds, by kernel), then the adapter's
own top kernels. Device time on CUDA, CPU time elsewhere; times are per step. With ``--scm-alone`` it
profiles the 4 SCM blocks alone instead (forward + backward on random float32 maps and attention, the
benchmark's "SCM blocks alone" row): the kernels the SCM time is made of, per operator.

    python benchmarks/profile_step.py                                # CUDA: DeiT-S, batch 128, bf16
    python benchmarks/profile_step.py --scm-alone                    # CUDA: the SCM blocks, batch 128, 14 x 14
    python benchmarks/profile_step.py --device cpu --batch 2 --depth 1 --steps 1
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from typing import NamedTuple

import timm
import torch
from benchmark import train_step
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from scm_calib import SCM, SCMAdapter
from scm_calib.ops import triton_available


class Profile(NamedTuple):
    """Per step: own time of every kernel (CUDA, device time) or op (CPU) in microseconds, own host (CPU) time
    of every op in microseconds, and the number of kernels launched (CUDA) or ops run (CPU)."""

    times: dict[str, float]
    host: dict[str, float]
    launches: float


def own_times_us(step: object, device: torch.device, steps: int, warmup: int) -> Profile:
    """Profiles ``steps`` calls of ``step`` after ``warmup`` untimed ones (see :class:`Profile`)."""
    for _ in range(warmup):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    host_events = [event for event in events if event.device_type == DeviceType.CPU]
    host = {event.key: event.self_cpu_time_total / steps for event in host_events}
    if device.type == "cuda":  # the kernels alone: an op's own device time repeats that of its kernels
        kernels = [event for event in events if event.device_type == DeviceType.CUDA]
        times = {event.key: event.self_device_time_total / steps for event in kernels}
        launches = sum(event.count for event in kernels) / steps
    else:
        times, launches = host, sum(event.count for event in host_events) / steps
    return Profile({k: v for k, v in times.items() if v > 0}, {k: v for k, v in host.items() if v > 0}, launches)


def _short(key: str) -> str:
    """An op or kernel name cut to 90 characters for a table cell."""
    return key if len(key) <= 90 else key[:87] + "..."


def table(title: str, rows: list[tuple[str, float, float]], total: float, limit: int) -> list[str]:
    lines = [title, "", "| op or kernel | bare us | adapter us | added us | share of added |", "|---|---|---|---|---|"]
    for key, bare, adapter in rows[:limit]:
        name = _short(key)
        share = f"{(adapter - bare) / total:.0%}" if total > 0 else "-"
        lines.append(f"| `{name}` | {bare:.0f} | {adapter:.0f} | {adapter - bare:+.0f} | {share} |")
    return lines + [""]


def profile_scm_alone(args: argparse.Namespace, device: torch.device, backends: list[str], where: str) -> None:
    """The kernels of the 4 SCM blocks' forward + backward alone, per operator (largest first)."""
    maps = torch.randn(args.batch, args.classes, 14, 14, device=device, requires_grad=True)
    attn = torch.rand(args.batch, 14, 14, device=device, requires_grad=True)
    print(f"profile: SCM blocks alone, batch {args.batch}, {args.classes} classes, 14x14, float32, {where}")
    for backend in backends:
        scm = SCM(backend=backend).to(device)

        def step(scm: torch.nn.Module = scm) -> None:
            out, out_attn = scm(maps, attn)
            (out.sum() + out_attn.sum()).backward()

        result = own_times_us(step, device, args.steps, args.warmup)
        times, total = result.times, sum(result.times.values())
        print(
            f"\n{backend} operator: {total / 1e3:.2f} ms per forward + backward (sum of own times), "
            f"{result.launches:.0f} kernels (CUDA) or ops (CPU), host {sum(result.host.values()) / 1e3:.2f} ms\n"
        )
        print("| op or kernel | us | share |\n|---|---|---|")
        for key, value in sorted(times.items(), key=lambda item: item[1], reverse=True)[: args.rows]:
            print(f"| `{_short(key)}` | {value:.0f} | {value / total:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--depth", type=int, default=None, help="override the model depth (quick CPU runs)")
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--scm-alone", action="store_true", help="profile the SCM blocks alone (14 x 14 grid)")
    args = parser.parse_args()
    logging.getLogger("torch.profiler").setLevel(logging.ERROR)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()
    )
    extra = {"depth": args.depth} if args.depth else {}

    def model() -> torch.nn.Module:
        return timm.create_model(args.model, num_classes=args.classes, **extra).to(device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    clock = "device" if device.type == "cuda" else "CPU"
    backends = ["torch"] + (["triton"] if device.type == "cuda" and triton_available() else [])
    if args.scm_alone:
        profile_scm_alone(args, device, backends, f"{name}, {clock} time per step, torch {torch.__version__}")
        return
    print(
        f"profile: {name}, {args.model}, batch {args.batch}, {args.precision}, {clock} time per step, "
        f"torch {torch.__version__}"
    )
    bare = own_times_us(train_step(model(), x, y, autocast), device, args.steps, args.warmup)
    for backend in backends:
        adapter = SCMAdapter(model(), scm=SCM(backend=backend).to(device))
        mine = own_times_us(train_step(adapter, x, y, autocast), device, args.steps, args.warmup)
        rows = [
            (key, bare.times.get(key, 0.0), mine.times.get(key, 0.0)) for key in bare.times.keys() | mine.times.keys()
        ]
        added_total = sum(m for _, _, m in rows) - sum(b for _, b, _ in rows)
        host_bare, host_mine = sum(bare.host.values()), sum(mine.host.values())
        print(
            f"\n{backend} operator: bare {sum(bare.times.values()) / 1e3:.2f} ms, adapter "
            f"{sum(mine.times.values()) / 1e3:.2f} ms of {clock} time per step, added {added_total / 1e3:+.2f} ms; "
            f"kernels launched (CUDA) or ops run (CPU) per step: bare {bare.launches:.0f}, adapter "
            f"{mine.launches:.0f}; host (CPU) time of the ops: bare {host_bare / 1e3:.2f} ms, adapter "
            f"{host_mine / 1e3:.2f} ms\n"
        )
        grown = sorted(rows, key=lambda r: r[2] - r[1], reverse=True)
        print("\n".join(table("What SCM adds (largest growth first):", grown, added_total, args.rows)))
        top = sorted(rows, key=lambda r: r[2], reverse=True)
        print("\n".join(table("The adapter's own top ops and kernels:", top, added_total, args.rows)))
        if device.type == "cuda":
            host_rows = [(k, bare.host.get(k, 0.0), mine.host.get(k, 0.0)) for k in bare.host.keys() | mine.host.keys()]
            host_rows.sort(key=lambda r: r[2] - r[1], reverse=True)
            title = "Host (CPU) time SCM adds, by op (largest growth first):"
            print("\n".join(table(title, host_rows, host_mine - host_bare, args.rows)))


if __name__ == "__main__":
    main()
