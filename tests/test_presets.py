"""The example trainer's presets and learning-rate schedules against the official SCM / TS-CAM rule."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "cub"))

import config as cub_config  # noqa: E402
import train  # noqa: E402


def official_lr_per_epoch(lr: float, lr_steps: tuple[int, ...], factor: float, epochs: int) -> list[float]:
    """The lr of epochs 1..N under SCM's / TS-CAM's rule, restated: at the start of epoch e the current lr is
    multiplied by ``factor`` when ``e % s == 0`` for some ``s`` in ``lr_steps`` (once, however many divide e)."""
    rates = []
    for epoch in range(1, epochs + 1):
        if any(epoch % step == 0 for step in lr_steps):
            lr *= factor
        rates.append(lr)
    return rates


def trainer_lr_per_update(config: cub_config.TrainConfig, updates_per_epoch: int) -> list[list[float]]:
    """The lr of every update of every epoch as the trainer's loop drives the scheduler."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = train.create_lr_scheduler(optimizer, config, updates_per_epoch)
    rates, global_step = [], 0
    for epoch in range(config.epochs):
        scheduler.step(epoch)
        epoch_rates = []
        for _ in range(updates_per_epoch):
            epoch_rates.append(optimizer.param_groups[0]["lr"])
            global_step += 1
            scheduler.step_update(num_updates=global_step)
        rates.append(epoch_rates)
    return rates


@pytest.mark.parametrize(
    ("preset", "lr_steps", "epochs"),
    [
        ("cub", None, None),
        ("ilsvrc", None, None),
        ("tscam-cub", None, None),
        ("tscam-ilsvrc", None, None),
        ("cub", (3,), 7),
        ("cub", (4, 6), 13),
        ("cub", (1,), 3),
    ],
)
def test_step_schedule_matches_the_official_rule_in_every_epoch(
    preset: str, lr_steps: tuple[int, ...] | None, epochs: int | None
) -> None:
    config = cub_config.PRESETS[preset]
    if lr_steps is not None:
        config = config.updated({"lr_steps": lr_steps, "epochs": epochs}, "test")
    expected = official_lr_per_epoch(config.lr, config.lr_steps, config.decay_rate, config.epochs)
    for epoch, rates in enumerate(trainer_lr_per_update(config, updates_per_epoch=3), start=1):
        assert rates == pytest.approx([expected[epoch - 1]] * 3, rel=1e-12), f"epoch {epoch}"


@pytest.mark.parametrize(
    ("lr_steps", "epochs", "decays"),
    [((30,), 30, [30]), ((10, 12), 20, [10, 12, 20]), ((30,), 60, [30, 60]), ((2, 3), 6, [2, 3, 4, 6])],
)
def test_step_decay_epochs_expands_every_multiple(lr_steps: tuple[int, ...], epochs: int, decays: list[int]) -> None:
    assert cub_config.step_decay_epochs(lr_steps, epochs) == decays


@pytest.mark.parametrize(
    ("preset", "values"),
    [
        ("cub", {"lr": 5e-5, "batch_size": 16, "epochs": 30, "lr_steps": (30,), "baseline": False}),
        ("ilsvrc", {"lr": 1e-6, "batch_size": 512, "epochs": 20, "lr_steps": (10, 12), "baseline": False}),
        ("tscam-cub", {"lr": 5e-5, "batch_size": 128, "epochs": 60, "lr_steps": (30,), "baseline": True}),
        ("tscam-ilsvrc", {"lr": 5e-4, "batch_size": 256, "epochs": 20, "lr_steps": (10, 12), "baseline": True}),
    ],
)
def test_official_presets(preset: str, values: dict[str, object]) -> None:
    config = cub_config.PRESETS[preset]
    common = {"model": "deit_small_patch16_224", "weight_decay": 0.05, "drop_path": 0.1}
    common |= {"lr_schedule": "step", "decay_rate": 0.1, "image_size": 224, "resize_size": 256, "warmup_epochs": 0}
    for name, value in {**common, **values}.items():
        assert getattr(config, name) == value, name
    assert config.dataset == ("ilsvrc" if "ilsvrc" in preset else "cub")


def test_cosine_schedule_is_kept_as_an_option() -> None:
    config = cub_config.PRESETS["cub"].updated({"lr_schedule": "cosine", "epochs": 4, "min_lr": 1e-6}, "test")
    rates = [rate for epoch in trainer_lr_per_update(config, updates_per_epoch=2) for rate in epoch]
    assert rates[0] == pytest.approx(5e-5) and all(a > b for a, b in zip(rates, rates[1:], strict=False))


@pytest.mark.parametrize(
    ("argv", "preset"),
    [
        (["--data-root", "x"], "cub"),
        (["--dataset", "ilsvrc", "--data-root", "x"], "ilsvrc"),
        (["--preset", "tscam-ilsvrc", "--data-root", "x"], "tscam-ilsvrc"),
        ([], "generated"),
    ],
)
def test_default_preset_follows_the_dataset(argv: list[str], preset: str) -> None:
    config, _ = train.parse_args(argv)
    assert config.preset == preset


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "ilsvrc"], "dataset 'ilsvrc' needs data_root"),
        (["--dataset", "wsol", "--data-root", "x"], "metadata_root None goes with dataset 'wsol' only"),
        (["--data-root", "x", "--metadata-root", "m"], "metadata_root 'm' goes with dataset 'wsol' only"),
    ],
)
def test_bad_schedule_or_dataset_setting_gives_one_line_error(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train.main([*argv, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


TINY_MODEL = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def tiny_cub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes, 4 train / 2 test / 2 val images each, 32-40 px, in the CUB layout."""
    from scm_calib.data import ensure_generated_dataset

    root = tmp_path_factory.mktemp("data") / "tiny"
    return ensure_generated_dataset(
        root, num_classes=3, train_per_class=4, test_per_class=2, val_per_class=2, min_size=32, max_size=40
    )


def as_ilsvrc(cub: Path, out: Path) -> Path:
    """The tiny CUB folder in the ILSVRC layout of SCM / TS-CAM: list files and train/ + val/ image folders."""
    from scm_calib.data import read_cub_records

    (out / "ILSVRC2012_list").mkdir(parents=True)
    for split, folder, list_name in (("train", "train", "train.txt"), ("test", "val", "val_folder_new.txt")):
        lines = []
        for record in read_cub_records(cub, split):
            (out / folder / record.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(cub / "images" / record.path, out / folder / record.path)
            boxes = "" if split == "train" else " " + " ".join(f"{v:g}" for box in record.boxes for v in box)
            lines.append(f"{record.path} {record.label}{boxes}")
        (out / "ILSVRC2012_list" / list_name).write_text("\n".join(lines) + "\n")
    return out


def as_wsol_metadata(cub: Path, out: Path) -> Path:
    """wsolevaluation metadata (train/, val/, test/) of the tiny CUB folder's images."""
    from PIL import Image

    from scm_calib.data import read_cub_records, read_wsol_metadata

    splits = {
        "train": read_cub_records(cub, "train"),
        "test": read_cub_records(cub, "test"),
        "val": read_wsol_metadata(cub / "wsol_metadata" / "val"),
    }
    for split, records in splits.items():
        (out / split).mkdir(parents=True)
        sizes = [Image.open(cub / "images" / record.path).size for record in records]
        files = {
            "image_ids.txt": [record.path for record in records],
            "class_labels.txt": [f"{record.path},{record.label}" for record in records],
            "image_sizes.txt": [f"{record.path},{w},{h}" for record, (w, h) in zip(records, sizes, strict=True)],
            "localization.txt": [
                f"{record.path}," + ",".join(f"{v:g}" for v in box) for record in records for box in record.boxes
            ],
        }
        for name, lines in files.items():
            (out / split / name).write_text("\n".join(lines) + "\n")
    return out


def tiny_config(**values: object) -> cub_config.TrainConfig:
    """The generated preset shrunk to seconds: a 1-block, 32-wide ViT from scratch on 32 px inputs, 2 epochs."""
    tiny = dict(
        model_kwargs=TINY_MODEL,
        checkpoint=None,
        image_size=32,
        epochs=2,
        batch_size=4,
        warmup_epochs=0,
        overlays=1,
        name="run",
        threads=1,
        lr_schedule="step",
        lr_steps=(2,),
    )
    return cub_config.PRESETS["generated"].updated({**tiny, **values}, "test")


def layout_values(dataset: str, tiny_cub: Path, tmp_path: Path) -> dict[str, object]:
    """Settings that point the trainer at the tiny dataset written in the layout of ``dataset``."""
    if dataset == "ilsvrc":
        return {"dataset": dataset, "data_root": str(as_ilsvrc(tiny_cub, tmp_path / "ilsvrc"))}
    if dataset == "wsol":
        metadata = as_wsol_metadata(tiny_cub, tmp_path / "metadata")
        return {"dataset": dataset, "data_root": str(tiny_cub / "images"), "metadata_root": str(metadata)}
    return {"dataset": dataset, "data_root": str(tiny_cub)}


@pytest.mark.parametrize("dataset", ["ilsvrc", "wsol"])
def test_each_layout_gives_the_images_labels_and_boxes_of_the_cub_files(
    dataset: str, tiny_cub: Path, tmp_path: Path
) -> None:
    context = train.setup_distributed("cpu")
    expected = train.load_datasets(tiny_config(**layout_values("cub", tiny_cub, tmp_path)), context)
    found = train.load_datasets(tiny_config(**layout_values(dataset, tiny_cub, tmp_path)), context)
    assert sorted(found) == (["test", "train"] if dataset == "ilsvrc" else ["test", "train", "val"])
    for split, dataset_found in found.items():
        want = expected[split]
        assert [(r.path, r.label, r.boxes) for r in dataset_found.records] == [
            (r.path, r.label, r.boxes if split != "train" or dataset == "wsol" else ()) for r in want.records
        ], split
        assert dataset_found.class_names == want.class_names == expected["train"].class_names  # from the folders
    assert found["train"].transform is not found["test"].transform  # augmentation for training only


def test_a_step_schedule_run_on_wsol_metadata(tiny_cub: Path, tmp_path: Path) -> None:
    values = layout_values("wsol", tiny_cub, tmp_path)
    summary = train.run(tiny_config(**values, output=str(tmp_path / "runs"), overlays=0))
    assert [epoch["lr"] for epoch in summary["history"]] == pytest.approx([1e-3, 1e-4])  # x0.1 at epoch 2
    assert 0.0 <= summary["test_at_val_tau"]["GTKnownLoc"] <= 100.0  # tau chosen on the held-out val split


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ("ilsvrc", r"cannot read the ilsvrc dataset at .*ILSVRC2012_list/train.txt: file not found"),
        ("wsol", r"--metadata-root .* is not a folder; pass wsolevaluation's metadata/<dataset> folder"),
    ],
)
def test_a_folder_of_another_layout_says_what_it_should_hold(
    dataset: str, message: str, tiny_cub: Path, tmp_path: Path
) -> None:
    values: dict[str, object] = {"dataset": dataset, "data_root": str(tiny_cub), "output": str(tmp_path)}
    if dataset == "wsol":
        values["metadata_root"] = str(tmp_path / "missing")
    with pytest.raises(train.SetupError, match=message):
        train.run(tiny_config(**values))


def as_openimages(cub: Path, out: Path, ignore: str) -> Path:
    """The tiny CUB folder as wsolevaluation lays out OpenImages: ``out`` holds the images and the instance masks
    (links to CUB's ``images/`` and ``segmentations/``) and an ignore mask per image, ``ignore="box"`` the object's
    box or ``"all"`` the whole image; ``out/metadata`` the split folders with an empty ``image_sizes.txt``."""
    from PIL import Image

    from scm_calib.data import read_cub_records, read_wsol_metadata

    out.mkdir(parents=True)
    for folder in ("images", "segmentations"):
        (out / folder).symlink_to(cub / folder, target_is_directory=True)
    splits = {
        "train": read_cub_records(cub, "train"),
        "test": read_cub_records(cub, "test"),
        "val": read_wsol_metadata(cub / "wsol_metadata" / "val"),
    }
    for split, records in splits.items():
        (out / "metadata" / split).mkdir(parents=True)
        lines = []
        for record in records if split != "train" else []:
            width, height = Image.open(cub / "images" / record.path).size
            region = torch.zeros(height, width, dtype=torch.uint8)
            x0, y0, x1, y1 = (int(v) for v in record.boxes[0]) if ignore == "box" else (0, 0, width, height)
            region[y0:y1, x0:x1] = 255
            ignore_path = Path("ignore") / Path(record.path).with_suffix(".png")
            (out / ignore_path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(region.numpy()).save(out / ignore_path)
            mask_path = Path("segmentations") / Path(record.path).with_suffix(".png")
            lines.append(f"images/{record.path},{mask_path.as_posix()},{ignore_path.as_posix()}")
        files = {
            "image_ids.txt": [f"images/{record.path}" for record in records],
            "class_labels.txt": [f"images/{record.path},{record.label}" for record in records],
            "image_sizes.txt": [],
            "localization.txt": lines,
        }
        for name, rows in files.items():
            (out / "metadata" / split / name).write_text("".join(f"{row}\n" for row in rows))
    return out


def test_openimages_layout_trains_and_reports_pxap(tiny_cub: Path, tmp_path: Path) -> None:
    root = as_openimages(tiny_cub, tmp_path / "openimages", ignore="box")
    values = {"dataset": "wsol", "data_root": str(root), "metadata_root": str(root / "metadata")}
    summary = train.run(tiny_config(**values, output=str(tmp_path / "runs"), epochs=1))
    for metrics in (summary["test"], summary["val"], summary["centre_prior"]):
        assert 0.0 <= metrics["PxAP"] <= 100.0 and "MaxBoxAccV2" not in metrics  # masks only, no boxes
    assert "test_at_val_tau" not in summary


def test_pxap_leaves_out_the_ignore_region(tiny_cub: Path, tmp_path: Path) -> None:
    # Ignoring every pixel outside the object leaves only object pixels: precision 1 at every threshold.
    root = as_openimages(tiny_cub, tmp_path / "openimages", ignore="all")
    config = tiny_config(dataset="wsol", data_root=str(root), metadata_root=str(root / "metadata"))
    context = train.setup_distributed("cpu")
    test = train.load_datasets(config, context)["test"]
    assert train.scored(test) == {"boxes": False, "pxap": True}
    model = train.build_model(config, test.num_classes)
    loader = train.eval_loader(test, config, context)
    metrics = train.evaluate(model, loader, (32, 32), device=context.device, **train.scored(test))
    assert metrics["PxAP"] == pytest.approx(100.0)


def test_a_resumed_step_schedule_continues_at_the_official_lr(tiny_cub: Path, tmp_path: Path) -> None:
    config = tiny_config(data_root=str(tiny_cub), output=str(tmp_path), overlays=0, epochs=3, lr_steps=(2,))
    assert train.run(config.updated({"stop_after": 1}, "test")) == {"stopped_after_epoch": 1}
    summary = train.run(config, resume="auto")
    assert [epoch["lr"] for epoch in summary["history"]] == pytest.approx([1e-3, 1e-4, 1e-4])
