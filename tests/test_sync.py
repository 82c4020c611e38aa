"""No host synchronisation in a training step: SCM reads input values only where that costs nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_input, tiny_model
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from scm_calib import SCM, SCMAdapter, StrippedViT, localization_maps
from scm_calib.calibration import _check_inputs

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
META = torch.device("meta")


class _HostReads(TorchDispatchMode):
    """Records every op that, on a GPU, would make the host wait for the device: a value read of a tensor off
    the CPU (``item``, ``nonzero``, ``bool``) and a copy between the CPU and another device."""

    _READS = (torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero, torch.ops.aten.is_nonzero)
    _COPIES = (torch.ops.aten._to_copy, torch.ops.aten.copy_)

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        devices = {t.device.type for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        if kwargs.get("device") is not None:
            devices.add(torch.device(kwargs["device"]).type)
        packet = func.overloadpacket
        if (packet in self._READS and devices - {"cpu"}) or (packet in self._COPIES and len(devices) > 1):
            self.events.append(f"{func} on {sorted(devices)}")
        return func(*args, **kwargs)


class _HostData(TorchFunctionMode):
    """Records every tensor made from host data on another device (``torch.tensor(..., device=x.device)``):
    a synchronising copy on a GPU that ``_HostReads`` does not see."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        device = kwargs.get("device")
        from_host = func in (torch.tensor, torch.as_tensor) and not isinstance(args[0], torch.Tensor)
        if from_host and device is not None and torch.device(device).type != "cpu":
            self.events.append(f"{func.__name__}(..., device={device})")
        return func(*args, **kwargs)


@contextlib.contextmanager
def _audit() -> Iterator[list[str]]:
    """What would synchronise with a GPU in the block, recorded on any device (run it on ``meta``)."""
    reads = _HostReads()
    with reads, _HostData(reads.events):
        yield reads.events


@pytest.mark.parametrize(
    "read",
    [
        lambda x: x.sum().item(),
        lambda x: bool(x.any()),
        lambda x: x.nonzero(),
        lambda x: x.cpu(),
        lambda x: torch.ones(3).to(x.device),
        lambda x: x * torch.tensor(2.0, device=x.device),
    ],
    ids=["item", "bool", "nonzero", "to-cpu", "to-device", "tensor-on-device"],
)
def test_the_audit_sees_each_kind_of_host_sync(read: Callable[[torch.Tensor], object]) -> None:
    with _audit() as events, contextlib.suppress(RuntimeError, NotImplementedError):  # meta has no values
        read(torch.ones(3, device=META))
    assert events


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_training_step_reads_no_device_value_on_the_host(backend: str) -> None:
    """The CPU stand-in of the CUDA test below, which CI cannot run: on the meta device nothing has values,
    and the audit records each read or copy that would synchronise a GPU."""
    adapter = SCMAdapter(tiny_model("vit"), scm=SCM(backend=backend)).to(META).train()
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
    images, labels = tiny_input("vit", batch=4).to(META), torch.arange(4, device=META) % 5

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(adapter(images).logits, labels).backward()
        optimizer.step()

    step()  # optimizer state
    with _audit() as events:
        step()
    assert events == []


def test_localization_maps_read_no_device_value_on_the_host() -> None:
    adapter = SCMAdapter(tiny_model("vit"), scm=SCM()).to(META).eval()
    images = tiny_input("vit", batch=2).to(META)
    with _audit() as events, torch.no_grad():
        for model in (adapter, adapter.strip()):
            maps = localization_maps(model, images, size="input")
    assert events == [] and maps.shape == (2, *images.shape[-2:])
    assert isinstance(adapter.strip(), StrippedViT)


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
