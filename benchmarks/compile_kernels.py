"""What the GPU compiler makes of SCM's Triton kernels: registers, spills and barriers, without a GPU.

The Triton tests run the chain kernels of SCM's diffusion (Bai et al., ECCV 2022) under the Triton
interpreter, which checks their values but not the compilation for a real GPU. This script compiles the
forward and the backward kernel ahead of time, with Triton's compiler and the ``ptxas`` it ships, for each
target architecture and each grid, with the block size and warp count that ``backend="triton"`` launches
for that grid (``triton_kernels._launch_config``), and prints what ``ptxas -v`` reports. It needs Triton
with its NVIDIA backend, and no GPU or driver.

    python benchmarks/compile_kernels.py                          # sm_80 and sm_90, grids 14x14 to 64x64
    python benchmarks/compile_kernels.py --arch 90 --grid 14 14 --num-warps 1 2 4 8
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # the interpreter's kernels cannot be compiled

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from scm_calib.ops import triton_kernels  # noqa: E402

KERNELS = {"forward": triton_kernels._chain_forward_kernel, "backward": triton_kernels._chain_backward_kernel}
#: The grids of DeiT at 224, 448, 512, 720 and 1024 px (patch 16), up to ``MAX_NODES`` patches.
DEFAULT_GRIDS = [(14, 14), (28, 28), (32, 32), (45, 45), (64, 64)]
_INTS = {"batch", "height", "width", "num_terms"}


def compile_kernel(kernel: str, arch: int, grid: tuple[int, int], num_warps: int | None = None) -> dict[str, int]:
    """Compile one kernel for ``sm_<arch>`` as ``backend="triton"`` launches it on ``grid``; ptxas's figures.

    The pointers are declared 16-byte aligned, as Triton's launcher specialises them for torch's
    allocations.

    Args:
        kernel: ``"forward"`` or ``"backward"``.
        arch: Compute capability as an integer, e.g. 80 (A100) or 90 (H100, H200).
        grid: Patch grid ``(h, w)``; it sets the block size and, unless given, the warp count.
        num_warps: Warps per program instead of ``_launch_config``'s choice.

    Returns:
        ``block``, ``num_warps``, ``registers`` (per thread), ``spill_stores`` and ``spill_loads`` (bytes),
        ``stack`` (bytes of stack frame), ``barriers`` (ptxas's count), and from the PTX ``bar_syncs`` (the
        barrier instructions) and ``noncoherent_loads`` (``ld.global.nc``: reads through the read-only cache,
        which may miss what the program itself wrote to that buffer; the kernels re-read their own scratch).
    """
    fn = KERNELS[kernel]
    block, default_warps = triton_kernels._launch_config(grid[0] * grid[1])
    warps = num_warps or default_warps
    signature, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name.endswith("_ptr"):
            signature[name], attrs[(index,)] = "*fp32", [["tt.divisibility", 16]]
        else:
            signature[name] = "constexpr" if name == "BLOCK" else "i32" if name in _INTS else "fp32"
    source = ASTSource(fn=fn, signature=signature, constexprs={"BLOCK": block}, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
    ptx = compiled.asm["ptx"]
    target = re.search(r"^\.target\s+(\w+)", ptx, re.MULTILINE).group(1)  # sm_90a on Hopper
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.ptx")
        with open(path, "w") as file:
            file.write(ptx)
        report = subprocess.run(
            [get_ptxas(arch).path, "-v", f"-arch={target}", path, "-o", os.devnull],
            capture_output=True, text=True, check=True,
        ).stderr  # fmt: skip
    figures = {
        "block": block,
        "num_warps": warps,
        "bar_syncs": len(re.findall(r"\bbar\.sync\b", ptx)),
        "noncoherent_loads": len(re.findall(r"\bld\.global\.nc\b", ptx)),
    }
    patterns = {
        "registers": r"Used (\d+) registers",
        "barriers": r"used (\d+) barriers",
        "stack": r"(\d+) bytes stack frame",
        "spill_stores": r"(\d+) bytes spill stores",
        "spill_loads": r"(\d+) bytes spill loads",
    }
    for key, pattern in patterns.items():
        match = re.search(pattern, report)
        figures[key] = int(match.group(1)) if match else 0
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities")
    parser.add_argument("--grid", type=int, nargs=2, action="append", help="h w (repeatable); default 14x14..64x64")
    parser.add_argument("--num-warps", type=int, nargs="+", help="warp counts to compare; default: the launched one")
    args = parser.parse_args()
    print(f"triton {triton.__version__}, ptxas {get_ptxas(90).version}; no GPU used")
    print(
        "| arch | grid | kernel | block | warps | registers | spill stores / loads (bytes) | stack (bytes) "
        "| bar.sync / ld.global.nc in the PTX |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for arch in args.arch:
        for h, w in args.grid or DEFAULT_GRIDS:
            for kernel in KERNELS:
                for warps in args.num_warps or [None]:
                    f = compile_kernel(kernel, arch, (h, w), warps)
                    print(
                        f"| sm_{arch} | {h}x{w} | {kernel} | {f['block']} | {f['num_warps']} | {f['registers']} | "
                        f"{f['spill_stores']} / {f['spill_loads']} | {f['stack']} | "
                        f"{f['bar_syncs']} / {f['noncoherent_loads']} |"
                    )


if __name__ == "__main__":
    main()
