"""The code style gate: ruff's lint rules and formatter, configured in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["scm_calib", "examples", "tests", "benchmarks", "docs/scripts"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    command = [shutil.which("ruff")] if shutil.which("ruff") else [sys.executable, "-m", "ruff"]
    return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("args", [("check",), ("format", "--check")], ids=["lint", "format"])
def test_ruff(args):
    paths = [p for p in PATHS if (ROOT / p).exists()]
    result = _ruff(*args, *paths)
    assert result.returncode == 0, result.stdout + result.stderr
