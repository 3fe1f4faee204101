"""Speaker encoder: a reference utterance of any length -> one embedding."""

from __future__ import annotations

import torch
from torch import nn

from vckit.config import SpeakerConfig
from vckit.models.layers import ConvBlock


class SpeakerEncoder(nn.Module):
    """Conv blocks, then mean and standard-deviation pooling over time.

    mel: (batch, n_mels, frames) -> embedding: (batch, dim)
    Frames must be at least 4 * 2 ** (blocks // 2) (about 0.2 s); ~1 s or more
    gives a stable embedding.
    """

    def __init__(self, n_mels: int, cfg: SpeakerConfig):
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Conv1d(n_mels, cfg.channels, 1)
        strides = [2 if i % 2 == 1 else 1 for i in range(cfg.blocks)]
        self.blocks = nn.ModuleList(ConvBlock(cfg.channels, cfg.kernel_size, s, "none") for s in strides)
        self.proj = nn.Sequential(nn.Linear(2 * cfg.channels, cfg.channels), nn.LeakyReLU(0.2), nn.Linear(cfg.channels, cfg.dim))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.inp(mel)
        for blk in self.blocks:
            x = blk(x)
        stats = torch.cat([x.mean(-1), x.float().std(-1, unbiased=False).type_as(x)], dim=1)
        return self.proj(stats)
