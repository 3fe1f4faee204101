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


class ConvBlock(nn.Module):
    """Residual block: conv -> norm -> act -> conv(stride) -> norm -> act.

    ``norm`` is ``"instance"`` (affine-free instance norm, strips per-utterance
    statistics) or ``"none"``. The skip path is average-pooled by ``stride``.

    x: (batch, channels, frames) -> (batch, channels, frames // stride)
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, norm: str = "instance", dropout: float = 0.0):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=pad)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=pad, stride=stride)
        self.stride = stride
        if norm == "instance":
            self.norm1: nn.Module = nn.InstanceNorm1d(channels, affine=False)
            self.norm2: nn.Module = nn.InstanceNorm1d(channels, affine=False)
        elif norm == "none":
            self.norm1 = self.norm2 = nn.Identity()
        else:
            raise ValueError(f"unknown norm {norm!r}")
        self.act = nn.LeakyReLU(0.2)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.act(self.norm1(self.conv1(x))))
        h = self.act(self.norm2(self.conv2(h)))
        skip = F.avg_pool1d(x, self.stride, ceil_mode=True) if self.stride > 1 else x
        return h + skip[..., : h.shape[-1]]
