"""Saving and loading model weights and training states: written atomically, read without running pickled code.

A weights file (:func:`save_weights`, safetensors) records what it holds (the module class, the timm
architecture, the number of classes) in its metadata, so loading it into the wrong model says what differs
instead of failing on a shape deep inside ``load_state_dict``. Files written by ``torch.save`` are recognised
by their content, whatever their suffix, and read with ``torch.load(weights_only=True)``: no pickled code runs.
A training state (:func:`save_checkpoint`: model, optimizer, scheduler, RNG states, ...) is a ``torch.save``
file of tensors and plain types, also written atomically, so a job killed while writing it leaves the previous
one intact.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "CheckpointError",
    "atomic_write",
    "describe",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "save_weights",
]


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
    """Calls ``write(tmp_path)`` and renames the temporary file over ``path``; a crash leaves the old file intact.

    The file gets the mode the umask gives a new file (``0644`` for the usual ``022``). Temporary files that a
    killed write of the same ``path`` left behind (their process is gone) are removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = tmp.stat().st_mode  # 0o666 less the umask; some writers (safetensors) replace the file as 0o600
        write(str(tmp))
        os.chmod(tmp, mode)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Removes ``.<name>.<pid>.<token>.tmp`` files of ``path`` whose process no longer runs (or with no pid)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)\.[0-9a-f]+|\w+)\.tmp")
    for candidate in path.parent.glob(f".{path.name}.*.tmp"):
        match = pattern.fullmatch(candidate.name)
        if match and not (match.group(1) and _process_alive(int(match.group(1)))):
            candidate.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


# A zip archive (torch.save since torch 1.6) or a pickle of protocol 2 or later (older torch.save).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; pass the checkpoint file inside it.")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty: its write did not finish; save it again.")
    is_safetensors = len(head) == 9 and head[8:9] == b"{"  # 8-byte header length, then the JSON header
    if not is_safetensors and head.startswith(_TORCH_MAGIC):
        return _read_torch(path), {}
    if not is_safetensors:
        raise CheckpointError(
            f"{path} is neither a safetensors file nor a torch.save file (it starts with {head!r}); pass a file "
            "written by save_weights or by torch.save(model.state_dict(), path)."
        )
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
        for alias, key in json.loads(meta.get("aliases", "{}")).items():
            tensors[alias] = tensors[key]
    except Exception as err:
        raise CheckpointError(f"cannot read {path} as safetensors ({_reason(err)}); is the file complete?") from None
    return tensors, meta


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a ``torch.save`` file, read weights-only; unwraps ``{"model": ...}`` and
    ``{"state_dict": ...}`` training checkpoints."""
    try:
        with open(path, "rb") as f:  # a file object: torch.load would read a path ending in .safetensors as safetensors
            state = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found is None:
            raise CheckpointError(f"cannot read {path}: it is corrupt or truncated ({_reason(err)}).") from None
        raise CheckpointError(
            f"{path} holds a pickled Python object ({found.group(1)}), which safe weights-only loading refuses; "
            "save the weights alone with save_weights or torch.save(model.state_dict(), path)."
        ) from None
    except Exception as err:
        raise CheckpointError(f"cannot read {path}: it is corrupt or truncated ({_reason(err)}).") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state_dict.")
    others = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if others:
        raise CheckpointError(
            f"{path} is not a state_dict: entries {others[:5]} are not tensors; save model.state_dict() (or a dict "
            "with it under 'model' or 'state_dict')."
        )
    return state


def _reason(err: BaseException) -> str:
    """The first sentence of an error's message, for a one-line report."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.split(". ")[0][:160]


def load_weights(module: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict[str, str]:
    """Loads a checkpoint written by :func:`save_weights` (or a ``.pt`` state_dict) into ``module``.

    Args:
        module: the model to fill; must have the architecture the checkpoint was saved from.
        path: a file written by :func:`save_weights`, or a ``torch.save`` state_dict, alone or under the key
            ``"model"`` or ``"state_dict"`` (read with ``weights_only=True``, whatever the file's suffix).
        strict: require every key to match (as ``load_state_dict``).

    Returns:
        The checkpoint's metadata.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, not a checkpoint, holds pickled objects or
            no state_dict, or its keys or shapes do not fit ``module``; one line that says why (for a wrong
            architecture, both architectures and the first differences).
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


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Writes a training state with ``torch.save`` atomically (a temporary file renamed over ``path``).

    Args:
        path: the checkpoint file.
        state: tensors, state dicts and plain types only (RNG states as tensors and lists), so that
            :func:`load_checkpoint` reads it with ``weights_only=True``.

    Returns:
        The written path.
    """
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a state written by :func:`save_checkpoint` with ``torch.load(weights_only=True)`` onto the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the checkpoint.pt of an earlier run.")
    return torch.load(path, map_location="cpu", weights_only=True)
