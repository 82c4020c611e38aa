#!/usr/bin/env bash
# Every GPU check and benchmark in one run, for a machine with one CUDA GPU (the steps' time limits add
# up to 9 minutes): the CUDA tests, then the benchmark tables. Everything printed is also saved under
# ${OUT:-gpu-checks}/; copy the figures into docs/benchmarks.md.
#   bash benchmarks/gpu_checks.sh            # QUICK=1 for a short smoke run (also on a CPU)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-checks}"
mkdir -p "$out"
quick="${QUICK:-0}"
device=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" \
    | tee "$out/device.txt"

run() {  # run NAME SECONDS COMMAND...: a step with its own time limit, output saved, failures reported
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

if [ "$quick" = 1 ]; then
    run tests 120 python -m pytest -q tests/test_boxes.py -k "cuda or opencv"
    run benchmark 120 python benchmarks/benchmark.py --device "$device" --batch 2 --depth 1 --steps 1 --warmup 1
    run bench_scm_ops 60 python benchmarks/bench_scm_ops.py --device "$device" --batch 2 --repeats 1
    run bench_boxes 60 python benchmarks/bench_boxes.py --device "$device" --num-maps 64 --repeats 1
else
    run tests 150 python -m pytest -q tests/test_boxes.py tests/test_ops.py tests/test_adapter.py
    run benchmark 240 python benchmarks/benchmark.py --out "$out/benchmark_table.md"
    run bench_scm_ops 60 python benchmarks/bench_scm_ops.py --device cuda --batch 16 64 --grid 14 14 --grid 28 28
    run bench_boxes 90 python benchmarks/bench_boxes.py --device cuda
fi
