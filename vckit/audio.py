"""Audio front-end: read, mix to mono, resample, normalise, trim; log-mel; write.

Files are read with soundfile (wav, flac, ogg, and mp3 where libsndfile has
it); torchaudio is used for resampling and the mel filterbank only. Writing
lives in :mod:`vckit.audio_out` (its names are importable from here too).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

from vckit.audio_out import OUTPUT_FORMATS, output_format, write_audio, write_file_atomically, write_wav  # noqa: F401  (re-exported)
from vckit.config import MelConfig
from vckit.errors import (
    AudioError,
    EmptyAudioError,
    NonFiniteAudioError,
    SilentAudioError,
    TooShortAudioError,
    UnreadableAudioError,
    VckitError,
    reason,
)

log = logging.getLogger(__name__)

AudioInput = Union[str, os.PathLike, np.ndarray, torch.Tensor]

TARGET_RMS_DB = -20.0  # loudness of active speech after normalisation, dBFS
PEAK_LIMIT = 0.95
SILENCE_PEAK = 1e-4  # below this peak amplitude a signal counts as silent
TRIM_DB = 40.0  # frames this far below the loudest count as silence when trimming
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4000, 768000  # inputs outside this range are refused
MAX_RESAMPLE_TAPS = 1_000_000  # bound on torchaudio's sinc kernel (reduced orig rate * new rate)


def read_audio(path: str | os.PathLike, *, mono: bool = False) -> tuple[np.ndarray, int]:
    """Read a file as float32 ``(channels, samples)`` and its sample rate.

    With ``mono`` the channels are averaged block by block while reading,
    giving ``(samples,)``: an hour of 8-channel audio then needs the memory
    of one channel, not of eight.
    """
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise UnreadableAudioError(f"audio file not found: {path}")
    if path.is_dir():
        raise UnreadableAudioError(f"expected an audio file, got a folder: {path}")
    if path.stat().st_size == 0:
        raise EmptyAudioError(f"audio file {path.name} is empty (0 bytes)")
    try:
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            declared, exact = f.frames, f.format != "MPEG"  # an MP3's length is an estimate
            if not mono or f.channels == 1:
                data = f.read(dtype="float32", always_2d=True).T
                wav = np.ascontiguousarray(data[0] if mono else data)
            else:
                blocks = []  # read, not f.blocks(): that yields a full block, garbage after a short read
                while len(b := f.read(1 << 16, dtype="float32", always_2d=True)):
                    with np.errstate(invalid="ignore"):  # inf and -inf mix to NaN, which check_signal reports
                        blocks.append(b.mean(axis=1, dtype=np.float64).astype(np.float32))
                wav = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    except Exception as e:  # soundfile raises several types for bad files
        raise UnreadableAudioError(f"cannot read audio file {path.name}: {reason(e)}") from None
    decoded = wav.shape[-1]
    if exact and declared - decoded > max(1024, declared // 100):  # e.g. an Ogg page lost mid-file
        raise UnreadableAudioError(
            f"audio file {path.name} is damaged: it declares {declared / sr:.2f} s but only "
            f"{decoded / sr:.2f} s of it decode; repair or re-export it (converting part of it would lose the rest unnoticed)"
        )
    return wav, int(sr)


def to_mono(wav: np.ndarray) -> np.ndarray:
    """``(channels, samples)`` or ``(samples,)`` -> ``(samples,)`` by averaging."""
    if wav.ndim == 1:
        return wav
    if wav.ndim != 2:
        raise VckitError(f"audio array must be 1-D or (channels, samples), got shape {wav.shape}")
    if wav.size == 0:  # no samples: keep it empty (averaging would make NaNs)
        return wav.reshape(0)
    if wav.shape[0] > wav.shape[1]:  # (samples, channels) given: transpose
        wav = wav.T
    return wav.mean(axis=0)


def resample_ratio(orig_sr: int, target_sr: int) -> tuple[int, int]:
    """The rates, in lowest terms, that :func:`resample` hands torchaudio.

    torchaudio's sinc kernel holds about ``orig * new`` taps (the rates
    divided by their gcd): 44101 -> 22050 Hz would need 16 GB and minutes.
    When that product is over :data:`MAX_RESAMPLE_TAPS`, the nearest fraction
    whose product is not is used: the rate is then off by at most 0.05 %
    (under one cent of pitch, 1.8 s in an hour).
    """
    from fractions import Fraction

    ratio = Fraction(int(orig_sr), int(target_sr))
    if ratio.numerator * ratio.denominator <= MAX_RESAMPLE_TAPS:
        return ratio.numerator, ratio.denominator
    limit = max(1, math.isqrt(MAX_RESAMPLE_TAPS * target_sr // orig_sr))
    while True:
        approx = ratio.limit_denominator(limit)
        if approx.numerator * approx.denominator <= MAX_RESAMPLE_TAPS or limit == 1:
            return approx.numerator, approx.denominator
        limit = limit * 9 // 10


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling of a 1-D float array (torchaudio's sinc resampler).

    Rates that share only a small factor (e.g. 44101 Hz) are approximated as
    :func:`resample_ratio` says, so time and memory stay bounded.
    """
    if orig_sr == target_sr:
        return wav
    if orig_sr <= 0 or target_sr <= 0:
        raise VckitError(f"sample rates must be positive, got {orig_sr} and {target_sr}")
    import torchaudio.functional as AF

    orig, new = resample_ratio(orig_sr, target_sr)
    if orig == new:
        return wav
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wav)), orig, new)
    return out.numpy()


def check_signal(wav: np.ndarray, what: str = "audio") -> None:
    """Raise the documented error if ``wav`` is empty, non-finite or silent."""
    if wav.size == 0:
        raise EmptyAudioError(f"{what} is empty (0 samples)")
    if not np.isfinite(wav).all():
        raise NonFiniteAudioError(f"{what} contains NaN or infinite samples")
    if float(np.abs(wav).max()) < SILENCE_PEAK:
        raise SilentAudioError(f"{what} is silent (peak below {SILENCE_PEAK:g})")


def _frame_rms_db(wav: np.ndarray, frame: int) -> np.ndarray:
    n = len(wav) // frame
    if n == 0:
        return np.array([20 * np.log10(np.sqrt(np.mean(np.square(wav, dtype=np.float64))) + 1e-12)])  # float64: 1e20 squared overflows float32
    x = wav[: n * frame].reshape(n, frame)
    return 20 * np.log10(np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64) / frame) + 1e-12)


def normalize_loudness(wav: np.ndarray, sr: int, target_db: float = TARGET_RMS_DB) -> np.ndarray:
    """Scale so active speech has RMS ``target_db`` dBFS; peaks limited to 0.95."""
    db = _frame_rms_db(wav, max(1, sr // 50))
    active = db[db > db.max() - TRIM_DB]
    rms_db = 10 * np.log10(np.mean(10 ** (active / 10)) + 1e-20)
    gain = 10 ** ((target_db - rms_db) / 20)
    out = wav * gain
    peak = float(np.abs(out).max())
    if peak > PEAK_LIMIT:
        out = out * (PEAK_LIMIT / peak)
    return out.astype(np.float32)


def trim_silence(wav: np.ndarray, sr: int, top_db: float = TRIM_DB, margin_s: float = 0.05) -> np.ndarray:
    """Cut leading and trailing frames more than ``top_db`` below the loudest."""
    frame = max(1, sr // 100)
    db = _frame_rms_db(wav, frame)
    keep = np.nonzero(db > db.max() - top_db)[0]
    if len(keep) == 0:
        return wav
    margin = int(margin_s * sr)
    start = max(0, keep[0] * frame - margin)
    end = min(len(wav), (keep[-1] + 1) * frame + margin)
    return wav[start:end]


def load_audio(
    src: AudioInput,
    target_sr: int,
    sr: int | None = None,
    *,
    normalize: bool = True,
    trim: bool = True,
    min_seconds: float = 0.0,
    what: str | None = None,
) -> np.ndarray:
    """Read or take audio and make it ready for the model.

    Args:
        src: a path, or an array/tensor of samples ``(samples,)`` or
            ``(channels, samples)``; arrays need ``sr``.
        target_sr: the model's sample rate.
        sr: the sample rate of an array input (ignored for paths).
        normalize: scale active speech to -20 dBFS RMS.
        trim: cut leading and trailing silence.
        min_seconds: raise :class:`TooShortAudioError` if shorter after trimming.
        what: how errors name this input (default: the file name or "audio").

    Returns:
        float32 mono waveform ``(samples,)`` at ``target_sr``.
    """
    if isinstance(src, (str, os.PathLike)):
        try:
            wav, sr = read_audio(src, mono=True)
        except UnreadableAudioError as e:
            if what:  # say which input it was: "reference a.wav: audio file not found: ..."
                raise UnreadableAudioError(f"{what}: {e}") from None
            raise
        what = what or Path(src).name
    else:
        what = what or "audio"
        if sr is None:
            raise VckitError(f"{what}: an array input needs its sample rate (sr=...)")
        wav = src.detach().cpu().numpy() if isinstance(src, torch.Tensor) else np.asarray(src)
        if not np.issubdtype(wav.dtype, np.floating):
            if np.issubdtype(wav.dtype, np.integer):
                wav = wav.astype(np.float32) / float(np.iinfo(wav.dtype).max)
            else:
                raise VckitError(f"{what}: unsupported sample type {wav.dtype}")
        wav = wav.astype(np.float32, copy=False)
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise AudioError(f"{what}: sample rate {sr} Hz is outside the {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz that vckit reads")
    wav = to_mono(wav)
    check_signal(wav, what)
    wav = resample(wav, sr, target_sr)
    if trim:
        wav = trim_silence(wav, target_sr)
    if normalize:
        wav = normalize_loudness(wav, target_sr)
    dur = len(wav) / target_sr
    if dur < min_seconds:
        raise TooShortAudioError(f"{what} too short: {dur:.2g} s (need at least {min_seconds:g} s)")  # 0.96 s, not "1.0 s"
    return np.ascontiguousarray(wav, dtype=np.float32)


def mel_filterbank(cfg: MelConfig) -> torch.Tensor:
    """Mel filters ``(n_mels, n_fft // 2 + 1)``, Slaney scale and norm by default."""
    import torchaudio.functional as AF

    fb = AF.melscale_fbanks(
        n_freqs=cfg.n_fft // 2 + 1,
        f_min=cfg.fmin,
        f_max=cfg.fmax,
        n_mels=cfg.n_mels,
        sample_rate=cfg.sample_rate,
        norm=cfg.mel_norm,
        mel_scale=cfg.mel_scale,
    )
    return fb.T.contiguous()


class MelSpectrogram(torch.nn.Module):
    """Waveform ``(batch, samples)`` -> log-mel ``(batch, n_mels, samples // hop)``."""

    def __init__(self, cfg: MelConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("fb", mel_filterbank(cfg), persistent=False)
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        squeeze = wav.dim() == 1
        if squeeze:
            wav = wav[None]
        pad = (c.n_fft - c.hop_length) // 2
        if wav.shape[-1] <= pad:
            raise TooShortAudioError(f"audio too short for the mel front-end: {wav.shape[-1]} samples")
        x = F.pad(wav.float()[:, None], (pad, pad), mode="reflect")[:, 0]
        out = self.analyse_padded(x)
        return out[0] if squeeze else out

    def analyse_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Already-padded waveform ``(batch, samples)`` -> log-mel, one frame per hop."""
        c = self.cfg
        spec = torch.stft(
            x,
            c.n_fft,
            hop_length=c.hop_length,
            win_length=c.win_length,
            window=self.window,
            center=False,
            return_complex=True,
        )
        mag = spec.abs()
        if c.power == 2.0:
            mag = mag**2
        mel = torch.matmul(self.fb, mag)
        return torch.log(torch.clamp(mel, min=c.log_floor))


_MEL_CACHE: dict[MelConfig, MelSpectrogram] = {}
MEL_CHUNK_FRAMES = 4096  # long inputs are analysed in slices of this many frames


def log_mel_frames(wav: np.ndarray, cfg: MelConfig, first: int, frames: int) -> torch.Tensor:
    """Mel frames ``[first, first + frames)`` of a stream ``(samples,)`` -> ``(n_mels, frames)``,
    as :func:`log_mel` frames them; samples before the stream began count as silence."""
    pad = (cfg.n_fft - cfg.hop_length) // 2
    lo, hi = first * cfg.hop_length - pad, (first + frames - 1) * cfg.hop_length - pad + cfg.n_fft
    piece = np.concatenate([np.zeros(max(0, -lo), np.float32), wav[max(0, lo) : hi]])
    return log_mel_padded(piece, cfg)


def log_mel_padded(piece: np.ndarray, cfg: MelConfig) -> torch.Tensor:
    """The log-mel of samples that start ``(n_fft - hop) / 2`` before the first frame's hop, as
    :func:`log_mel` pads them: ``(samples,)`` -> ``(n_mels, (samples - n_fft) // hop + 1)``."""
    if cfg not in _MEL_CACHE:
        _MEL_CACHE[cfg] = MelSpectrogram(cfg)
    with torch.no_grad():
        return _MEL_CACHE[cfg].to("cpu").analyse_padded(torch.from_numpy(np.ascontiguousarray(piece, np.float32))[None])[0]


def log_mel(wav: np.ndarray | torch.Tensor, cfg: MelConfig, device: str | torch.device = "cpu") -> torch.Tensor:
    """Log-mel of one waveform ``(samples,)`` -> ``(n_mels, samples // hop)`` on ``device``.

    Long inputs are analysed in frame-aligned slices of the padded signal, so
    the result equals the one-pass analysis while the STFT's memory stays
    bounded.
    """
    if cfg not in _MEL_CACHE:
        _MEL_CACHE[cfg] = MelSpectrogram(cfg)
    mod = _MEL_CACHE[cfg].to(device)
    x = torch.as_tensor(wav, dtype=torch.float32, device=device)
    frames = x.shape[-1] // cfg.hop_length
    with torch.no_grad():
        if frames <= MEL_CHUNK_FRAMES:
            return mod(x)
        pad = (cfg.n_fft - cfg.hop_length) // 2
        xp = F.pad(x[None, None], (pad, pad), mode="reflect")[0, 0]
        out = torch.empty(cfg.n_mels, frames, device=device)
        for a in range(0, frames, MEL_CHUNK_FRAMES):
            b = min(frames, a + MEL_CHUNK_FRAMES)
            piece = xp[a * cfg.hop_length : (b - 1) * cfg.hop_length + cfg.n_fft]
            out[:, a:b] = mod.analyse_padded(piece[None])[0]
        return out
