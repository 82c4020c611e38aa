"""The map probe (examples/cub/probe_maps.py): MaxBoxAccV2 of each map of a run, and SCM's semantic affinity."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import timm
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "cub"))

import probe_maps  # noqa: E402

from scm_calib import SCMAdapter, save_weights  # noqa: E402
from scm_calib.data import ensure_generated_dataset  # noqa: E402

TINY_MODEL = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding a random 1-block ViT trained (not at all) on a tiny generated dataset with masks."""
    base = tmp_path_factory.mktemp("probe")
    data = ensure_generated_dataset(
        base / "data", num_classes=2, train_per_class=1, test_per_class=3, val_per_class=0, min_size=32, max_size=40
    )
    torch.manual_seed(0)
    adapter = SCMAdapter(timm.create_model("vit_tiny_patch16_224", num_classes=2, img_size=32, **TINY_MODEL))
    folder = base / "run"
    config = {"model": "vit_tiny_patch16_224", "model_kwargs": TINY_MODEL, "image_size": 32, "data_root": str(data)}
    metadata = {"config": json.dumps(config), "classes": json.dumps(["a", "b"])}
    save_weights(adapter.strip(), folder / "model_stripped.safetensors", metadata=metadata)
    return folder


def test_probe_scores_every_map_and_the_affinity(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "probe.json"
    assert probe_maps.main([str(run), "--json", str(out)]) == 0
    figures = json.loads(out.read_text())[str(run)]
    for name in ("A", "S", "A*S", "centre prior"):
        assert 0.0 <= figures[f"MaxBoxAccV2 {name}"] <= 100.0
    for kind in ("inside", "background", "boundary"):
        assert -1.0 <= figures[f"affinity {kind}"] <= 1.0
    assert "MaxBoxAccV2 A*S" in capsys.readouterr().out


def test_probe_of_a_folder_without_a_model_says_what_to_pass(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert probe_maps.main([str(tmp_path)]) == 2
    assert "finished run" in capsys.readouterr().err


def test_probe_on_a_folder_that_is_no_dataset_says_so(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert probe_maps.main([str(run), "--data-root", str(tmp_path)]) == 2
    assert "--data-root" in capsys.readouterr().err
