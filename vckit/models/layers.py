"""Small building blocks shared by the encoders and the decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Right-pad ``x: (batch, channels, frames)`` along time to a multiple of ``multiple``.

    Uses replicate padding so instance statistics barely move.
    """
    extra = (-x.shape[-1]) % multiple
    if extra == 0:
        return x
    return F.pad(x, (0, extra), mode="replicate")


class CausalConv1d(nn.Conv1d):
    """A convolution that sees only the past: ``kernel - stride`` frames of left
    context, none on the right, so output ``i`` reads inputs up to
    ``(i + 1) * stride - 1``. Inputs are a multiple of ``stride`` frames.

    With ``state`` (a dict owned by one stream), the left context is the
    previous call's last frames instead of zeros: calling it block by block
    gives exactly what one call on the whole input gives.
    x: (batch, channels, frames) -> (batch, out, frames // stride)
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1):
        super().__init__(c_in, c_out, kernel_size, stride=stride)
        self.context = kernel_size - stride

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        if state is None:
            return super().forward(F.pad(x, (self.context, 0)))
        tail = state.get(self)
        if tail is None:
            tail = x.new_zeros(x.shape[0], x.shape[1], self.context)
        xp = torch.cat([tail, x], dim=-1)
        state[self] = xp[..., xp.shape[-1] - self.context :]
        return super().forward(xp)


class CausalNorm(nn.Module):
    """Instance norm over the frames so far: frame ``t`` is normalised by the
    mean and variance of frames ``0..t`` of its utterance, blended with a
    learned prior worth ``prior_frames`` frames (so the first frames of a
    stream are normalised sensibly). The prior is a running average of
    utterance statistics, kept like batch norm's running statistics.

    x: (batch, channels, frames) -> same shape. With ``state``, sums carry
    over between calls (float64), so blocks give what one call gives.
    """

    def __init__(self, channels: int, prior_frames: int = 16, eps: float = 1e-5, momentum: float = 0.01):
        super().__init__()
        self.prior_frames, self.eps, self.momentum = float(prior_frames), eps, momentum
        self.register_buffer("prior_mean", torch.zeros(channels))
        self.register_buffer("prior_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        if self.training and state is None:
            with torch.no_grad():
                xf = x.detach().float()
                self.prior_mean.lerp_(xf.mean(dim=(0, 2)).to(self.prior_mean.dtype), self.momentum)
                self.prior_var.lerp_(xf.var(dim=2).mean(0).to(self.prior_var.dtype), self.momentum)
        dt = torch.float32 if self.training or x.device.type == "mps" else torch.float64
        xd = x.to(dt)
        n0 = self.prior_frames
        pm, pv = self.prior_mean.to(dt)[None, :, None], self.prior_var.to(dt)[None, :, None]
        s1, s2 = xd.cumsum(-1), (xd * xd).cumsum(-1)
        count = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=dt)
        if state is not None:
            c0, a, b = state.get(self, (0.0, 0.0, 0.0))
            s1, s2, count = s1 + a, s2 + b, count + c0
            state[self] = (float(count[-1]), s1[..., -1:], s2[..., -1:])
        total = count + n0
        mean = (s1 + n0 * pm) / total
        var = ((s2 + n0 * (pv + pm * pm)) / total - mean * mean).clamp(min=0.0)
        return ((xd - mean) / torch.sqrt(var + self.eps)).to(x.dtype)


def make_norm(kind: str, channels: int, prior_frames: int = 16) -> nn.Module:
    """``instance`` (affine-free), ``causal`` (:class:`CausalNorm`) or ``none``."""
    if kind == "instance":
        return nn.InstanceNorm1d(channels, affine=False)
    if kind == "causal":
        return CausalNorm(channels, prior_frames)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


def call(module: nn.Module, x: torch.Tensor, state: dict | None) -> torch.Tensor:
    """``module(x, state)`` for the causal layers that keep stream state, ``module(x)`` otherwise."""
    return module(x, state) if isinstance(module, (CausalConv1d, CausalNorm)) else module(x)


class ConvBlock(nn.Module):
    """Residual block: conv -> norm -> act -> conv(stride) -> norm -> act.

    ``norm`` is ``"instance"`` (affine-free instance norm, strips per-utterance
    statistics), ``"causal"`` (causal convolutions and running norms, for
    streaming) or ``"none"``. The skip path is average-pooled by ``stride``.

    x: (batch, channels, frames) -> (batch, channels, frames // stride)
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, norm: str = "instance", dropout: float = 0.0, prior_frames: int = 16):
        super().__init__()
        pad = kernel_size // 2
        if norm == "causal":
            self.conv1: nn.Conv1d = CausalConv1d(channels, channels, kernel_size)
            self.conv2: nn.Conv1d = CausalConv1d(channels, channels, kernel_size, stride)
        else:
            self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=pad)
            self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=pad, stride=stride)
        self.stride = stride
        self.norm1 = make_norm(norm, channels, prior_frames)
        self.norm2 = make_norm(norm, channels, prior_frames)
        self.act = nn.LeakyReLU(0.2)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        h = self.drop(self.act(call(self.norm1, call(self.conv1, x, state), state)))
        h = self.act(call(self.norm2, call(self.conv2, h, state), state))
        skip = F.avg_pool1d(x, self.stride, ceil_mode=True) if self.stride > 1 else x
        return h + skip[..., : h.shape[-1]]
