"""No host synchronisation in a training step: SCM reads input values only where that costs nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_input, tiny_model

from scm_calib import SCM, SCMAdapter
from scm_calib.calibration import _check_inputs

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_value_checks_skip_tensors_off_the_cpu(bad: float) -> None:
    """Meta tensors have no values: a check that reads them (a host sync on a GPU) would raise here."""
    maps, attn = torch.full((2, 3, 4, 5), bad), torch.rand(2, 4, 5)
    with pytest.raises(ValueError, match="maps contains NaN or infinite values"):
        _check_inputs(maps, attn)
    _check_inputs(maps.to("meta"), attn.to("meta"))
    with pytest.raises(ValueError, match=r"attn \(2, 4, 4\) must match maps"):
        _check_inputs(maps.to("meta"), attn[:, :, :4].to("meta"))


@CUDA
@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
def test_training_step_does_not_synchronise(backend: str) -> None:
    if backend == "triton":
        pytest.importorskip("triton")
    device = torch.device("cuda")
    adapter = SCMAdapter(tiny_model("vit"), scm=SCM(backend=backend)).to(device).train()
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
    images, labels = tiny_input("vit", batch=4).to(device), torch.arange(4, device=device) % 5

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = adapter(images).logits
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()

    step()  # first step: kernel compilation, optimizer state, and the one synchronising check of "auto"
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@CUDA
def test_value_checks_on_cuda_run_under_anomaly_detection() -> None:
    maps = torch.full((2, 3, 4, 5), float("nan"), device="cuda")
    attn = torch.rand(2, 4, 5, device="cuda")
    _check_inputs(maps, attn)
    with torch.autograd.detect_anomaly(), pytest.raises(ValueError, match="maps contains NaN"):
        _check_inputs(maps, attn)
