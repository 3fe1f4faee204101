"""Voice activity: how much of a reference clip is speech and how noisy it
is, and the gate that silences a conversion where its source is silent.

A voice is only as good as the speech it is made from: a clip of music,
noise or room tone gives a speaker embedding of that sound, not of a person.
:func:`measure_speech` finds the speech in a clip with a voice-activity
measure built on the YIN tracker of :mod:`vckit.pitch`: speech is voiced
(periodic between 55 and 600 Hz) and its F0 moves all the time, and
unevenly, while noise is not periodic, a held note or chord is periodic at a
steady pitch, and a sweep's pitch glides without a voice's jitter. The
frames around speech-like voiced runs (consonants, onsets) count as speech
when they are not quieter than the clip's pauses. :func:`reference_warnings`
turns the measures of a voice's clips into sentences for the user.

:func:`silence_gate` is the other direction: a vocoder hums faintly where
the source is silent, so the converted waveform is muted there (with short
fades). Silence is what :func:`vckit.audio.trim_silence` calls silence:
frames more than ``TRIM_DB`` below the loudest.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from vckit.audio import TRIM_DB, _frame_rms_db
from vckit.pitch import f0_track

FRAME_S = 0.01  # analysis hop: one decision per 10 ms
STEADY_CENTS = 1.0  # a voiced run whose F0 moves less than this per frame (median) is a held note, not speech
GLIDE_CENTS = 1.0  # a voiced run whose F0 change per frame varies less than this (median) is a sweep, not a voice
GLIDE_MIN_FRAMES = 10  # ... judged on runs of at least this many frames (100 ms)
CONTEXT_S = 0.15  # unvoiced frames this close to speech-like voicing count as speech (consonants, onsets)
NOISE_PERCENTILE = 10  # the noise floor: this percentile of the frame powers outside speech
MIN_PAUSE_FRAMES = 20  # fewer frames outside speech than this: the floor is a lower percentile of all frames
MIN_SPEECH_S = 0.3  # a clip with less speech than this holds none that a voice can be made from
LOW_SPEECH_SHARE = 0.3  # warn when less than this share of a clip is speech
LOW_SNR_DB = 12.0  # warn when the estimated speech-to-noise ratio is below this
ENOUGH_SPEECH_S = 3.0  # warn when the clips of a voice hold less speech than this in all
GATE_MIN_S = 0.15  # only silences at least this long are muted (not the closure before a plosive)
GATE_HOLD_S = 0.05  # the gate opens this long before speech and closes this long after it


@dataclasses.dataclass(frozen=True)
class SpeechMeasure:
    """What :func:`measure_speech` finds in one clip.

    ``seconds`` the clip's length; ``speech_seconds`` how much of it is
    speech; ``snr_db`` the speech level over the noise floor (None when the
    clip holds no speech); ``f0`` the YIN track ``(frames,)`` in Hz at
    :data:`FRAME_S` (0 where unvoiced), kept for the voice's F0 statistics.
    """

    seconds: float
    speech_seconds: float
    snr_db: float | None
    f0: np.ndarray = dataclasses.field(repr=False, compare=False)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the true runs of a boolean ``(frames,)`` array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _glide(cents: np.ndarray) -> bool:
    """Whether a voiced run's F0 ``(frames,)`` in cents moves as smoothly as only a machine moves it
    (a sine sweep, a vibrato tone): its change from frame to frame itself hardly changes. A voice's
    F0 jitters, so in speech the median second difference is several cents (at least 2.9 in runs
    of 20 frames or more over 150 files of ../shared/data; sweeps give 0.1 to 0.4)."""
    return len(cents) >= GLIDE_MIN_FRAMES and float(np.median(np.abs(np.diff(cents, n=2)))) < GLIDE_CENTS


def speech_frames(wav: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voice-activity decision per :data:`FRAME_S` frame.

    wav: (samples,) mono float -> ``(speech, f0, power_db)``, each
    ``(samples // hop,)``: speech a boolean mask, f0 in Hz (0 unvoiced),
    power_db the frame RMS in dB.
    """
    hop = max(1, round(FRAME_S * sr))
    n = len(wav) // hop
    if n == 0:
        return np.zeros(0, bool), np.zeros(0, np.float32), np.zeros(0)
    f0 = f0_track(wav, sr, hop=hop, n_frames=n)
    db = _frame_rms_db(wav, hop)[:n]
    voiced = np.zeros(n, bool)
    for s, e in _runs(f0 > 0):
        cents = 1200 * np.log2(f0[s:e])
        if e - s > 1 and float(np.median(np.abs(np.diff(cents)))) >= STEADY_CENTS and not _glide(cents):
            voiced[s:e] = True  # F0 that moves like intonation, not a held note nor a machine's sweep
    if not voiced.any():
        return voiced, f0, db
    reach = max(1, round(CONTEXT_S / FRAME_S))
    near = np.convolve(voiced.astype(np.float32), np.ones(2 * reach + 1, np.float32))[reach : reach + n] > 0
    floor = float(np.percentile(db, NOISE_PERCENTILE))
    loud = (db > db.max() - TRIM_DB) & (db > floor + 3.0)
    return voiced | (near & loud), f0, db


def speech_span(wav: np.ndarray, sr: int, margin_s: float = 0.15) -> tuple[int, int]:
    """Samples ``[start, end)`` of ``wav`` from its first to its last frame of speech, with ``margin_s`` either side:
    the room tone or noise that silence trimming (a level threshold) leaves around a clip is cut. All of it without speech."""
    speech, _, _ = speech_frames(wav, sr)
    idx = np.flatnonzero(speech)
    if not len(idx):
        return 0, len(wav)
    hop, margin = max(1, round(FRAME_S * sr)), round(margin_s * sr)
    return max(0, int(idx[0]) * hop - margin), min(len(wav), (int(idx[-1]) + 1) * hop + margin)


def measure_speech(wav: np.ndarray, sr: int) -> SpeechMeasure:
    """How much of ``wav`` (samples,) is speech, and its speech-to-noise ratio."""
    speech, f0, db = speech_frames(wav, sr)
    hop = max(1, round(FRAME_S * sr))
    snr = None
    if speech.any():
        voiced = speech & (f0 > 0)
        level = 10 * math.log10(float(np.mean(10 ** (db[voiced if voiced.any() else speech] / 10))) + 1e-20)
        pauses = db[~speech]
        floor = np.percentile(pauses, NOISE_PERCENTILE) if len(pauses) >= MIN_PAUSE_FRAMES else np.percentile(db, NOISE_PERCENTILE / 2)
        snr = level - float(floor)
    return SpeechMeasure(len(wav) / sr, int(speech.sum()) * hop / sr, snr, f0)


def reference_warnings(measures: Sequence[tuple[str, SpeechMeasure]]) -> tuple[str, ...]:
    """Sentences about a voice's clips ``[(name, measure), ...]``: little speech, noise, too little in all."""
    out = []
    for name, m in measures:
        if m.speech_seconds < LOW_SPEECH_SHARE * m.seconds:
            out.append(f"{name}: only {m.speech_seconds:.1f} s of its {m.seconds:.1f} s sound like speech (music, noise or silence?): the voice is made from what is there")
        if m.snr_db is not None and m.snr_db < LOW_SNR_DB:
            out.append(f"{name} is noisy (speech about {m.snr_db:.0f} dB above the noise): the converted voice may carry the noise; a cleaner recording works better")
    total = sum(m.speech_seconds for _, m in measures)
    if total < ENOUGH_SPEECH_S:
        out.append(f"only {total:.1f} s of speech in the reference{'s' if len(measures) > 1 else ''}: {ENOUGH_SPEECH_S:g} s or more (ideally 10 s) gives a steadier voice")
    return tuple(out)


def silence_gate(source: np.ndarray, sr: int, n_out: int, out_sr: int) -> np.ndarray:
    """Gain ``(n_out,)`` in [0, 1] for a conversion of ``source`` (samples,) at ``sr``.

    0 inside the source's silences of at least :data:`GATE_MIN_S` (less
    :data:`GATE_HOLD_S` at each end next to speech), 1 elsewhere, with
    fades of about 20 ms between; the output ``(n_out,)`` at ``out_sr`` is
    aligned with the source in time.
    """
    hop = max(1, round(FRAME_S * sr))
    n = len(source) // hop
    if n == 0 or n_out == 0:
        return np.ones(n_out, np.float32)
    db = _frame_rms_db(source, hop)[:n]
    hold, shortest = round(GATE_HOLD_S / FRAME_S), round(GATE_MIN_S / FRAME_S)
    gain = np.ones(n)
    for s, e in _runs(db <= db.max() - TRIM_DB):
        if e - s >= shortest:
            gain[s + hold if s > 0 else 0 : e - hold if e < n else n] = 0.0
    gain = np.convolve(np.pad(gain, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")  # 10 ms ramps become 20 ms
    centres = (np.arange(n) + 0.5) * hop / sr
    return np.interp(np.arange(n_out) / out_sr, centres, gain).astype(np.float32)
