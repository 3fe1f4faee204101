"""Discriminators and losses for training the fast vocoder.

* Multi-period discriminator (HiFi-GAN, Kong et al. 2020): the waveform is
  folded into a 2-D ``(samples / p, p)`` grid for each period ``p`` and judged
  by strided ``(k, 1)`` convolutions, so each sub-discriminator sees one
  phase of a periodic structure.
* Multi-resolution discriminator (UnivNet, Jang et al. 2021; used by Vocos):
  2-D convolutions over the linear magnitude spectrogram at several STFT
  resolutions, strided along frequency.
* Their losses (adversarial, feature matching, the multi-resolution log-mel
  L1) are in :mod:`vckit.training.losses`, with the mel discriminator's.

Every sub-discriminator returns ``(logits, features)``: ``logits`` is
``(batch, n)`` (one score per time-frequency patch) and ``features`` the list
of hidden activations used for feature matching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from vckit.config import Range, Size
from vckit.errors import ConfigError

LRELU_SLOPE = 0.1

Output = tuple[torch.Tensor, list[torch.Tensor]]  # (logits (batch, n), hidden activations)


@dataclass(frozen=True)
class WaveDiscriminatorConfig:
    periods: tuple[Annotated[int, Range(2)], ...] = (2, 3, 5, 7, 11)
    period_channels: tuple[Size, ...] = (32, 128, 512, 1024, 1024)  # HiFi-GAN's MPD widths
    resolutions: tuple[tuple[Size, Size, Size], ...] = ((2048, 512, 2048), (1024, 256, 1024), (512, 128, 512))  # n_fft, hop, win
    resolution_channels: Size = 32

    def __post_init__(self) -> None:
        if not self.periods and not self.resolutions:
            raise ConfigError("discriminator: give at least one period or one resolution")
        if any(p < 2 for p in self.periods):
            raise ConfigError(f"discriminator.periods must be >= 2, got {list(self.periods)}")
        if len(self.period_channels) < 2:
            raise ConfigError("discriminator.period_channels needs at least 2 widths")
        for n_fft, hop, win in self.resolutions:
            if not 0 < hop <= win <= n_fft:
                raise ConfigError(f"discriminator.resolutions: need 0 < hop <= win <= n_fft, got {[n_fft, hop, win]}")


class PeriodDiscriminator(nn.Module):
    """Judges ``wav: (batch, samples)`` folded into ``(batch, 1, samples / period, period)``."""

    def __init__(self, period: int, channels: tuple[int, ...], kernel_size: int = 5, stride: int = 3):
        super().__init__()
        self.period = period
        pad = (kernel_size - 1) // 2
        layers, cin = [], 1
        for i, cout in enumerate(channels):
            s = stride if i < len(channels) - 1 else 1  # the last layer keeps the resolution
            layers.append(weight_norm(nn.Conv2d(cin, cout, (kernel_size, 1), (s, 1), padding=(pad, 0))))
            cin = cout
        self.convs = nn.ModuleList(layers)
        self.conv_post = weight_norm(nn.Conv2d(cin, 1, (3, 1), padding=(1, 0)))

    def forward(self, wav: torch.Tensor) -> Output:
        b, t = wav.shape
        if t % self.period:
            n = self.period - t % self.period
            wav = F.pad(wav[:, None], (0, n), mode="reflect")[:, 0]
            t += n
        x = wav.reshape(b, 1, t // self.period, self.period)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            feats.append(x)
        x = self.conv_post(x)
        feats.append(x)
        return x.flatten(1), feats


class ResolutionDiscriminator(nn.Module):
    """Judges the magnitude spectrogram ``(batch, 1, frames, n_fft // 2 + 1)`` of ``wav: (batch, samples)``."""

    def __init__(self, n_fft: int, hop: int, win: int, channels: int = 32):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(win), persistent=False)
        c = channels
        self.convs = nn.ModuleList(
            [
                weight_norm(nn.Conv2d(1, c, (3, 9), padding=(1, 4))),
                weight_norm(nn.Conv2d(c, c, (3, 9), (1, 2), padding=(1, 4))),
                weight_norm(nn.Conv2d(c, c, (3, 9), (1, 2), padding=(1, 4))),
                weight_norm(nn.Conv2d(c, c, (3, 9), (1, 2), padding=(1, 4))),
                weight_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1))),
            ]
        )
        self.conv_post = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> magnitude ``(batch, 1, frames, n_fft // 2 + 1)`` (float32)."""
        with torch.autocast(wav.device.type, enabled=False):
            spec = torch.stft(
                wav.float(), self.n_fft, self.hop, self.window.shape[0], self.window, center=True, return_complex=True
            )
        return spec.abs().transpose(1, 2)[:, None]

    def forward(self, wav: torch.Tensor) -> Output:
        x = self.spectrogram(wav)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            feats.append(x)
        x = self.conv_post(x)
        feats.append(x)
        return x.flatten(1), feats


class Discriminators(nn.Module):
    """All sub-discriminators: ``wav (batch, samples)`` -> one :data:`Output` per sub-discriminator.

    The first ``len(config.periods)`` outputs are the period discriminators',
    the rest the resolution discriminators'.
    """

    def __init__(self, config: WaveDiscriminatorConfig | None = None):
        super().__init__()
        self.config = c = config or WaveDiscriminatorConfig()
        self.mpd = nn.ModuleList(PeriodDiscriminator(p, c.period_channels) for p in c.periods)
        self.mrd = nn.ModuleList(ResolutionDiscriminator(*r, channels=c.resolution_channels) for r in c.resolutions)

    def forward(self, wav: torch.Tensor) -> list[Output]:
        return [d(wav) for d in self.mpd] + [d(wav) for d in self.mrd]

    def weights(self, mrd_weight: float) -> list[float]:
        """Loss weight of each output: 1 for period, ``mrd_weight`` for resolution discriminators."""
        return [1.0] * len(self.mpd) + [mrd_weight] * len(self.mrd)
