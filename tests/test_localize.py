"""localization_maps: from the adapter and from both kinds of stripped model, every class selection."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_input, tiny_model

import scm_calib
from scm_calib import SCMAdapter, SCMOutput, localization_maps, select_maps, semantic_and_attention


@pytest.fixture
def trained_pair():
    adapter = SCMAdapter(tiny_model("vit", num_classes=6)).eval()
    return adapter, adapter.strip().eval(), tiny_input("vit", batch=3)


def test_maps_are_attention_times_semantic(trained_pair):
    adapter, stripped, x = trained_pair
    with torch.no_grad():
        out = adapter(x)
    top1 = out.logits.argmax(1)
    expected = out.attention * out.semantic[torch.arange(3), top1]
    assert torch.allclose(localization_maps(adapter, x), expected, atol=1e-6)
    assert torch.allclose(localization_maps(stripped, x), expected, atol=1e-5)
    assert torch.allclose(localization_maps(stripped, x, classes="all"), out.maps, atol=1e-5)


def test_class_selection_shapes_and_order(trained_pair):
    adapter, stripped, x = trained_pair
    all_maps = localization_maps(stripped, x, classes="all")
    top3 = localization_maps(stripped, x, classes=3)
    logits = stripped(x)
    order = logits.topk(3, dim=1).indices
    assert top3.shape == (3, 3, 4, 4)
    assert torch.allclose(top3, torch.stack([all_maps[b, order[b]] for b in range(3)]))
    given = torch.tensor([5, 0, 2])
    assert torch.allclose(localization_maps(stripped, x, classes=given), all_maps[torch.arange(3), given])


def test_resizing_to_the_input(trained_pair):
    _, stripped, x = trained_pair
    maps = localization_maps(stripped, x, size="input", interpolation="bicubic")
    assert maps.shape == (3, 64, 64)
    assert localization_maps(stripped, x, size=(20, 30)).shape == (3, 20, 30)


def test_linear_stripped_model_and_no_hooks_left():
    adapter = SCMAdapter(tiny_model("vit", num_classes=4), head_type="linear").eval()
    stripped = adapter.strip().eval()
    x = tiny_input("vit")
    with torch.no_grad():
        out = adapter(x)
    assert torch.allclose(localization_maps(stripped, x, classes="all"), out.maps, atol=1e-5)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in stripped.modules())


def test_bad_class_arguments(trained_pair):
    _, stripped, x = trained_pair
    with pytest.raises(ValueError, match="one class index"):
        localization_maps(stripped, x, classes=torch.tensor([0, 9, 1]))
    with pytest.raises(ValueError, match="top-7"):
        localization_maps(stripped, x, classes=7)
    with pytest.raises(ValueError, match="'top1'"):
        localization_maps(stripped, x, classes="best")
    with pytest.raises(TypeError, match="localization needs"):
        localization_maps(torch.nn.Conv2d(3, 3, 1), x)


def test_constant_image_gives_finite_maps(trained_pair):
    adapter, stripped, _ = trained_pair
    x = torch.zeros(2, 3, 64, 64)
    assert torch.isfinite(localization_maps(stripped, x, classes="all")).all()
    adapter.train()
    out = adapter(x)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.calibrated).all()


def test_public_names():
    for name in ("SCMAdapter", "SCM", "localization_maps", "save_weights", "load_weights"):
        assert hasattr(scm_calib, name)


class _Compiled(torch.nn.Module):
    """Holds the model as ``_orig_mod``, as ``torch.compile``'s wrapper does."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self._orig_mod = model


@pytest.mark.parametrize("kind", ["adapter", "stripped", "compiled"])
def test_semantic_and_attention_returns_the_eval_output(trained_pair, kind):
    adapter, stripped, x = trained_pair
    model = {"adapter": adapter.train(), "stripped": stripped, "compiled": _Compiled(stripped)}[kind]
    with torch.no_grad():
        out = semantic_and_attention(model, x)
    assert isinstance(out, SCMOutput) and out.calibrated is None and out.semantic.dtype == torch.float32
    assert torch.allclose(out.maps, out.attention[:, None] * out.semantic)
    assert torch.allclose(out.logits, out.semantic.mean(dim=(2, 3)))
    assert adapter.training or kind != "adapter"


@pytest.mark.parametrize("classes", ["top1", 3, "all", "labels"])
def test_select_maps_picks_from_the_maps_of_every_class(trained_pair, classes):
    adapter, _, x = trained_pair
    with torch.no_grad():
        out = adapter(x)
    index = {
        "top1": out.logits.argmax(1)[:, None],
        3: out.logits.topk(3, dim=1).indices,
        "all": torch.arange(6).expand(3, 6),
        "labels": torch.tensor([[4], [0], [2]]),
    }[classes]
    selected = select_maps(out, torch.tensor([4, 0, 2]) if classes == "labels" else classes)
    expected = out.maps[torch.arange(3)[:, None], index]
    assert torch.equal(selected, expected.squeeze(1) if classes in ("top1", "labels") else expected)
    assert torch.equal(localization_maps(adapter, x, classes=classes if classes != "labels" else index[:, 0]), selected)


def test_maps_and_logits_is_gone():
    assert not hasattr(scm_calib.localize, "MapsAndLogits") and scm_calib.select_maps is select_maps


@pytest.mark.parametrize(
    "function, read",
    [(localization_maps, lambda maps: maps), (semantic_and_attention, lambda output: output.attention)],
    ids=["localization_maps", "semantic_and_attention"],
)
def test_blocks_keyword_warns_and_means_attention_blocks(trained_pair, function, read):
    _, stripped, x = trained_pair
    with pytest.warns(DeprecationWarning, match=rf"{function.__name__}\(blocks=\.\.\.\).*pass attention_blocks="):
        old = read(function(stripped, x, blocks=[0]))
    new = read(function(stripped, x, attention_blocks=[0]))
    assert torch.equal(old, new)
    assert not torch.equal(new, read(function(stripped, x)))
