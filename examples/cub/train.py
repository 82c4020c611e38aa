"""Train a timm ViT with SCM (Bai et al., ECCV 2022) for weakly supervised localization, evaluate it, export it.

With no argument it generates the default dataset, trains a small ViT from scratch on the CPU in minutes and
writes ``runs/generated-scm-seed0/``: ``config.json``, ``history.json``, ``metrics.json`` (with TS-CAM's breakdown
of localization outcomes), ``test_images.csv`` (one row per test image), ``curves.png``, ``overlays/worst_*.png``
and ``best_*.png``, ``checkpoint.pt`` (every epoch, atomically), ``model_stripped.safetensors`` and, with
``--wsol-scoremaps``, ``wsolevaluation/`` (score maps and metadata for clovaai wsolevaluation).

    python examples/cub/train.py                       # SCM on the generated dataset
    python examples/cub/train.py --baseline            # the same without SCM (TS-CAM style)
    python examples/cub/train.py --data-root CUB_200_2011 --pretrained        # SCM's official CUB recipe
    python examples/cub/train.py --data-root CUB_200_2011 --pretrained --preset tscam-cub   # TS-CAM's
    torchrun --nproc-per-node 4 examples/cub/train.py --data-root CUB_200_2011 --pretrained --batch-size 4
    torchrun --nproc-per-node 8 examples/cub/train.py --dataset ilsvrc --data-root ILSVRC2012 --batch-size 64
    python examples/cub/train.py --dataset wsol --data-root dataset/OpenImages --metadata-root metadata/OpenImages
    python examples/cub/train.py --data-root CUB_200_2011 --pretrained --wsol-scoremaps   # + wsolevaluation folder
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import timm
import torch
from config import DOCUMENTED_RESULTS, PRESETS, TrainConfig, add_arguments, load_config_file, step_decay_epochs
from engine import (
    DistributedContext,
    rng_state,
    seed_everything,
    set_rng_state,
    setup_distributed,
    shard,
    train_one_epoch,
)
from PIL import Image
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from torch import nn

from scm_calib import (
    CheckpointError,
    SCMAdapter,
    UnsupportedModelError,
    box_iou,
    load_weights,
    save_weights,
)
from scm_calib.boxes import boxes_from_maps, resize_maps
from scm_calib.checkpoint import load_checkpoint, save_checkpoint
from scm_calib.data import (
    CUBDataset,
    DatasetFormatError,
    ILSVRCListDataset,
    WSOLDataset,
    WSOLMetadataDataset,
    collate_wsol,
    ensure_generated_dataset,
    load_image,
    wsol_train_transform,
)
from scm_calib.diagnostics import OUTCOMES, ImageDiagnosis, worst_and_best, write_diagnoses
from scm_calib.evaluation import diagnose, evaluate, summarize
from scm_calib.interop import write_wsol_metadata, wsolevaluation_command
from scm_calib.localize import select_maps, semantic_and_attention
from scm_calib.pretrained import WEIGHTS_FILE

CHECKPOINT = "checkpoint.pt"
WSOL_FOLDER = "wsolevaluation"  # <run>/wsolevaluation/: score maps and metadata for clovaai wsolevaluation


class SetupError(Exception):
    """A setting that cannot work (missing data, unknown model, ...); reported without a traceback."""


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, str | None]:
    """Preset, then ``--config`` JSON, then the command-line options given explicitly.

    Returns:
        The configuration and the ``--resume`` value (``"auto"``: ``<run>/checkpoint.pt``, a path, or None).

    Raises:
        SetupError: an unknown preset or a bad config file.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS)
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="the settings to start from (default: ilsvrc with --dataset ilsvrc, cub with --data-root, else generated)",
    )
    parser.add_argument("--config", help="JSON file of settings (the fields of config.TrainConfig)")
    parser.add_argument("--resume", nargs="?", const="auto", help="continue from <run>/checkpoint.pt or a file")
    add_arguments(parser)
    args = vars(parser.parse_args(argv))
    resume = args.pop("resume", None)
    preset = args.pop(
        "preset", "ilsvrc" if args.get("dataset") == "ilsvrc" else "cub" if "data_root" in args else "generated"
    )
    config = PRESETS[preset]
    config_file = args.pop("config", None)
    try:
        if config_file is not None:
            config = config.updated(load_config_file(config_file), f"config file {config_file}")
        config = config.updated(args, "command line")
    except ValueError as err:
        raise SetupError(str(err)) from err
    return config, resume


# What --data-root holds for each --dataset, for the messages.
DATA_LAYOUTS = {
    "cub": "the CUB_200_2011 folder (holding images.txt)",
    "ilsvrc": "the ILSVRC-2012 folder (holding ILSVRC2012_list/train.txt, val_folder_new.txt, train/ and val/)",
    "wsol": "the image folder of one wsolevaluation dataset (dataset/CUB, dataset/ILSVRC or dataset/OpenImages)",
}


def read_cub(root: Path, config: TrainConfig) -> dict[str, WSOLDataset]:
    """CUB-200-2011 (or the generated dataset): train and test from its files, the held-out ``val`` split from
    ``wsol_metadata/val/`` when that folder exists."""
    datasets: dict[str, WSOLDataset] = {
        "train": CUBDataset(root, "train", image_size=config.image_size, augment=True, masks=False),
        "test": CUBDataset(root, "test", image_size=config.image_size, masks=False),
    }
    val_dir = root / "wsol_metadata" / "val"
    if val_dir.is_dir():
        datasets["val"] = WSOLMetadataDataset(
            root / "images", val_dir, image_size=config.image_size, class_names=datasets["train"].class_names
        )
    return datasets


def read_ilsvrc(root: Path, config: TrainConfig) -> dict[str, WSOLDataset]:
    """ILSVRC-2012 in the layout of SCM's and TS-CAM's loaders (SCM lib/datasets/imagenet.py:55-59): train from
    ``ILSVRC2012_list/train.txt`` ("<path> <label>") over ``train/``, test from ``ILSVRC2012_list/val_folder_new.txt``
    ("<path> <label> <x0> <y0> <x1> <y1> ...") over ``val/``; labels 0-based."""
    lists = root / "ILSVRC2012_list"
    train = ILSVRCListDataset(
        root / "train", lists / "train.txt", require_boxes=False, image_size=config.image_size, augment=True
    )
    train.class_names = folder_class_names(train)
    test = ILSVRCListDataset(
        root / "val", lists / "val_folder_new.txt", image_size=config.image_size, class_names=train.class_names
    )
    return {"train": train, "test": test}


def read_wsol(root: Path, config: TrainConfig) -> dict[str, WSOLDataset]:
    """A dataset of wsolevaluation (Choe et al., CVPR 2020): ``train/``, ``test/`` and, when present, the held-out
    ``val/`` split folders of ``metadata_root``, their image paths relative to ``root``."""
    metadata = Path(str(config.metadata_root))
    if not metadata.is_dir():
        raise SetupError(
            f"--metadata-root {metadata} is not a folder; pass wsolevaluation's metadata/<dataset> folder (holding "
            "train/, val/ and test/)."
        )
    train = WSOLMetadataDataset(
        root, metadata / "train", require_boxes=False, image_size=config.image_size, augment=True
    )
    train.class_names = folder_class_names(train)
    datasets: dict[str, WSOLDataset] = {"train": train}
    for split in ("val", "test"):
        if split == "test" or (metadata / split).is_dir():
            datasets[split] = WSOLMetadataDataset(
                root, metadata / split, image_size=config.image_size, class_names=train.class_names
            )
    return datasets


DATASET_READERS: dict[str, Callable[[Path, TrainConfig], dict[str, WSOLDataset]]] = {
    "cub": read_cub,
    "ilsvrc": read_ilsvrc,
    "wsol": read_wsol,
}


def folder_class_names(dataset: WSOLDataset) -> list[str]:
    """Each class named by the folder of its first image (``n01440764`` in ILSVRC, ``001.Black_footed_Albatross``
    in CUB), or by its label when none of the images is in a folder."""
    names: dict[int, str] = {}
    for record in dataset.records:
        names.setdefault(record.label, PurePosixPath(record.path).parent.name)
    return [names.get(label) or str(label) for label in range(dataset.num_classes)]


def scored(dataset: WSOLDataset) -> dict[str, bool]:
    """What the evaluation of a split scores: boxes when its images have any, PxAP when it reads masks (the
    OpenImages layout of ``--dataset wsol``)."""
    return {"boxes": any(record.boxes for record in dataset.records), "pxap": dataset.mask_root is not None}


def load_datasets(config: TrainConfig, context: DistributedContext) -> dict[str, WSOLDataset]:
    """The train, test and (when the dataset has one) held-out ``val`` datasets of ``config.dataset``.

    Raises:
        SetupError: the data root does not exist or does not hold a dataset of that layout.
    """
    if config.data_root is None:
        root = Path(config.data_cache) / config.data_family
        if context.is_main:
            ensure_generated_dataset(root, family=config.data_family)
        if context.distributed:
            torch.distributed.barrier()
    else:
        root = Path(config.data_root)
        if not root.is_dir():
            raise SetupError(
                f"--data-root {root} is not a folder; pass {DATA_LAYOUTS[config.dataset]}"
                + (" or leave --data-root out to train on the generated dataset." if config.dataset == "cub" else ".")
            )
    try:
        datasets = DATASET_READERS[config.dataset](root, config)
    except DatasetFormatError as err:
        raise SetupError(f"cannot read the {config.dataset} dataset at {root}: {err}") from err
    if config.resize_size is not None:
        datasets["train"].transform = wsol_train_transform(config.image_size, config.resize_size)
    num_classes = datasets["train"].num_classes
    for split, dataset in datasets.items():
        if len(dataset) == 0:
            raise SetupError(f"the {split} split of {root} has no images; check its split files.")
        labels = dataset.labels
        if max(labels) >= num_classes:
            raise SetupError(f"the {split} split of {root} has label {max(labels)} but only {num_classes} classes.")
        problems = dataset.check_images()
        if problems:
            raise SetupError(
                f"{len(problems)} image(s) of the {split} split of {root} cannot be used, the first: {problems[0]} "
                "Fix or remove them before training."
            )
    return datasets


def create_lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, updates_per_epoch: int) -> Scheduler:
    """timm's scheduler for ``config.lr_schedule``.

    ``"cosine"`` is stepped per update (``scheduler.step_update``). ``"step"`` is timm's multistep schedule stepped
    per epoch (``scheduler.step(epoch)`` at the start of each 0-based epoch) with the decay epochs of the official
    rule (:func:`config.step_decay_epochs`), which gives the official lr in every epoch.
    """
    step = config.lr_schedule == "step"
    scheduler, _ = create_scheduler_v2(
        optimizer,
        "multistep" if step else "cosine",
        num_epochs=config.epochs,
        warmup_epochs=config.warmup_epochs,
        warmup_lr=config.warmup_lr,
        min_lr=config.min_lr,
        decay_milestones=step_decay_epochs(config.lr_steps, config.epochs),
        decay_rate=config.decay_rate,
        step_on_epochs=step,
        updates_per_epoch=updates_per_epoch,
    )
    return scheduler


def build_model(config: TrainConfig, num_classes: int) -> SCMAdapter:
    """The timm encoder (pretrained or from a local checkpoint when asked) wrapped in an SCMAdapter.

    Raises:
        SetupError: an unknown timm model, a model SCM does not support, or an unreadable checkpoint.
    """
    if not timm.is_model(config.model):
        close = timm.list_models(f"*{config.model.split('_')[0]}*")[:5]
        raise SetupError(f"--model {config.model!r} is not a timm model; similar names: {close or 'none'}.")
    checkpoint = WEIGHTS_FILE if config.checkpoint == "shipped" else config.checkpoint
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise SetupError(f"--checkpoint {checkpoint} does not exist; pass a timm .pth/.safetensors file.")
    try:
        encoder = timm.create_model(
            config.model,
            pretrained=config.pretrained and checkpoint is None,  # --checkpoint replaces the hub's weights
            num_classes=num_classes,
            img_size=config.image_size,
            drop_path_rate=config.drop_path,
            **config.model_kwargs,
        )
        if checkpoint is not None:
            load_encoder_checkpoint(encoder, Path(checkpoint))
    except TypeError as err:
        raise SetupError(
            f"timm.create_model({config.model!r}, ...) rejected the arguments ({err}); SCM needs a timm Vision "
            "Transformer with a class token (vit_*, deit_*, deit3_*, eva02_*, beit_*); check --model-kwargs."
        ) from err
    except (RuntimeError, OSError) as err:
        raise SetupError(f"cannot load the weights of {config.model!r}: {' '.join(str(err).split())}") from err
    try:
        return SCMAdapter(encoder, head_type=config.head, scm=None if config.baseline else "default")
    except UnsupportedModelError as err:
        raise SetupError(f"--model {config.model!r} cannot be used with SCM: {err}") from err


def load_encoder_checkpoint(encoder: nn.Module, path: Path) -> None:
    """Loads a local timm checkpoint as timm loads pretrained weights (the model's checkpoint filter resamples
    position embeddings to the input size; a classifier for another number of classes is dropped), and stops
    when keys of the encoder are left without weights or keys of the file are left unused.

    Raises:
        SetupError: the keys of the file do not fit the encoder (another architecture, an scm_calib file).
        RuntimeError: a tensor of the file has the wrong shape (from ``load_state_dict``).
    """
    results: list[Any] = []
    hook = encoder.register_load_state_dict_post_hook(lambda module, keys: results.append(keys))
    filter_fn = getattr(sys.modules[type(encoder).__module__], "checkpoint_filter_fn", None)
    try:
        timm.models.load_pretrained(
            encoder,
            pretrained_cfg={**encoder.pretrained_cfg, "file": str(path.resolve()), "custom_load": False},
            num_classes=encoder.num_classes,
            filter_fn=filter_fn,
            strict=False,
        )
    finally:
        hook.remove()
    classifiers = encoder.pretrained_cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    missing = [key for keys in results for key in keys.missing_keys if key.split(".")[0] not in classifiers]
    unexpected = [key for keys in results for key in keys.unexpected_keys]
    if missing or unexpected:
        architecture = encoder.pretrained_cfg.get("architecture", type(encoder).__name__)
        raise SetupError(
            f"--checkpoint {path} does not fit {architecture}: {len(missing)} encoder key(s) get no weights "
            f"{missing[:3]}, {len(unexpected)} key(s) of the file are unused {unexpected[:3]}; pass the state_dict of "
            "a timm model of --model with --model-kwargs (continue a run of this trainer with --resume instead)."
        )


def train_loader(
    dataset: torch.utils.data.Dataset, config: TrainConfig, context: DistributedContext, epoch: int
) -> torch.utils.data.DataLoader:
    """The training loader of one epoch; its order and worker seeds depend on ``(seed, epoch)`` alone."""
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=config.seed
    )
    sampler.set_epoch(epoch)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate_wsol,
        generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch),
        pin_memory=context.device.type == "cuda",
    )


def eval_loader(
    dataset: torch.utils.data.Dataset, config: TrainConfig, context: DistributedContext
) -> torch.utils.data.DataLoader:
    """This process's shard of an evaluation set, in order."""
    return torch.utils.data.DataLoader(
        shard(dataset, context),
        batch_size=config.batch_size * 2,
        num_workers=config.workers,
        collate_fn=collate_wsol,
    )


def results_table(config: TrainConfig, summary: dict[str, Any], run_dir: Path) -> str:
    """The closing table, its first columns those of the SCM paper's table: this run's test metrics next to the
    centre prior's (same run) and, for the generated data, the documented runs of docs/results.md (SCM and its
    baseline, mean of 3 seeds); below it, the outcome breakdown of the test images."""
    names = ("Top1Loc", "Top5Loc", "GTKnownLoc", "Top1Cls", "Top5Cls", "MaxBoxAccV2", "MaxBoxAcc", "PxAP")
    columns = tuple(name for name in names if name in summary["test"])
    rows = [(f"this run ({'baseline' if config.baseline else 'SCM'}), best tau on test", summary["test"])]
    if "test_at_val_tau" in summary:
        rows.append(("this run, tau chosen on the held-out val split", summary["test_at_val_tau"]))
    if "centre_prior" in summary:
        rows.append(("centred Gaussian map (ignores the image), best tau", summary["centre_prior"]))
    documented = DOCUMENTED_RESULTS.get(config.data_family) if config.data_root is None else None
    for method, values in (documented or {}).items():
        rows.append((f"{method}, docs/results.md (3 seeds, mean)", values))
    width = max(len(label) for label, _ in rows)
    lines = [f"test split, {config.protocol} protocol (%)", f"{'':<{width}}  " + "  ".join(f"{c:>11}" for c in columns)]
    for label, values in rows:
        cells = (f"{values[c]:>11.1f}" if c in values else f"{'-':>11}" for c in columns)
        lines.append(f"{label:<{width}}  " + "  ".join(cells))
    if "outcomes" in summary:
        lines.append(outcomes_table(summary["outcomes"]))
    lines.append(f"run folder: {run_dir} (metrics.json, test_images.csv, overlays/, model_stripped.safetensors)")
    return "\n".join(lines)


def save_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss, training accuracy and learning rate per epoch, as one PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for axis, key, label in zip(
        axes, ("loss", "acc", "lr"), ("training loss", "training accuracy (%)", "lr"), strict=True
    ):
        axis.plot(epochs, [row[key] for row in history], marker="o", markersize=3)
        axis.set_xlabel("epoch")
        axis.set_title(label)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def save_overlay(panels: list[dict[str, Any]], image: np.ndarray, gt: torch.Tensor, path: Path) -> None:
    """One test image at its own aspect, one panel per model (e.g. SCM and its baseline side by side): the map
    over the image, the ground-truth box (red), the predicted box (green), and the classes and IoU in the title.

    Args:
        panels: per model, ``{"title", "map": (H, W) at the image's size, "boxes": (N, 4)}``.
        image: (H, W, 3) uint8, the original image.
        gt: (K, 4) ground-truth boxes in pixels of the original image (none: no ground truth to draw).
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    height, width = image.shape[:2]
    panel = 4.0 / max(height, width)  # inches per pixel: the longer side 4 inches
    lines = max(found["title"].count("\n") + 1 for found in panels)
    figure, axes = plt.subplots(
        1,
        len(panels),
        figsize=(panel * width * len(panels) + 0.2, panel * height + 0.5 + 0.22 * lines),
        squeeze=False,
        layout="constrained",
    )
    for axis, found in zip(axes[0], panels, strict=True):
        axis.imshow(image)
        axis.imshow(
            found["map"].numpy(), cmap="jet", alpha=0.45, vmin=float(found["map"].min()), vmax=float(found["map"].max())
        )
        for boxes, colour in ((gt, "red"), (found["boxes"], "lime")):
            for x0, y0, x1, y1 in boxes.tolist():
                axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=2))
        axis.set_title(found["title"], fontsize=8)
        axis.axis("off")
    handles = [
        Line2D([], [], color="red", lw=2, label="ground truth"),
        Line2D([], [], color="lime", lw=2, label="prediction"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_figures(
    run_dir: Path,
    models: dict[str, nn.Module],
    history: list[dict[str, float]],
    test_set: Any,
    picks: list[tuple[str, int]],
    tau: float,
) -> None:
    """Training curves and, for each picked test image, each model's top-1 map with its box at ``tau`` next to the
    ground truth, at the image's own aspect (``overlays/<name>.png``).

    Args:
        models: display name -> model (this run's, and its SCM or baseline twin when that run exists).
        picks: ``(file name, dataset index)`` of the images to draw (:func:`overlay_picks`).
    """
    save_curves(history, run_dir / "curves.png")
    if not picks:
        return
    batch = collate_wsol([test_set[index] for _, index in picks])
    names = test_set.class_names
    results = {}
    for title, model in models.items():
        with torch.no_grad():
            output = semantic_and_attention(model, batch.images)
        results[title] = (output.logits.argmax(dim=1), select_maps(output, "top1"))
    for row, (name, index) in enumerate(picks):
        record = test_set.records[index]
        image = load_image(test_set.image_root / record.path)
        gt = torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4)
        panels = []
        for title, (predicted, maps) in results.items():
            score_map = resize_maps(maps[row : row + 1].float(), image.shape[:2], "bilinear")[0]
            found = boxes_from_maps(score_map[None], thresholds=[tau], largest_only=True, holes=False)
            iou = float(box_iou(found.boxes.float(), gt).max()) if len(found.boxes) and len(gt) else 0.0
            label = int(predicted[row])
            verdict = "right" if label == record.label else f"wrong; truth {names[record.label]}"
            panels.append(
                {
                    "title": f"{title}: IoU {iou:.2f} at tau {tau:.2f}\npredicted {names[label]}\n({verdict})",
                    "map": score_map,
                    "boxes": found.boxes,
                }
            )
        save_overlay(panels, image, gt, run_dir / "overlays" / f"{name}.png")


def twin_model(config: TrainConfig, num_classes: int) -> tuple[str, nn.Module] | None:
    """The stripped model of this run's twin (the same settings with SCM switched the other way), if it exists."""
    if config.name is not None:
        return None
    twin = replace(config, baseline=not config.baseline)
    path = Path(config.output) / twin.run_name / "model_stripped.safetensors"
    if not path.is_file():
        return None
    try:
        model = build_model(twin, num_classes).strip()
        load_weights(model, path)
    except (SetupError, CheckpointError):
        return None
    return ("baseline" if twin.baseline else "SCM"), model.eval()


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (2 for a bad setting, reported in one line)."""
    try:
        config, resume = parse_args(argv)
        run(config, resume)
    except (SetupError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run(config: TrainConfig, resume: str | None = None) -> dict[str, Any]:
    """Trains, evaluates and exports one run; returns the summary written to ``metrics.json``.

    Args:
        config: the settings.
        resume: ``"auto"`` continues from ``<run>/checkpoint.pt``, a path from that file, None starts afresh.

    Raises:
        SetupError: data, model or checkpoint settings that cannot work.
    """
    context = start_process(config)
    run_dir = check_run_dir(config, resume)
    state = None
    if resume is not None:
        state = read_resume_state(run_dir / CHECKPOINT if resume == "auto" else Path(resume), config)
    if context.distributed:
        torch.distributed.barrier()  # every process has checked the run folder before rank 0 writes into it
    datasets = load_datasets(config, context)
    if config.wsol_scoremaps and not scored(datasets["test"])["boxes"]:
        raise SetupError(
            "--wsol-scoremaps writes box metadata, but the test split has no boxes; leave it out for a mask-only "
            "dataset (wsolevaluation scores OpenImages by PxAP, which metrics.json holds)."
        )
    training = build_training(config, context, datasets["train"])
    if state is not None:
        resume_training(training, state, context)
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_json(), indent=1), encoding="utf-8")
    last_epoch = config.epochs if config.stop_after is None else min(config.epochs, training.epoch + config.stop_after)
    fit(training, config, context, datasets["train"], run_dir, last_epoch)
    if last_epoch < config.epochs:
        return {"stopped_after_epoch": last_epoch}
    if context.is_main:
        metadata = {"config": json.dumps(config.to_json()), "classes": json.dumps(datasets["train"].class_names)}
        save_weights(training.adapter.strip(), run_dir / "model_stripped.safetensors", metadata=metadata)
    return report(training, config, context, datasets, run_dir)


def start_process(config: TrainConfig) -> DistributedContext:
    """Checks the settings, joins the process group, sets the CPU threads and seeds this process.

    Raises:
        SetupError: a setting that cannot work (see :meth:`TrainConfig.validate`) or a device that is not there.
    """
    try:
        config.validate()
        context = setup_distributed(config.device)
    except ValueError as err:
        raise SetupError(str(err)) from err
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    # Once the model has trained a while, SCM's diffusion produces denormal floats, which the CPU handles
    # some 4x slower; flushing them to zero left every loss of the default run unchanged.
    torch.set_flush_denormal(True)
    seed_everything(config.seed + context.rank)
    return context


@dataclass
class Training:
    """What a run trains and how far it got.

    Attributes:
        adapter: the model (the bare adapter: no DDP or compile wrapper).
        optimizer: timm's AdamW over the adapter's parameters.
        scheduler: timm's scheduler, stepped per optimizer update.
        epoch: epochs done.
        global_step: optimizer updates done.
        history: one row of training statistics per epoch done.
    """

    adapter: SCMAdapter
    optimizer: torch.optim.Optimizer
    scheduler: Any
    epoch: int = 0
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def build_training(config: TrainConfig, context: DistributedContext, train_set: Any) -> Training:
    """The model on this process's device, its optimizer and its learning-rate schedule, before any epoch."""
    adapter = build_model(config, train_set.num_classes).to(context.device)
    shard_size = math.ceil(len(train_set) / context.world_size)
    updates_per_epoch = math.ceil(math.ceil(shard_size / config.batch_size) / config.accumulation)
    optimizer = create_optimizer_v2(
        adapter, "adamw", lr=config.lr, weight_decay=config.weight_decay, layer_decay=config.layer_decay
    )
    scheduler = create_lr_scheduler(optimizer, config, updates_per_epoch)
    return Training(adapter, optimizer, scheduler)


def resume_training(training: Training, state: dict[str, Any], context: DistributedContext) -> None:
    """Restores the model, optimizer, scheduler, progress and (with the same number of processes) the RNG states
    of a ``checkpoint.pt`` (from :func:`read_resume_state`)."""
    training.adapter.load_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    training.scheduler.load_state_dict(state["scheduler"])
    training.epoch, training.global_step, training.history = state["epoch"], state["global_step"], state["history"]
    rng = state["rng"]
    if len(rng) == context.world_size:
        set_rng_state(rng[context.rank])


def fit(
    training: Training,
    config: TrainConfig,
    context: DistributedContext,
    train_set: torch.utils.data.Dataset,
    run_dir: Path,
    last_epoch: int,
) -> None:
    """Trains the epochs from ``training.epoch`` to ``last_epoch``; after each, rank 0 writes ``history.json`` and
    ``checkpoint.pt`` (atomically)."""
    adapter = training.adapter
    model: nn.Module = adapter
    if context.distributed:
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        warmup = config.scm_start_epoch > 0 and adapter.scm is not None
        model = nn.parallel.DistributedDataParallel(adapter, device_ids=device_ids, find_unused_parameters=warmup)
    if config.compile:
        model = torch.compile(model)
    shard_size = math.ceil(len(train_set) / context.world_size)
    progress = make_progress(context, total=(last_epoch - training.epoch) * shard_size * context.world_size)
    for epoch in range(training.epoch, last_epoch):
        training.scheduler.step(epoch)  # the lr of the epoch for the "step" schedule; "cosine" steps per update
        stopped = f"training stopped in epoch {epoch + 1} ({run_dir / CHECKPOINT} holds the epochs before it)"
        with adapter.calibration_disabled(epoch < config.scm_start_epoch), reported_as_setup_error(stopped):
            stats, training.global_step = train_one_epoch(
                model,
                train_loader(train_set, config, context, epoch),
                training.optimizer,
                training.scheduler,
                context,
                training.global_step,
                config.accumulation,
                config.clip_grad,
                on_step=functools.partial(show_step, progress, epoch),
            )
        training.epoch = epoch + 1
        training.history.append({"epoch": epoch + 1, "lr": training.optimizer.param_groups[0]["lr"], **stats})
        save_training(training, config, context, run_dir)
    progress.close()


def show_step(progress: Any, epoch: int, step: dict[str, float]) -> None:
    """Advances the progress bar by a micro-batch of :func:`engine.train_one_epoch`; shows its loss when read."""
    progress.update(step["images"])
    if "loss" in step:
        progress.set_postfix(epoch=epoch + 1, loss=f"{step['loss']:.3f}", lr=f"{step['lr']:.1e}")


def save_training(training: Training, config: TrainConfig, context: DistributedContext, run_dir: Path) -> None:
    """Rank 0 writes ``history.json`` and ``checkpoint.pt`` with the RNG states of every process."""
    if context.is_main:
        (run_dir / "history.json").write_text(json.dumps(training.history, indent=1), encoding="utf-8")
    rng = [rng_state()]
    if context.distributed:
        rng = [None] * context.world_size
        torch.distributed.all_gather_object(rng, rng_state())
    if context.is_main:
        save_checkpoint(
            run_dir / CHECKPOINT,
            {
                "model": training.adapter.state_dict(),
                "optimizer": training.optimizer.state_dict(),
                "scheduler": training.scheduler.state_dict(),
                "epoch": training.epoch,
                "global_step": training.global_step,
                "history": training.history,
                "rng": rng,
                "config": config.to_json(),
            },
        )


def report(
    training: Training,
    config: TrainConfig,
    context: DistributedContext,
    datasets: dict[str, torch.utils.data.Dataset],
    run_dir: Path,
) -> dict[str, Any]:
    """Evaluates the trained model on the held-out and test splits, then diagnoses every test image at the chosen
    threshold (the held-out split's, else the test split's best); rank 0 writes ``metrics.json`` (with the
    outcome breakdown under ``outcomes``), ``test_images.csv``, the curves, the overlays of the worst and best
    test images and, with ``wsol_scoremaps``, the metadata beside the score maps in ``wsolevaluation/``, and
    prints the results table.

    Returns:
        The summary written to ``metrics.json`` (see :func:`summarize`) with the training history.
    """
    size = (config.image_size, config.image_size)
    val = found = None
    wsol_root = run_dir / WSOL_FOLDER if config.wsol_scoremaps else None
    with reported_as_setup_error(f"evaluation stopped ({run_dir} holds the trained model; --resume evaluates it)"):
        if "val" in datasets:
            val_loader = eval_loader(datasets["val"], config, context)
            val = evaluate(
                training.adapter, val_loader, size, config.protocol, device=context.device, **scored(datasets["val"])
            )
        test_loader = eval_loader(datasets["test"], config, context)
        test = evaluate(
            training.adapter,
            test_loader,
            size,
            config.protocol,
            centre_prior=True,
            device=context.device,
            scoremaps=None if wsol_root is None else wsol_root / "scoremaps",
            **scored(datasets["test"]),
        )
        summary = summarize(val, test, config.protocol)
        tau = summary.get("test_at_val_tau", {}).get("tau", test.get("best_tau"))
        if tau is not None:  # a mask-only test split has no boxes to diagnose
            found = diagnose(training.adapter, test_loader, size, tau, config.protocol, device=context.device)
            summary["outcomes"] = {**found["outcomes"], "tau": tau}
    summary["history"] = training.history
    if context.is_main:
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        picks = []
        if found is not None:
            write_diagnoses(run_dir / "test_images.csv", found["images"])
            picks = overlay_picks(found["images"], datasets["test"], config.overlays)
        models: dict[str, nn.Module] = {"baseline" if config.baseline else "SCM": training.adapter}
        twin = twin_model(config, datasets["train"].num_classes) if picks else None
        if twin is not None:
            models[twin[0]] = twin[1]
        models = dict(sorted(models.items(), key=lambda item: item[0] != "SCM"))  # SCM first
        write_figures(run_dir, models, training.history, datasets["test"], picks, tau or 0.0)
        print(results_table(config, summary, run_dir))
        if wsol_root is not None:  # every process wrote its score maps before diagnose's all_gather_object
            print(write_wsol_folder(wsol_root, datasets["test"], config))
    return summary


def outcomes_table(outcomes: dict[str, float]) -> str:
    """TS-CAM's breakdown of the test images (``metrics.json``'s ``outcomes``), to print under the results table."""
    head = (
        f"localization outcomes of the top-1 class at tau {outcomes['tau']:.2f} "
        f"({int(outcomes['count'])} test images, %; per image in test_images.csv)"
    )
    return "\n".join(
        [
            head,
            "  ".join(f"{name:>14}" for name in OUTCOMES),
            "  ".join(f"{outcomes[name]:>14.1f}" for name in OUTCOMES),
        ]
    )


def overlay_picks(rows: list[ImageDiagnosis], test_set: Any, k: int) -> list[tuple[str, int]]:
    """The overlay file names (``worst_01_<stem>``, ``best_01_<stem>``, ...) and dataset indices of the ``k`` test
    images of lowest and the ``k`` of highest IoU in the per-image table."""
    index = {record.path: position for position, record in enumerate(test_set.records)}
    worst, best = worst_and_best(rows, k)
    return [
        (f"{end}_{rank:02d}_{Path(row.image_id).stem}", index[row.image_id])
        for end, chosen in (("worst", worst), ("best", best))
        for rank, row in enumerate(chosen, start=1)
    ]


def wsol_dataset_name(config: TrainConfig) -> str:
    """The reference's ``--dataset_name`` of this run's data: ``ILSVRC`` for ILSVRC, else ``CUB`` (both are box
    datasets it scores alike; the name picks the metadata folder)."""
    ilsvrc = config.dataset == "ilsvrc" or (
        config.dataset == "wsol" and Path(str(config.metadata_root)).name == "ILSVRC"
    )
    return "ILSVRC" if ilsvrc else "CUB"


def write_wsol_folder(root: Path, test_set: Any, config: TrainConfig) -> str:
    """Writes the test split's metadata beside the score maps :func:`evaluate` wrote under ``root/scoremaps``.

    Returns:
        The lines to print: the reference's commands for MaxBoxAcc and MaxBoxAccV2, and this library's.

    Raises:
        SetupError: a box of the test split is not in whole pixels (``localization.txt`` holds integers).
    """
    name = wsol_dataset_name(config)
    sizes = {}
    for record in test_set.records:
        if record.size is None:
            with Image.open(test_set.image_root / record.path) as image:
                sizes[record.path] = image.size
    try:
        write_wsol_metadata(root / "metadata" / name / "test", test_set.records, sizes)
    except ValueError as err:
        raise SetupError(f"--wsol-scoremaps: {err}") from err
    return "\n".join(
        [
            f"score maps and metadata for clovaai wsolevaluation: {root}; in its checkout (numpy<1.24):",
            f"  {wsolevaluation_command(root, name, 'test')}    # MaxBoxAcc",
            f"  {wsolevaluation_command(root, name, 'test', multi_contour=True)}    # MaxBoxAccV2",
            f"or with this library: python examples/cub/rescore.py {root} --dataset-name {name} --split test",
        ]
    )


@contextmanager
def reported_as_setup_error(stage: str) -> Iterator[None]:
    """Turns an image that cannot be read in the block (also in a DataLoader worker) into a one-line SetupError.

    Args:
        stage: what stopped and what is kept, put before the reader's message.
    """
    try:
        yield
    except DatasetFormatError as err:
        # A worker's exception comes back with its traceback in the message; its last line is the reader's.
        message = str(err).strip().splitlines()[-1].split("DatasetFormatError: ", 1)[-1]
        raise SetupError(f"{stage}: {message}") from err


def check_run_dir(config: TrainConfig, resume: str | None) -> Path:
    """The run folder ``<output>/<name>``, checked before anything is written.

    Raises:
        SetupError: ``--output`` or the run folder is a file, or a new run (no ``--resume``) would write into
            the folder of an earlier run and mix its files with the new ones.
    """
    output = Path(config.output)
    run_dir = output / config.run_name
    for path, flag in ((output, "--output"), (run_dir, "--name")):
        if path.exists() and not path.is_dir():
            raise SetupError(f"{flag}: {path} is a file, not a folder; pass another {flag}.")
    if resume is None and run_dir.is_dir() and any(run_dir.iterdir()):
        raise SetupError(
            f"{run_dir} already holds a run; pass --resume to continue it or another --name for a new run."
        )
    return run_dir


# Settings that do not change what a resumed run computes: where it runs, how it reports, where it writes.
RESUMABLE_CHANGES = frozenset(
    {
        "overlays",
        "wsol_scoremaps",
        "workers",
        "threads",
        "stop_after",
        "device",
        "compile",
        "output",
        "name",
        "protocol",
    }
)


def read_resume_state(path: Path, config: TrainConfig) -> dict[str, Any]:
    """The training state of ``checkpoint.pt``, checked against the settings of this invocation.

    Raises:
        SetupError: the file is missing, unreadable or not a checkpoint of this trainer, or its run used other
            settings (other than those in :data:`RESUMABLE_CHANGES`); the message lists what differs.
    """
    try:
        state = load_checkpoint(path)
    except FileNotFoundError as err:
        raise SetupError(str(err)) from err
    except Exception as err:
        raise SetupError(f"cannot read {path} as a checkpoint of this trainer ({' '.join(str(err).split())}).") from err
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise SetupError(f"{path} is not a checkpoint.pt of this trainer; pass the checkpoint.pt of a run.")
    saved = json.loads(json.dumps(state["config"]))
    now = json.loads(json.dumps(config.to_json()))
    differ = [
        f"{key} {saved.get(key)!r} -> {now.get(key)!r}"
        for key in sorted(set(saved) | set(now))
        if key not in RESUMABLE_CHANGES and saved.get(key) != now.get(key)
    ]
    if differ:
        raise SetupError(
            f"{path} was trained with other settings ({'; '.join(differ)}); resume with the settings of its run "
            "(its config.json) or start a new run with another --name."
        )
    return state


def make_progress(context: DistributedContext, total: int) -> Any:
    """A tqdm bar over the training images of all processes (img/s and ETA), shown on rank 0 only."""
    from tqdm import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, disable=not context.is_main)


if __name__ == "__main__":
    sys.exit(main())
