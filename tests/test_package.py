"""The package's surface: the top-level names a user calls, and the examples in the docstrings, which run."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import types
from pathlib import Path

import pytest

import scm_calib

MODULES = sorted(name for _, name, _ in pkgutil.walk_packages(scm_calib.__path__, "scm_calib."))


def test_top_level_names_are_what_a_user_calls() -> None:
    assert sorted(scm_calib.__all__) == sorted(
        [
            *("SCMAdapter", "SCMOutput", "StrippedViT", "SCM"),
            *("localization_maps", "select_maps", "semantic_and_attention"),
            *("boxes_from_maps", "best_box_iou", "box_iou", "scale_boxes"),
            *("BoxAccuracy", "LocalizationAccuracy", "PixelAveragePrecision"),
            *("save_weights", "load_weights", "CheckpointError", "UnsupportedModelError"),
        ]
    )
    names = {name for name, value in vars(scm_calib).items() if not isinstance(value, types.ModuleType)}
    assert {name for name in names if not name.startswith("_")} == set(scm_calib.__all__)


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("resize_maps", "scm_calib.boxes"),
        ("SCMBlock", "scm_calib.calibration"),
        ("spatial_gate", "scm_calib.calibration"),
        ("overlay", "scm_calib.viz"),
        ("save_png", "scm_calib.viz"),
    ],
)
def test_internals_stay_importable_from_their_modules(name: str, module: str) -> None:
    assert hasattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (above)"
