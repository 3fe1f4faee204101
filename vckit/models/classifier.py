"""Adversarial speaker classifier on the content codes (gradient reversal)."""

from __future__ import annotations

import torch
from torch import nn

from vckit.config import ClassifierConfig
from vckit.models.layers import ConvBlock


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:  # type: ignore[override]
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return -ctx.weight * grad, None


def grad_reverse(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by ``-weight`` backward."""
    return _GradReverse.apply(x, weight)


class SpeakerClassifier(nn.Module):
    """Names the training speaker from content codes.

    codes: (batch, content_dim, frames') -> logits: (batch, n_speakers)
    Trained to classify; through :func:`grad_reverse` the content encoder is
    trained to make it fail.
    """

    def __init__(self, content_dim: int, n_speakers: int, cfg: ClassifierConfig):
        super().__init__()
        self.inp = nn.Conv1d(content_dim, cfg.channels, 1)
        self.blocks = nn.Sequential(*[ConvBlock(cfg.channels, 3, 1, "none") for _ in range(cfg.blocks)])
        self.out = nn.Linear(cfg.channels, n_speakers)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.inp(codes))
        return self.out(h.mean(-1))
