"""F0 estimation (YIN-style, vectorised) and pitch shifting, for F0-range matching.

The converted voice's register comes mostly from the speaker embedding, but
a source far from the target's range (a low male voice to a high female one)
keeps some of its own. Shifting the source by the difference of the median
F0s first can bring the result closer to the target; ``benchmarks/quality.py``
measures whether it does.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def f0_track(wav: np.ndarray | torch.Tensor, sr: int, fmin: float = 60.0, fmax: float = 500.0, frame_s: float = 0.04, hop_s: float = 0.01, threshold: float = 0.15) -> np.ndarray:
    """F0 in Hz per frame (0 where unvoiced), by the YIN cumulative-mean difference.

    wav: (samples,) mono float.
    """
    x = torch.as_tensor(wav, dtype=torch.float32).flatten()
    win, hop = int(frame_s * sr), int(hop_s * sr)
    tau_min, tau_max = max(2, int(sr / fmax)), min(int(sr / fmin), win - 1)
    if len(x) < win + tau_max:
        return np.zeros(0, dtype=np.float32)
    frames = x.unfold(0, win + tau_max, hop)  # (n, win + tau_max)
    n = frames.shape[0]
    # difference function d(tau) = sum_j (x_j - x_{j+tau})^2 over the window, via FFT autocorrelation
    size = 1 << (2 * (win + tau_max) - 1).bit_length()
    spec = torch.fft.rfft(frames, size)
    head = torch.fft.rfft(frames[:, :win], size)
    corr = torch.fft.irfft(spec * head.conj(), size)[:, : tau_max + 1]  # sum_j x_j x_{j+tau}, j < win
    energy = torch.cumsum(frames**2, dim=1)
    e0 = energy[:, win - 1 : win]
    taus = torch.arange(tau_max + 1)
    e_tau = energy[:, win - 1 + taus] - torch.cat([torch.zeros(n, 1), energy[:, taus[1:] - 1]], dim=1)
    d = (e0 + e_tau - 2 * corr).clamp(min=0)
    cum = torch.cumsum(d[:, 1:], dim=1) / torch.arange(1, tau_max + 1)
    cmnd = torch.cat([torch.ones(n, 1), d[:, 1:] / cum.clamp(min=1e-12)], dim=1)
    cmnd[:, :tau_min] = 2.0
    below = cmnd < threshold
    first = torch.where(below.any(1), below.float().argmax(1), torch.full((n,), -1))
    # walk from the first dip under the threshold down to its local minimum
    f0 = np.zeros(n, dtype=np.float32)
    c = cmnd.numpy()
    rms = frames[:, :win].pow(2).mean(1).sqrt().numpy()
    loud = rms > 0.1 * rms.max() if n else rms
    for i, t in enumerate(first.tolist()):
        if t < 0 or not loud[i]:
            continue
        while t + 1 <= tau_max and c[i, t + 1] < c[i, t]:
            t += 1
        if 0 < t < tau_max:  # parabolic interpolation
            a, b, cc = c[i, t - 1], c[i, t], c[i, t + 1]
            den = a - 2 * b + cc
            t = t + (0.5 * (a - cc) / den if den > 1e-9 else 0.0)
        f0[i] = sr / t
    return f0


def median_f0(wav: np.ndarray, sr: int) -> float | None:
    """Median F0 of voiced frames in Hz, or None when fewer than 10 are voiced."""
    f0 = f0_track(wav, sr)
    voiced = f0[f0 > 0]
    if len(voiced) < 10:
        return None
    return float(np.median(voiced))


def semitones_between(f0_from: float, f0_to: float) -> float:
    return 12.0 * math.log2(f0_to / f0_from)


def shift_pitch(wav: np.ndarray, sr: int, semitones: float) -> np.ndarray:
    """Pitch-shift by ``semitones`` keeping the duration (torchaudio's phase vocoder + resampling)."""
    import torchaudio.functional as AF

    if abs(semitones) < 1e-3:
        return wav
    # torchaudio resamples by sr * 2**(s/12) : sr, which is very slow when the two
    # rates share only a small factor; round the shifted rate to a multiple of 50 Hz
    # (less than 0.04 semitones off), where the resampler is fast
    shifted_rate = max(50, round(sr * 2 ** (semitones / 12) / 50) * 50)
    semitones = 12 * math.log2((shifted_rate + 0.25) / sr)
    out = AF.pitch_shift(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None], sr, n_steps=float(semitones), bins_per_octave=12)
    return out[0].numpy()
