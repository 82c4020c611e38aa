"""The example trainer's presets and learning-rate schedules against the official SCM / TS-CAM rule."""

from __future__ import annotations

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
    common = {"model": "deit_small_patch16_224", "pretrained": True, "weight_decay": 0.05, "drop_path": 0.1}
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
