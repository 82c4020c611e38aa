"""Checkpoints: safetensors round trips, atomic writes, clear errors for the wrong architecture."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from conftest import tiny_input, tiny_model
from torch import nn

from scm_calib import CheckpointError, SCMAdapter, load_weights, save_weights
from scm_calib.checkpoint import atomic_write


def test_adapter_and_stripped_round_trip(tmp_path):
    adapter = SCMAdapter(tiny_model("vit"), head_type="linear").eval()
    path = save_weights(adapter, tmp_path / "adapter.safetensors")
    fresh = SCMAdapter(tiny_model("vit"), head_type="linear").eval()
    meta = load_weights(fresh, path)
    assert meta["module"] == "SCMAdapter" and meta["num_classes"] == "5"
    x = tiny_input("vit")
    with torch.no_grad():
        assert torch.allclose(fresh(x).logits, adapter(x).logits)
    stripped = adapter.strip()
    save_weights(stripped, tmp_path / "stripped.safetensors")
    other = SCMAdapter(tiny_model("vit"), head_type="linear").strip()
    load_weights(other, tmp_path / "stripped.safetensors")
    with torch.no_grad():
        assert torch.allclose(other.eval()(x), stripped.eval()(x))


def test_torch_pickle_state_dict_is_read_weights_only(tmp_path):
    adapter = SCMAdapter(tiny_model("deit3"))
    torch.save({"model": adapter.state_dict()}, tmp_path / "w.pt")
    load_weights(SCMAdapter(tiny_model("deit3")), tmp_path / "w.pt")
    torch.save({"model": adapter.state_dict(), "evil": object()}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"pickled Python object \(object\), which safe weights-only") as err:
        load_weights(SCMAdapter(tiny_model("deit3")), tmp_path / "bad.pt")
    assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)


def test_wrong_architecture_names_both(tmp_path):
    save_weights(SCMAdapter(tiny_model("vit", num_classes=5)), tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match=r"5 classes.*shape mismatch"):
        load_weights(SCMAdapter(tiny_model("vit", num_classes=7)), tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="missing|unexpected"):
        load_weights(SCMAdapter(tiny_model("eva02")), tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(SCMAdapter(tiny_model("vit")), tmp_path / "nope.safetensors")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "ckpt.bin"
    target.write_bytes(b"old")

    def crash(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]


def _write_bad_file(kind: str, path: Path) -> None:
    adapter = SCMAdapter(tiny_model("vit"))
    if kind == "truncated torch.save":
        torch.save(adapter.state_dict(), path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "truncated safetensors":
        save_weights(adapter, path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "random bytes":
        path.write_bytes(bytes(range(7, 255)) * 4)
    elif kind == "text":
        path.write_text("epoch 3, loss 0.2\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "training state":
        torch.save({"epoch": 3, "lr": 0.1}, path)
    elif kind == "list":
        torch.save([adapter.state_dict()], path)
    elif kind == "directory":
        path.mkdir()


@pytest.mark.parametrize(
    "kind, message",
    [
        ("truncated torch.save", r"cannot read .*w\.pt: it is corrupt or truncated \("),
        ("truncated safetensors", r"cannot read .*w\.pt as safetensors"),
        ("random bytes", r"neither a safetensors file nor a torch\.save file \(it starts with b'\\x07"),
        ("text", r"neither a safetensors file nor a torch\.save file \(it starts with b'epoch 3, '\)"),
        ("empty", "is empty"),
        ("training state", r"not a state_dict: entries \['epoch', 'lr'\] are not tensors"),
        ("list", "holds a list, not a state_dict"),
        ("directory", "is a directory"),
    ],
)
def test_unreadable_files_raise_one_line_checkpoint_errors(tmp_path, kind, message):
    path = tmp_path / "w.pt"
    _write_bad_file(kind, path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_weights(SCMAdapter(tiny_model("vit")), path)
    assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)


@pytest.mark.parametrize(
    "name, save",
    [
        ("torch.safetensors", lambda module, path: torch.save(module.state_dict(), path)),
        ("safetensors.pt", save_weights),
        ("trainer.pth", lambda module, path: torch.save({"state_dict": module.state_dict(), "epoch": 3}, path)),
    ],
)
def test_files_are_read_by_content_not_suffix(tmp_path, name, save):
    adapter = SCMAdapter(tiny_model("vit"))
    save(adapter, tmp_path / name)
    fresh = SCMAdapter(tiny_model("vit"))
    load_weights(fresh, tmp_path / name)
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), adapter.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_saved_files_get_the_umask_mode(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = save_weights(SCMAdapter(tiny_model("vit")), tmp_path / "w.safetensors")
        torch_path = atomic_write(tmp_path / "w.pt", lambda tmp: torch.save({}, tmp))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(torch_path.stat().st_mode) == 0o666 & ~umask


def test_stale_temporary_files_are_removed(tmp_path):
    target = tmp_path / "w.safetensors"
    dead, old_style = tmp_path / ".w.safetensors.999999999.0badf00d.tmp", tmp_path / ".w.safetensors.k2j_x9q1.tmp"
    running = tmp_path / f".w.safetensors.{os.getpid()}.0badf00d.tmp"
    other = tmp_path / ".other.safetensors.999999999.0badf00d.tmp"
    for path in (dead, old_style, running, other):
        path.write_bytes(b"half")
    save_weights(SCMAdapter(tiny_model("vit")), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, running.name, other.name])


@pytest.mark.parametrize("header_bytes", [0x2280, 0x4B50])  # low bytes equal to the pickle / zip magic's first byte
def test_safetensors_whose_header_length_looks_like_a_torch_magic(tmp_path, header_bytes):
    # A safetensors file starts with its header's length (8 bytes, little-endian); a length whose first byte is
    # 0x80 (pickle's PROTO) or 'PK' must still be read as safetensors.
    path = tmp_path / "w.safetensors"
    tensors = {"w": torch.arange(6.0)}
    save_weights(nn.ParameterDict({"w": nn.Parameter(tensors["w"])}), path, metadata={"pad": "x" * 4000})
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    pad = header_bytes - length
    assert pad >= 0
    header = raw[8 : 8 + length].decode().replace('"pad":"', '"pad":"' + "y" * pad, 1)
    path.write_bytes(header_bytes.to_bytes(8, "little") + header.encode() + raw[8 + length :])
    assert path.read_bytes()[:1] in (b"\x80", b"P")
    module = nn.ParameterDict({"w": nn.Parameter(torch.zeros(6))})
    load_weights(module, path)
    assert torch.equal(module["w"], tensors["w"])
