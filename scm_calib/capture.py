"""How class-token attention and patch tokens leave a timm Vision Transformer.

SCM (Bai et al., "Weakly Supervised Object Localization via Transformer with Implicit Spatial
Calibration", ECCV 2022) needs, for every block, the attention that the class token pays to each
patch token (softmax probabilities before dropout, averaged over heads), and the final normed patch
tokens. timm's source is never edited: forward hooks on submodules record what is needed.

Two capture paths, chosen per attention module:

* ``"rows"`` (timm's plain :class:`timm.layers.Attention`: vit_*, deit_*, deit3_*, dinov2 with
  registers): hooks on ``q_norm`` and ``k_norm`` record the post-norm queries and keys; only the
  class-token row ``softmax(q_cls k^T * scale)`` is computed (B x heads x T). The block output keeps
  coming from fused attention, so no T x T attention matrix is ever stored.
* ``"probs"`` (any other attention with ``fused_attn`` and ``attn_drop``: eva02_*, beit_*,
  rope variants): fused attention is switched off for the module and a pre-hook on ``attn_drop``
  reads the probabilities; the class-token row is kept.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import torch
from einops import rearrange
from timm.layers import Attention
from torch import nn

from ._renamed import renamed_keywords
from .calibration import minmax

__all__ = [
    "AttentionCapture",
    "UnsupportedModelError",
    "check_supported",
    "class_attention",
    "grid_size",
    "normalize_attention",
    "patch_tokens",
]

# Attention modules that have a class token in the token sequence but do not compute token-to-token
# attention over the whole image: their "attention" cannot serve as a localization prior.
_UNSUPPORTED_ATTENTION = {
    "XCA": "its attention is channel (cross-covariance) attention, not attention between tokens",
    "WindowAttention": "its attention is windowed (local), so the class token attends to no patch",
    "ClassAttn": "only its last blocks see the class token (class attention)",
}


class UnsupportedModelError(TypeError):
    """Raised at wrap time for a model whose structure SCM cannot use."""


def _name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    return f"{type(model).__name__} ({arch})" if arch else type(model).__name__


def check_supported(model: nn.Module) -> list[nn.Module]:
    """Checks that ``model`` is a timm ViT with a global class token and returns its blocks' attention.

    Args:
        model: a timm model.

    Returns:
        The attention module of each block, in order.

    Raises:
        UnsupportedModelError: naming the model and the reason.
    """
    name = _name(model)
    for module in model.modules():
        reason = _UNSUPPORTED_ATTENTION.get(type(module).__name__)
        if reason is not None:
            raise UnsupportedModelError(f"SCMAdapter cannot wrap {name}: {reason}. Use a ViT with global attention.")
    blocks = getattr(model, "blocks", None)
    patch_embed = getattr(model, "patch_embed", None)
    if blocks is None or patch_embed is None or not hasattr(patch_embed, "patch_size"):
        raise UnsupportedModelError(
            f"SCMAdapter cannot wrap {name}: it is not a plain Vision Transformer (no `blocks` and `patch_embed`). "
            "Use a timm ViT family such as vit_*, deit_*, deit3_*, eva02_*, beit_* or a dinov2 model."
        )
    if getattr(model, "cls_token", None) is None:
        raise UnsupportedModelError(
            f"SCMAdapter cannot wrap {name}: it has no class token, and SCM reads the class token's attention. "
            "Create the model with a class token (timm: class_token=True, e.g. global_pool='token' or 'avg')."
        )
    attentions = []
    for i, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if attn is None or not (
            isinstance(attn, Attention) or (hasattr(attn, "fused_attn") and isinstance(attn.attn_drop, nn.Dropout))
        ):
            raise UnsupportedModelError(
                f"SCMAdapter cannot wrap {name}: block {i} has no timm attention module with `fused_attn` and "
                f"`attn_drop` (found {type(attn).__name__}), so its attention probabilities cannot be read."
            )
        attentions.append(attn)
    return attentions


def grid_size(model: nn.Module, image_size: tuple[int, int]) -> tuple[int, int]:
    """The patch grid (h, w) that ``model`` produces for an input of ``image_size`` (H, W).

    Raises:
        ValueError: ``image_size`` is not a multiple of the patch size and the model does not pad
            (``dynamic_img_pad``): the encoder would drop the last pixels and the maps would be stretched over
            them.
    """
    patch_embed = model.patch_embed
    ph, pw = patch_embed.patch_size
    height, width = image_size
    if (height % ph or width % pw) and not getattr(patch_embed, "dynamic_img_pad", False):
        raise ValueError(
            f"image size {height} x {width} is not a multiple of the patch size {ph} x {pw}: {_name(model)} would "
            f"ignore the last {height % ph} rows and {width % pw} columns of pixels and the maps would be stretched "
            f"over them. Resize or crop the images to a multiple of the patch size, or create the model with "
            "dynamic_img_pad=True."
        )
    if hasattr(patch_embed, "dynamic_feat_size"):
        return tuple(patch_embed.dynamic_feat_size(image_size))
    return height // ph, width // pw


def patch_tokens(model: nn.Module, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Final patch tokens as a map.

    Args:
        model: the timm ViT whose ``forward_features`` produced ``tokens``.
        tokens: (B, T, D) output of ``forward_features`` (prefix tokens first).
        grid: the patch grid (h, w).

    Returns:
        (B, D, h, w) normed patch tokens.
    """
    prefix = model.num_prefix_tokens
    h, w = grid
    if tokens.shape[1] - prefix != h * w:
        raise ValueError(
            f"{_name(model)} returned {tokens.shape[1] - prefix} patch tokens, but the patch grid for this input is "
            f"{h} x {w} = {h * w}. Give the model inputs of the size it was created for, or create it with "
            "dynamic_img_size=True."
        )
    fc_norm = getattr(model, "fc_norm", None)
    patches = tokens[:, prefix:]
    if fc_norm is not None and not isinstance(fc_norm, nn.Identity):
        patches = fc_norm(patches)
    return rearrange(patches, "b (h w) d -> b d h w", h=h, w=w)


class AttentionCapture:
    """Records the class-token attention row of chosen blocks while a model runs.

    The hooks stay registered, and only record inside :meth:`recording`: a gradient-checkpointing
    recompute in the backward pass records nothing. The object holds no parameters and survives
    ``copy.deepcopy`` together with the model it hooks.

    Args:
        attentions: the attention module of every block (from :func:`check_supported`).
        attention_blocks: indices of the blocks to read (negative allowed); None reads all blocks.
        capture_mode: ``"auto"`` (rows where possible), ``"rows"`` or ``"probs"``.

    The keywords ``blocks`` and ``mode`` (the names of 0.1) still work for one release and warn.
    """

    @renamed_keywords(blocks="attention_blocks", mode="capture_mode")
    def __init__(
        self,
        attentions: Sequence[nn.Module],
        attention_blocks: Sequence[int] | None = None,
        capture_mode: str = "auto",
    ):
        if capture_mode not in ("auto", "rows", "probs"):
            raise ValueError(f"capture_mode must be 'auto', 'rows' or 'probs', got {capture_mode!r}.")
        depth = len(attentions)
        indices = list(range(depth)) if attention_blocks is None else list(attention_blocks)
        if not indices or any(not -depth <= i < depth for i in indices):
            raise ValueError(
                f"attention_blocks must be indices into the model's {depth} blocks, got {attention_blocks!r}."
            )
        self.block_indices = sorted({i % depth for i in indices})
        for i in self.block_indices:
            if capture_mode == "rows" and type(attentions[i]) is not Attention:
                raise ValueError(
                    f"block {i} uses {type(attentions[i]).__name__}, which the 'rows' capture does not support; "
                    "use capture_mode='auto' or 'probs'."
                )
        self.modes: list[str] = []
        self._handles: list[tuple[nn.Module, int, str]] = []
        self._fused: list[tuple[nn.Module, bool]] = []
        self._rows: list[torch.Tensor] = []
        self._queries: list[torch.Tensor | None] = [None]
        self._active = False
        for i in self.block_indices:
            attn = attentions[i]
            use_rows = capture_mode != "probs" and type(attn) is Attention
            self.modes.append("rows" if use_rows else "probs")
            if use_rows:
                self._hook(attn.q_norm, attn.q_norm.register_forward_hook(self._on_query), "fwd")
                on_key = functools.partial(self._on_key, attn.scale)
                self._hook(attn.k_norm, attn.k_norm.register_forward_hook(on_key), "fwd")
            else:
                self._fused.append((attn, bool(attn.fused_attn)))
                attn.fused_attn = False
                self._hook(attn.attn_drop, attn.attn_drop.register_forward_pre_hook(self._on_probs), "pre")

    def _hook(self, module: nn.Module, handle: torch.utils.hooks.RemovableHandle, kind: str) -> None:
        self._handles.append((module, handle.id, kind))

    # The hooks compute the same tensors whether or not they record: a non-reentrant gradient checkpoint
    # recomputes the block in the backward pass and requires the same saved tensors as the forward.
    def _on_query(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._queries[0] = output[:, :, 0]

    def _on_key(self, scale: float, module: nn.Module, args: tuple, keys: torch.Tensor) -> None:
        query = self._queries[0]
        self._queries[0] = None
        row = (torch.einsum("bhd,bhtd->bht", query.float(), keys.float()) * scale).softmax(dim=-1)
        if self._active:
            self._rows.append(row)

    def _on_probs(self, module: nn.Module, args: tuple) -> None:
        row = args[0][:, :, 0].float()
        if self._active:
            self._rows.append(row)

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[torch.Tensor]]:
        """Records the rows of one forward pass into the yielded list ((B, heads, T) per block)."""
        rows: list[torch.Tensor] = []
        self._rows = rows
        self._active = True
        try:
            yield rows
        finally:
            self._active = False
            self._rows = []
            self._queries[0] = None

    def remove(self) -> None:
        """Removes every hook and restores fused attention where it was switched off."""
        for module, handle_id, kind in self._handles:
            hooks = module._forward_hooks if kind == "fwd" else module._forward_pre_hooks
            hooks.pop(handle_id, None)
        for attn, fused in self._fused:
            attn.fused_attn = fused
        self._handles, self._fused = [], []


def class_attention(rows: Sequence[torch.Tensor], num_prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """Sums head-averaged class-token attention to the patches over blocks.

    Args:
        rows: one (B, heads, T) class-token attention row per block.
        num_prefix_tokens: class, distillation and register tokens before the patches.
        grid: the patch grid (h, w).

    Returns:
        (B, h, w) raw sum over blocks (TS-CAM's map, before min-max).
    """
    total = torch.stack([row[:, :, num_prefix_tokens:].mean(dim=1) for row in rows]).sum(dim=0)
    return rearrange(total, "b (h w) -> b h w", h=grid[0], w=grid[1])


def normalize_attention(raw: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B, h, w) raw class attention -> min-max normalised per image.

    Non-finite attention (NaN or infinite input images or weights) raises on the CPU, where the check costs no
    host synchronisation; elsewhere it stays non-finite, like the logits, and is never replaced by zeros.

    Raises:
        ValueError: ``raw`` is on the CPU and not finite; the message names the images.
    """
    if raw.device.type == "cpu":
        finite = torch.isfinite(raw.flatten(1)).all(dim=1)
        if not finite.all():
            images = (~finite).nonzero().flatten().tolist()
            raise ValueError(
                f"the class-token attention of image(s) {images[:10]} is NaN or infinite: check those input images "
                "and the encoder's weights for NaN or infinite values."
            )
    return minmax(raw, eps)
