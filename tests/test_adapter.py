"""SCMAdapter: wrapping every supported family, training, strip(), and the ways users move models around."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import FAMILIES, tiny_input, tiny_model
from timm.layers import set_reentrant_ckpt
from timm.optim import create_optimizer_v2

from scm_calib.adapter import SCMAdapter, SCMOutput, StrippedViT
from scm_calib.calibration import SCM
from scm_calib.capture import AttentionCapture, UnsupportedModelError, check_supported


def _hooks_left(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_wraps_trains_and_strips(family):
    adapter = SCMAdapter(tiny_model(family))
    x = tiny_input(family)
    out = adapter(x)
    h, w = adapter.encoder.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
    assert out.logits.shape == (2, 5)
    assert out.semantic.shape == out.maps.shape == out.calibrated.shape == (2, 5, h, w)
    assert out.attention.shape == (2, h, w)
    assert torch.allclose(out.logits, out.calibrated.mean(dim=(2, 3)))
    assert out.attention.min() >= 0 and out.attention.max() <= 1

    loss = F.cross_entropy(out.logits, torch.tensor([0, 1]))
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-3)
    loss.backward()
    assert all(p.grad is not None for p in adapter.scm.parameters())
    assert torch.autograd.grad(F.cross_entropy(adapter(x).logits, torch.tensor([0, 1])), adapter.scm.parameters())
    opt.step()

    adapter.eval()
    with torch.no_grad():
        reference = adapter(x)
        stripped = adapter.strip()
        stripped.eval()
        logits = stripped(x)
    assert reference.calibrated is None
    assert torch.allclose(reference.logits, reference.semantic.mean(dim=(2, 3)))
    assert torch.allclose(logits, reference.logits, atol=1e-5)
    assert not any("scm" in name or "lambda" in name or "beta" in name for name, _ in stripped.named_parameters())
    assert _hooks_left(stripped) == 0
    assert _hooks_left(adapter) > 0, "strip() must leave the adapter itself usable"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_attention_gradient_reaches_every_captured_block(family):
    adapter = SCMAdapter(tiny_model(family))
    out = adapter(tiny_input(family))
    weights = [block.attn.qkv.weight for block in adapter.encoder.blocks]
    grads = torch.autograd.grad((out.attention * torch.rand_like(out.attention)).sum(), weights)
    assert all(g.abs().sum() > 0 for g in grads)
    loss = F.cross_entropy(out.logits, torch.tensor([0, 1]))
    (grad_attention,) = torch.autograd.grad(loss, out.attention, retain_graph=True)
    assert grad_attention.abs().sum() > 0, "the SCM loss must reach the class-token attention"


def test_rows_capture_equals_attention_probabilities():
    model = tiny_model("vit")
    twin = copy.deepcopy(model)
    rows, probs = SCMAdapter(model, capture_mode="rows"), SCMAdapter(twin, capture_mode="probs")
    probs.load_state_dict(rows.state_dict())
    assert rows.capture.modes == ["rows", "rows"] and probs.capture.modes == ["probs", "probs"]
    assert rows.encoder.blocks[0].attn.fused_attn == timm.layers.use_fused_attn()
    assert probs.encoder.blocks[0].attn.fused_attn is False
    x = tiny_input("vit")
    a, b = rows(x), probs(x)
    assert torch.allclose(a.attention, b.attention, atol=1e-5)
    grads = [
        torch.autograd.grad(o.attention.square().sum(), m.encoder.blocks[0].attn.qkv.weight)[0]
        for o, m in ((a, rows), (b, probs))
    ]
    assert torch.allclose(*grads, rtol=1e-4, atol=1e-5 * grads[0].abs().max().item())


def test_linear_head_strip_loads_into_plain_timm_model():
    model = timm.create_model(
        "vit_tiny_patch16_224", num_classes=7, img_size=64, **{"depth": 2, "embed_dim": 32, "num_heads": 2}
    )
    adapter = SCMAdapter(model, head_type="linear")
    x = torch.randn(3, 3, 64, 64)
    F.cross_entropy(adapter(x).logits, torch.tensor([0, 1, 2])).backward()
    adapter.eval()
    stripped = adapter.strip()
    plain = timm.create_model(
        "vit_tiny_patch16_224",
        num_classes=7,
        img_size=64,
        depth=2,
        embed_dim=32,
        num_heads=2,
        global_pool="avg",
        fc_norm=False,
    ).eval()
    plain.load_state_dict(stripped.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(plain(x), adapter(x).logits, atol=1e-5)
        assert torch.allclose(stripped(x), plain(x), atol=1e-6)
    assert type(stripped) is type(plain)


def test_linear_head_rejects_models_that_pool_differently():
    with pytest.raises(ValueError, match="distilled"):
        SCMAdapter(tiny_model("deit_distilled"), head_type="linear")
    with pytest.raises(ValueError, match="fc_norm"):
        SCMAdapter(tiny_model("vit", global_pool="avg"), head_type="linear")
    with pytest.raises(ValueError, match="'conv' or 'linear'"):
        SCMAdapter(tiny_model("vit"), head_type="mlp")


def test_non_square_and_non_224_inputs_use_the_models_grid():
    model = tiny_model("vit", dynamic_img_size=True)
    adapter = SCMAdapter(model)
    for size, grid in (((48, 80), (3, 5)), ((96, 64), (6, 4))):
        out = adapter(torch.randn(2, 3, *size))
        assert out.maps.shape == (2, 5, *grid) and out.attention.shape == (2, *grid)
    eva = SCMAdapter(tiny_model("eva02", img_size=(42, 70)))
    assert eva(torch.randn(1, 3, 42, 70)).attention.shape == (1, 3, 5)


def test_wrong_input_size_is_a_clear_error():
    adapter = SCMAdapter(tiny_model("vit"))
    with pytest.raises((ValueError, AssertionError), match=r"(?i)size|match"):
        adapter(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        adapter(torch.randn(3, 64, 64))


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: timm.create_model("test_vit2", num_classes=3), "no class token"),
        (
            lambda: timm.create_model(
                "swin_tiny_patch4_window7_224",
                num_classes=3,
                depths=(1, 1),
                embed_dim=24,
                num_heads=(1, 2),
                img_size=56,
                window_size=7,
            ),
            "windowed",
        ),
        (lambda: timm.create_model("xcit_nano_12_p16_224", num_classes=3, depth=1, img_size=64), "channel"),
        (lambda: timm.create_model("test_resnet", num_classes=3), "not a plain Vision Transformer"),
    ],
)
def test_unsupported_models_say_why_at_wrap_time(make, reason):
    with pytest.raises(UnsupportedModelError, match=reason):
        SCMAdapter(make())


def test_model_without_classes_is_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        SCMAdapter(tiny_model("vit", num_classes=0))


def test_deepcopy_records_into_the_copy():
    adapter = SCMAdapter(tiny_model("vit")).eval()
    twin = copy.deepcopy(adapter)
    x = tiny_input("vit")
    with torch.no_grad():
        assert torch.allclose(twin(x).maps, adapter(x).maps)
    with adapter.capture.recording() as original_rows:
        twin(x)
    assert original_rows == []


def test_state_dict_round_trip():
    adapter = SCMAdapter(tiny_model("deit3"))
    with torch.no_grad():
        adapter.scm.blocks[0].lambda_.fill_(1.3)
    fresh = SCMAdapter(tiny_model("deit3"))
    fresh.load_state_dict(adapter.state_dict())
    x = tiny_input("deit3")
    assert torch.allclose(fresh(x).logits, adapter(x).logits)


def test_gradient_checkpointing_keeps_attention_gradients():
    adapter = SCMAdapter(tiny_model("vit"))
    x = tiny_input("vit")
    plain = adapter(x)
    grads = torch.autograd.grad(plain.logits.sum(), adapter.encoder.blocks[0].attn.qkv.weight)
    adapter.set_grad_checkpointing(True)
    checkpointed = adapter(x)
    again = torch.autograd.grad(checkpointed.logits.sum(), adapter.encoder.blocks[0].attn.qkv.weight)
    assert torch.allclose(grads[0], again[0], atol=1e-5)


def test_reentrant_checkpointing_is_a_clear_error():
    adapter = SCMAdapter(tiny_model("vit"))
    adapter.set_grad_checkpointing(True)
    set_reentrant_ckpt(True)
    try:
        with pytest.raises(RuntimeError, match="re-entrant"):
            adapter(tiny_input("vit"))
    finally:
        set_reentrant_ckpt(False)


def test_bf16_autocast_gives_finite_float_outputs():
    adapter = SCMAdapter(tiny_model("vit"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = adapter(tiny_input("vit"))
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all()
    F.cross_entropy(out.logits, torch.tensor([0, 1])).backward()


@pytest.mark.parametrize("head", ["conv", "linear"])
def test_the_adapter_is_built_where_the_model_is(head):
    """A model already on a device (``meta`` stands in for CUDA here) is wrapped in one line: the conv head is
    built there, in the model's dtype, and the default SCM moves there too. On a GPU a head left on the CPU made
    the first step fail inside ``conv2d`` ("Input type ... and bias type ... should be the same")."""
    adapter = SCMAdapter(tiny_model("vit").to("meta", torch.bfloat16), head_type=head)
    assert {p.device.type for p in adapter.parameters()} == {"meta"}
    assert {p.dtype for p in adapter.head.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in adapter.scm.parameters()} == {torch.float32}
    out = adapter(tiny_input("vit").to("meta", torch.bfloat16))
    assert out.logits.device.type == "meta" and out.logits.shape == (2, 5)
    own_scm = SCM()
    assert SCMAdapter(tiny_model("vit").double(), scm=own_scm).head.conv.weight.dtype == torch.float64
    assert next(own_scm.parameters()).device.type == "cpu"


def test_torch_compile_traces_the_hooks():
    adapter = SCMAdapter(tiny_model("vit"))
    x = tiny_input("vit")
    eager = adapter(x)
    compiled = torch.compile(adapter, backend="aot_eager")
    out = compiled(x)
    assert torch.allclose(out.logits, eager.logits, atol=1e-5)
    assert torch.allclose(out.attention, eager.attention, atol=1e-5)
    out.logits.sum().backward()
    assert adapter.scm.blocks[0].lambda_.grad is not None


def test_baseline_without_scm_and_block_selection():
    adapter = SCMAdapter(tiny_model("vit", depth=3), scm=None, attention_blocks=[-1])
    out = adapter(tiny_input("vit"))
    assert out.calibrated is None and torch.allclose(out.logits, out.semantic.mean(dim=(2, 3)))
    assert adapter.capture.block_indices == [2]
    with pytest.raises(ValueError, match="blocks"):
        SCMAdapter(tiny_model("vit"), attention_blocks=[5])


def test_stripped_conv_model_is_plain():
    adapter = SCMAdapter(tiny_model("beit"))
    stripped = adapter.strip()
    assert isinstance(stripped, StrippedViT)
    assert all(block.attn.fused_attn == timm.layers.use_fused_attn() for block in stripped.encoder.blocks)
    assert all(block.attn.fused_attn is False for block in adapter.encoder.blocks)
    assert adapter.no_weight_decay() >= {"scm.blocks.0.lambda_", "scm.blocks.0.beta"}


@pytest.mark.parametrize("head", ["conv", "linear"])
def test_second_wrap_says_already_wrapped(head):
    model = tiny_model("vit")
    SCMAdapter(model, head_type=head)
    with pytest.raises(ValueError, match="already wrapped by an SCMAdapter"):
        SCMAdapter(model, head_type=head)


@pytest.mark.parametrize(
    "family, kwargs",
    [
        ("vit", dict(scm="bad")),
        ("vit", dict(scm=SCM)),
        ("vit", dict(attention_blocks=[5])),
        ("vit", dict(eps=0.0)),
        ("vit", dict(head_type="mlp")),
        ("beit", dict(capture_mode="rows")),
    ],
)
def test_failed_wrap_leaves_the_model_unchanged(family, kwargs):
    model = tiny_model(family)
    fused = [block.attn.fused_attn for block in model.blocks]
    with pytest.raises(ValueError):
        SCMAdapter(model, **kwargs)
    assert model.num_classes == 5 and isinstance(model.head, torch.nn.Linear)
    assert _hooks_left(model) == 0 and [block.attn.fused_attn for block in model.blocks] == fused
    SCMAdapter(model)


def test_stripped_linear_model_can_be_wrapped_again():
    stripped = SCMAdapter(tiny_model("vit"), head_type="linear").strip()
    again = SCMAdapter(stripped, head_type="linear")
    assert again(tiny_input("vit")).logits.shape == (2, 5)


@pytest.mark.parametrize(
    "kwargs, size",
    [(dict(img_size=30, patch_size=8), (30, 30)), (dict(dynamic_img_size=True), (64, 70)), ({}, (64, 60))],
)
def test_image_size_not_a_multiple_of_the_patch_is_an_error(kwargs, size):
    adapter = SCMAdapter(tiny_model("vit", **kwargs))
    with pytest.raises(ValueError, match=r"not a multiple of the patch size .*dynamic_img_pad=True"):
        adapter(torch.randn(1, 3, *size))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        adapter.strip()(torch.randn(1, 3, *size))


def test_padding_model_accepts_any_image_size():
    adapter = SCMAdapter(tiny_model("vit", patch_size=8, dynamic_img_size=True, dynamic_img_pad=True))
    assert adapter(torch.randn(1, 3, 30, 30)).attention.shape == (1, 4, 4)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_nan_image_is_named_not_zeroed(mode):
    adapter = getattr(SCMAdapter(tiny_model("vit")), mode)()
    x = tiny_input("vit", batch=3)
    x[1, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"image\(s\) \[1\] is NaN or infinite"):
        adapter(x)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_empty_batch_gives_empty_outputs(mode):
    adapter = getattr(SCMAdapter(tiny_model("vit")), mode)()
    out = adapter(torch.randn(0, 3, 64, 64))
    assert out.logits.shape == (0, 5) and out.maps.shape == (0, 5, 4, 4) and out.attention.shape == (0, 4, 4)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_data_parallel_gathers_the_output(mode, monkeypatch):
    """DataParallel's gather rebuilds the output type from its fields; Gather itself needs CUDA, so it is
    replaced by a concatenation on the CPU."""
    gather_module = torch.nn.parallel.scatter_gather
    monkeypatch.setattr(gather_module.Gather, "apply", lambda device, dim, *parts: torch.cat(parts, dim))
    adapter = getattr(SCMAdapter(tiny_model("vit")), mode)()
    parts = [adapter(tiny_input("vit", seed=seed)) for seed in (0, 1)]
    gathered = gather_module.gather(parts, "cpu")
    assert isinstance(gathered, SCMOutput)
    assert gathered.logits.shape == (4, 5) and torch.equal(gathered.maps[2:], parts[1].maps)
    assert (gathered.calibrated is None) == (mode == "eval")


@pytest.mark.parametrize("disabled", [True, False])
def test_calibration_disabled_runs_without_scm_inside_the_block(disabled):
    adapter = SCMAdapter(tiny_model("vit")).train()
    scm, x = adapter.scm, tiny_input("vit")
    with adapter.calibration_disabled(disabled):
        out = adapter(x)
    assert (out.calibrated is None) == disabled
    assert torch.allclose(out.logits, out.semantic.float().mean(dim=(2, 3))) == disabled
    with pytest.raises(KeyError), adapter.calibration_disabled(disabled):
        raise KeyError("stop")
    assert adapter.scm is scm and adapter(x).calibrated is not None


def _adapter_or_stripped(kind: str, family: str = "vit", head: str = "conv", **kwargs: object) -> torch.nn.Module:
    adapter = SCMAdapter(tiny_model(family, **kwargs), head_type=head).eval()
    return adapter if kind == "adapter" else adapter.strip().eval()


@pytest.mark.parametrize(
    ("family", "head"), [("vit", "conv"), ("deit_distilled", "conv"), ("eva02", "conv"), ("vit", "linear")]
)
@pytest.mark.parametrize("kind", ["adapter", "stripped"])
def test_forward_head_of_forward_features_gives_the_logits(kind, family, head):
    model = _adapter_or_stripped(kind, family, head)
    x = tiny_input(family)
    with torch.no_grad():
        tokens = model.forward_features(x)
        logits = model.forward_head(tokens)
        pooled = model.forward_head(tokens, pre_logits=True)
        expected = model(x).logits if kind == "adapter" else model(x)
    assert tokens.shape[0] == 2 and tokens.shape[-1] == 32
    assert torch.allclose(logits, expected, atol=1e-5)
    assert pooled.shape == (2, 32)


def test_pre_logits_are_timms_average_pooled_features():
    """With the linear head the adapter's pooled features are those of the timm model that strip() returns."""
    adapter = SCMAdapter(tiny_model("vit"), head_type="linear").eval()
    plain = adapter.strip().eval()
    x = tiny_input("vit")
    with torch.no_grad():
        tokens = adapter.forward_features(x)
        assert torch.allclose(
            adapter.forward_head(tokens, pre_logits=True), plain.forward_head(tokens, pre_logits=True)
        )
        assert torch.allclose(adapter.forward_head(tokens), plain.forward_head(tokens), atol=1e-5)


@pytest.mark.parametrize("kind", ["adapter", "stripped"])
def test_forward_head_needs_the_grid_of_other_image_sizes(kind):
    model = _adapter_or_stripped(kind, dynamic_img_size=True)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        tokens = model.forward_features(x)
        with pytest.raises(ValueError, match=r"hold 6 patches, not the 4 x 4 grid .* pass grid=\(h, w\)"):
            model.forward_head(tokens)
        assert model.forward_head(tokens, grid=(2, 3)).shape == (1, 5)


@pytest.mark.parametrize("kind", ["adapter", "stripped"])
def test_layer_decay_reaches_every_encoder_block(kind):
    """timm.optim.create_optimizer_v2(layer_decay=...) reads group_matcher / no_weight_decay of both models."""
    model = _adapter_or_stripped(kind)
    optimizer = create_optimizer_v2(model, "adamw", lr=1.0, weight_decay=0.05, layer_decay=0.5)
    scale = {}
    decay = {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            scale[id(parameter)] = group["lr_scale"]
            decay[id(parameter)] = group["weight_decay"]
    named = dict(model.named_parameters())
    depth = len(model.encoder.blocks)  # groups: embeddings, one per block, the final norm and head(s)
    assert scale[id(named["encoder.patch_embed.proj.weight"])] == pytest.approx(0.5 ** (depth + 1))
    assert scale[id(named["encoder.blocks.0.attn.qkv.weight"])] == pytest.approx(0.5**depth)
    assert scale[id(named["encoder.blocks.1.attn.qkv.weight"])] == pytest.approx(0.5 ** (depth - 1))
    assert scale[id(named["head.conv.weight"])] == 1.0
    assert decay[id(named["encoder.pos_embed"])] == 0.0 and decay[id(named["head.conv.weight"])] == 0.05
    if kind == "adapter":
        assert scale[id(named["scm.blocks.0.lambda_"])] == 1.0
        assert all(decay[id(named[name])] == 0.0 for name in named if name.startswith("scm."))


@pytest.mark.parametrize(
    "old, new",
    [
        (dict(head="linear"), dict(head_type="linear")),
        (dict(blocks=[-1]), dict(attention_blocks=[-1])),
        (dict(capture="probs"), dict(capture_mode="probs")),
    ],
)
def test_old_keywords_warn_and_still_work(old, new):
    (name,) = new
    with pytest.warns(DeprecationWarning, match=rf"SCMAdapter\({next(iter(old))}=\.\.\.\).*pass {name}= instead"):
        adapter = SCMAdapter(tiny_model("vit"), **old)
    expected = SCMAdapter(tiny_model("vit"), **new)
    assert (adapter.head_type, adapter.capture.block_indices, adapter.capture.modes) == (
        expected.head_type,
        expected.capture.block_indices,
        expected.capture.modes,
    )
    with pytest.raises(TypeError, match=f"pass only {name}="):
        SCMAdapter(tiny_model("vit"), **old, **new)


@pytest.mark.parametrize("old, new", [("blocks", "attention_blocks"), ("mode", "capture_mode")])
def test_attention_capture_old_keywords_warn(old, new):
    attentions = check_supported(tiny_model("vit"))
    value = [0] if new == "attention_blocks" else "probs"
    with pytest.warns(DeprecationWarning, match=f"pass {new}= instead"):
        capture = AttentionCapture(attentions, **{old: value})
    expected = AttentionCapture(attentions, **{new: value})
    assert (capture.block_indices, capture.modes) == (expected.block_indices, expected.modes)
