#!/usr/bin/env bash
# Every GPU check and benchmark in one run, for a machine with one CUDA GPU. The steps' time limits add up
# to 525 s: the CUDA tests, the self-check of backend="auto" (its decision and timings), a training step
# under torch.cuda.set_sync_debug_mode("error"), the benchmark table (DeiT-S, batch 128, bf16 and fp32:
# bare timm, original-like, torch and Triton operator; SCM blocks alone; inference bare, stripped and
# maps), profiles of where the adapter's extra time goes (kernels, launches, host time) and of the SCM
# blocks alone, the SCM module alone (Triton at 1, 2, 4 and 8 warps, and each backend as a CUDA graph),
# the dense block's matmuls in float32, TF32 and 3xTF32, and the box sweep at 224 px. Each step's output
# is saved as ${OUT:-gpu-checks}/<step>.txt, the benchmark table also as benchmark_table.md, the exit
# codes in summary.txt; the script exits 1 if any step failed. Copy the figures into docs/benchmarks.md.
#   bash benchmarks/gpu_checks.sh                         # QUICK=1 for a short smoke run (also on a CPU)
#   STEPS="benchmark profile" bash benchmarks/gpu_checks.sh   # only these steps (a rerun)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's scm_calib, installed or not
export PYTHONUNBUFFERED=1  # a step stopped at its limit keeps what it printed
python=${PYTHON:-python3}  # GPU images often have python3 only
out="${OUT:-gpu-checks}"
mkdir -p "$out"
quick="${QUICK:-0}"
device=$($python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
$python - <<'EOF' | tee "$out/device.txt"
import importlib.metadata as m
import importlib.util
import platform

import torch

gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
names = ("torch", "triton", "timm", "numpy", "einops")
versions = ", ".join(f"{n} {m.version(n)}" for n in names if importlib.util.find_spec(n) is not None)
print(f"{gpu}; CUDA {torch.version.cuda}; Python {platform.python_version()}; {versions}")
EOF
: >"$out/summary.txt"
failed=0

run() {  # run NAME SECONDS COMMAND...: a step with its own time limit, output saved, failures reported
    local name=$1 limit=$2 status
    shift 2
    case " ${STEPS:-$name} " in *" $name "*) ;; *) echo "== $name: not in STEPS, skipped"; return ;; esac
    echo "== $name (limit ${limit} s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    status=${PIPESTATUS[0]}
    echo "== $name: exit $status"
    echo "$name: exit $status (limit ${limit} s)" >>"$out/summary.txt"
    [ "$status" = 0 ] || failed=1
}

pytest=("$python" -m pytest -q -rs -p no:cacheprovider)
if [ "$quick" = 1 ]; then
    run tests 90 "${pytest[@]}" tests/test_boxes.py::test_cuda_matches_cpu tests/test_ops.py -k "triton or auto"
    run auto_self_check 45 "$python" benchmarks/check_auto.py --device "$device" --grid 2 3 --batch 2 --classes 3 \
        --iters 1 --repeats 1
    run sync_step 45 "${pytest[@]}" -rA tests/test_sync.py
    run benchmark 90 "$python" benchmarks/benchmark.py --device "$device" --batch 2 --depth 1 --steps 1 --warmup 1 \
        --out "$out/benchmark_table.md"
    run profile 60 "$python" benchmarks/profile_step.py --device "$device" --batch 2 --depth 1 --steps 1 --warmup 1
    run profile_scm 30 "$python" benchmarks/profile_step.py --scm-alone --device "$device" --batch 2 --steps 1 --warmup 1
    interpret=$([ "$device" = cpu ] && echo 1 || echo 0)  # Triton's columns under the interpreter on a CPU
    run bench_scm_ops 60 env TRITON_INTERPRET=$interpret "$python" benchmarks/bench_scm_ops.py --device "$device" \
        --batch 2 --grid 4 4 --repeats 1 --num-warps 1 2
    run bench_ns_matmul 30 "$python" benchmarks/bench_ns_matmul.py --device "$device" --batch 2 --repeats 1 --flops
    run bench_boxes 30 "$python" benchmarks/bench_boxes.py --device "$device" --num-maps 64 --repeats 1
else
    run tests 100 "${pytest[@]}" tests/test_boxes.py::test_cuda_matches_cpu tests/test_ops.py
    run auto_self_check 40 "$python" benchmarks/check_auto.py
    run sync_step 40 "${pytest[@]}" -rA tests/test_sync.py
    run benchmark 145 "$python" benchmarks/benchmark.py --out "$out/benchmark_table.md"
    run profile 45 "$python" benchmarks/profile_step.py
    run profile_scm 30 "$python" benchmarks/profile_step.py --scm-alone
    run bench_scm_ops 60 "$python" benchmarks/bench_scm_ops.py --device cuda --batch 16 128 --grid 14 14 --grid 28 28 \
        --repeats 3 --num-warps 1 2 4 8 --graphs
    run bench_ns_matmul 30 "$python" benchmarks/bench_ns_matmul.py --flops
    run bench_boxes 35 "$python" benchmarks/bench_boxes.py --device cuda --size 224
fi
cat "$out/summary.txt"
exit "$failed"
