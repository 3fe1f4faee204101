"""Content encoder: an instance-normalised conv stack over log-mels or phonetic features."""

from __future__ import annotations

import math

import torch
from torch import nn

from vckit.config import ContentConfig, StreamConfig
from vckit.errors import VckitError
from vckit.models.layers import ConvBlock, call, make_norm, pad_to_multiple
from vckit.models.phone_student import PhoneStudent
from vckit.models.teacher import HIDDEN_DIM, PHONETIC_CLIP, ConcatTeacher, PhoneticTeacher
from vckit.models.whisper import WHISPER_DIM, WhisperTeacher

# the width of what each teacher gives per frame (model.content.teacher); "hama+whisper": both layers side by side
TEACHER_DIMS = {"hama": HIDDEN_DIM, "whisper": WHISPER_DIM, "hama+whisper": HIDDEN_DIM + WHISPER_DIM}


def make_teacher(kind: str, threads: int = 1):
    """The teacher ``model.content.teacher`` names: hama's recogniser, Whisper tiny.en's encoder, or both."""
    if kind == "whisper":
        return WhisperTeacher(threads=threads)
    if kind == "hama+whisper":
        return ConcatTeacher(PhoneticTeacher(threads=threads), WhisperTeacher(threads=threads))
    if kind == "hama":
        return PhoneticTeacher(threads=threads)
    raise VckitError(f"unknown phonetic teacher {kind!r}: one of {', '.join(TEACHER_DIMS)}")


class ContentEncoder(nn.Module):
    """Mel (or phonetic features) -> content codes, with per-utterance statistics removed.

    Every block uses ``InstanceNorm1d(affine=False)`` and the codes themselves
    are instance-normalised, so a global speaker trait (a mean or scale per
    channel) cannot pass through.

    x: (batch, n_mels or input_dim, frames) -> codes: (batch, dim, ceil(frames / hop))
    where ``hop`` is the product of the block strides.

    With ``cfg.input == "phonetic"`` the encoder reads the phonetic teacher's
    hidden layer, projected on ``input_dim`` whitened principal components;
    the projection (``teacher_mean``, ``teacher_proj``) is a buffer saved with
    the weights, so conversion projects exactly as the feature cache did.
    """

    def __init__(self, n_mels: int, cfg: ContentConfig, stream: StreamConfig | None = None):
        super().__init__()
        if len(cfg.downsample) != cfg.blocks:
            raise ValueError(f"content.downsample needs {cfg.blocks} strides, got {len(cfg.downsample)}")
        self.cfg = cfg
        self.hop = math.prod(cfg.downsample)
        n_in = {"mel": n_mels, "phonetic": cfg.input_dim}.get(cfg.input, cfg.input_dim + n_mels)
        self.student = None  # the causal phone student whose hidden layer a live model reads (stream.phonetic: student)
        if cfg.input != "mel":
            hidden = TEACHER_DIMS[cfg.teacher]
            if stream is not None and stream.phonetic == "student":
                self.student = PhoneStudent(stream.student).requires_grad_(False)  # frozen: its weights come with the features
                hidden = stream.student.channels
            self.register_buffer("teacher_mean", torch.zeros(hidden))
            self.register_buffer("teacher_proj", torch.zeros(cfg.input_dim, hidden))
        self.inp = nn.Conv1d(n_in, cfg.channels, 1)
        causal = stream is not None and stream.causal
        norm, prior = ("causal", stream.norm_prior_frames) if causal else ("instance", 16)
        self.blocks = nn.ModuleList(ConvBlock(cfg.channels, cfg.kernel_size, s, norm, cfg.dropout, prior) for s in cfg.downsample)
        self.out = nn.Conv1d(cfg.channels, cfg.dim, 1)
        self.norm = make_norm(norm if cfg.out_norm else "none", cfg.dim, prior)

    def project_teacher(self, hidden: torch.Tensor) -> torch.Tensor:
        """Teacher hidden frames (batch, frames, 256, or the student's channels) -> whitened (batch, input_dim, frames), clipped to +-4 as cached."""
        x = (hidden.to(self.teacher_proj.dtype) - self.teacher_mean) @ self.teacher_proj.T
        return x.clamp(-PHONETIC_CLIP, PHONETIC_CLIP).transpose(1, 2)

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """With ``state`` (causal models, streaming), ``x`` is the next block of
        a stream, a multiple of ``hop`` frames long, and the state carries over."""
        x = pad_to_multiple(x, self.hop)
        x = self.inp(x)
        for blk in self.blocks:
            x = blk(x, state)
        return call(self.norm, self.out(x), state)
