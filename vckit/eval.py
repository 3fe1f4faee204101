"""Objective evaluation metrics for conversion models on held-out speakers.

* :func:`make_pairs` and :func:`conversion_scores`: speaker similarity on
  cached log-mels (no vocoder), for model selection while training. The
  speaker judge is the independent verifier of :mod:`vckit.speaker_verification`.
* signal metrics on waveforms: :func:`mel_cepstrum`, :func:`mcd_dtw`,
  :func:`f0_scores` and :func:`parallel_scores` (MCD with DTW and F0 against a
  same-content target utterance), :func:`robust_f0_corr` (log-F0 correlation
  with gross pitch errors trimmed) and :func:`source_scores` (F0 and voicing
  a conversion keeps of its own source, frame by frame);
* the disentanglement probe (:func:`probe_scores`), :func:`codebook_stats`
  and :func:`reconstruction_l1`.

``vckit eval`` (:mod:`vckit.evaluate`) runs them all on a checkpoint.
"""

from __future__ import annotations

import functools
import math
import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vckit.data import FeatureStore, dequantize
from vckit.errors import VckitError
from vckit.models.vc import Frames, register_shift


def _frames(store: FeatureStore, u: dict[str, Any], max_frames: int, device: Any) -> Frames:
    """The first ``max_frames`` frames of utterance ``u`` with a batch of one:
    mel (1, n_mels, T) and, where the cache has them, f0 (1, T) and phonetic (1, D, T)."""
    lo = u["offset"]
    hi = lo + min(u["frames"], max_frames)
    ex = store.gather_extra(torch.arange(lo, hi, device=store.mels.device)[None]) if store.extra else {}
    return Frames(dequantize(store.mels[lo:hi]).T[None], ex.get("f0"), ex.get("phonetic")).to(device)


def _as_frames(x: Frames | torch.Tensor, max_frames: int) -> Frames:
    """A log-mel ``(n_mels, T)`` or Frames with a batch of one -> Frames cut to ``max_frames``."""
    return (x if isinstance(x, Frames) else Frames(x[None])).slice(0, max_frames)


def voiced_median(f0: torch.Tensor | None) -> float | None:
    """Median (Hz) of the voiced frames of ``f0`` (any shape, 0 = unvoiced); None under 10 voiced."""
    if f0 is None:
        return None
    v = f0[f0 > 0].float().cpu().numpy()
    return float(np.median(v)) if len(v) >= 10 else None


def convert_like(model: Any, src: Frames, ref: Frames) -> torch.Tensor:
    """``src`` (batch of one) in the voice of ``ref``, as the public API converts:
    the speaker embedding of ``ref``'s mel and, for models with an F0 path, the
    source's F0 moved to the median of ``ref``'s voiced F0. -> log-mel (1, n_mels, T)."""
    shift = 0.0
    if model.needs_f0:
        if src.f0 is None:
            raise VckitError("this model has an F0 path, but the source has no F0 (a feature cache without f0.npy?)")
        shift = register_shift(src.f0[0], voiced_median(ref.f0), 0.0)
    return model.convert(src, model.embed_speaker(ref.mel), f0_shift=shift)


def _check_store(model: Any, store: FeatureStore) -> None:
    for need, key in ((model.needs_f0, "f0"), (model.needs_phonetic, "phonetic")):
        if need and key not in store.extra:
            raise VckitError(f"the model reads {key} features, but the feature cache has no {key}.npy: add them with vckit.frame_features.cache_frame_features")


def make_pairs(utts: list[dict[str, Any]], n: int = 80, cross_gender_only: bool = False, seed: int = 0) -> list[tuple[int, int, int]]:
    """(source, reference, held-out reference of the same target speaker) utterance indices.

    The source and target speakers differ; the third index is another
    utterance of the target speaker (or the reference itself when it has one
    only), used to score the result against a recording it has not seen.
    """
    rng = random.Random(seed)
    by_spk: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        by_spk.setdefault(u["speaker"], []).append(i)
    speakers = sorted(by_spk)
    pairs = []
    for _ in range(n * 20):
        if len(pairs) >= n:
            break
        s, t = rng.sample(speakers, 2)
        if cross_gender_only and utts[by_spk[s][0]].get("gender") == utts[by_spk[t][0]].get("gender"):
            continue
        src = rng.choice(by_spk[s])
        refs = by_spk[t]
        ref = rng.choice(refs)
        other = rng.choice([r for r in refs if r != ref]) if len(refs) > 1 else ref
        pairs.append((src, ref, other))
    return pairs


@torch.no_grad()
def conversion_scores(model: Any, judge: Any, store: FeatureStore, utts: list[dict[str, Any]], pairs: list[tuple[int, int, int]], device: Any = "cpu", max_frames: int = 1000) -> dict[str, float]:
    """Speaker similarity of conversions (judge's cosine) and reconstruction L1.

    Returns mean cosine of the converted speech to the target speaker (a
    recording the model did not see) and to the source speaker, the share of
    pairs closer to the target than to the source, and the mel L1 of
    self-reconstruction (reference = another utterance of the same speaker
    where there is one).

    Each utterance is its first ``max_frames`` cached frames (mel, and F0 and
    phonetic features where the model reads them); models with an F0 path
    get the source's F0 moved to the reference's median (:func:`convert_like`).
    Raises :class:`VckitError` when the model needs features the cache lacks.
    """
    model.eval()
    judge.eval()
    _check_store(model, store)
    cos_t, cos_s, wins, l1 = [], [], 0, []
    for src, ref, other in pairs:
        x_src = _frames(store, utts[src], max_frames, device)
        x_ref = _frames(store, utts[ref], max_frames, device)
        m_src, m_oth = x_src.mel, _frames(store, utts[other], max_frames, device).mel
        conv = convert_like(model, x_src, x_ref)
        e_c, e_t, e_s = judge(conv.float()), judge(m_oth.float()), judge(m_src.float())
        ct, cs = float(F.cosine_similarity(e_c, e_t).mean()), float(F.cosine_similarity(e_c, e_s).mean())
        cos_t.append(ct)
        cos_s.append(cs)
        wins += int(ct > cs)
    by_spk: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        by_spk.setdefault(u["speaker"], []).append(i)
    for spk, idx in sorted(by_spk.items()):
        for j, i in enumerate(idx[:4]):
            r = idx[(j + 1) % len(idx)]
            x = _frames(store, utts[i], max_frames, device)
            rec = convert_like(model, x, _frames(store, utts[r], max_frames, device))
            l1.append(float((rec - x.mel).abs().mean()))
    n = max(1, len(pairs))
    return {
        "sim_to_target": sum(cos_t) / n,
        "sim_to_source": sum(cos_s) / n,
        "closer_to_target": wins / n,
        "recon_mel_l1": sum(l1) / max(1, len(l1)),
        "pairs": len(pairs),
    }


# -- signal metrics: mel-cepstral distortion and F0 ----------------------------
# Mel-cepstra as in ESPnet's MCD recipe (SPTK mel-cepstra of Hamming-windowed
# 32 ms frames at 16 kHz, order 24, all-pass constant 0.41 = pysptk's
# ``mcepalpha(16000)``), in the closed form of ``pysptk.sp2mc``: log-periodogram
# -> real cepstrum -> all-pass frequency warping (SPTK ``freqt``). It needs only
# numpy, so the tests and CI run it; ``tests/test_eval.py`` checks it against
# pysptk where that is installed. Values follow the literature's trends but are
# not identical to MCDs from WORLD envelopes: compare models with one tool.
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
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    c = np.fft.irfft(np.log(power + 1e-10), n=n_fft, axis=1)
    c[:, 0] /= 2.0
    return c @ _warp_matrix(n_fft, order, alpha).T


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


# -- disentanglement probe ------------------------------------------------------
def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean per-class recall over the classes in ``y`` (chance: 1 / classes)."""
    return float(np.mean([np.mean(pred[y == k] == k) for k in np.unique(y)]))


def train_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, kind: str = "linear", seed: int = 0, steps: int = 300, hidden: int = 128) -> nn.Module:
    """A speaker classifier on frozen features ``x: (n, dim)``, labels ``y: (n,)``.

    ``kind`` is ``linear`` (multinomial logistic regression) or ``mlp`` (one
    hidden ReLU layer). Features are standardised with the training
    statistics, classes weighted by inverse frequency (so a constant guess
    scores chance), full-batch Adam for ``steps`` steps; deterministic for a seed.
    """
    if kind not in ("linear", "mlp"):
        raise VckitError(f"unknown probe {kind!r} (linear or mlp)")
    gen = torch.Generator().manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    dim = x.shape[1]
    layers: list[nn.Module] = [nn.Linear(dim, n_classes)] if kind == "linear" else [nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)]
    with torch.no_grad():
        for m in layers:
            if isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                m.weight.copy_(torch.empty_like(m.weight).uniform_(-bound, bound, generator=gen))
                m.bias.zero_()
    net = nn.Sequential(*layers)
    counts = torch.bincount(y, minlength=n_classes).float()
    weight = torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2 if kind == "linear" else 3e-3, weight_decay=1e-4)
    xs = (x - mean) / std
    for _ in range(steps):
        loss = F.cross_entropy(net(xs), y, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()

    class Probe(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return net((z - mean) / std)

    return Probe()


@torch.no_grad()
def probe_scores(train: list[tuple[torch.Tensor, int]], test: list[tuple[torch.Tensor, int]], kind: str = "linear", seed: int = 0) -> dict[str, float]:
    """Held-out speaker accuracy of a probe on per-utterance features.

    Each item is ``(features (frames, dim) or (dim,), speaker index)``: frames
    of an utterance are separate training examples, and an utterance is
    classified by its frames' summed log-probabilities. Returns balanced
    accuracy over test utterances (and over test frames for frame features),
    chance (1 / speakers) and ``chance_95``, the balanced accuracy that 5 % of
    uniformly random guesses over the same test utterances reach.
    """
    if not train or not test:
        raise VckitError("the probe needs training and test utterances")
    n_classes = 1 + max(k for _, k in train + test)

    def stack(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        feats = [f.reshape(-1, f.shape[-1]).float() for f, _ in items]
        labels = [torch.full((len(f),), k, dtype=torch.long) for f, (_, k) in zip(feats, items)]
        return torch.cat(feats), torch.cat(labels)

    x, y = stack(train)
    with torch.enable_grad():
        probe = train_probe(x, y, n_classes, kind, seed)
    utt_pred, frame_pred, frame_true = [], [], []
    for f, k in test:
        logp = F.log_softmax(probe(f.reshape(-1, f.shape[-1]).float()), -1)
        utt_pred.append(int(logp.sum(0).argmax()))
        frame_pred.append(logp.argmax(-1).numpy())
        frame_true.append(np.full(len(logp), k))
    y_utt = np.array([k for _, k in test])
    speakers = np.unique(y_utt)
    # chance is 1 / speakers on average; with few test utterances a guess can score well above it
    rng = np.random.default_rng(seed)
    guesses = [balanced_accuracy(rng.choice(speakers, len(y_utt)), y_utt) for _ in range(1000)]
    out = {"utterance_accuracy": balanced_accuracy(np.array(utt_pred), y_utt), "chance": 1.0 / len(speakers),
           "chance_95": float(np.quantile(guesses, 0.95)), "speakers": len(speakers), "train_utterances": len(train), "test_utterances": len(test)}
    if any(f.dim() == 2 for f, _ in test):
        out["frame_accuracy"] = balanced_accuracy(np.concatenate(frame_pred), np.concatenate(frame_true))
    return out


def codebook_stats(indices: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Usage (share of codes used) and perplexity ``exp(H)`` of VQ code indices."""
    counts = torch.bincount(indices.reshape(-1).long(), minlength=codebook_size).double()
    p = counts / counts.sum().clamp(min=1)
    nz = p[p > 0]
    return {
        "codebook_size": codebook_size,
        "codes_used": int((counts > 0).sum()),
        "usage": float((counts > 0).double().mean()),
        "perplexity": float(torch.exp(-(nz * nz.log()).sum())),
        "frames": int(counts.sum()),
        "counts": [int(c) for c in counts],
    }


@torch.no_grad()
def reconstruction_l1(model: Any, mels: dict[str, list[torch.Tensor | Frames]], per_speaker: int = 4, max_frames: int = 1000) -> dict[str, float]:
    """Mel L1 (natural-log units) of self-reconstruction, by the model alone.

    mels: speaker -> log-mels ``(n_mels, frames)``, or :class:`Frames` with a
    batch of one (with the F0 and phonetic features that the model reads).
    For up to ``per_speaker`` utterances of each speaker, the model rebuilds
    the mel with the speaker embedding (and, with an F0 path, the median F0)
    of another utterance of the same speaker (``other_reference``, speakers
    with two or more) and of the utterance itself (``same_utterance``).
    """
    other, same = [], []
    for spk in sorted(mels):
        xs = [_as_frames(m, max_frames) for m in mels[spk]]
        for j, x in enumerate(xs[:per_speaker]):
            same.append(float((convert_like(model, x, x) - x.mel).abs().mean()))
            if len(xs) > 1:
                r = xs[(j + 1) % len(xs)]
                other.append(float((convert_like(model, x, r) - x.mel).abs().mean()))
    mean = lambda v: float(np.mean(v)) if v else math.nan  # noqa: E731
    return {"other_reference": mean(other), "same_utterance": mean(same), "utterances": len(same)}
