"""benchmarks/gpu_checks.sh: the one device run must fit its time budget in both modes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_checks.sh"
STEP = re.compile(r"^\s+run (\w+) (\d+) ", re.MULTILINE)


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_gpu_checks_time_limits_add_up_to_eight_minutes(mode: str) -> None:
    quick, full = SCRIPT.read_text().split("\nelse\n")
    steps = STEP.findall(quick if mode == "quick" else full)
    names = [name for name, _ in steps]
    assert names == [
        "tests",
        "auto_self_check",
        "sync_step",
        "benchmark",
        "profile",
        "bench_scm_ops",
        "bench_boxes",
    ]
    assert sum(int(limit) for _, limit in steps) <= 8 * 60
