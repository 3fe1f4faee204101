"""Phonetic distillation head: content codes -> the teacher's frame posteriors (training only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vckit.config import PhoneticHeadConfig


class PhoneticHead(nn.Module):
    """Predicts the phonetic teacher's posteriors from the content codes.

    codes: (batch, content_dim, frames') -> logits: (batch, classes, frames' * hop)
    Kept small (two convolutions), so the phonetic knowledge has to live in
    the codes the decoder reads, not in the head.
    """

    def __init__(self, content_dim: int, hop: int, cfg: PhoneticHeadConfig):
        super().__init__()
        self.hop = hop
        self.net = nn.Sequential(
            nn.Conv1d(content_dim, cfg.channels, 5, padding=2),
            nn.LeakyReLU(0.2),
            nn.Conv1d(cfg.channels, cfg.classes, 1),
        )

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        logits = self.net(codes)
        return F.interpolate(logits, scale_factor=self.hop, mode="nearest") if self.hop > 1 else logits


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy to a soft target. logits: (B, C, T); target: (B, T, C) probabilities; mask: (B, T)."""
    t = min(logits.shape[-1], target.shape[1])
    logp = F.log_softmax(logits[..., :t].float(), dim=1).transpose(1, 2)  # (B, T, C)
    ce = -(target[:, :t] * logp).sum(-1)
    if mask is None:
        return ce.mean()
    m = mask[:, :t].float()
    return (ce * m).sum() / m.sum().clamp(min=1)
