"""Semantic heads: patch tokens (B, D, h, w) -> class-score maps S (B, C, h, w).

TS-CAM and SCM (Bai et al., ECCV 2022) use a 3x3 convolution over the token grid; a per-token
linear layer is the same idea, and with it the average-pooled logits equal those of a timm ViT built
with ``global_pool="avg", fc_norm=False``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvHead", "LinearHead"]


class ConvHead(nn.Module):
    """The paper's semantic head: a 3x3 convolution ``embed_dim -> num_classes`` with padding 1.

    Args:
        embed_dim: token width D.
        num_classes: number of classes C.
    """

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(embed_dim, num_classes, kernel_size=3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, C, h, w)."""
        return self.conv(tokens)


class LinearHead(nn.Module):
    """A per-token linear head that reuses a timm model's classifier ``nn.Linear(D, C)``.

    Args:
        linear: the classifier (usually ``model.head``); it stays shared with the model.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, C, h, w)."""
        return torch.einsum("bdhw,cd->bchw", tokens, self.linear.weight) + self.linear.bias[:, None, None]
