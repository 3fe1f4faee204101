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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vckit.audio import log_mel, log_mel_padded
from vckit.checkpoint import WEIGHTS_FILE, check_state_dict, read_folder, read_weights, write_folder
from vckit.config import WHOLE_UTTERANCE, PhoneStudentConfig, from_dict, to_dict
from vckit.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from vckit.config import MelConfig
    from vckit.models.teacher import TeacherFrames

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

    def hidden(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (batch, n_mels, frames) normalised -> its last hidden layer (batch, channels, frames),
        which the logits are a 1x1 convolution of (what a live model reads: :class:`StudentTeacher`)."""
        n = self.lookahead
        h = self.inp(F.pad(mel, (0, n)) if n else mel)
        for block in self.blocks:
            h = block(h)
        h = F.gelu(self.norm(h))
        return h[..., n:] if n else h

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (batch, n_mels, frames) normalised -> logits (batch, classes, frames)."""
        return self.out(self.hidden(mel))


class StudentTeacher:
    """A causal phone student heard as the front-end hears the phonetic teacher (:mod:`vckit.frontend`):
    ``frames`` over a whole utterance, ``window_hidden`` over one window of a stream, both giving the
    student's last hidden layer ``(frames, channels)`` at the model's mel frames.

    It reads the log-mel of the model's own analysis (``mel``), so it costs a few small convolutions
    per block where hama's recogniser costs a transformer run; frames it would hear before the window
    (or the stream) began are silence, and frames past the window's end are padded as the student was
    trained (its look-ahead is then cut short: give the stream ``teacher_lookahead_ms`` of at least
    ``lookahead * hop + n_fft / 2`` samples to hear all of it, 58 ms for 3 frames at 22050 Hz).
    """

    def __init__(self, student: PhoneStudent, mel: "MelConfig"):
        if student.cfg.n_mels != mel.n_mels:
            raise ConfigError(f"the phone student reads {student.cfg.n_mels} mel bands, the model {mel.n_mels}")
        self.student, self.mel = student, mel
        self.hidden_dim = student.cfg.channels

    @torch.no_grad()
    def _hidden(self, spec: torch.Tensor) -> np.ndarray:
        """Log-mel ``(n_mels, frames)`` -> the student's hidden layer ``(frames, channels)``."""
        w = next(self.student.parameters())
        x = self.student.normalize(spec.to(w.device, torch.float32))[None].to(w.dtype)
        return self.student.hidden(x)[0].T.float().cpu().numpy()

    def frames(self, wav: np.ndarray, sr: int, n_frames: int, hop_length: int = 256) -> "TeacherFrames":
        """The hidden layer ``(n_frames, channels)`` over a whole utterance (no posteriors: ``log_probs`` is None)."""
        from vckit.models.teacher import TeacherFrames

        self._check(sr, hop_length)
        h = self._hidden(log_mel(np.asarray(wav, np.float32), self.mel))
        h = np.concatenate([h, np.repeat(h[-1:], max(0, n_frames - len(h)), axis=0)])[:n_frames] if len(h) else np.zeros((n_frames, self.hidden_dim), np.float32)
        return TeacherFrames(h, None)

    def window_hidden(self, window: np.ndarray, sr: int, start: int, frames: np.ndarray, hop_length: int) -> np.ndarray:
        """The hidden layer at mel ``frames`` (consecutive) from the stream's samples ``[start, start + len(window))``."""
        self._check(sr, hop_length)
        frames = np.asarray(frames)
        if len(frames) == 0:
            return np.zeros((0, self.hidden_dim), np.float32)
        a, b = int(frames[0]), int(frames[-1]) + 1
        cfg, look = self.student.cfg, self.student.lookahead
        first = max(0, a + look - cfg.receptive_field + 1)  # the mel frames the outputs read: [first, b + look)
        pad = (self.mel.n_fft - self.mel.hop_length) // 2
        lo, hi = first * hop_length - pad, (b + look - 1) * hop_length - pad + self.mel.n_fft
        piece = np.zeros(hi - lo, np.float32)  # silence outside the window
        s, e = max(lo, start), min(hi, start + len(window))
        if e > s:
            piece[s - lo : e - lo] = window[s - start : e - start]
        return self._hidden(log_mel_padded(piece, self.mel))[a - first : b - first]

    def _check(self, sr: int, hop_length: int) -> None:
        if (sr, hop_length) != (self.mel.sample_rate, self.mel.hop_length):
            raise ConfigError(f"the phone student hears the model's mel ({self.mel.sample_rate} Hz, hop {self.mel.hop_length}), not {sr} Hz, hop {hop_length}")


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


__all__ = ["PhoneStudent", "PhoneStudentConfig", "StudentTeacher", "WHOLE_UTTERANCE", "count_parameters", "load_student", "save_student"]
