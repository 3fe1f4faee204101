"""Decoder: content codes + speaker embedding -> mel, through AdaIN layers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vckit.config import DecoderConfig, StreamConfig
from vckit.models.layers import CausalConv1d, call, make_norm


class AdaIN(nn.Module):
    """Adaptive instance norm: normalise each channel over time, then give it
    the scale and bias predicted from the speaker embedding.

    x: (batch, channels, frames), spk: (batch, spk_dim) -> (batch, channels, frames)
    The output's per-channel mean is ``bias`` and its std is ``|scale|``.
    """

    def __init__(self, channels: int, spk_dim: int, norm: str = "instance", prior_frames: int = 16):
        super().__init__()
        self.norm = make_norm(norm, channels, prior_frames)
        self.affine = nn.Linear(spk_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        with torch.no_grad():
            self.affine.bias.zero_()
            self.affine.bias[:channels] = 1.0

    def scale_bias(self, spk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, bias = self.affine(spk).chunk(2, dim=1)
        return scale, bias

    def forward(self, x: torch.Tensor, spk: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        scale, bias = self.scale_bias(spk)
        return call(self.norm, x, state) * scale[..., None] + bias[..., None]


class DecoderBlock(nn.Module):
    """conv -> AdaIN -> act -> (upsample) conv -> AdaIN -> act, plus a skip."""

    def __init__(self, channels: int, kernel_size: int, spk_dim: int, upsample: int = 1, causal: bool = False, prior_frames: int = 16):
        super().__init__()
        pad = kernel_size // 2
        self.upsample = upsample
        if causal:
            self.conv1: nn.Conv1d = CausalConv1d(channels, channels, kernel_size)
            self.conv2: nn.Conv1d = CausalConv1d(channels, channels, kernel_size)
        else:
            self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=pad)
            self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=pad)
        norm = "causal" if causal else "instance"
        self.ada1 = AdaIN(channels, spk_dim, norm, prior_frames)
        self.ada2 = AdaIN(channels, spk_dim, norm, prior_frames)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, spk: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        h = self.act(self.ada1(call(self.conv1, x, state), spk, state))
        if self.upsample > 1:
            h = F.interpolate(h, scale_factor=self.upsample, mode="nearest")
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
        h = self.act(self.ada2(call(self.conv2, h, state), spk, state))
        return h + x


class Decoder(nn.Module):
    """codes: (batch, content_dim, frames'), spk: (batch, spk_dim)
    -> mel: (batch, n_mels, frames' * hop), normalised units.

    ``upsample`` mirrors the content encoder's strides (in reverse). With
    ``f0_channels`` > 0, ``f0`` (batch, f0_channels, frames' * hop) enters
    twice: average-pooled to the codes' rate at the input, and at full rate
    before the last block, so harmonics follow the contour frame by frame.
    With ``harmonic_channels`` > 0, ``f0`` has that many more channels after its own
    ``f0_channels``: a harmonic prior (a log-mel comb), which enters the same two ways
    through layers of its own that start at zero: a decoder warm-started
    without it begins exactly where it was.
    """

    def __init__(
        self,
        content_dim: int,
        spk_dim: int,
        n_mels: int,
        cfg: DecoderConfig,
        upsample: tuple[int, ...],
        f0_channels: int = 0,
        stream: StreamConfig | None = None,
        harmonic_channels: int = 0,
    ):
        super().__init__()
        self.cfg = cfg
        ups = list(reversed(upsample))
        ups = ups + [1] * (cfg.blocks - len(ups)) if len(ups) < cfg.blocks else ups
        if len(ups) > cfg.blocks:  # fold extra strides into the first blocks
            ups = [math.prod(ups[: len(ups) - cfg.blocks + 1])] + ups[len(ups) - cfg.blocks + 1 :]
        self.hop = math.prod(ups)
        # the first block whose input is at the full frame rate (len(ups): after the last block)
        self.full_rate_at = next((i for i in range(len(ups)) if math.prod(ups[i:]) == 1), len(ups))
        self.inp = nn.Conv1d(content_dim, cfg.channels, 1)
        causal, prior = (stream.causal, stream.norm_prior_frames) if stream is not None else (False, 16)
        self.blocks = nn.ModuleList(DecoderBlock(cfg.channels, cfg.kernel_size, spk_dim, u, causal, prior) for u in ups)
        self.out = nn.Conv1d(cfg.channels, n_mels, 1)
        if f0_channels:
            self.f0_in = nn.Conv1d(f0_channels, cfg.channels, 1)
            self.f0_late = nn.Conv1d(f0_channels, cfg.channels, 1)
            nn.init.zeros_(self.f0_late.weight)
            nn.init.zeros_(self.f0_late.bias)
        self.harmonic_channels = harmonic_channels
        if harmonic_channels:
            self.harm_in = nn.Conv1d(harmonic_channels, cfg.channels, 1)
            self.harm_late = nn.Conv1d(harmonic_channels, cfg.channels, 1)
            for conv in (self.harm_in, self.harm_late):
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)

    def forward(self, codes: torch.Tensor, spk: torch.Tensor, f0: torch.Tensor | None = None, state: dict | None = None) -> torch.Tensor:
        x = self.inp(codes)
        full = None
        if f0 is not None:
            n = codes.shape[-1] * self.hop
            full = F.pad(f0, (0, n - f0.shape[-1]), mode="replicate") if f0.shape[-1] < n else f0[..., :n]
            x = x + self._f0_term(F.avg_pool1d(full, self.hop) if self.hop > 1 else full, late=False)
        for i, blk in enumerate(self.blocks):
            if full is not None and i == self.full_rate_at:
                x = x + self._f0_term(full, late=True)
            x = blk(x, spk, state)
        if full is not None and self.full_rate_at == len(self.blocks):
            x = x + self._f0_term(full, late=True)
        return self.out(x)

    def _f0_term(self, f0: torch.Tensor, *, late: bool) -> torch.Tensor:
        """The F0 features through the input (``late=False``) or the full-rate layer, the harmonic prior through its own."""
        conv = self.f0_late if late else self.f0_in
        if not self.harmonic_channels:
            return conv(f0)
        k = f0.shape[1] - self.harmonic_channels
        return conv(f0[:, :k]) + (self.harm_late if late else self.harm_in)(f0[:, k:])
