"""The vocoder interface: log-mel in, waveform out, plus chunked vocoding.

Every vocoder carries the :class:`~vckit.config.MelConfig` of the log-mels it
expects, so a model and its vocoder can be checked against each other before
any audio is made (see :func:`vckit.models.vocoder.load_vocoder`).
"""

from __future__ import annotations

import math

from typing import Callable

import torch
from torch import nn

from vckit.config import MelConfig
from vckit.errors import VckitError


class Vocoder(nn.Module):
    """Base class: ``forward(mel: (batch, n_mels, frames)) -> wav: (batch, frames * hop)``.

    Attributes:
        mel_config: the log-mel front-end the vocoder was made for.
        name: a short human-readable name (``"hifigan"``, ``"griffinlim"``, a path).
        takes_bf16: whether its weights may be cast to bfloat16 (``vckit.load``'s
            ``precision``): HiFi-GAN's, not Griffin-Lim's phase search nor the fast
            vocoder's inverse STFT, whose phases bfloat16 would blur.
        stream_context: the left context :class:`vckit.streaming.Stream` gives it.
    """

    takes_bf16 = False
    stream_context = 4  # mel frames of left context the live path gives each block: seams against cost

    def __init__(self, mel_config: MelConfig, name: str):
        super().__init__()
        self.mel_config = mel_config
        self.name = name

    @property
    def sample_rate(self) -> int:
        return self.mel_config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.mel_config.hop_length

    @property
    def device(self) -> torch.device:
        """Device of the vocoder's weights (or buffers); CPU if it has neither."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the vocoder's weights (float32 without any): what :meth:`vocode` feeds it."""
        for t in self.parameters():
            return t.dtype
        return torch.float32

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """Log-mel ``(batch, n_mels, frames)`` -> waveform ``(batch, frames * hop)`` in [-1, 1]."""
        raise NotImplementedError

    def check_mel(self, mel: torch.Tensor, batched: bool = True) -> None:
        """Raise :class:`VckitError` unless ``mel`` is ``(batch, n_mels, frames)`` (or ``(n_mels, frames)``)."""
        dims = 3 if batched else 2
        want = "(batch, n_mels, frames)" if batched else "(n_mels, frames)"
        if not isinstance(mel, torch.Tensor):
            raise VckitError(f"vocoder {self.name}: mel must be a torch.Tensor {want}, got {type(mel).__name__}")
        if mel.dim() != dims or mel.shape[-2] != self.mel_config.n_mels:
            raise VckitError(
                f"vocoder {self.name}: mel must have shape {want} with n_mels={self.mel_config.n_mels}, "
                f"got {tuple(mel.shape)}"
            )
        if mel.shape[-1] == 0:
            raise VckitError(f"vocoder {self.name}: mel has no frames")

    def vocode(
        self,
        mel: torch.Tensor,
        chunk_frames: int = 512,
        overlap_frames: int = 16,
        context_frames: int | None = None,
        *,
        progress: Callable[[float], None] | None = None,
    ) -> torch.Tensor:
        """Vocode one utterance of any length in overlapping chunks.

        Each chunk of ``chunk_frames`` frames is vocoded with ``context_frames``
        extra frames of mel on each side (default: ``overlap_frames``), which are
        thrown away; neighbouring chunks share ``overlap_frames`` frames that are
        cross-faded linearly. Memory is bounded by the chunk size, not the input.

        Args:
            mel: log-mel ``(n_mels, frames)``, on any device (moved to the vocoder's).
            chunk_frames: frames per chunk; inputs no longer than this are vocoded whole.
            overlap_frames: frames shared (and cross-faded) by neighbouring chunks.
            context_frames: extra frames each side of a chunk, vocoded and discarded.
            progress: called after each chunk with the share of frames done
                (increasing, the last call 1.0).

        Returns:
            float32 waveform ``(frames * hop,)`` on the device of ``mel`` (an
            ordinary tensor: the work runs under ``torch.inference_mode``).
        """
        with torch.inference_mode():
            out = self._vocode(mel, chunk_frames, overlap_frames, context_frames, progress)
        return out.clone()  # a normal tensor, so callers may edit it in place

    def _vocode(
        self, mel: torch.Tensor, chunk_frames: int, overlap_frames: int, context_frames: int | None,
        progress: Callable[[float], None] | None = None,
    ) -> torch.Tensor:
        self.check_mel(mel, batched=False)
        if overlap_frames < 0 or chunk_frames <= 2 * overlap_frames:
            raise VckitError(
                f"vocode: need 0 <= overlap_frames < chunk_frames / 2, got chunk {chunk_frames}, overlap {overlap_frames}"
            )
        if not bool(torch.isfinite(mel).all()):
            raise VckitError(f"vocoder {self.name}: mel contains NaN or infinite values")
        ctx = overlap_frames if context_frames is None else context_frames
        if ctx < 0:
            raise VckitError(f"vocode: context_frames must be >= 0, got {ctx}")
        dev, dtype, hop, frames = self.device, self.dtype, self.hop_length, mel.shape[-1]
        mel = mel.float()
        # float32 runs each chunk at its own length; bfloat16 (oneDNN builds its kernels once per input
        # shape, about a second each on CPU) runs every call at one shape, chunk plus both contexts
        window = chunk_frames + 2 * ctx if dtype != torch.float32 else 0
        if frames <= chunk_frames:
            x = mel[None]
            if window:  # padded with the log floor (silence) and cut back: one shape for every short input
                x = torch.nn.functional.pad(x, (0, window - frames), value=math.log(self.mel_config.log_floor))
            whole = self(x.to(dev, dtype))[0, : frames * hop].float().to(mel.device)
            if progress is not None:
                progress(1.0)
            return whole

        out = torch.zeros(frames * hop, device=mel.device)
        start, prev_end = 0, 0
        while True:
            end = min(start + chunk_frames, frames)
            lo, hi = max(0, start - ctx), min(frames, end + ctx)
            if window and frames >= window:  # the same shape every time: more context where an edge cuts it
                lo = min(lo, frames - window)
                hi = lo + window
            wav = self(mel[None, :, lo:hi].to(dev, dtype))[0, (start - lo) * hop : (end - lo) * hop].float().to(out.device)
            fade = (prev_end - start) * hop  # samples shared with the previous chunk
            if fade > 0:
                ramp = (torch.arange(fade, device=out.device, dtype=out.dtype) + 0.5) / fade
                wav[:fade] *= ramp
                out[start * hop : start * hop + fade] *= 1.0 - ramp
            out[start * hop : end * hop] += wav
            if progress is not None:
                progress(end / frames)
            if end == frames:
                return out
            prev_end, start = end, end - overlap_frames
