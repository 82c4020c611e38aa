"""Training configuration of the example trainer: one dataclass, presets, JSON files and command-line overrides.

``generated`` (the default without ``--data-root``) fine-tunes the small ViT shipped with the package
(:mod:`scm_calib.pretrained`, pretrained on generated shapes) on the generated WSOL dataset in a few CPU minutes,
as the paper fine-tunes ImageNet-pretrained DeiT-S. ``cub`` and ``ilsvrc`` are the official recipes of SCM (Bai
et al., ECCV 2022), ``tscam-cub`` and ``tscam-ilsvrc`` those of its baseline TS-CAM (Gao et al., ICCV 2021):
ImageNet-pretrained DeiT-S, AdamW, weight decay 0.05, drop-path 0.1, Resize 256 -> RandomCrop 224 -> flip, test
Resize 224, and the official step learning-rate rule (:func:`step_decay_epochs`). Each preset cites the lines of
the official code it reproduces.
"""

from __future__ import annotations

import argparse
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from scm_calib.data.generated import FAMILIES
from scm_calib.pretrained import ENCODER_ARCH, ENCODER_KWARGS

__all__ = ["DOCUMENTED_RESULTS", "PRESETS", "TrainConfig", "add_arguments", "load_config_file", "step_decay_epochs"]

# Test metrics of the generated preset per data family (mean of seeds 0, 1, 2; docs/results.md), printed next
# to a run's own numbers. GT-known Loc and Top-1 Loc at the best tau on test.
DOCUMENTED_RESULTS: dict[str, dict[str, dict[str, float]]] = {
    "default": {
        "SCM": {"MaxBoxAccV2": 20.9, "MaxBoxAcc": 12.0, "GTKnownLoc": 12.0, "Top1Loc": 10.6, "Top1Cls": 87.2},
        "baseline": {"MaxBoxAccV2": 21.3, "MaxBoxAcc": 14.6, "GTKnownLoc": 14.6, "Top1Loc": 13.9, "Top1Cls": 90.6},
    },
    "blobs": {
        "SCM": {"MaxBoxAccV2": 43.0, "MaxBoxAcc": 36.1, "GTKnownLoc": 36.1, "Top1Loc": 32.9, "Top1Cls": 84.8},
        "baseline": {"MaxBoxAccV2": 46.8, "MaxBoxAcc": 39.8, "GTKnownLoc": 39.8, "Top1Loc": 37.9, "Top1Cls": 90.4},
    },
    "marker": {
        "SCM": {"MaxBoxAccV2": 23.1, "MaxBoxAcc": 11.9, "GTKnownLoc": 11.9, "Top1Loc": 4.4, "Top1Cls": 28.6},
        "baseline": {"MaxBoxAccV2": 26.3, "MaxBoxAcc": 15.4, "GTKnownLoc": 15.4, "Top1Loc": 6.7, "Top1Cls": 31.1},
    },
    "tinted": {
        "SCM": {"MaxBoxAccV2": 22.5, "MaxBoxAcc": 14.0, "GTKnownLoc": 14.0, "Top1Loc": 12.2, "Top1Cls": 89.3},
        "baseline": {"MaxBoxAccV2": 23.1, "MaxBoxAcc": 15.2, "GTKnownLoc": 15.2, "Top1Loc": 14.7, "Top1Cls": 92.4},
    },
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; written to ``<run>/config.json``.

    Each field is a setting: its type, its default and its help (``metadata["help"]``) are declared once here;
    :func:`add_arguments` makes a command-line flag of each (``data_root`` -> ``--data-root``), the presets
    override the defaults, and :meth:`validate` checks the values.
    """

    preset: str = field(default="generated", metadata={"help": "name of the preset the values started from"})
    dataset: str = field(
        default="cub",
        metadata={
            "help": "layout of --data-root: cub (a CUB_200_2011 folder), ilsvrc (the list files of SCM / TS-CAM) or "
            "wsol (wsolevaluation metadata of CUB, ILSVRC or OpenImages)"
        },
    )
    data_root: str | None = field(
        default=None,
        metadata={"help": "the dataset folder; none generates the default dataset (CUB layout) into --data-cache"},
    )
    metadata_root: str | None = field(
        default=None,
        metadata={"help": "with --dataset wsol: wsolevaluation's metadata/<dataset> folder (train/, test/, val/)"},
    )
    data_cache: str = field(
        default=".cache/scm_calib/generated", metadata={"help": "folder of the generated datasets (one per family)"}
    )
    data_family: str = field(default="default", metadata={"help": "generated data family (without --data-root)"})
    model: str = field(default="vit_tiny_patch16_224", metadata={"help": "timm model name"})
    model_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "JSON object of extra timm.create_model arguments (depth, ...)"}
    )
    pretrained: bool = field(default=False, metadata={"help": "load timm's pretrained weights from the hub"})
    checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "local timm checkpoint loaded into the encoder instead (offline); 'shipped' is the encoder "
            "shipped with the package (scm_calib.pretrained.WEIGHTS_FILE)"
        },
    )
    image_size: int = field(default=224, metadata={"help": "side of the square network input"})
    resize_size: int | None = field(
        default=None, metadata={"help": "side training images are resized to before the random crop (none: 256/224)"}
    )
    baseline: bool = field(default=False, metadata={"help": "train without SCM (TS-CAM style)"})
    scm_start_epoch: int = field(
        default=0,
        metadata={"help": "epochs trained without SCM before it is switched on (a warm-up of an encoder from scratch)"},
    )
    head: str = field(default="conv", metadata={"help": "semantic head: the paper's 3x3 conv or a per-token linear"})
    epochs: int = field(default=30, metadata={"help": "training epochs"})
    batch_size: int = field(default=16, metadata={"help": "images per process per micro-batch"})
    accumulation: int = field(default=1, metadata={"help": "micro-batches per optimizer update"})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate (AdamW)"})
    layer_decay: float | None = field(
        default=None,
        metadata={
            "help": "layer-wise lr decay (timm create_optimizer_v2): head and SCM at lr, encoder block i of n at "
            "lr * layer_decay ** (n - i); none for one rate everywhere"
        },
    )
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    drop_path: float = field(default=0.1, metadata={"help": "stochastic depth rate of the encoder"})
    lr_schedule: str = field(
        default="cosine",
        metadata={
            "help": "cosine (timm's, stepped per update, down to --min-lr) or step (the official SCM / TS-CAM rule: "
            "at the start of epoch e the lr is multiplied by --decay-rate when e is a multiple of any s in --lr-steps)"
        },
    )
    lr_steps: tuple[int, ...] = field(
        default=(30,), metadata={"help": "the LR_STEPS s of the official configs, for --lr-schedule step"}
    )
    decay_rate: float = field(default=0.1, metadata={"help": "the lr factor of the step schedule (LR_FACTOR)"})
    warmup_epochs: int = field(
        default=0, metadata={"help": "linear warm-up epochs (per update with cosine, per epoch with step)"}
    )
    warmup_lr: float = field(default=1e-6, metadata={"help": "lr at the start of the warm-up"})
    min_lr: float = field(default=1e-6, metadata={"help": "final lr of the cosine schedule"})
    clip_grad: float | None = field(default=None, metadata={"help": "max gradient norm; none or 0 for no clipping"})
    seed: int = field(default=0, metadata={"help": "seed of weights, data order and augmentation"})
    workers: int = field(default=2, metadata={"help": "DataLoader worker processes"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads per process (none: torch's)"})
    device: str | None = field(default=None, metadata={"help": "device (none: CUDA when available)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    protocol: str = field(default="wsol", metadata={"help": "evaluation protocol (scm_calib.metrics)"})
    output: str = field(default="runs", metadata={"help": "folder of the run folders"})
    name: str | None = field(
        default=None, metadata={"help": "run folder name (none: <preset>-<scm|baseline>-seed<seed>)"}
    )
    overlays: int = field(
        default=4,
        metadata={
            "help": "k: the k worst and the k best test images by IoU are drawn with their maps and boxes at the end "
            "(overlays/worst_*.png, best_*.png)"
        },
    )
    wsol_scoremaps: bool = field(
        default=False,
        metadata={
            "help": "also write the test split's score maps and metadata to <run>/wsolevaluation/ in the layout of "
            "clovaai wsolevaluation's evaluation.py, and print its command (examples/cub/rescore.py reads them back)"
        },
    )
    stop_after: int | None = field(
        default=None, metadata={"help": "stop after this many epochs of this invocation, as if killed (then --resume)"}
    )

    @property
    def run_name(self) -> str:
        """The run folder's name."""
        family = f"-{self.data_family}" if self.data_root is None and self.data_family != "default" else ""
        return self.name or f"{self.preset}{family}-{'baseline' if self.baseline else 'scm'}-seed{self.seed}"

    def to_json(self) -> dict[str, Any]:
        """The configuration as a JSON-ready dict."""
        return asdict(self)

    def updated(self, values: dict[str, Any], source: str) -> TrainConfig:
        """A copy with ``values`` replaced; ``source`` names where they came from for the error message.

        Raises:
            ValueError: a key that is no field of the configuration.
        """
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {unknown}; the settings are {sorted(known)}.")
        return replace(self, **values)

    def validate(self) -> None:
        """Checks every setting's type and range.

        Raises:
            ValueError: the first setting that cannot work, with its value and the values it accepts.
        """
        for name, hint in typing.get_type_hints(TrainConfig).items():
            value = getattr(self, name)
            if not _has_type(value, hint):
                raise ValueError(f"{name} must be {_type_name(hint)}, got {value!r}.")
        for name, (accepts, words) in _BOUNDS.items():
            value = getattr(self, name)
            if value is not None and not accepts(value):
                raise ValueError(f"{name} must be {words}, got {value!r}.")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if any(step < 1 for step in self.lr_steps):
            raise ValueError(f"lr_steps must be epochs >= 1, got {list(self.lr_steps)}.")
        if self.lr_schedule == "step" and not self.lr_steps:
            raise ValueError("lr_steps is empty but lr_schedule is 'step'; give the decay epochs, e.g. --lr-steps 30.")
        if self.dataset != "cub" and self.data_root is None:
            raise ValueError(
                f"dataset {self.dataset!r} needs data_root (--data-root); only 'cub' has a generated default."
            )
        if (self.dataset == "wsol") != (self.metadata_root is not None):
            raise ValueError(
                f"metadata_root {self.metadata_root!r} goes with dataset 'wsol' only, got dataset {self.dataset!r}; "
                "pass --dataset wsol --metadata-root <wsolevaluation metadata/NAME> together."
            )
        if self.resize_size is not None and self.resize_size < self.image_size:
            raise ValueError(
                f"resize_size {self.resize_size} is smaller than image_size {self.image_size}; the random crop "
                "needs resize_size >= image_size."
            )
        name = self.run_name
        if name in ("", ".", "..") or Path(name).name != name or "/" in name or "\\" in name:
            raise ValueError(f"name {name!r} must be a plain folder name (no path); use output to pick the folder.")


def _at_least(low: float) -> Callable[[float], bool]:
    """A check of ``low <= value`` that also rejects infinity and NaN."""
    return lambda value: low <= value < math.inf


# What each numeric setting accepts, in words for the message; None (where allowed) is not checked.
_BOUNDS: dict[str, tuple[Callable[[float], bool], str]] = {
    "image_size": (_at_least(1), ">= 1"),
    "resize_size": (_at_least(1), ">= 1"),
    "scm_start_epoch": (_at_least(0), ">= 0"),
    "epochs": (_at_least(1), ">= 1"),
    "batch_size": (_at_least(1), ">= 1"),
    "accumulation": (_at_least(1), ">= 1"),
    "lr": (lambda value: 0 < value < math.inf, "> 0 and finite"),
    "weight_decay": (_at_least(0), ">= 0 and finite"),
    "drop_path": (lambda value: 0 <= value < 1, ">= 0 and < 1"),
    "decay_rate": (lambda value: 0 < value < math.inf, "> 0 and finite"),
    "layer_decay": (lambda value: 0 < value <= 1, "> 0 and <= 1"),
    "warmup_epochs": (_at_least(0), ">= 0"),
    "warmup_lr": (_at_least(0), ">= 0 and finite"),
    "min_lr": (_at_least(0), ">= 0 and finite"),
    "clip_grad": (_at_least(0), ">= 0 and finite (0: no clipping)"),
    "seed": (_at_least(0), ">= 0"),
    "workers": (_at_least(0), ">= 0"),
    "threads": (_at_least(1), ">= 1"),
    "overlays": (_at_least(0), ">= 0"),
    "stop_after": (_at_least(1), ">= 1"),
}

_CHOICES: dict[str, tuple[Any, ...]] = {
    "head": ("conv", "linear"),
    "dataset": ("cub", "ilsvrc", "wsol"),
    "lr_schedule": ("cosine", "step"),
    "data_family": FAMILIES,
    "protocol": ("wsol", "scm", "tscam"),
    "device": (None, "cuda", "cpu"),
}


def _has_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a field's type hint (JSON lists count as tuples, ints as floats)."""
    if isinstance(hint, types.UnionType):
        return any(_has_type(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin is tuple:
        return isinstance(value, (tuple, list)) and all(_has_type(v, typing.get_args(hint)[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(key, str) for key in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    """A type hint in words for error messages."""
    if isinstance(hint, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(hint))
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if origin is dict:
        return "a JSON object"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(hint, str(hint))


# What the official SCM and TS-CAM recipes below share (their sources are cited with each preset): DeiT-S, Resize
# 256 -> crop 224, AdamW with weight decay 0.05, drop-path 0.1, the step schedule with factor 0.1, no warm-up.
_OFFICIAL = TrainConfig(
    model="deit_small_patch16_224",
    image_size=224,
    resize_size=256,
    weight_decay=0.05,
    drop_path=0.1,
    lr_schedule="step",
    decay_rate=0.1,
    warmup_epochs=0,
)

PRESETS: dict[str, TrainConfig] = {
    # Fine-tunes the shipped encoder (a 6-block, 96-wide ViT with 8 px patches pretrained on generated shapes,
    # scm_calib.pretrained) on 96 px inputs (a 12 x 12 grid), SCM on from the first step, as the paper does with
    # ImageNet-pretrained DeiT-S. Layer-wise lr decay keeps the pretrained attention while the new head learns
    # the class cue (docs/results.md: the recipe and what was tried).
    "generated": TrainConfig(
        preset="generated",
        model=ENCODER_ARCH,
        model_kwargs=dict(ENCODER_KWARGS),
        checkpoint="shipped",
        image_size=96,
        epochs=15,
        batch_size=16,
        lr=1e-3,
        layer_decay=0.9,
        weight_decay=0.05,
        drop_path=0.0,
        warmup_epochs=1,
        warmup_lr=1e-5,
        min_lr=1e-5,
        clip_grad=1.0,
        workers=0,
    ),
    # SCM's CUB recipe (Bai et al., ECCV 2022; the official code at github.com/164140757/SCM):
    #   configs/CUB/deit_scm_small_patch16_224.yaml:9 deit_scm_small_patch16_224 (DeiT-S), :16-17 Resize 256 ->
    #   crop 224, :23 BATCH_SIZE 16, :31 LR_STEPS [30], :32 NUM_EPOCHS 30, :33 LR_FACTOR 0.1;
    #   README.md:91 `--lr 5e-5`; lib/config/default.py:163 drop-path 0.1, :173 AdamW, :183 weight decay 0.05
    #   (the yaml's SOLVER.WEIGHT_DECAY is not read by timm's create_optimizer, tools_cam/train_cam.py:55);
    #   tools_cam/train_cam.py:88-89 + lib/core/engine.py:66-81 the step rule. So lr 5e-5 for epochs 1-29 and 5e-6
    #   for epoch 30. The official encoder is ImageNet-pretrained (tools_cam/train_cam.py:38): pass --pretrained
    #   (timm's hub) or --checkpoint FILE (offline) with every official preset; none downloads by itself.
    "cub": replace(_OFFICIAL, preset="cub", epochs=30, batch_size=16, lr=5e-5, lr_steps=(30,), workers=4),
    # SCM's ILSVRC recipe: configs/ILSVRC/deit_scm_small_patch16_224.yaml:24 BATCH_SIZE 512, :32 LR_STEPS
    # [10, 12], :33 NUM_EPOCHS 20, :6 NUM_WORKERS 6; README.md:93 `--lr 1e-6`; the rest as "cub". The step rule
    # multiplies by 0.1 at epochs 10, 12 and 20 (20 % 10 == 0): 1e-6, 1e-7 from epoch 10, 1e-8 from 12, 1e-9 at 20.
    "ilsvrc": replace(
        _OFFICIAL, preset="ilsvrc", dataset="ilsvrc", epochs=20, batch_size=512, lr=1e-6, lr_steps=(10, 12), workers=6
    ),
    # TS-CAM's CUB recipe (Gao et al., ICCV 2021; github.com/vasgaowei/TS-CAM), the baseline without SCM:
    #   configs/CUB/deit_tscam_small_patch16_224.yaml:21 BATCH_SIZE 128, :29 LR_STEPS [30], :30 NUM_EPOCHS 60,
    #   :31 LR_FACTOR 0.1; train_val_cub.sh:7 `--lr 5e-5`; lib/config/default.py:160 drop-path 0.1, :170 AdamW,
    #   :180 weight decay 0.05; tools_cam/train_cam.py:76-77 + lib/core/engine.py:58-73 the same step rule:
    #   x0.1 at epochs 30 and 60.
    "tscam-cub": replace(
        _OFFICIAL, preset="tscam-cub", baseline=True, epochs=60, batch_size=128, lr=5e-5, lr_steps=(30,), workers=4
    ),
    # TS-CAM's ILSVRC recipe: configs/ILSVRC/deit_tscam_small_patch16_224.yaml:5 NUM_WORKERS 8, :22 BATCH_SIZE
    # 256, :30 LR_STEPS [10, 12], :31 NUM_EPOCHS 20; train_val_ilsvrc.sh:7 `--lr 5e-4`; the rest as "tscam-cub".
    "tscam-ilsvrc": replace(
        _OFFICIAL,
        preset="tscam-ilsvrc",
        dataset="ilsvrc",
        baseline=True,
        epochs=20,
        batch_size=256,
        lr=5e-4,
        lr_steps=(10, 12),
        workers=8,
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds a flag for every field of :class:`TrainConfig` but ``preset``: ``--<name with dashes>``, typed from the
    field's annotation, with its help and its value in each preset.

    Booleans are switches (``--baseline``), tuples take several values (``--lr-steps 10 12``), dicts a JSON
    object (``--model-kwargs '{"depth": 6}'``). Flags left out keep the preset's value (the parser should be made
    with ``argument_default=argparse.SUPPRESS``).
    """
    for setting in fields(TrainConfig):
        if setting.name == "preset":
            continue
        flag = "--" + setting.name.replace("_", "-")
        hint = typing.get_type_hints(TrainConfig)[setting.name]
        help_text = f"{setting.metadata['help']} ({_preset_values(setting.name)})"
        if hint is bool:
            parser.add_argument(flag, dest=setting.name, action="store_true", help=help_text)
            continue
        if isinstance(hint, types.UnionType):  # X | None: the flag gives an X
            hint = next(option for option in typing.get_args(hint) if option is not type(None))
        arguments: dict[str, Any] = {"dest": setting.name, "help": help_text, "metavar": setting.name.upper()}
        if typing.get_origin(hint) is tuple:
            arguments.update(type=typing.get_args(hint)[0], nargs="+")
        elif typing.get_origin(hint) is dict:
            arguments["type"] = json.loads
        else:
            arguments["type"] = hint
        if setting.name in _CHOICES:
            arguments["choices"] = [choice for choice in _CHOICES[setting.name] if choice is not None]
            del arguments["metavar"]
        parser.add_argument(flag, **arguments)


def _preset_values(name: str) -> str:
    """A setting's value in each preset, for ``--help``: ``default: X`` when they agree."""
    shown = {preset: _shown(getattr(config, name)) for preset, config in PRESETS.items()}
    if len(set(shown.values())) == 1:
        return f"default: {next(iter(shown.values()))}"
    return "default: " + ", ".join(f"{value} with --preset {preset}" for preset, value in shown.items())


def _shown(value: Any) -> str:
    """A setting's value as it is typed on the command line (``none`` for None)."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return " ".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def step_decay_epochs(lr_steps: tuple[int, ...] | list[int], epochs: int) -> list[int]:
    """The epochs (1-based) at whose start the official step rule multiplies the learning rate by its factor.

    SCM's and TS-CAM's trainers run epochs ``1..epochs`` and call ``adjust_learning_rate_normal`` at the start of
    each (SCM tools_cam/train_cam.py:88-89, lib/core/engine.py:66-81), which decays when ``e % s == 0`` for any
    ``s`` in ``LR_STEPS``: every multiple of a step, not only the step itself (``[10, 12]`` over 20 epochs decays
    at 10, 12 and 20). timm's ``MultiStepLRScheduler`` stepped per epoch with these epochs as ``decay_t`` gives
    the same lr in every epoch (its milestone ``m`` applies from the 0-based epoch ``m - 1``).

    Args:
        lr_steps: the steps ``s`` (``LR_STEPS``).
        epochs: number of epochs.

    Returns:
        The decay epochs, ascending, one entry per epoch however many steps divide it.
    """
    return [epoch for epoch in range(1, epochs + 1) if any(epoch % step == 0 for step in lr_steps)]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Reads a JSON object of settings (a subset of :class:`TrainConfig`'s fields).

    Raises:
        ValueError: the file is missing, is not valid JSON or does not hold an object.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist; pass a JSON file of settings.")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"config file {path} is not valid JSON ({err}).") from err
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a JSON object of settings, got {type(values).__name__}.")
    return values
