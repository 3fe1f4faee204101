"""Live conversion: a stream of samples in, the same stream in another voice out.

    >>> vc = vckit.load("stream")                    # the causal model that ships for live use
    >>> live = vc.stream(vc.voice("ref.wav"))
    >>> out = live.push(block)                      # float32 at vc.sample_rate, any length
    >>> tail = live.flush()                         # at the end: what is still inside
    >>> live.delay_ms                               # the fixed algorithmic delay

``push`` returns exactly as many samples as it is given: the converted
signal delayed by :attr:`Stream.delay` samples (silence at first), as a
sound card would play it. ``flush`` returns the last ``delay`` samples, so a
whole file streamed in blocks of any sizes comes out ``delay`` samples
longer than it went in, and identical to the same file pushed in one go.

How a block is made (``B`` = ``model.stream.block_frames`` mel frames):

1. the front-end's block mode (:class:`vckit.frontend.BlockFrontend`) makes
   the block's frames: the phonetic teacher hears the last ``teacher_context_s``
   of input, up to ``teacher_lookahead_ms`` past the block's last frame, exactly
   as the model's training features were made; the F0 tracker reads the last
   half second;
2. the F0 contour moves to the target's register by the running median of
   the source's F0 so far;
3. the causal content encoder and decoder convert the block, keeping their
   convolution tails and running-norm sums in this object;
4. the vocoder runs on the new mel frames with ``vocoder_context`` frames of
   left context (the vocoder's ``stream_context``: 4 for HiFi-GAN, whose every
   frame costs; the fast vocoder's whole reach, 30, for about a millisecond)
   and ``vocoder_lookahead`` of right context, and its first samples are
   cross-faded with the previous block's guess at them.

The delay is ``(B - 1 + vocoder_lookahead) * hop + hop / 2 + teacher look-ahead``:
145 ms for the shipped streaming model at 22.05 kHz (its phone student hears 58 ms ahead).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from vckit.errors import VckitError
from vckit.pitch import semitones_from_log

# A stream is made from a vckit.api.Converter and a vckit.api.Voice, which this module does not import: the API
# imports it (Converter.stream), so the arrow runs one way. Their annotations below say Any for that reason.
Converter = Voice = Any

log = logging.getLogger(__name__)

F0_HISTORY = 3000  # voiced frames kept for the running register estimate (~35 s)
CROSSFADE = 128  # samples blended between a block's start and the previous block's guess


class Stream:
    """One live conversion; make it with :meth:`vckit.api.Converter.stream`.

    Holds all state between calls; two streams never share any. Not
    thread-safe: one producer pushes.
    """

    def __init__(
        self,
        converter: "Converter",
        voice: "Voice",
        *,
        pitch_shift: float = 0.0,
        blocks_per_chunk: int = 1,
        vocoder_lookahead: int = 2,
        vocoder_context: int | None = None,
        vocoder_dtype: torch.dtype = torch.float32,
    ):
        model = converter.model
        scfg = converter.config.model.stream
        if not scfg.causal:
            raise VckitError("this model cannot stream (its norms and convolutions read the whole utterance): load the streaming model, vckit.load('stream')")
        if not model.needs_phonetic or not model.needs_f0:
            raise VckitError("streaming needs a model with phonetic input and an F0 path")
        if vocoder_context is None:
            vocoder_context = converter.vocoder.stream_context
        if blocks_per_chunk < 1 or vocoder_lookahead < 0 or vocoder_context < 0:
            raise VckitError("blocks_per_chunk must be >= 1, vocoder_lookahead and vocoder_context >= 0")
        self.converter, self.model = converter, model
        self.voice = converter._voice_of(voice, None)
        mel = converter.config.mel
        self.sample_rate, self.hop = mel.sample_rate, mel.hop_length
        if converter.sample_rate != self.sample_rate:
            raise VckitError("streaming needs a vocoder at the model's sample rate")
        self.block = scfg.block_frames * blocks_per_chunk
        self.model_block = scfg.block_frames
        if self.model_block % model.content_encoder.hop:
            raise VckitError(f"model.stream.block_frames ({self.model_block}) must be a multiple of the content hop ({model.content_encoder.hop})")
        self.look = round(scfg.teacher_lookahead_ms * self.sample_rate / 1000)
        self.voc_look, self.voc_ctx = vocoder_lookahead, vocoder_context
        self.pitch_shift = float(pitch_shift)
        self.vocoder = converter.vocoder
        if vocoder_dtype != converter.vocoder.dtype:  # bf16 on CPU: 1.8x faster HiFi-GAN (benchmarks/streaming.py --bf16 measures what it costs)
            import copy

            self.vocoder = copy.deepcopy(converter.vocoder).to(vocoder_dtype)
        self._voc_dtype = vocoder_dtype
        self.delay = (self.block - 1 + self.voc_look) * self.hop + self.hop // 2 + self.look
        self._state: dict = {}
        self._input = converter.frontend.blocks(self.block)  # the input, and the frames each step reads of it
        self._frames_done = 0  # mel frames converted
        self._mel = torch.zeros(converter.config.mel.n_mels, 0)  # converted mel frames [self._mel_start, self._frames_done)
        self._mel_start = 0
        self._audio_done = 0  # converted samples emitted
        self._pending = [np.zeros(self.delay, np.float32)]  # output not yet returned
        self._guess = np.zeros(0, np.float32)  # previous block's audio past its last emitted sample
        self._voiced: list[float] = []
        self._returned = 0  # output samples handed out so far
        self._finished = False

    @classmethod
    def open(cls, converter: "Converter", voice: "Voice", *, pitch_shift: float = 0.0, chunk_ms: float | None = None, bf16: bool | None = None) -> "Stream":
        """What :meth:`vckit.api.Converter.stream` returns.

        Needs a causal model (``vckit.load("stream")``). ``chunk_ms`` rounds
        up to a whole number of the model's blocks (default: one block, the
        shortest delay); longer chunks cost less per second but add delay.
        ``bf16`` runs the vocoder in bfloat16; by default the stream keeps the
        converter's vocoder as :func:`vckit.load`'s ``precision`` made it
        (``auto``: bfloat16 on CPUs with it natively; benchmarks/streaming.py: 36
        against 44 ms a block, the same words, voice and DNSMOS), only for
        a vocoder that takes it (HiFi-GAN).
        """
        cfg = converter.config
        block_ms = 1000.0 * cfg.model.stream.block_frames * cfg.mel.hop_length / cfg.mel.sample_rate
        if chunk_ms is not None and not 0 < chunk_ms <= 2000:
            raise VckitError(f"chunk_ms must be between 0 and 2000, got {chunk_ms}")
        per = max(1, round(chunk_ms / block_ms)) if chunk_ms else 1
        if bf16 is None:
            bf16 = converter.vocoder.dtype == torch.bfloat16
        bf16 = bf16 and converter.vocoder.takes_bf16
        return cls(converter, voice, pitch_shift=pitch_shift, blocks_per_chunk=per, vocoder_dtype=torch.bfloat16 if bf16 else torch.float32)

    @property
    def delay_ms(self) -> float:
        """The fixed algorithmic delay in milliseconds (compute time not included)."""
        return 1000.0 * self.delay / self.sample_rate

    @property
    def block_ms(self) -> float:
        """Input converted per step, in milliseconds: the stream must convert a block faster than this."""
        return 1000.0 * self.block * self.hop / self.sample_rate

    # -- the two calls ------------------------------------------------------------
    def push(self, samples: np.ndarray) -> np.ndarray:
        """Input ``(n,)`` float at :attr:`sample_rate` -> the next ``n`` output samples."""
        if self._finished:
            raise VckitError("this stream was flushed: start a new one with vc.stream(voice)")
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim == 2:  # (samples, channels), as sound cards and soundfile give them: mixed to mono
            x = x.mean(axis=1)
        if x.ndim != 1:
            raise VckitError(f"push takes samples (n,) or (n, channels), got shape {x.shape}")
        if not np.isfinite(x).all():
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        self._input.push(np.clip(x, -1.0, 1.0))
        while self._input.ready:
            self._step()
        return self._take(len(x))

    def flush(self) -> np.ndarray:
        """The last :attr:`delay` samples: the input's end converted, with silence after it."""
        if self._finished:
            return np.zeros(0, np.float32)
        n = self._input.received
        while self._audio_done < n:
            self._input.pad()
            self._step()
        self._finished = True
        return self._take(n + self.delay - self._returned)

    # -- inside ---------------------------------------------------------------------
    def _take(self, n: int) -> np.ndarray:
        out = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending = [out[n:]]
        self._returned += n
        return out[:n].copy()

    @torch.inference_mode()
    def _step(self) -> None:
        x = self._input.next()
        shift = self._register_shift(x.f0[0].cpu().numpy())
        mel = self.model.convert(x, self.voice.embedding[None].to(self.converter.device), f0_shift=shift, state=self._state)[0].float().cpu()
        self._frames_done += self.block
        self._mel = torch.cat([self._mel, mel], dim=-1)
        self._vocode()
        keep = max(self._mel_start, self._frames_done - self.voc_look - self.voc_ctx)  # mel frames the next block reads
        self._mel, self._mel_start = self._mel[:, keep - self._mel_start :], keep

    def _register_shift(self, f0: np.ndarray) -> float:
        """Semitones from the source's running median F0 to the target's (plus the user's shift)."""
        voiced = f0[f0 > 0]
        if len(voiced):
            self._voiced.extend(np.log(voiced).tolist())
            del self._voiced[:-F0_HISTORY]
        if not self._voiced or self.voice.f0_median is None:
            return self.pitch_shift
        return self.pitch_shift + semitones_from_log(float(np.median(self._voiced)), self.voice.f0_median)

    def _vocode(self) -> None:
        """Vocode up to ``voc_look`` frames before the converted end; cross-fade into the last guess."""
        hop = self.hop
        upto = self._frames_done - self.voc_look  # frames whose audio is final now
        first = self._audio_done // hop
        lo = max(self._mel_start, first - self.voc_ctx)
        mel = self._mel[:, lo - self._mel_start :]
        wav = self.vocoder(mel[None].to(self.vocoder.device, self._voc_dtype))[0].float().cpu().numpy()
        start = (first - lo) * hop
        new = wav[start : start + (upto - first) * hop].copy() if upto > first else np.zeros(0, np.float32)
        fade = min(CROSSFADE, len(self._guess), len(new))
        if fade:
            ramp = (np.arange(fade, dtype=np.float32) + 0.5) / fade
            new[:fade] = self._guess[:fade] * (1 - ramp) + new[:fade] * ramp
        self._guess = wav[start + len(new) :]
        self._audio_done += len(new)
        self._pending.append(new)
