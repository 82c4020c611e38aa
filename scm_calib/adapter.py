"""SCMAdapter: SCM (Bai et al., ECCV 2022) around any timm Vision Transformer with a class token.

One line wraps a model::

    adapter = SCMAdapter(timm.create_model("deit_small_patch16_224", num_classes=200))

In training mode the logits are the global average of the SCM-calibrated class-score maps (the input of
the cross-entropy loss); in eval mode they are the average of the raw class-score maps ``semantic``, and
``maps`` holds the localization maps ``attention * semantic`` in both modes (see :class:`SCMOutput`).
:meth:`SCMAdapter.strip` returns the bare encoder for inference: no SCM parameter, no hook, fused attention back.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import nn

from ._renamed import renamed_keywords
from .calibration import SCM
from .capture import (
    AttentionCapture,
    check_supported,
    class_attention,
    grid_size,
    normalize_attention,
    patch_tokens,
)
from .heads import ConvHead, LinearHead

__all__ = ["SCMAdapter", "SCMOutput", "StrippedViT"]

_DEFAULT = "default"
# Set on a model that an SCMAdapter has taken over (its classifier, hooks and attention settings).
_OWNED = "_scm_adapter_owned"


class SCMOutput(NamedTuple):
    """What one forward pass of :class:`SCMAdapter` (and :func:`~scm_calib.localize.semantic_and_attention`) returns.

    A named tuple, so ``nn.DataParallel`` gathers it field by field (the ``None`` fields stay ``None``). Three kinds
    of map, one name each: ``semantic`` (class scores per patch), ``attention`` (class-token attention) and the
    localization maps ``maps`` = ``attention * semantic`` (:func:`~scm_calib.localize.select_maps` picks one class
    per image from them).

    Attributes:
        logits: (B, C) class logits. In training mode with SCM: the global average of the ``calibrated`` maps, the
            input of the cross-entropy loss. In eval mode, or without SCM: the global average of the raw
            ``semantic`` maps, the same logits as the stripped model's (SCM is a training-time module).
        maps: (B, C, h, w) localization maps ``attention * semantic`` of every class (from the raw, uncalibrated
            maps in both modes).
        attention: (B, h, w) class-token attention ``A`` summed over the captured blocks, min-max normalised.
        semantic: (B, C, h, w) class-score maps ``S`` from the semantic head (raw, uncalibrated).
        calibrated: (B, C, h, w) SCM-calibrated class-score maps (training with SCM only, else None).
        calibrated_attention: (B, h, w) attention after SCM (training with SCM only, else None).
    """

    logits: torch.Tensor
    maps: torch.Tensor
    attention: torch.Tensor
    semantic: torch.Tensor
    calibrated: torch.Tensor | None = None
    calibrated_attention: torch.Tensor | None = None


class StrippedViT(nn.Module):
    """Inference model left by :meth:`SCMAdapter.strip` with the conv head: a timm encoder and a 3x3 conv.

    ``forward`` gives logits (the average of the semantic maps); nothing of SCM is left.

    Args:
        encoder: the timm ViT, its classifier reset (``num_classes == 0``).
        head: the semantic head.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.num_classes = head.conv.out_channels

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, C, h, w) semantic maps."""
        grid = grid_size(self.encoder, (x.shape[-2], x.shape[-1]))
        return self.head(patch_tokens(self.encoder, self.encoder.forward_features(x), grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, C) logits."""
        return self.forward_maps(x).mean(dim=(2, 3))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, T, D) the encoder's final normed tokens, prefix tokens first (timm's)."""
        return self.encoder.forward_features(x)

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False, grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """(B, T, D) tokens of :meth:`forward_features` -> (B, C) logits, as :meth:`forward` gives them.

        Args:
            x: the tokens.
            pre_logits: return the (B, D) average of the patch tokens instead (timm's pooled features).
            grid: the patch grid (h, w) of the images the tokens came from; None: the encoder's grid at the image
                size it was created for.
        """
        tokens = _token_map(self.encoder, x, grid)
        return tokens.mean(dim=(2, 3)) if pre_logits else self.head(tokens).mean(dim=(2, 3))

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter groups (for layer-wise lr decay): the encoder's groups, then the head last."""
        return _encoder_group_matcher(self.encoder, coarse)

    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay: the encoder's (timm)."""
        return _encoder_no_weight_decay(self.encoder)


class SCMAdapter(nn.Module):
    """Wraps a timm ViT for weakly supervised localization with SCM.

    Args:
        model: a timm ViT with a global class token (vit_*, deit_* incl. distilled, deit3_*, dinov2 with
            registers, eva02_*, beit_*), created with ``num_classes`` set to the number of classes.
        head_type: ``"conv"`` (the paper's 3x3 conv; the model's classifier is dropped) or ``"linear"`` (the
            model's own classifier applied per token; :meth:`strip` then returns a plain timm model that is pooled
            with ``global_pool="avg"``). The module built is ``self.head``.
        scm: the calibration module; ``"default"`` builds :class:`~scm_calib.calibration.SCM` with the paper's
            constants, ``None`` trains without calibration (the TS-CAM baseline).
        attention_blocks: indices of the encoder blocks whose class attention is summed; None (default) uses all,
            as the paper (not the blocks of SCM, ``scm.blocks``).
        capture_mode: ``"auto"``, ``"rows"`` or ``"probs"`` (see :mod:`scm_calib.capture`); the hooks that record
            the attention are ``self.capture``.
        eps: the epsilon of the attention min-max normalisation.

    The keywords ``head``, ``blocks`` and ``capture`` (the names of 0.1) still work for one release and warn.

    The conv head is built on the model's device and in its floating-point dtype, and ``scm`` is moved to the
    model's device, so a model already on a GPU is wrapped in one line; ``adapter.to(...)`` moves all of it.

    The adapter takes ``model`` over instead of copying it (a copy of a large model would double its memory):
    it becomes ``adapter.encoder``, with its classifier reset (``head_type="conv"``), hooks registered and fused
    attention switched off where probabilities are read. Use the adapter, not ``model``, from then on; wrapping
    the same model a second time raises. A wrap that raises leaves ``model`` unchanged. :meth:`strip` returns
    an unwrapped copy.

    Raises:
        UnsupportedModelError: the model has no class token, windowed or channel attention, or is no ViT.
        ValueError: a bad argument (the message says which and what to pass), or ``model`` already wrapped.
    """

    @renamed_keywords(head="head_type", blocks="attention_blocks", capture="capture_mode")
    def __init__(
        self,
        model: nn.Module,
        head_type: str = "conv",
        scm: nn.Module | str | None = _DEFAULT,
        attention_blocks: list[int] | None = None,
        capture_mode: str = "auto",
        eps: float = 1e-8,
    ):
        super().__init__()
        if getattr(model, _OWNED, False):
            raise ValueError(
                f"{type(model).__name__} is already wrapped by an SCMAdapter, which owns its classifier and hooks. "
                "Use that adapter, or wrap a fresh model from timm.create_model (adapter.strip() gives an unwrapped "
                "copy)."
            )
        attentions = check_supported(model)
        num_classes = getattr(model, "num_classes", 0)
        if not num_classes:
            raise ValueError(
                f"{type(model).__name__} has num_classes={num_classes}; SCM needs a class-score map per class. "
                "Create the model with num_classes=<your number of classes>."
            )
        if head_type == "linear":
            _check_linear_head(model)
        elif head_type != "conv":
            raise ValueError(f"head_type must be 'conv' or 'linear', got {head_type!r}.")
        if isinstance(scm, str) and scm == _DEFAULT:
            scm = SCM()
        elif scm is not None and not isinstance(scm, nn.Module):
            raise ValueError(f"scm must be an nn.Module instance, None or 'default', got {scm!r}.")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a positive finite number, got {eps!r}.")
        self.capture = AttentionCapture(attentions, attention_blocks, capture_mode)
        placement = _placement(model)
        if head_type == "conv":
            model.reset_classifier(0)
            self.head: nn.Module = ConvHead(model.embed_dim, num_classes).to(**placement)
        else:
            self.head = LinearHead(model.head)
        if scm is not None:
            scm.to(device=placement.get("device"))  # SCM computes in float32 whatever the model's dtype
        setattr(model, _OWNED, True)
        self.encoder = model
        self.scm = scm
        self.head_type = head_type
        self.num_classes = num_classes
        self.embed_dim = model.embed_dim
        self.num_prefix_tokens = model.num_prefix_tokens
        self.eps = eps

    @contextmanager
    def calibration_disabled(self, disabled: bool = True) -> Iterator[None]:
        """Runs the adapter without its SCM inside the block (its parameters stay, unused), e.g. to warm up an
        encoder trained from scratch before calibration starts, as the paper starts from a pretrained one.

        Under DistributedDataParallel the SCM parameters get no gradient in the block: build DDP with
        ``find_unused_parameters=True``.

        Args:
            disabled: False leaves SCM on (a no-op block), so a schedule reads ``calibration_disabled(epoch < k)``.

        Example:
            >>> import timm
            >>> encoder = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3)
            >>> adapter = SCMAdapter(encoder)
            >>> with adapter.calibration_disabled():
            ...     logits = adapter(torch.rand(2, 3, 32, 32)).logits  # the raw class-score maps' average
            >>> adapter.scm is not None  # switched back on when the block ends
            True
        """
        scm = self.scm
        if disabled:
            self.scm = None
        try:
            yield
        finally:
            self.scm = scm

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing of the encoder blocks (timm's non-reentrant checkpoint keeps attention grads)."""
        self.encoder.set_grad_checkpointing(enable)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter groups (for layer-wise lr decay): the encoder's groups, then the head and SCM last."""
        return _encoder_group_matcher(self.encoder, coarse)

    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay: the encoder's (timm) and SCM's scalars."""
        names = _encoder_no_weight_decay(self.encoder)
        if self.scm is not None:
            names |= {f"scm.{n}" for n, _ in self.scm.named_parameters()}
        return names

    def forward(self, x: torch.Tensor) -> SCMOutput:
        """Runs the encoder, the semantic head, the attention capture and (training) SCM.

        Args:
            x: (B, 3, H, W) images of a size the encoder accepts.

        Returns:
            An :class:`SCMOutput`; shapes use the patch grid (h, w) of this input.
        """
        if x.ndim != 4:
            raise ValueError(f"SCMAdapter expects images of shape (B, 3, H, W), got {tuple(x.shape)}.")
        grid = grid_size(self.encoder, (x.shape[-2], x.shape[-1]))
        with self.capture.recording() as rows:
            tokens = self.encoder.forward_features(x)
        self._check_rows(rows)
        semantic = self.head(patch_tokens(self.encoder, tokens, grid))
        attention = normalize_attention(class_attention(rows, self.num_prefix_tokens, grid), self.eps)
        maps = attention[:, None] * semantic.float()
        if self.training and self.scm is not None:
            calibrated, calibrated_attention = self.scm(semantic, attention)
            return SCMOutput(calibrated.mean(dim=(2, 3)), maps, attention, semantic, calibrated, calibrated_attention)
        return SCMOutput(semantic.float().mean(dim=(2, 3)), maps, attention, semantic)

    def _check_rows(self, rows: list[torch.Tensor]) -> None:
        expected = len(self.capture.block_indices)
        if len(rows) != expected:
            raise RuntimeError(
                f"captured class attention of {len(rows)} blocks, expected {expected}. The encoder's attention "
                "modules did not run their hooked submodules; was the encoder's forward replaced after wrapping?"
            )
        needs_grad = self.training and torch.is_grad_enabled() and self.scm is not None
        if needs_grad and not rows[0].requires_grad and any(p.requires_grad for p in self.encoder.parameters()):
            raise RuntimeError(
                "the captured attention carries no gradient, so SCM's loss cannot reach the encoder's attention. "
                "This happens with re-entrant gradient checkpointing: use timm's default non-reentrant "
                "checkpointing (unset TIMM_REENTRANT_CKPT or call timm.layers.set_reentrant_ckpt(False))."
            )

    def strip(self) -> nn.Module:
        """Returns a copy of the bare encoder for inference: no SCM parameter, no hook, fused attention back.

        Returns:
            With ``head_type="linear"``: the timm model itself, pooled with ``global_pool="avg"``; its state_dict loads
            strictly into ``timm.create_model(name, num_classes=C, global_pool="avg", fc_norm=False)`` and gives
            the same logits. With ``head_type="conv"``: a :class:`StrippedViT` (timm encoder + 3x3 conv head).
        """
        encoder, head, capture = copy.deepcopy((self.encoder, self.head, self.capture))
        capture.remove()
        delattr(encoder, _OWNED)
        if self.head_type == "linear":
            encoder.global_pool = "avg"
            return encoder
        return StrippedViT(encoder, head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, T, D) the encoder's final normed tokens, prefix tokens first (timm's).

        No attention is recorded: :meth:`forward` is the pass that feeds SCM.
        """
        return self.encoder.forward_features(x)

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False, grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """(B, T, D) tokens of :meth:`forward_features` -> (B, C) logits of the raw semantic maps.

        These are the eval-mode logits of :meth:`forward`; SCM is not applied, since it needs the attention that
        only :meth:`forward` captures (train with :meth:`forward`).

        Args:
            x: the tokens.
            pre_logits: return the (B, D) average of the patch tokens instead (timm's pooled features; with the
                linear head, the input of the classifier).
            grid: the patch grid (h, w) of the images the tokens came from; None: the encoder's grid at the image
                size it was created for.
        """
        tokens = _token_map(self.encoder, x, grid)
        return tokens.mean(dim=(2, 3)) if pre_logits else self.head(tokens).float().mean(dim=(2, 3))


def _token_map(encoder: nn.Module, tokens: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
    """(B, T, D) tokens -> (B, D, h, w) patch tokens on ``grid`` (None: the encoder's grid at its image size)."""
    if grid is None:
        grid = tuple(encoder.patch_embed.grid_size)
        patches = tokens.shape[1] - encoder.num_prefix_tokens
        if patches != grid[0] * grid[1]:
            raise ValueError(
                f"the tokens hold {patches} patches, not the {grid[0]} x {grid[1]} grid of the encoder's image size; "
                "pass grid=(h, w), the patch grid of the images they came from."
            )
    return patch_tokens(encoder, tokens, grid)


def _encoder_group_matcher(encoder: nn.Module, coarse: bool) -> dict[str, Any]:
    """The timm encoder's parameter groups under the ``encoder.`` prefix; other parameters fall in the last group."""

    def prefixed(pattern: str) -> str:
        return rf"^encoder\.(?:{pattern.removeprefix('^')})"

    groups: dict[str, Any] = {}
    for name, spec in encoder.group_matcher(coarse).items():
        if isinstance(spec, (list, tuple)):
            groups[name] = [(prefixed(pattern), suffix) for pattern, suffix in spec]
        else:
            groups[name] = prefixed(spec)
    return groups


def _encoder_no_weight_decay(encoder: nn.Module) -> set[str]:
    """The timm encoder's parameters without weight decay, under the ``encoder.`` prefix."""
    return {f"encoder.{n}" for n in getattr(encoder, "no_weight_decay", set)()}


def _placement(model: nn.Module) -> dict[str, Any]:
    """``device`` and floating-point ``dtype`` of the model's parameters, for the modules built beside it."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return {"device": parameter.device, "dtype": parameter.dtype}
    return {}


def _check_linear_head(model: nn.Module) -> None:
    name = type(model).__name__
    if getattr(model, "head_dist", None) is not None:
        raise ValueError(f"{name} is distilled (two classifiers, no average pooling); use head_type='conv'.")
    if not isinstance(getattr(model, "head", None), nn.Linear) or not hasattr(model, "global_pool"):
        raise ValueError(f"{name} has no linear classifier with a `global_pool` setting; use head_type='conv'.")
    fc_norm = getattr(model, "fc_norm", None)
    if fc_norm is not None and not isinstance(fc_norm, nn.Identity):
        raise ValueError(
            f"{name} normalises after pooling (fc_norm), so per-token scores do not average to its logits. Create it "
            "with fc_norm=False (timm vit_*: global_pool='avg', fc_norm=False), or use head_type='conv'."
        )
