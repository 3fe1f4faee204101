"""Signal metrics on waveforms: mel-cepstral distortion with DTW, F0 and voicing.

* :func:`mel_cepstrum`, :func:`mcd_dtw`, :func:`f0_scores` and
  :func:`parallel_scores`: MCD with DTW and F0 against a same-content target;
* :func:`robust_f0_corr`: log-F0 correlation with gross pitch errors trimmed;
* :func:`source_scores`: F0 and voicing a conversion keeps of its own source,
  frame by frame.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from vckit.errors import VckitError


# -- signal metrics: mel-cepstral distortion and F0 ----------------------------
# Mel-cepstra as in ESPnet's MCD recipe (SPTK mel-cepstra of Hamming-windowed
# 32 ms frames at 16 kHz, order 24, all-pass constant 0.41 = pysptk's
# ``mcepalpha(16000)``), in the closed form of ``pysptk.sp2mc``: log-periodogram
# -> real cepstrum -> all-pass frequency warping (SPTK ``freqt``). It needs only
# numpy, so the tests and CI run it; ``tests/test_eval.py`` checks that it
# recovers the known coefficients of a spectrum built from them. Values follow
# the literature's trends but are not identical to MCDs from WORLD envelopes:
# compare models with one tool.
MCEP_SR = 16000
MCEP_FFT = 512
MCEP_HOP = 80  # 5 ms
MCEP_ORDER = 24
MCEP_ALPHA = 0.41
MCD_CONST = 10.0 / math.log(10.0) * math.sqrt(2.0)


@functools.lru_cache(maxsize=8)
def _warp_matrix(n: int, order: int, alpha: float) -> np.ndarray:
    """SPTK ``freqt`` as a matrix: cepstrum (n,) -> mel-cepstrum (order + 1,)."""
    b = 1.0 - alpha * alpha
    g = np.zeros((order + 1, n))
    for i in range(n - 1, -1, -1):  # feeds c[n-1], ..., c[0] through the all-pass chain
        d = g.copy()
        g[0] = alpha * d[0]
        g[0, i] += 1.0
        if order >= 1:
            g[1] = b * d[0] + alpha * d[1]
        for j in range(2, order + 1):
            g[j] = d[j - 1] + alpha * (d[j] - g[j - 1])
    return g


def mel_cepstrum(wav: np.ndarray, order: int = MCEP_ORDER, alpha: float = MCEP_ALPHA, n_fft: int = MCEP_FFT, hop: int = MCEP_HOP) -> np.ndarray:
    """Mel-cepstra ``(frames, order + 1)`` of a 16 kHz waveform ``(samples,)``.

    Frame ``i`` covers samples ``[i * hop, i * hop + n_fft)``.
    """
    x = np.asarray(wav, dtype=np.float64).reshape(-1)
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hamming(n_fft)
    return power_to_mcep(np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-10, order, alpha)


def power_to_mcep(power: np.ndarray, order: int = MCEP_ORDER, alpha: float = MCEP_ALPHA) -> np.ndarray:
    """Power spectra ``(frames, n_fft // 2 + 1)`` -> mel-cepstra ``(frames, order + 1)``
    (``pysptk.sp2mc``): the ``c`` with ``log|X(w)| = sum_m c[m] cos(m b(w))``, where ``b`` is
    the phase of the all-pass ``(z^-1 - alpha) / (1 - alpha z^-1)``."""
    n_fft = 2 * (power.shape[-1] - 1)
    c = np.fft.irfft(np.log(power), n=n_fft, axis=-1)
    c[..., 0] /= 2.0
    return c @ _warp_matrix(n_fft, order, alpha).T


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def check_eval_packages(plots: bool = True) -> None:
    """Raise :class:`VckitError` naming what ``vckit eval`` needs and cannot import:
    librosa (MCD's DTW) and, for the plots, matplotlib. Called before any work."""
    missing = [m for m in (("librosa", "matplotlib") if plots else ("librosa",)) if not _installed(m)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise VckitError(f"vckit eval needs {' and '.join(missing)}, which {verb} not installed: pip install -e '.[eval]'")


def dtw_path(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Minimum-cost alignment ``(steps, 2)`` of frames ``x: (n, d)`` and ``y: (m, d)``
    (Euclidean cost, steps (1,1), (1,0), (0,1); librosa's DTW)."""
    try:
        import librosa
    except ImportError:
        raise VckitError("MCD needs librosa for its DTW: pip install 'vckit[eval]'") from None
    _, wp = librosa.sequence.dtw(np.ascontiguousarray(x.T), np.ascontiguousarray(y.T), metric="euclidean")
    return np.ascontiguousarray(wp[::-1])


def mcd_dtw(mc_x: np.ndarray, mc_y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mel-cepstral distortion (dB) over the DTW path of two mel-cepstra ``(frames, order + 1)``.

    ``10 / ln 10 * sqrt(2 * sum_{d>=1} (c_d - c'_d)^2)`` averaged over the
    aligned frames; ``c_0`` (energy) is left out. Returns the MCD and the path.
    """
    a, b = mc_x[:, 1:], mc_y[:, 1:]
    path = dtw_path(a, b)
    diff = a[path[:, 0]] - b[path[:, 1]]
    return float(MCD_CONST * np.sqrt((diff**2).sum(1)).mean()), path


GROSS_ERROR_OCTAVES = 0.5  # frames whose median-normalised log-F0s differ by more are gross (octave) errors
LOUD_DB = 30.0  # source frames within this many dB of its loudest frame count for voicing agreement
F0_HOP_S = 0.01  # frame hop of the source-axis F0 scores
F0_FRAME_S = 0.04  # analysis window of the tracker (pitch.f0_track's default)


def robust_f0_corr(f0_x: np.ndarray, f0_y: np.ndarray, tol_octaves: float = GROSS_ERROR_OCTAVES) -> dict[str, float]:
    """Log-F0 correlation of two aligned contours with gross pitch errors trimmed.

    f0_x, f0_y: (frames,) Hz, 0 = unvoiced, frame ``k`` of one aligned with
    frame ``k`` of the other. The rule: over the frames voiced in both, take
    ``log2(F0)`` minus its median over those frames (so each contour is in
    octaves about its own median and a register difference cancels); a frame
    whose two values differ by more than ``tol_octaves`` (0.5 octave = 6
    semitones) is a gross error (octave jumps of a tracker or of the
    conversion) and left out; the Pearson correlation is taken over the
    remaining frames. Returns ``f0_corr_robust`` (NaN with fewer than 10
    frames left or a flat contour), ``f0_gross_error_share`` (trimmed frames
    over frames voiced in both; NaN when none are) and ``voiced_both``.
    """
    x, y = np.asarray(f0_x, dtype=np.float64), np.asarray(f0_y, dtype=np.float64)
    both = (x > 0) & (y > 0)
    out = {"f0_corr_robust": math.nan, "f0_gross_error_share": math.nan, "voiced_both": int(both.sum())}
    if not both.any():
        return out
    lx, ly = np.log2(x[both]), np.log2(y[both])
    lx, ly = lx - np.median(lx), ly - np.median(ly)
    keep = np.abs(lx - ly) <= tol_octaves
    out["f0_gross_error_share"] = float(1.0 - keep.mean())
    if keep.sum() >= 10 and lx[keep].std() > 1e-9 and ly[keep].std() > 1e-9:
        out["f0_corr_robust"] = float(np.corrcoef(lx[keep], ly[keep])[0, 1])
    return out


def f0_scores(f0_x: np.ndarray, f0_y: np.ndarray, path: np.ndarray) -> dict[str, float]:
    """F0 of ``x`` (a conversion) against ``y`` (the target) along an alignment.

    f0_x, f0_y: Hz per frame (0 = unvoiced) at the path's frame rate;
    path: (steps, 2) frame indices of ``x`` and ``y``.
    Returns RMSE in Hz over frames voiced in both; the RMSE (in standard
    deviations) and Pearson correlation (``f0_corr``) of log-F0 after each
    utterance's voiced log-F0 is normalised to mean 0, variance 1; the
    correlation with gross errors trimmed (``f0_corr_robust`` and
    ``f0_gross_error_share``, :func:`robust_f0_corr` on the aligned frames);
    the difference of the mean log-F0s in semitones (``x`` minus ``y``); and
    the share of aligned frames whose voicing disagrees. NaN where fewer than
    10 frames are voiced in both.
    """
    i = np.minimum(path[:, 0], len(f0_x) - 1)
    j = np.minimum(path[:, 1], len(f0_y) - 1)
    out = {"f0_rmse_hz": math.nan, "f0_rmse_norm": math.nan, "f0_corr": math.nan, "f0_corr_robust": math.nan,
           "f0_gross_error_share": math.nan, "logf0_mean_diff_st": math.nan, "vuv_error": math.nan}
    if len(f0_x) == 0 or len(f0_y) == 0:
        return out
    vx, vy = f0_x > 0, f0_y > 0
    out["vuv_error"] = float(np.mean(vx[i] != vy[j]))
    if vx.sum() >= 10 and vy.sum() >= 10:
        lx, ly = np.log(f0_x[vx]), np.log(f0_y[vy])
        out["logf0_mean_diff_st"] = float(12.0 / math.log(2.0) * (lx.mean() - ly.mean()))
    both = vx[i] & vy[j]
    if both.sum() < 10:
        return out
    a, b = f0_x[i][both], f0_y[j][both]
    out["f0_rmse_hz"] = float(np.sqrt(np.mean((a - b) ** 2)))
    rob = robust_f0_corr(a, b)
    out["f0_corr_robust"], out["f0_gross_error_share"] = rob["f0_corr_robust"], rob["f0_gross_error_share"]

    def z(f0: np.ndarray, v: np.ndarray, idx: np.ndarray) -> np.ndarray:
        lf = np.log(f0[v])
        return (np.log(f0[idx][both]) - lf.mean()) / max(float(lf.std()), 1e-6)

    za, zb = z(f0_x, vx, i), z(f0_y, vy, j)
    out["f0_rmse_norm"] = float(np.sqrt(np.mean((za - zb) ** 2)))
    if za.std() > 1e-9 and zb.std() > 1e-9:
        out["f0_corr"] = float(np.corrcoef(za, zb)[0, 1])
    return out


def parallel_scores(conv: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MCD and F0 scores of two 16 kHz waveforms with the same content."""
    from vckit.pitch import f0_track

    mcd, path = mcd_dtw(mel_cepstrum(conv), mel_cepstrum(target))
    hop_s = MCEP_HOP / MCEP_SR
    # YIN frames start at i * hop like the cepstral frames, so the path indexes both
    f0c, f0t = (f0_track(w, MCEP_SR, hop_s=hop_s) for w in (conv, target))
    return {"mcd_db": mcd, **f0_scores(f0c, f0t, path)}


def voicing_agreement(f0_conv: np.ndarray, f0_src: np.ndarray, loud: np.ndarray) -> dict[str, float]:
    """Voicing of a conversion against its source on the same frames.

    f0_conv, f0_src: (frames,) Hz, 0 = unvoiced; loud: (frames,) bool, the
    source's frames that carry sound (the rest is silence, where voicing is
    meaningless). Returns ``vuv_agreement``, the share of loud frames where
    both are voiced or both unvoiced; ``voiced_recall``, the share of the
    source's voiced loud frames that are voiced in the conversion; and
    ``loud_frames``. NaN where there is no loud (or no voiced) frame.
    """
    n = min(len(f0_conv), len(f0_src), len(loud))
    vc, vs, ld = np.asarray(f0_conv[:n]) > 0, np.asarray(f0_src[:n]) > 0, np.asarray(loud[:n], dtype=bool)
    out = {"vuv_agreement": math.nan, "voiced_recall": math.nan, "loud_frames": int(ld.sum())}
    if ld.any():
        out["vuv_agreement"] = float(np.mean(vc[ld] == vs[ld]))
    if (ld & vs).any():
        out["voiced_recall"] = float(np.mean(vc[ld & vs]))
    return out


def frame_loudness_db(wav: np.ndarray, sr: int, n_frames: int, hop_s: float = F0_HOP_S, frame_s: float = F0_FRAME_S) -> np.ndarray:
    """RMS level (dB) of the frames :func:`vckit.pitch.f0_track` analyses without
    ``n_frames``: frame ``i`` is samples ``[i * hop, i * hop + window)``. -> (n_frames,)."""
    hop, win = int(round(hop_s * sr)), int(frame_s * sr)
    x = np.asarray(wav, dtype=np.float64).reshape(-1)
    need = max(0, n_frames - 1) * hop + win
    if len(x) < need:
        x = np.pad(x, (0, need - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x[:need], win)[::hop][:n_frames]
    return 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)


def source_scores(conv: np.ndarray, source: np.ndarray, sr: int = MCEP_SR) -> dict[str, float]:
    """F0 and voicing a conversion keeps of its own source, frame by frame.

    conv, source: (samples,) at ``sr`` on one time axis (the conversion of the
    untrimmed source: conversion keeps the timing, so no alignment is needed).
    Both are tracked by :func:`vckit.pitch.f0_track` at 10 ms; returns
    :func:`robust_f0_corr` (``f0_corr_robust``, ``f0_gross_error_share``,
    ``voiced_both``) and :func:`voicing_agreement` over the source's frames
    within ``LOUD_DB`` (30 dB) of its loudest (``vuv_agreement``,
    ``voiced_recall``, ``loud_frames``).
    """
    from vckit.pitch import f0_track

    f0c, f0s = (f0_track(w, sr, hop_s=F0_HOP_S, frame_s=F0_FRAME_S) for w in (conv, source))
    n = min(len(f0c), len(f0s))
    f0c, f0s = f0c[:n], f0s[:n]
    db = frame_loudness_db(source, sr, n)
    loud = db > (db.max() - LOUD_DB) if n else np.zeros(0, dtype=bool)
    return {**robust_f0_corr(f0c, f0s), **voicing_agreement(f0c, f0s, loud)}
