"""The CUB example trainer (examples/cub): a training step and evaluation, resume, bad command lines, inference."""

from __future__ import annotations

import csv
import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cub"
sys.path.insert(0, str(EXAMPLE))

import config as cub_config  # noqa: E402
import engine  # noqa: E402
import rescore  # noqa: E402
import train  # noqa: E402

from scm_calib.data import CUBDataset, ensure_generated_dataset  # noqa: E402
from scm_calib.diagnostics import OUTCOMES  # noqa: E402
from scm_calib.interop import read_wsolevaluation  # noqa: E402
from scm_calib.metrics import BoxAccuracy  # noqa: E402

TINY_MODEL = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes, 4 train / 2 test / 2 val images each, 32-40 px."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    return ensure_generated_dataset(
        root, num_classes=3, train_per_class=4, test_per_class=2, val_per_class=2, min_size=32, max_size=40
    )


def tiny_config(data: Path, output: Path, **overrides: object) -> cub_config.TrainConfig:
    """The generated preset shrunk to seconds: a 1-block, 32-wide ViT from scratch on 32 px inputs."""
    values = dict(
        data_root=str(data),
        model_kwargs=TINY_MODEL,
        checkpoint=None,
        image_size=32,
        epochs=1,
        batch_size=4,
        warmup_epochs=0,
        overlays=2,
        output=str(output),
        name="run",
        threads=1,
    )
    return cub_config.PRESETS["generated"].updated({**values, **overrides}, "test")


@pytest.fixture(scope="module")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One epoch of SCM training on the tiny dataset: the run folder and the returned summary."""
    output = tmp_path_factory.mktemp("runs")
    summary = train.run(tiny_config(tiny_data, output))
    return output / "run", summary


def test_trains_a_step_evaluates_and_exports(tiny_run: tuple[Path, dict]) -> None:
    run_dir, summary = tiny_run
    for name in ("config.json", "history.json", "metrics.json", "checkpoint.pt", "model_stripped.safetensors"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(path.name[:7] for path in (run_dir / "overlays").glob("*.png")) == [
        "best_01",
        "best_02",
        "worst_0",
        "worst_0",
    ]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(summary))
    assert 0.0 <= metrics["test"]["MaxBoxAccV2"] <= 100.0
    assert 0.0 <= metrics["test_at_val_tau"]["GTKnownLoc"] <= 100.0
    assert len(metrics["history"]) == 1 and metrics["history"][0]["loss"] > 0
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["global_step"] == 3  # 12 images, batch 4


def test_run_writes_the_per_image_table_the_outcomes_and_the_worst_and_best_overlays(
    tiny_run: tuple[Path, dict], tiny_data: Path
) -> None:
    run_dir, summary = tiny_run
    with (run_dir / "test_images.csv").open(encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    test_paths = [record.path for record in CUBDataset(tiny_data, "test").records]
    assert [row["image_id"] for row in rows] == test_paths  # one row per test image, in order
    assert list(rows[0]) == ["image_id", "label", "predicted", "iou", "tau", "x0", "y0", "x1", "y1", "outcome"]
    outcomes = json.loads((run_dir / "metrics.json").read_text())["outcomes"]
    assert sum(outcomes[name] for name in OUTCOMES) == pytest.approx(100.0)
    assert outcomes["count"] == len(rows) and outcomes["tau"] == summary["test_at_val_tau"]["tau"]
    assert {row["tau"] for row in rows} == {str(outcomes["tau"])}
    for name in OUTCOMES:
        assert outcomes[name] == pytest.approx(100 * sum(row["outcome"] == name for row in rows) / len(rows))
    table = train.results_table(tiny_config(tiny_data, run_dir.parent), summary, run_dir).splitlines()
    assert table[1].split() == [
        "Top1Loc",
        "GTKnownLoc",
        "Top1Cls",
        "Top5Cls",
        "MaxBoxAccV2",
        "MaxBoxAcc",
    ]  # paper first
    assert table[-4].startswith("localization outcomes") and table[-3].split() == list(OUTCOMES)
    by_iou = sorted(rows, key=lambda row: float(row["iou"]))
    for end, expected in (("worst", by_iou[:2]), ("best", by_iou[::-1][:2])):
        drawn = sorted((run_dir / "overlays").glob(f"{end}_*.png"))
        assert [path.name.split("_", 2)[2] for path in drawn] == [f"{Path(r['image_id']).stem}.png" for r in expected]


def test_wsol_scoremaps_rescore_to_the_runs_own_numbers(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """At 224 px (the reference's size) the folder scores the run's own MaxBoxAcc and MaxBoxAccV2."""
    config = tiny_config(tiny_data, tmp_path, image_size=224, model_kwargs={**TINY_MODEL, "patch_size": 32}, overlays=0)
    summary = train.run(config.updated({"wsol_scoremaps": True}, "test"))
    root = tmp_path / "run" / "wsolevaluation"
    printed = capsys.readouterr().out
    assert f"--scoremap_root={root / 'scoremaps'}" in printed and "--multi_contour_eval=True" in printed
    metric = BoxAccuracy("wsol")
    for batch in read_wsolevaluation(root / "scoremaps", root / "metadata" / "CUB" / "test"):
        metric.update(batch.maps, batch.gt_boxes)
    result = metric.compute()
    assert result["MaxBoxAccV2"] == pytest.approx(summary["test"]["MaxBoxAccV2"], abs=1e-9)
    assert result["MaxBoxAcc"] == pytest.approx(summary["test"]["MaxBoxAcc"], abs=1e-9)
    assert rescore.main([str(root)]) == 0
    printed = capsys.readouterr().out
    assert f"MaxBoxAccV2  {summary['test']['MaxBoxAccV2']:6.2f}" in printed
    assert f"MaxBoxAcc    {summary['test']['MaxBoxAcc']:6.2f}" in printed


def test_wsol_scoremaps_on_a_test_split_without_boxes_is_refused_before_training(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train, "scored", lambda dataset: {"boxes": False, "pxap": True})  # a mask-only split
    with pytest.raises(train.SetupError, match="test split has no boxes"):
        train.run(tiny_config(tiny_data, tmp_path, wsol_scoremaps=True))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}"], "no metadata folder"),
        (["{tmp}", "--step", "0"], "--step must be in (0, 1)"),
    ],
)
def test_rescore_bad_folder_gives_one_line_error(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rescore.main([arg.format(tmp=tmp_path) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_baseline_has_no_scm(tiny_data: Path, tmp_path: Path) -> None:
    train.run(tiny_config(tiny_data, tmp_path, baseline=True, overlays=0))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert not any(key.startswith("scm.") for key in state["model"])


def test_resume_matches_an_uninterrupted_run(tiny_data: Path, tmp_path: Path) -> None:
    straight = tiny_config(tiny_data, tmp_path, epochs=2, overlays=0, name="straight", drop_path=0.1)
    train.run(straight)
    killed = tiny_config(tiny_data, tmp_path, epochs=2, overlays=0, name="resumed", drop_path=0.1, stop_after=1)
    assert train.run(killed) == {"stopped_after_epoch": 1}
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    torch.manual_seed(1234)  # a resumed process starts with other RNG states; the checkpoint restores them
    train.run(tiny_config(tiny_data, tmp_path, epochs=2, overlays=0, name="resumed", drop_path=0.1), resume="auto")
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for row_a, row_b in zip(a["history"], b["history"], strict=True):
        assert (row_a["loss"], row_a["acc"], row_a["lr"]) == (row_b["loss"], row_b["acc"], row_b["lr"])
    metrics_a = json.loads((tmp_path / "straight" / "metrics.json").read_text())["test"]
    metrics_b = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["test"]
    assert metrics_a == metrics_b


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data-root", "/nonexistent/CUB_200_2011"], "is not a folder"),
        (["--model", "not_a_timm_model"], "is not a timm model"),
        (["--model", "resnet18"], "needs a timm Vision Transformer"),
        (["--model-kwargs", '{"class_token": false, "global_pool": "avg", "depth": 1}'], "cannot be used with SCM"),
        (["--config", "/nonexistent/config.json"], "does not exist"),
        (["--resume"], "does not exist"),
    ],
)
def test_bad_command_line_gives_one_line_error(
    argv: list[str], message: str, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--data-root", str(tiny_data), "--output", str(tmp_path), "--threads", "1", "--image-size", "32"]
    assert train.main([*base, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_command_line_exit_status(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE / "train.py"), "--data-root", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    assert "is not a folder" in result.stderr and "Traceback" not in result.stderr


def test_config_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"lr": 0.01, "epochs": 3}))
    config, resume = train.parse_args(["--config", str(path), "--epochs", "5"])
    assert (config.preset, config.lr, config.epochs, resume) == ("generated", 0.01, 5, None)
    config, _ = train.parse_args(["--data-root", "somewhere"])
    assert (config.preset, config.model, config.lr, config.batch_size) == ("cub", "deit_small_patch16_224", 5e-5, 16)
    path.write_text(json.dumps({"learning_rate": 0.01}))
    with pytest.raises(train.SetupError, match="unknown setting"):
        train.parse_args(["--config", str(path)])


def test_infer_writes_boxes_and_overlays(tiny_run: tuple[Path, dict], tiny_data: Path, tmp_path: Path) -> None:
    import infer

    images = tiny_data / "images" / sorted(p.name for p in (tiny_data / "images").iterdir())[0]
    assert infer.main([str(tiny_run[0] / "model_stripped.safetensors"), str(images), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "boxes.json").read_text())
    predictions = result["predictions"]
    assert len(predictions) == len(list(images.glob("*.png"))) == len(list((tmp_path / "overlays").glob("*.png")))
    assert result["tau"] == json.loads((tiny_run[0] / "metrics.json").read_text())["test_at_val_tau"]["tau"]
    for record in predictions:
        with Image.open(record["image"]) as image:
            width, height = image.size
        assert record["class"].startswith(f"{record['class_index'] + 1:03d}.") and 0 <= record["score"] <= 1
        assert len(record["boxes"]) == 1
        x0, y0, x1, y1 = record["boxes"][0]
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height


def test_infer_rejects_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import infer

    assert infer.main([str(tmp_path / "missing.safetensors"), str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_flag_loads_a_local_timm_checkpoint(tmp_path: Path, suffix: str) -> None:
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("vit_tiny_patch16_224", num_classes=1000, img_size=32, **TINY_MODEL)
    path = tmp_path / f"encoder{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    config = tiny_config(tmp_path, tmp_path, checkpoint=str(path))
    adapter = train.build_model(config, num_classes=3)
    for name in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight"):
        assert torch.equal(adapter.encoder.state_dict()[name], source.state_dict()[name])
    assert adapter.num_classes == 3


def test_checkpoint_flag_with_the_wrong_architecture_says_so(tmp_path: Path) -> None:
    import timm

    other = timm.create_model(
        "vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=2
    )
    torch.save(other.state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(train.SetupError, match="cannot load the weights"):
        train.build_model(tiny_config(tmp_path, tmp_path, checkpoint=str(tmp_path / "wrong.pth")), num_classes=3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "epochs must be >= 1, got 0"),
        (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
        (["--accumulation", "0"], "accumulation must be >= 1, got 0"),
        (["--threads", "0"], "threads must be >= 1, got 0"),
        (["--workers", "-1"], "workers must be >= 0, got -1"),
        (["--lr", "nan"], "lr must be > 0 and finite, got nan"),
        (["--lr", "0"], "lr must be > 0 and finite, got 0.0"),
        (["--weight-decay", "inf"], "weight_decay must be >= 0 and finite, got inf"),
        (["--drop-path", "1"], "drop_path must be >= 0 and < 1, got 1.0"),
        (["--decay-rate", "0"], "decay_rate must be > 0 and finite"),
        (["--warmup-epochs", "-1"], "warmup_epochs must be >= 0"),
        (["--min-lr=-1e-5"], "min_lr must be >= 0"),
        (["--clip-grad", "nan"], "clip_grad must be >= 0 and finite"),
        (["--image-size", "0"], "image_size must be >= 1, got 0"),
        (["--resize-size", "16"], "resize_size 16 is smaller than image_size 32"),
        (["--scm-start-epoch", "-1"], "scm_start_epoch must be >= 0"),
        (["--lr-steps", "0", "5"], "lr_steps must be epochs >= 1, got [0, 5]"),
        (["--overlays", "-1"], "overlays must be >= 0"),
        (["--stop-after", "0"], "stop_after must be >= 1"),
        (["--seed", "-1"], "seed must be >= 0"),
        (["--name", "../../x"], "name '../../x' must be a plain folder name"),
        (["--name", "a/b"], "name 'a/b' must be a plain folder name"),
        (["--model-kwargs", "[1]"], "model_kwargs must be a JSON object, got [1]"),
    ],
)
def test_bad_setting_gives_one_line_error_before_any_work(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--data-root", str(tmp_path / "never read"), "--output", str(tmp_path / "runs"), "--image-size", "32"]
    assert train.main([*base, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("values", "message"),
    [({"epochs": "3"}, "epochs must be an integer, got '3'"), ({"head": "mlp"}, "head must be one of")],
)
def test_bad_config_file_value_gives_one_line_error(
    values: dict, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(values))
    assert train.main(["--config", str(path), "--output", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(train.SetupError, match=r"--output: .*file is a file, not a folder"):
        train.run(tiny_config(tmp_path, tmp_path / "file"))


def test_a_new_run_does_not_overwrite_an_earlier_run(tiny_run: tuple[Path, dict]) -> None:
    run_dir = tiny_run[0]
    before = (run_dir / "checkpoint.pt").stat().st_mtime_ns
    config = tiny_config(run_dir, run_dir.parent)
    with pytest.raises(train.SetupError, match=r"already holds a run; pass --resume to continue it or another --name"):
        train.run(config)
    assert (run_dir / "checkpoint.pt").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("change", "listed"),
    [
        ({"epochs": 3}, "epochs 1 -> 3"),
        ({"lr": 1e-2}, "lr 0.001 -> 0.01"),
        ({"batch_size": 2, "accumulation": 2}, "accumulation 1 -> 2; batch_size 4 -> 2"),
        ({"baseline": True}, "baseline False -> True"),
    ],
)
def test_resume_with_other_settings_lists_what_differs(
    tiny_run: tuple[Path, dict], tiny_data: Path, change: dict, listed: str
) -> None:
    config = tiny_config(tiny_data, tiny_run[0].parent, **change)
    with pytest.raises(train.SetupError, match=r"trained with other settings \(.*" + re.escape(listed)):
        train.run(config, resume="auto")


def test_resume_accepts_settings_that_do_not_change_training(tiny_run: tuple[Path, dict], tiny_data: Path) -> None:
    config = tiny_config(tiny_data, tiny_run[0].parent, overlays=0, workers=1, threads=2, stop_after=5, protocol="scm")
    assert train.read_resume_state(tiny_run[0] / train.CHECKPOINT, config)["epoch"] == 1


def test_resume_from_a_file_that_is_no_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(train.SetupError, match=r"cannot read .*broken.pt as a checkpoint of this trainer"):
        train.run(tiny_config(tiny_data, tmp_path), resume=str(tmp_path / "broken.pt"))


def _copy_with_a_bad_test_image(tiny_data: Path, tmp_path: Path, content: bytes | None) -> tuple[Path, Path]:
    """A copy of the tiny dataset whose first test image is cut to ``content`` (None: its first half)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    split = dict(line.split() for line in (data / "train_test_split.txt").read_text().splitlines())
    images = dict(line.split() for line in (data / "images.txt").read_text().splitlines())
    path = data / "images" / images[next(i for i, value in split.items() if value == "0")]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if content is None else content)
    return data, path


def test_unreadable_image_is_found_before_training(tiny_data: Path, tmp_path: Path) -> None:
    data, path = _copy_with_a_bad_test_image(tiny_data, tmp_path, b"not an image")
    with pytest.raises(train.SetupError, match=r"1 image\(s\) of the test split .* the first: .*" + path.name):
        train.run(tiny_config(data, tmp_path / "runs"))
    assert not (tmp_path / "runs" / "run").exists()


def test_truncated_test_image_keeps_the_trained_model(tiny_data: Path, tmp_path: Path) -> None:
    data, path = _copy_with_a_bad_test_image(tiny_data, tmp_path, None)
    config = tiny_config(data, tmp_path / "runs", overlays=0)
    with pytest.raises(train.SetupError, match=r"evaluation stopped \(.* holds the trained model.*" + path.name):
        train.run(config)
    run_dir = tmp_path / "runs" / "run"
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "model_stripped.safetensors").is_file()
    shutil.copy(tiny_data / "images" / path.relative_to(data / "images"), path)
    assert "MaxBoxAccV2" in train.run(config, resume="auto")["test"]  # evaluation only: training was done


def test_checkpoint_flag_keeps_timm_adaptations(tmp_path: Path) -> None:
    """A checkpoint at another input size (position embeddings resampled) with a 10-class head loads."""
    import timm

    source = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=64, **TINY_MODEL)
    torch.save(source.state_dict(), tmp_path / "encoder.pth")
    adapter = train.build_model(tiny_config(tmp_path, tmp_path, checkpoint=str(tmp_path / "encoder.pth")), 3)
    assert adapter.encoder.pos_embed.shape[1] == 1 + 4 * 4
    name = "blocks.0.attn.qkv.weight"
    assert torch.equal(adapter.encoder.state_dict()[name], source.state_dict()[name])


@pytest.mark.parametrize("kind", ["scm_calib checkpoint.pt", "another depth", "another family"])
def test_checkpoint_flag_refuses_keys_that_do_not_fit(kind: str, tmp_path: Path) -> None:
    import timm

    config = tiny_config(tmp_path, tmp_path, checkpoint=str(tmp_path / "weights.pth"))
    if kind == "scm_calib checkpoint.pt":
        state = {"model": train.build_model(config.updated({"checkpoint": None}, "test"), 3).state_dict()}
    elif kind == "another depth":
        state = timm.create_model("vit_tiny_patch16_224", img_size=32, **{**TINY_MODEL, "depth": 2}).state_dict()
    else:
        state = timm.create_model("resnet18", num_classes=3).state_dict()
    torch.save(state, tmp_path / "weights.pth")
    with pytest.raises(
        train.SetupError, match=r"does not fit vit_tiny_patch16_224: .* key\(s\) of the file are unused"
    ):
        train.build_model(config, num_classes=3)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none (a decompression bomb to Pillow)."""
    header = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + header + struct.pack(">I", zlib.crc32(header))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + end


def test_infer_skips_bad_files_and_keeps_the_others(
    tiny_run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import infer

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(torch.randint(0, 255, (30, 40, 3), dtype=torch.uint8).numpy()).save(images / "a_good.png")
    (images / "b_corrupt.png").write_bytes(b"not an image")
    (images / "c_dangling.png").symlink_to(tmp_path / "nowhere.png")
    (images / "d_bomb.png").write_bytes(_png_header_only(20_000, 20_000))
    Image.fromarray(torch.randint(0, 255, (30, 40, 3), dtype=torch.uint8).numpy()).save(images / "e_good.png")
    weights = str(tiny_run[0] / "model_stripped.safetensors")
    argv = [weights, str(images), "--out", str(tmp_path / "out"), "--batch-size", "2", "--device", "cpu"]
    assert infer.main(argv) == 0
    result = json.loads((tmp_path / "out" / "boxes.json").read_text())
    assert [Path(r["image"]).name for r in result["predictions"]] == ["a_good.png", "e_good.png"]
    assert [Path(s["image"]).name for s in result["skipped"]] == ["b_corrupt.png", "c_dangling.png", "d_bomb.png"]
    assert "skipped" in capsys.readouterr().err
    overlay = Image.open(next((tmp_path / "out" / "overlays").glob("*a_good.png")))
    assert overlay.size[0] > 1.1 * overlay.size[1]  # a 40 x 30 image stays landscape (title and legend added)


def test_infer_takes_one_image_and_warns_when_the_threshold_is_a_default(
    tiny_run: tuple[Path, dict], tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import infer

    shutil.copy(tiny_run[0] / "model_stripped.safetensors", tmp_path / "model.safetensors")
    image = next((tiny_data / "images").rglob("*.png"))
    assert infer.main([str(tmp_path / "model.safetensors"), str(image), "--out", str(tmp_path / "out")]) == 0
    assert "warning: no " in capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "boxes.json").read_text())
    assert result["tau"] == infer.DEFAULT_TAU and [r["image"] for r in result["predictions"]] == [str(image)]


def test_infer_16_bit_png_is_not_saturated(tiny_run: tuple[Path, dict], tmp_path: Path) -> None:
    import infer

    Image.fromarray(np.full((30, 40), 32896, dtype=np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(np.full((30, 40), 128, dtype=np.uint8)).save(tmp_path / "flat.png")
    weights = tiny_run[0] / "model_stripped.safetensors"
    scores = []
    for name in ("deep", "flat"):
        assert infer.main([str(weights), str(tmp_path / f"{name}.png"), "--out", str(tmp_path / name)]) == 0
        scores.append(json.loads((tmp_path / name / "boxes.json").read_text())["predictions"][0]["score"])
    assert scores[0] == scores[1]


@pytest.mark.parametrize("metadata", ["config", "none"])
def test_infer_rebuilds_a_model_saved_with_save_weights(metadata: str, tiny_data: Path, tmp_path: Path) -> None:
    import infer
    import timm

    from scm_calib import SCMAdapter, save_weights

    kwargs = TINY_MODEL if metadata == "config" else {}
    adapter = SCMAdapter(timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, **kwargs))
    config = {"model": "vit_tiny_patch16_224", "model_kwargs": kwargs, "image_size": 32}
    extra = {"config": json.dumps(config), "classes": json.dumps(["a", "b", "c"])} if metadata == "config" else {}
    save_weights(adapter.strip(), tmp_path / "mine.safetensors", metadata=extra)
    image = next((tiny_data / "images").rglob("*.png"))
    assert infer.main([str(tmp_path / "mine.safetensors"), str(image), "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / "boxes.json").read_text())["predictions"][0]
    assert record["class"] == (["a", "b", "c"] if metadata == "config" else ["0", "1", "2"])[record["class_index"]]


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--batch-size", "0"], "--batch-size must be >= 1"), (["--tau", "nan"], "--tau must be in [0, 1)")],
)
def test_infer_bad_option_gives_one_line_error(
    argv: list[str], message: str, tiny_run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import infer

    assert infer.main([str(tiny_run[0] / "model_stripped.safetensors"), str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_held_out_labels_beyond_the_classes_are_refused(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    labels = data / "wsol_metadata" / "val" / "class_labels.txt"
    lines = labels.read_text().splitlines()
    lines[0] = lines[0].rsplit(",", 1)[0] + ",7"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(train.SetupError, match=r"the val split of .* has label 7 but only 3 classes"):
        train.run(tiny_config(data, tmp_path / "runs"))


def test_a_worker_error_is_reported_in_one_line() -> None:
    from scm_calib.data import DatasetFormatError

    worker = "Caught DatasetFormatError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
    worker += '  File "x.py", line 1\nscm_calib.data.base.DatasetFormatError: a.png cannot be read as an image: no.'
    expected = pytest.raises(train.SetupError, match=r"^training stopped: a.png cannot be read as an image: no.$")
    with expected, train.reported_as_setup_error("training stopped"):
        raise DatasetFormatError(worker)


def test_checkpoint_flag_with_pretrained_does_not_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    source = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, **TINY_MODEL)
    torch.save(source.state_dict(), tmp_path / "encoder.pth")
    create = timm.create_model
    asked: list[bool] = []
    monkeypatch.setattr(
        timm, "create_model", lambda *args, **kwargs: asked.append(kwargs["pretrained"]) or create(*args, **kwargs)
    )
    train.build_model(tiny_config(tmp_path, tmp_path, pretrained=True, checkpoint=str(tmp_path / "encoder.pth")), 3)
    assert asked == [False]


@dataclass
class _Batch:
    images: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> _Batch:
        return _Batch(self.images.to(device, non_blocking=non_blocking), self.labels.to(device))


class _Classifier(torch.nn.Module):
    """The smallest model with the adapter's output field ``logits``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, images: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.fc(images))


@pytest.mark.parametrize(("batches", "log_interval", "logged_at"), [(6, 2, [2, 4, 6]), (5, 2, [2, 4, 5]), (3, 20, [3])])
def test_train_one_epoch_reads_the_loss_on_the_host_only_at_log_intervals(
    batches: int, log_interval: int, logged_at: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = torch.Generator().manual_seed(0)
    loader = [_Batch(torch.randn(2, 4, generator=generator), torch.tensor([0, 2])) for _ in range(batches)]
    model = _Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    context = engine.DistributedContext(0, 1, 0, torch.device("cpu"))
    reads: list[str] = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _f=original, _n=name: reads.append(_n) or _f(self, *a))
    steps: list[dict[str, float]] = []
    stats, global_step = engine.train_one_epoch(
        model, loader, optimizer, None, context, 0, on_step=steps.append, log_interval=log_interval
    )
    monkeypatch.undo()
    assert len(reads) == len(logged_at) + 1, reads  # one read per logged loss, one for the epoch's totals
    assert [i + 1 for i, step in enumerate(steps) if "loss" in step] == logged_at
    assert all(step["images"] == 2 for step in steps) and global_step == batches
    windows = [b - a for a, b in zip([0, *logged_at], logged_at, strict=False)]
    losses = [step["loss"] for step in steps if "loss" in step]
    assert sum(loss * size for loss, size in zip(losses, windows, strict=True)) / batches == pytest.approx(
        stats["loss"]
    )


@pytest.mark.parametrize("setting", [f.name for f in fields(cub_config.TrainConfig) if f.name != "preset"])
def test_every_setting_is_a_flag_with_its_help_and_preset_values(
    setting: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    lines = capsys.readouterr().out.splitlines()
    flag = "--" + setting.replace("_", "-")
    line = next(line for line in lines if line.strip().startswith(flag + " ") or line.strip() == flag)
    line = line if "default:" in line else lines[lines.index(line) + 1]
    help_text = next(f for f in fields(cub_config.TrainConfig) if f.name == setting).metadata["help"]
    assert help_text in line and "default: " in line


@pytest.mark.parametrize(
    ("argv", "setting", "value"),
    [
        (["--lr-steps", "3", "5"], "lr_steps", [3, 5]),
        (["--model-kwargs", '{"depth": 2}'], "model_kwargs", {"depth": 2}),
        (["--baseline"], "baseline", True),
        (["--layer-decay", "0.5"], "layer_decay", 0.5),
        (["--device", "cpu"], "device", "cpu"),
        (["--stop-after", "2"], "stop_after", 2),
        (["--data-family", "blobs"], "data_family", "blobs"),
    ],
)
def test_flags_are_typed_from_the_fields(argv: list[str], setting: str, value: object) -> None:
    config, _ = train.parse_args(argv)
    assert getattr(config, setting) == value


def test_help_shows_each_presets_value(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("--lr "))
    assert "0.001 with --preset generated" in line and "5e-05 with --preset cub" in line
