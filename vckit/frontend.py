"""The one step from audio to what a model reads: vckit's front-end.

A model reads, per mel frame, the log-mel, the F0 (models with an F0 path)
and the phonetic teacher's last hidden layer, projected as its content
encoder expects (models with phonetic input). This module makes them, in
two modes that share every formula:

* **whole utterance**, :meth:`Frontend.frames` (conversion, evaluation) and
  :meth:`Frontend.features` (the training caches, in numpy, unprojected);
* **block by block**, :class:`BlockFrontend` (the live stream), which owns
  the input it has been given and hands out one step of frames at a time.

A causal model (``model.stream.causal``) hears the teacher block by block in
both modes: each block of ``block_frames`` frames comes from one teacher run
over the last ``teacher_context_s`` seconds, ending ``teacher_lookahead_ms``
past the block's last frame (:func:`block_end`). So a causal model trains,
converts offline and converts live on the same phonetic features.

The teacher is given, not built here (the front-end knows no network): any
object with ``frames(wav, sr, n_frames, hop)`` and ``window_hidden(window, sr,
start, frames, hop)``, or a callable that returns one on first use, as
:class:`vckit.models.teacher.PhoneticTeacher`.

    fe = Frontend(config.mel, f0=True, phonetic=True, teacher=PhoneticTeacher, project=encoder.project_teacher)
    x = fe.frames(wav)                           # Frames with a batch of one
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import torch

from vckit.audio import log_mel, log_mel_frames
from vckit.config import MelConfig, StreamConfig
from vckit.errors import VckitError
from vckit.pitch import f0_track

F0_WINDOW_S = 0.5  # input the F0 tracker reads per block of a stream
MEL_LEFT_FRAMES = 4  # a frame's analysis window starts (n_fft - hop) / 2 = 384 samples (1.5 hops) before it


@dataclasses.dataclass
class Frames:
    """What the model reads of an utterance, frame by frame (one row per mel frame).

    mel: (B, n_mels, T) log-mel; f0: (B, T) Hz, 0 = unvoiced (models with an
    F0 path); phonetic: (B, input_dim, T) projected teacher features (models
    whose content encoder reads them).
    """

    mel: torch.Tensor | None
    f0: torch.Tensor | None = None
    phonetic: torch.Tensor | None = None

    @property
    def frames(self) -> int:
        return next(x for x in (self.mel, self.phonetic, self.f0) if x is not None).shape[-1]

    def slice(self, lo: int, hi: int) -> "Frames":
        return Frames(
            None if self.mel is None else self.mel[..., lo:hi],
            None if self.f0 is None else self.f0[..., lo:hi],
            None if self.phonetic is None else self.phonetic[..., lo:hi],
        )

    def to(self, device: torch.device | str) -> "Frames":
        return Frames(*(None if x is None else x.to(device) for x in (self.mel, self.f0, self.phonetic)))


@dataclasses.dataclass
class Features:
    """One utterance's features as the training caches store them (numpy, not projected).

    mel: (n_mels, T); f0: (T,) Hz; hidden: (T, 256) the teacher's last hidden
    layer; log_probs: (T, 191) its CTC log-posteriors (whole utterance only).
    A field is None where it was not asked for.
    """

    mel: np.ndarray | None = None
    f0: np.ndarray | None = None
    hidden: np.ndarray | None = None
    log_probs: np.ndarray | None = None


def block_end(first: int, block_frames: int, hop_length: int, lookahead: int) -> int:
    """The last input sample heard for the block of mel frames ``[first, first + block_frames)``:
    ``lookahead`` samples past its last frame's centre."""
    return (first + block_frames - 1) * hop_length + hop_length // 2 + lookahead


def block_ends(n_frames: int, block_frames: int, hop_length: int, lookahead: int) -> list[tuple[int, int, int]]:
    """Blocks of a stream as ``(first frame, end frame, last input sample heard)``: block ``k``
    holds mel frames ``[k * block, (k + 1) * block)``."""
    out = []
    for lo in range(0, n_frames, block_frames):
        hi = min(n_frames, lo + block_frames)
        out.append((lo, hi, block_end(lo, block_frames, hop_length, lookahead)))
    return out


class Frontend:
    """Audio -> what one model reads.

    Args:
        mel: the model's mel analysis.
        f0: whether the model reads the F0.
        phonetic: whether it reads the teacher's features; then ``teacher`` is needed.
        mel_input: whether its content encoder also reads the log-mel beside
            the teacher (``model.content.input: phonetic+mel``); only the
            block mode asks, since the whole-utterance mode always makes the mel.
        stream: for a causal model, its stream settings: the teacher is then
            heard block by block, as live.
        teacher: the teacher, or a callable returning it (called on first use).
        project: teacher hidden ``(1, T, 256)`` tensor -> ``(1, dims, T)``, the
            content encoder's projection (``project_teacher``); None leaves
            ``Frames.phonetic`` unset.
        device: where the tensors of :meth:`frames` go.
    """

    def __init__(
        self,
        mel: MelConfig,
        *,
        f0: bool = False,
        phonetic: bool = False,
        mel_input: bool = True,
        stream: StreamConfig | None = None,
        teacher: Any = None,
        project: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: torch.device | str = "cpu",
    ):
        if phonetic and teacher is None:
            raise VckitError("a front-end for phonetic features needs the phonetic teacher")
        self.mel, self.f0, self.phonetic, self.mel_input = mel, f0, phonetic, mel_input
        self.stream = stream if stream is not None and stream.causal else None
        self._teacher, self.project, self.device = teacher, project, torch.device(device)

    @property
    def teacher(self) -> Any:
        """The phonetic teacher, made on first use where a callable was given."""
        if callable(self._teacher) and not hasattr(self._teacher, "window_hidden"):
            self._teacher = self._teacher()
        return self._teacher

    # -- whole utterance ----------------------------------------------------------
    def features(self, wav: np.ndarray, n_frames: int | None = None, *, mel: bool = False, posteriors: bool = False) -> Features:
        """``wav (samples,)`` at ``mel.sample_rate`` -> :class:`Features` over ``n_frames``
        (default ``len(wav) // hop``): the F0 and the teacher where this front-end reads
        them, the log-mel with ``mel``, the teacher's posteriors with ``posteriors``."""
        cfg = self.mel
        n = len(wav) // cfg.hop_length if n_frames is None else n_frames
        out = Features()
        if posteriors and self.stream is not None:
            raise VckitError("the teacher's posteriors are made from the whole utterance only")
        if self.phonetic and self.stream is not None:  # the teacher first: it costs the most
            out.hidden = self._streamed_hidden(wav, n)
        elif self.phonetic or posteriors:
            fr = self.teacher.frames(wav, cfg.sample_rate, n, cfg.hop_length)
            out.hidden = fr.hidden if self.phonetic else None
            out.log_probs = fr.log_probs if posteriors else None
        if mel:
            out.mel = log_mel(wav, cfg).numpy()
        if self.f0:
            out.f0 = f0_track(wav, cfg.sample_rate, hop=cfg.hop_length, n_frames=n)
        return out

    def frames(self, wav: np.ndarray) -> Frames:
        """``wav (samples,)`` at ``mel.sample_rate`` -> :class:`Frames` with a batch of one, on ``device``."""
        feats = self.features(wav, mel=True)
        mel = torch.from_numpy(feats.mel).to(self.device)[None]
        f0 = None if feats.f0 is None else torch.from_numpy(feats.f0).to(self.device)[None]
        return Frames(mel, f0, self._projected(feats.hidden))

    def _projected(self, hidden: np.ndarray | None) -> torch.Tensor | None:
        if hidden is None or self.project is None:
            return None
        return self.project(torch.from_numpy(hidden).to(self.device)[None])

    def _streamed_hidden(self, wav: np.ndarray, n_frames: int) -> np.ndarray:
        """The teacher's hidden layer ``(n_frames, 256)`` of a whole utterance, block by block as a stream hears it."""
        cfg, s = self.mel, self.stream
        sr, hop = cfg.sample_rate, cfg.hop_length
        look, ctx = round(s.teacher_lookahead_ms * sr / 1000), round(s.teacher_context_s * sr)
        blocks = block_ends(n_frames, s.block_frames, hop, look)
        need = blocks[-1][2] if blocks else 0
        if len(wav) < need:  # the stream's flush pads with silence
            wav = np.concatenate([wav, np.zeros(need - len(wav), np.float32)])
        parts = [self.teacher.window_hidden(wav[max(0, end - ctx) : end], sr, max(0, end - ctx), np.arange(lo, hi), hop) for lo, hi, end in blocks]
        return np.concatenate(parts) if parts else np.zeros((0, self.teacher.hidden_dim), np.float32)

    # -- block by block -------------------------------------------------------------
    def blocks(self, step_frames: int) -> "BlockFrontend":
        """A :class:`BlockFrontend` handing out ``step_frames`` frames at a time (a multiple of the model's block)."""
        return BlockFrontend(self, step_frames)


class BlockFrontend:
    """The block-by-block front-end of one live stream; make it with :meth:`Frontend.blocks`.

    It keeps the input pushed to it (as much as the next step still reads) and
    hands out the frames of ``step_frames`` mel frames at a time, each as soon
    as the input it needs has arrived (:attr:`ready`):

    * the teacher, one run per model block, exactly as :meth:`Frontend.features`
      hears it for a causal model;
    * the F0, tracked over the last :data:`F0_WINDOW_S` of input;
    * the log-mel of the step's own frames (models that read it), as
      :func:`vckit.audio.log_mel` frames them, silence before the stream began.
    """

    def __init__(self, frontend: Frontend, step_frames: int):
        s = frontend.stream
        if s is None:
            raise VckitError("a block-by-block front-end needs a causal model's stream settings")
        if step_frames % s.block_frames:
            raise VckitError(f"a step of {step_frames} frames is not a whole number of the model's {s.block_frames}-frame blocks")
        cfg = frontend.mel
        self.fe, self.step, self.model_block = frontend, step_frames, s.block_frames
        self.sample_rate, self.hop = cfg.sample_rate, cfg.hop_length
        self.look = round(s.teacher_lookahead_ms * self.sample_rate / 1000)
        self.context = round(s.teacher_context_s * self.sample_rate)
        self._buf = np.zeros(0, np.float32)  # input samples [self._buf_start, self.received)
        self._buf_start = 0
        self.received = 0  # input samples pushed (and padded)
        self.frames_done = 0  # frames handed out

    def push(self, samples: np.ndarray) -> None:
        """Append input ``(n,)`` float32 at the model's sample rate."""
        self._buf = np.concatenate([self._buf, samples])
        self.received += len(samples)

    def step_end(self) -> int:
        """Input samples needed before the next step can be made."""
        return block_end(self.frames_done, self.step, self.hop, self.look)

    @property
    def ready(self) -> bool:
        return self.received >= self.step_end()

    def pad(self) -> None:
        """Pad the input with silence up to what the next step needs (the end of a stream)."""
        need = self.step_end()
        if need > self.received:
            self.push(np.zeros(need - self.received, np.float32))

    def _input(self, lo: int, hi: int) -> np.ndarray:
        """Input samples ``[lo, hi)`` (zeros before the stream began)."""
        lo_c = max(lo, self._buf_start)
        part = self._buf[lo_c - self._buf_start : hi - self._buf_start]
        return np.concatenate([np.zeros(lo_c - lo, np.float32), part]) if lo_c > lo else part

    def next(self) -> Frames:
        """The next step's :class:`Frames` (batch of one, ``step_frames`` long) on the front-end's device."""
        if not self.ready:
            raise VckitError("the next block needs more input: push more, or pad at the end")
        fe, first, hop, sr = self.fe, self.frames_done, self.hop, self.sample_rate
        end = self.step_end()
        phonetic = None
        if fe.phonetic:
            hidden = []
            for lo in range(first, first + self.step, self.model_block):  # one teacher run per model block, as in training
                b_end = block_end(lo, self.model_block, hop, self.look)
                start = max(0, b_end - self.context)
                hidden.append(fe.teacher.window_hidden(self._input(start, b_end), sr, start, np.arange(lo, lo + self.model_block), hop))
            phonetic = fe._projected(np.concatenate(hidden))
        mel = None
        if fe.mel_input:
            lo = (first - MEL_LEFT_FRAMES) * hop
            mel = log_mel_frames(self._input(lo, end), fe.mel, MEL_LEFT_FRAMES, self.step)[None].to(fe.device)
        f0 = None
        if fe.f0:
            f_lo = max(0, first - round(F0_WINDOW_S * sr / hop))
            track = f0_track(self._input(f_lo * hop, end), sr, hop=hop, n_frames=(end - f_lo * hop) // hop)[first - f_lo : first - f_lo + self.step]
            f0 = torch.from_numpy(np.ascontiguousarray(track, dtype=np.float32)).to(fe.device)[None]
        self.frames_done += self.step
        f0_next = (self.frames_done - round(F0_WINDOW_S * sr / hop)) * hop
        keep = max(self._buf_start, min(f0_next, end + self.step * hop - self.context - self.model_block * hop))  # input the next step reads
        self._buf, self._buf_start = self._buf[keep - self._buf_start :], keep
        return Frames(mel, f0, phonetic)
