"""Checkpoints: safetensors round trips, atomic writes, clear errors for the wrong architecture."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_input, tiny_model

from scm_calib import CheckpointError, SCMAdapter, load_weights, save_weights
from scm_calib.checkpoint import atomic_write


def test_adapter_and_stripped_round_trip(tmp_path):
    adapter = SCMAdapter(tiny_model("vit"), head="linear").eval()
    path = save_weights(adapter, tmp_path / "adapter.safetensors")
    fresh = SCMAdapter(tiny_model("vit"), head="linear").eval()
    meta = load_weights(fresh, path)
    assert meta["module"] == "SCMAdapter" and meta["num_classes"] == "5"
    x = tiny_input("vit")
    with torch.no_grad():
        assert torch.allclose(fresh(x).logits, adapter(x).logits)
    stripped = adapter.strip()
    save_weights(stripped, tmp_path / "stripped.safetensors")
    other = SCMAdapter(tiny_model("vit"), head="linear").strip()
    load_weights(other, tmp_path / "stripped.safetensors")
    with torch.no_grad():
        assert torch.allclose(other.eval()(x), stripped.eval()(x))


def test_torch_pickle_state_dict_is_read_weights_only(tmp_path):
    adapter = SCMAdapter(tiny_model("deit3"))
    torch.save({"model": adapter.state_dict()}, tmp_path / "w.pt")
    load_weights(SCMAdapter(tiny_model("deit3")), tmp_path / "w.pt")
    torch.save({"model": adapter.state_dict(), "evil": object()}, tmp_path / "bad.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_weights(SCMAdapter(tiny_model("deit3")), tmp_path / "bad.pt")


def test_wrong_architecture_names_both(tmp_path):
    save_weights(SCMAdapter(tiny_model("vit", num_classes=5)), tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match=r"5 classes.*shape mismatch"):
        load_weights(SCMAdapter(tiny_model("vit", num_classes=7)), tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="missing|unexpected"):
        load_weights(SCMAdapter(tiny_model("eva02")), tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(SCMAdapter(tiny_model("vit")), tmp_path / "nope.safetensors")
    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_weights(SCMAdapter(tiny_model("vit")), tmp_path / "trunc.safetensors")


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
