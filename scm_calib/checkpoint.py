"""Saving and loading model weights: safetensors, written atomically, checked against the architecture.

A checkpoint records what it holds (the module class, the timm architecture, the number of classes) in
its metadata, so loading it into the wrong model says what differs instead of failing on a shape deep
inside ``load_state_dict``. ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["CheckpointError", "atomic_write", "describe", "load_weights", "save_weights"]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model it is loaded into, or cannot be read."""


def describe(module: nn.Module) -> dict[str, str]:
    """What a checkpoint of ``module`` records: class, timm architecture, number of classes."""
    encoder = getattr(module, "encoder", module)
    cfg = getattr(encoder, "pretrained_cfg", None) or {}
    return {
        "format": "scm_calib",
        "module": type(module).__name__,
        "architecture": str(cfg.get("architecture", type(encoder).__name__)),
        "num_classes": str(getattr(module, "num_classes", "")),
    }


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Calls ``write(tmp_path)`` and renames the temporary file over ``path``; a crash leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save_weights(module: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Saves ``module.state_dict()`` as safetensors, atomically; shared tensors are stored once.

    Args:
        module: an SCMAdapter, a stripped model, or any nn.Module.
        path: the file to write (``.safetensors`` recommended).
        metadata: extra string metadata to record.

    Returns:
        The written path.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, value in module.state_dict().items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.dtype)
        if value.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = value.detach().contiguous().cpu()
    meta = {**describe(module), **(metadata or {}), "aliases": json.dumps(aliases)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    if path.suffix in (".pt", ".pth", ".bin"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state_dict.")
        return state, {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as err:
        raise CheckpointError(f"cannot read {path} as safetensors ({err}); is the file complete?") from err
    for alias, key in json.loads(meta.get("aliases", "{}")).items():
        tensors[alias] = tensors[key]
    return tensors, meta


def load_weights(module: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict[str, str]:
    """Loads a checkpoint written by :func:`save_weights` (or a ``.pt`` state_dict) into ``module``.

    Args:
        module: the model to fill; must have the architecture the checkpoint was saved from.
        path: a ``.safetensors`` file, or a ``.pt``/``.pth`` state_dict (read with ``weights_only=True``).
        strict: require every key to match (as ``load_state_dict``).

    Returns:
        The checkpoint's metadata.

    Raises:
        CheckpointError: the file is missing or unreadable, or its keys or shapes do not fit ``module``; the
            message names the architectures and the first differences.
    """
    path = Path(path)
    tensors, meta = _read(path)
    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if wrong or (strict and (missing or unexpected)):
        here = describe(module)
        saved = f"{meta.get('module', '?')} / {meta.get('architecture', '?')} / {meta.get('num_classes', '?')} classes"
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else ""]
        parts.append(f"shape mismatch {wrong[:5]}" if wrong else "")
        raise CheckpointError(
            f"checkpoint {path} ({saved}) does not fit this {here['module']} / {here['architecture']} / "
            f"{here['num_classes']} classes: " + "; ".join(p for p in parts if p) + ". Create the model with the "
            "architecture and number of classes the checkpoint was saved from."
        )
    module.load_state_dict(tensors, strict=strict)
    return meta
