"""A patch discriminator on log-mels, against over-smoothed output (training only; its losses are in
:mod:`vckit.training.losses`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vckit.config import DiscriminatorConfig


class MelDiscriminator(nn.Module):
    """2-D convolutions over (mel bin, frame) patches; one score per patch.

    mel: (batch, n_mels, frames), normalised units -> (scores (batch, patches), features [per layer])
    Trained as a least-squares GAN; its intermediate features also give a
    feature-matching loss for the decoder.
    """

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        layers = []
        ch_in = 1
        for i in range(cfg.layers):
            ch = cfg.channels * min(2**i, 4)
            stride = (2, 2) if i < cfg.layers - 1 else (1, 1)
            layers.append(nn.Conv2d(ch_in, ch, (3, 3), stride, padding=1))
            ch_in = ch
        self.layers = nn.ModuleList(layers)
        self.out = nn.Conv2d(ch_in, 1, (3, 3), padding=1)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = mel[:, None]
        feats = []
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
            feats.append(x)
        return self.out(x).flatten(1), feats
