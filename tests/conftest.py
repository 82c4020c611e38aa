"""Shared fixtures: tiny timm ViTs of every supported family (random weights, seconds on a CPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import timm
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = dict(depth=2, embed_dim=32, num_heads=2)

# family -> (timm name, extra kwargs, input size)
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=64), (64, 64)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=64), (64, 64)),
    "deit3": ("deit3_small_patch16_224", dict(img_size=64), (64, 64)),
    "dinov2_reg": ("vit_small_patch14_reg4_dinov2", dict(img_size=56), (56, 56)),
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=56), (56, 56)),
    "beit": ("beit_base_patch16_224", dict(img_size=64), (64, 64)),
}


def tiny_model(family: str, num_classes: int = 5, **kwargs) -> torch.nn.Module:
    """A 2-block, 32-wide model of ``family`` with random weights."""
    name, extra, _ = FAMILIES[family]
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **{**TINY, **extra, **kwargs})


def tiny_input(family: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    _, _, size = FAMILIES[family]
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
