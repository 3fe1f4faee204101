"""Model scores on cached features (no vocoder), for model selection while training.

* :func:`conversion_scores`: speaker similarity of conversions by an
  independent judge (:mod:`vckit.models.verifier`) and reconstruction L1;
* :func:`reconstruction_l1`: mel L1 of self-reconstruction;
* :func:`convert_like`: a conversion as the public API makes it, on Frames.
"""

from __future__ import annotations

from typing import Any

import math

import numpy as np
import torch
import torch.nn.functional as F

from vckit.data.features import FeatureStore, from_uint8
from vckit.errors import VckitError
from vckit.frontend import Frames
from vckit.models.vc import register_shift


def _frames(store: FeatureStore, u: dict[str, Any], max_frames: int, device: Any) -> Frames:
    """The first ``max_frames`` frames of utterance ``u`` with a batch of one:
    mel (1, n_mels, T) and, where the cache has them, f0 (1, T) and phonetic (1, D, T)."""
    lo = u["offset"]
    hi = lo + min(u["frames"], max_frames)
    ex = store.gather_extra(torch.arange(lo, hi, device=store.mels.device)[None]) if store.extra else {}
    return Frames(from_uint8(store.mels[lo:hi]).T[None], ex.get("f0"), ex.get("phonetic")).to(device)


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
            raise VckitError(f"the model reads {key} features, but the feature cache has no {key}.npy: add them with vckit.data.frame_features.cache_frame_features")


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
