"""The SCM module (``scm_calib.calibration``) against the dense reference, and its numerical guards."""

import re

import pytest
import torch
from reference_scm import ReferenceSCM

from scm_calib.calibration import SCM, SCMBlock, spatial_gate


def _inputs(batch: int, classes: int, h: int, w: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(batch, classes, h, w, generator=generator, dtype=dtype)
    return maps, torch.rand(batch, h, w, generator=generator, dtype=dtype)


def _set_parameters(module: SCM, reference: ReferenceSCM, lambdas: list[float], betas: list[float]) -> None:
    with torch.no_grad():
        for i, (lam, beta) in enumerate(zip(lambdas, betas, strict=True)):
            module.blocks[i].lambda_.fill_(lam)
            module.blocks[i].beta.fill_(beta)
            reference.lambda_[i].fill_(lam)
            reference.beta[i].fill_(beta)


def _run(
    module: torch.nn.Module, params: list[torch.Tensor], maps: torch.Tensor, attn: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    maps, attn = maps.clone().requires_grad_(), attn.clone().requires_grad_()
    calibrated, updated = module(maps, attn)
    loss = torch.nn.functional.cross_entropy(calibrated.mean(dim=(2, 3)), torch.arange(maps.shape[0]))
    loss = loss + (updated * torch.linspace(-1, 1, updated.numel()).view_as(updated)).sum()
    return calibrated, updated, *torch.autograd.grad(loss, (maps, attn, *params))


def _compare(dtype: torch.dtype, shape: tuple[int, int, int, int]) -> tuple[tuple[torch.Tensor, ...], ...]:
    maps, attn = _inputs(*shape, dtype=dtype)
    module, reference = SCM(backend="torch").to(dtype), ReferenceSCM().to(dtype)
    _set_parameters(module, reference, [1.0, 1.2, 0.9, 1.1], [0.5, 0.3, 0.7, 0.45])
    ours = [p for block in module.blocks for p in (block.lambda_, block.beta)]
    theirs = [p for pair in zip(reference.lambda_, reference.beta, strict=True) for p in pair]
    return _run(module, ours, maps, attn), _run(reference, theirs, maps, attn)


def test_module_matches_reference_float64() -> None:
    actual, expected = _compare(torch.float64, (3, 6, 5, 7))
    assert len(actual) == 2 + 2 + 8
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9 * e.abs().max().item())


def test_module_matches_reference_float32() -> None:
    """Values and input gradients within 1e-4 of the float32 reference. The scalar parameter gradients are
    sums with heavy cancellation (a beta gradient can be 1e-4 of the others): for them float64 is the truth,
    and ours must be as close to it as the float32 reference is (within 1e-4 of the largest gradient)."""
    actual, expected = _compare(torch.float32, (2, 10, 7, 10))
    for a, e in zip(actual[:4], expected[:4], strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4 * e.abs().max().item())
    _, truth = _compare(torch.float64, (2, 10, 7, 10))
    scale = max(t.abs().item() for t in truth[4:])
    for a, e, t in zip(actual[4:], expected[4:], truth[4:], strict=True):
        assert abs(a.item() - t.item()) <= 2 * abs(e.item() - t.item()) + 1e-4 * scale


def test_parameters_are_one_lambda_and_one_beta_per_block() -> None:
    module = SCM()
    names = [name for name, _ in module.named_parameters()]
    assert names == [f"blocks.{i}.{p}" for i in range(4) for p in ("lambda_", "beta")]
    assert all(p.shape == () for p in module.parameters())
    assert [block.num_iters for block in module.blocks] == [16, 4, 4, 4]
    assert module.blocks[0].lambda_.item() == 1.0 and module.blocks[0].beta.item() == 0.5


@pytest.mark.parametrize(("batch", "classes", "h", "w"), [(1, 1, 1, 1), (2, 3, 7, 10), (1, 4, 16, 16)])
def test_any_grid_and_class_count(batch: int, classes: int, h: int, w: int) -> None:
    maps, attn = _inputs(batch, classes, h, w)
    calibrated, updated = SCM(num_blocks=2, num_iters=(3, 2))(maps, attn)
    assert calibrated.shape == maps.shape and updated.shape == attn.shape
    assert calibrated.dtype == torch.float32 and torch.isfinite(calibrated).all()


@pytest.mark.parametrize(
    "case", ["constant maps", "zero maps", "zero attention", "constant attention", "zero beta", "negative beta"]
)
def test_degenerate_inputs_stay_finite(case: str) -> None:
    maps, attn = _inputs(2, 4, 4, 5)
    if case == "constant maps":
        maps = torch.full_like(maps, 0.3)
    if case == "zero maps":
        maps = torch.zeros_like(maps)
    if case == "zero attention":
        attn = torch.zeros_like(attn)
    if case == "constant attention":
        attn = torch.full_like(attn, 0.5)
    module = SCM(backend="torch")
    if case.endswith("beta"):
        with torch.no_grad():
            for block in module.blocks:
                block.beta.fill_(0.0 if case == "zero beta" else -0.5)
    maps.requires_grad_(), attn.requires_grad_()
    calibrated, updated = module(maps, attn)
    (calibrated.sum() + updated.sum()).backward()
    for tensor in (calibrated, updated, maps.grad, attn.grad, *(p.grad for p in module.parameters())):
        assert tensor is not None and torch.isfinite(tensor).all(), case


def test_gate_of_constant_input_is_zero_and_gate_range() -> None:
    attn = torch.rand(2, 3, 4)
    assert spatial_gate(torch.ones(2, 3, 4), attn, 0.5).abs().max() == 0
    gate = spatial_gate(torch.randn(2, 3, 4), attn, 0.5)
    assert gate.min() >= 0 and gate.max() <= 1 and torch.allclose(gate.flatten(1).amax(1), torch.ones(2))


def test_bf16_autocast_gives_float32() -> None:
    maps, attn = _inputs(2, 5, 4, 6)
    module = SCM(num_blocks=2, num_iters=(16, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        calibrated, updated = module(maps.bfloat16().requires_grad_(), attn.bfloat16())
        calibrated.sum().backward()
    assert calibrated.dtype == updated.dtype == torch.float32
    expected, _ = module(maps.bfloat16().float(), attn.bfloat16().float())
    torch.testing.assert_close(calibrated, expected)
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


def test_bad_inputs_raise_clear_errors() -> None:
    maps, attn = _inputs(2, 3, 4, 5)
    module = SCM()
    with pytest.raises(ValueError, match=r"maps must be \(B, C, h, w\), got shape \(3, 4, 5\)"):
        module(maps[0], attn)
    with pytest.raises(ValueError, match=r"attn must be \(B, h, w\), got shape \(2, 20\)"):
        module(maps, attn.flatten(1))
    with pytest.raises(ValueError, match=r"must match maps .* expected \(2, 4, 5\)"):
        module(maps, attn[:, :, :4])
    with pytest.raises(ValueError, match=r"must match maps"):
        module(maps, attn[:1])
    with pytest.raises(ValueError, match="maps contains NaN"):
        module(maps.index_fill(0, torch.tensor([1]), float("nan")), attn)
    with pytest.raises(ValueError, match="attn contains NaN or infinite"):
        module(maps, attn.index_fill(0, torch.tensor([0]), float("inf")))
    with pytest.raises(TypeError, match="floating point"):
        module(maps, (attn > 0.5).long())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(alpha=0.0), "alpha must be a positive finite number, got 0.0"),
        (dict(alpha=-0.002), "alpha must be a positive finite number, got -0.002"),
        (dict(alpha=float("nan")), "alpha must be a positive finite number, got nan"),
        (dict(beta_init=0.0), "beta_init must be a positive finite number, got 0.0"),
        (dict(beta_init=-0.5), "beta_init must be a positive finite number"),
        (dict(eps=0.0), "eps must be a positive finite number"),
        (dict(beta_min=-1e-4), "beta_min must be a positive finite number"),
        (dict(beta_min=float("inf")), "beta_min must be a positive finite number, got inf"),
        (dict(lambda_init=float("nan")), "lambda_init must be a finite number, got nan"),
        (dict(lambda_init=float("inf")), "lambda_init must be a finite number, got inf"),
        (dict(num_blocks=0, num_iters=()), "num_blocks must be an int of at least 1, got 0"),
        (dict(num_blocks=2.0, num_iters=(4, 4)), "num_blocks must be an int of at least 1, got 2.0"),
        (dict(num_iters=4), "num_iters needs one entry per block: got 4 for num_blocks=4"),
        (dict(num_iters=(16, 4.0, 4, 4)), "num_iters must be an int of at least 1, got 4.0"),
        (dict(num_iters=(16, 4, 0, 4)), "num_iters must be an int of at least 1, got 0"),
    ],
)
def test_impossible_constructor_values_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SCM(**kwargs)


@pytest.mark.parametrize(("block", "lam"), [(0, 10.0), (0, -5.0), (2, 10.0)])
def test_diverging_lambda_names_block_and_lambda(block: int, lam: float) -> None:
    """Outside the Newton-Schulz convergence range, block 0 (16 iterations) gives NaN and a 4-iteration block
    values 1e17 times too large: both raise in the forward that diverges."""
    module = SCM(backend="torch")
    with torch.no_grad():
        module.blocks[block].lambda_.fill_(lam)
    with pytest.raises(FloatingPointError, match=rf"SCM block {block}: .*diverged at lambda={lam:g}: .*lambda"):
        module(*_inputs(2, 5, 14, 14))


@pytest.mark.parametrize("lam", [-2.9, 0.0, 1.0, 3.9, 5.0])
def test_converging_lambda_passes_the_divergence_check(lam: float) -> None:
    calibrated, _ = SCM(lambda_init=lam, backend="torch")(*_inputs(2, 5, 14, 14))
    assert torch.isfinite(calibrated).all()


@pytest.mark.parametrize("beta", [-0.3, 0.0, 1e-6])
def test_beta_below_its_floor_keeps_a_gradient(beta: float) -> None:
    maps, attn = _inputs(2, 4, 5, 6)
    module = SCM(num_blocks=1, num_iters=(4,), backend="torch")
    with torch.no_grad():
        module.blocks[0].beta.fill_(beta)
    calibrated, _ = module(maps, attn)
    torch.nn.functional.cross_entropy(calibrated.mean(dim=(2, 3)), torch.tensor([0, 1])).backward()
    grad = module.blocks[0].beta.grad
    assert grad is not None and grad.abs() > 0


def test_negative_beta_acts_as_its_magnitude() -> None:
    maps, attn = _inputs(2, 4, 5, 6)
    module = SCM(num_blocks=1, num_iters=(4,), backend="torch")
    values, grads = [], []
    for beta in (0.3, -0.3):
        with torch.no_grad():
            module.blocks[0].beta.fill_(beta)
        calibrated, _ = module(maps, attn)
        values.append(calibrated)
        grads.append(torch.autograd.grad(calibrated.square().sum(), module.blocks[0].beta)[0])
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(grads[0], -grads[1])


def test_adamw_cannot_freeze_beta() -> None:
    """A loss that wants a small beta: with a plain clamp, AdamW at lr 0.1 drives beta below the floor, where
    its gradient is zero for good; here beta keeps moving."""
    maps, attn = _inputs(2, 4, 5, 6)
    module = SCM(num_blocks=1, num_iters=(4,), backend="torch")
    beta = module.blocks[0].beta
    optimizer = torch.optim.AdamW([beta], lr=0.1, weight_decay=0.0)
    history = []
    for _ in range(25):
        optimizer.zero_grad()
        calibrated, _ = module(maps, attn)
        (-calibrated.var()).backward()
        optimizer.step()
        history.append(beta.item())
    assert beta.grad.abs() > 0 and len(set(history[-5:])) == 5


def test_empty_batch_gives_empty_outputs() -> None:
    maps, attn = _inputs(0, 3, 4, 5)
    calibrated, updated = SCM().train()(maps, attn)
    assert calibrated.shape == (0, 3, 4, 5) and updated.shape == (0, 4, 5)


def test_bad_configuration_raises_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"one entry per block: got \(16, 4\) for num_blocks=4"):
        SCM(num_iters=(16, 4))
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        SCM(backend="cuda")
    with pytest.raises(ValueError, match="num_iters must be an int of at least 1, got 0"):
        SCMBlock(0)
