"""A phone student: normalised log-mels -> the phonetic teacher's frame posteriors.

The teacher (:mod:`vckit.models.teacher`, hama's CTC phoneme recogniser)
hears waveforms through ONNX Runtime, so no gradient reaches the audio. The
student reads the mels the VC decoder emits instead, in the same normalised
units ``(log_mel - mel_mean) / mel_std``, and is small and convolutional,
so once trained and frozen it gives the VC model a differentiable phonetic
loss on its decoded mels::

    student = load_student("checkpoints/phone_student", frozen=True)
    logits = student(pred)                    # pred: (batch, 80, frames), normalised
    loss = soft_cross_entropy(logits, target_posteriors, mask)

Its context is exact: every convolution is left-padded (causal) and the
input is padded by ``lookahead`` frames on the right and the output shifted
back by as many, so the output at frame ``t`` depends on no input after
``t + lookahead``. ``lookahead_frames`` is 0 (causal), N (N frames of
11.6 ms at 22050 Hz, hop 256: 3 = 35 ms, 9 = 104 ms) or -1, the whole
utterance: half the receptive field each side (symmetric). The folder is a
checkpoint of kind ``phone_student`` (:mod:`vckit.checkpoint`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from vckit.checkpoint import WEIGHTS_FILE, check_state_dict, read_folder, read_weights, write_folder
from vckit.config import Count, Positive, Range, Real, Size, check_ranges, from_dict, to_dict
from vckit.errors import CheckpointError, ConfigError
from vckit.models.teacher import N_CLASSES

WHOLE_UTTERANCE = -1  # lookahead_frames: symmetric context, half the receptive field each side


@dataclass(frozen=True)
class PhoneStudentConfig:
    """The student network: an input convolution, ``blocks`` residual dilated
    convolutions (dilations cycle through ``dilations``) and a 1x1 output."""

    n_mels: Size = 80
    channels: Size = 128
    blocks: Count = 6
    kernel: Size = 5
    dilations: tuple[Size, ...] = (1, 2, 4)
    lookahead_frames: Annotated[int, Range(WHOLE_UTTERANCE)] = WHOLE_UTTERANCE  # 0 causal, N frames, -1 whole utterance (symmetric)
    classes: Size = N_CLASSES
    mel_mean: Real = -5.5  # the units it reads: (log_mel - mel_mean) / mel_std, as the VC model's
    mel_std: Positive = 2.2

    def __post_init__(self) -> None:
        check_ranges(self, "model")
        if not self.dilations:
            raise ConfigError("model.dilations needs at least one dilation")

    @property
    def receptive_field(self) -> int:
        """Input frames one output frame depends on."""
        dil = [self.dilations[i % len(self.dilations)] for i in range(self.blocks)]
        return 1 + (self.kernel - 1) * (1 + sum(dil))

    @property
    def lookahead(self) -> int:
        """Future frames one output frame hears (``lookahead_frames``, or half the receptive field)."""
        return (self.receptive_field - 1) // 2 if self.lookahead_frames == WHOLE_UTTERANCE else self.lookahead_frames


class _CausalConv(nn.Conv1d):
    """A dilated convolution left-padded with zeros: output ``t`` reads inputs ``<= t``.
    x: (batch, c_in, frames) -> (batch, c_out, frames)"""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1):
        super().__init__(c_in, c_out, kernel, dilation=dilation)
        self.context = (kernel - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.context, 0)))


class _ChannelNorm(nn.LayerNorm):
    """Layer norm over the channels of each frame (no statistics across time, so causal).
    x: (batch, channels, frames) -> same shape"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class _Block(nn.Module):
    """x + 1x1(gelu(norm(causal dilated conv(x)))). x: (batch, channels, frames) -> same shape"""

    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        self.conv = _CausalConv(channels, channels, kernel, dilation)
        self.norm = _ChannelNorm(channels)
        self.mix = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(F.gelu(self.norm(self.conv(x))))


class PhoneStudent(nn.Module):
    """Normalised log-mel (batch, n_mels, frames) -> logits over the teacher's symbols (batch, classes, frames).

    Differentiable end to end; output frame ``t`` depends on input frames
    ``t + lookahead - receptive_field + 1 .. t + lookahead`` only.
    """

    def __init__(self, cfg: PhoneStudentConfig):
        super().__init__()
        self.cfg = cfg
        self.lookahead = cfg.lookahead
        self.inp = _CausalConv(cfg.n_mels, cfg.channels, cfg.kernel)
        self.blocks = nn.ModuleList(_Block(cfg.channels, cfg.kernel, cfg.dilations[i % len(cfg.dilations)]) for i in range(cfg.blocks))
        self.norm = _ChannelNorm(cfg.channels)
        self.out = nn.Conv1d(cfg.channels, cfg.classes, 1)

    def normalize(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Log-mel in nats -> the units the student reads (those of the VC decoder's output)."""
        return (log_mel - self.cfg.mel_mean) / self.cfg.mel_std

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (batch, n_mels, frames) normalised -> logits (batch, classes, frames)."""
        n = self.lookahead
        x = F.pad(mel, (0, n)) if n else mel
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        logits = self.out(F.gelu(self.norm(h)))
        return logits[..., n:] if n else logits


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_student(
    folder: str | os.PathLike,
    model: PhoneStudent,
    *,
    step: int = 0,
    extra: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a phone-student folder (:func:`vckit.checkpoint.write_folder`); return its path.

    ``extra`` goes into ``config.json`` (the training config, the measured
    agreement); ``dtype`` (``torch.float16`` to ship) casts the weights and
    records their sha256.
    """
    meta = {"model": to_dict(model.cfg), "parameters": count_parameters(model), **(extra or {})}
    return write_folder(folder, "phone_student", meta, {WEIGHTS_FILE: model.state_dict()}, step=step, train_state=train_state,
                        dtype=dtype, record_sha256=dtype is not None)


def load_student(folder: str | os.PathLike, device: str | torch.device = "cpu", *, frozen: bool = True) -> tuple[PhoneStudent, dict[str, Any]]:
    """A phone student and its ``config.json``; strict about keys and shapes.

    ``frozen``: in eval mode with ``requires_grad`` off, for a loss that
    differentiates through it into its input only.
    """
    meta = read_folder(folder, "phone_student")
    try:
        cfg = from_dict(PhoneStudentConfig, meta["model"], "model")
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder}/config.json holds an invalid phone-student config: {e}") from None
    model = PhoneStudent(cfg)
    sd = read_weights(folder, meta)
    check_state_dict(model, sd)
    model.load_state_dict(sd, strict=True)
    model.to(device)
    if frozen:
        model.eval().requires_grad_(False)
    return model, meta


__all__ = ["PhoneStudent", "PhoneStudentConfig", "WHOLE_UTTERANCE", "count_parameters", "load_student", "save_student"]
