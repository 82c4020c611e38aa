"""The shipped encoder, its pretraining data and script, and layer-wise lr decay through SCMAdapter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.optim import create_optimizer_v2

from scm_calib import SCMAdapter
from scm_calib.data.shapes import PATTERNS, SHAPES, STYLES, num_shape_classes, render_shapes
from scm_calib.pretrained import ENCODER_ARCH, ENCODER_KWARGS, WEIGHTS_FILE, create_pretrained_encoder

ROOT = Path(__file__).resolve().parents[1]


def test_shapes_are_a_function_of_the_generator_alone() -> None:
    first = render_shapes(torch.Generator().manual_seed(5), 8, size=40)
    second = render_shapes(torch.Generator().manual_seed(5), 8, size=40)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert first.images.shape == (8, 3, 40, 40) and first.masks.shape == (8, 40, 40)
    assert first.images.min() >= 0 and first.images.max() <= 1
    assert num_shape_classes() == len(SHAPES) * len(PATTERNS) == 64
    assert ((first.labels >= 0) & (first.labels < 64)).all()
    assert (first.masks.flatten(1).sum(dim=1) > 20).all()  # every image holds its object


def test_varied_style_draws_the_same_classes_with_other_looks() -> None:
    classic = render_shapes(torch.Generator().manual_seed(5), 16, size=48)
    varied = render_shapes(torch.Generator().manual_seed(5), 16, size=48, style="varied")
    assert STYLES == ("classic", "varied")
    assert varied.images.shape == classic.images.shape and varied.masks.shape == classic.masks.shape
    assert ((varied.labels >= 0) & (varied.labels < num_shape_classes())).all()
    assert varied.images.min() >= 0 and varied.images.max() <= 1
    assert not torch.equal(varied.images, classic.images)
    assert (varied.masks.flatten(1).sum(dim=1) > 20).all()

    def saturation(images: torch.Tensor) -> torch.Tensor:
        return (images.amax(dim=1) - images.amin(dim=1)).mean()

    many = render_shapes(torch.Generator().manual_seed(1), 64, size=48, style="varied")
    assert saturation(many.images) > saturation(render_shapes(torch.Generator().manual_seed(1), 64, size=48).images)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"size": 8}, "at least 16"), ({"distractors": (3, 1)}, "low <= high"), ({"style": "fancy"}, "style")],
)
def test_shapes_refuse_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_shapes(torch.Generator(), 2, **kwargs)


def test_shipped_encoder_loads_through_timm_with_a_new_head_and_size() -> None:
    stored = load_file(str(WEIGHTS_FILE))
    encoder = create_pretrained_encoder(num_classes=10, img_size=64)
    assert torch.equal(encoder.blocks[0].attn.qkv.weight, stored["blocks.0.attn.qkv.weight"])
    assert encoder.head.out_features == 10
    assert encoder.pos_embed.shape == (1, 1 + 8 * 8, 96)  # resampled from the stored 12 x 12 grid
    same = create_pretrained_encoder(num_classes=64)
    assert torch.equal(same.head.weight, stored["head.weight"])


def test_missing_weights_say_how_to_remake_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pretrain.py"):
        create_pretrained_encoder(10, weights=tmp_path / "none.safetensors")


def test_layer_decay_gives_the_head_the_full_rate_and_early_blocks_less() -> None:
    adapter = SCMAdapter(timm.create_model(ENCODER_ARCH, num_classes=5, img_size=32, **ENCODER_KWARGS))
    optimizer = create_optimizer_v2(adapter, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): group["lr_scale"] for group in optimizer.param_groups for p in group["params"]}
    assert scale[id(adapter.head.conv.weight)] == 1.0
    assert scale[id(adapter.scm.blocks[0].lambda_)] == 1.0
    assert scale[id(adapter.encoder.blocks[5].mlp.fc1.weight)] == 0.5
    assert scale[id(adapter.encoder.blocks[0].mlp.fc1.weight)] == 0.5**6
    assert scale[id(adapter.encoder.patch_embed.proj.weight)] == 0.5**7


@pytest.mark.slow
def test_pretrain_script_writes_weights_that_load_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "w.safetensors"
    command = [sys.executable, str(ROOT / "examples" / "pretrain" / "pretrain.py"), "--out", str(out)]
    small = ["--steps", "2", "--batch-size", "4", "--size", "32", "--final-size", "48", "--workers", "0"]
    small += ["--threads", "1", "--warmup-steps", "1", "--save-every", "1"]
    subprocess.run([*command, *small], check=True, capture_output=True, timeout=300)
    encoder = create_pretrained_encoder(num_classes=3, img_size=48, weights=out)
    assert encoder.head.out_features == 3
    resumed = subprocess.run(
        [*command, *small, "--steps", "3", "--resume"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "step 3/3" in resumed.stdout


def test_eval_attention_scores_attention_and_centre_prior_on_families_and_pretraining_images(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "examples" / "pretrain"))
    import eval_attention

    from scm_calib.data import ensure_generated_dataset

    def encoder() -> torch.nn.Module:
        torch.manual_seed(0)
        return timm.create_model(ENCODER_ARCH, num_classes=4, img_size=32, **ENCODER_KWARGS)

    root = ensure_generated_dataset(
        tmp_path / "data", num_classes=2, train_per_class=1, test_per_class=3, val_per_class=0, min_size=32, max_size=40
    )
    on_family = eval_attention.score(encoder(), root, image_size=32, batch_size=4)
    on_shapes = eval_attention.score_pretraining_images(encoder(), 10, "varied", image_size=32, batch_size=4)
    assert set(on_family) == {f"{m} {k}" for m in ("attention", "centre prior") for k in ("MaxBoxAccV2", "MaxBoxAcc")}
    assert set(on_shapes) == {"attention MaxBoxAccV2", "centre prior MaxBoxAccV2"}
    assert all(0.0 <= value <= 100.0 for value in [*on_family.values(), *on_shapes.values()])
    # The same centre prior on the same images whatever the encoder: it ignores the image.
    other = timm.create_model(ENCODER_ARCH, num_classes=4, img_size=32, **ENCODER_KWARGS)
    again = eval_attention.score_pretraining_images(other, 10, "varied", image_size=32, batch_size=5)
    assert again["centre prior MaxBoxAccV2"] == on_shapes["centre prior MaxBoxAccV2"]
