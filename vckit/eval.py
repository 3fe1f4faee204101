"""Objective evaluation of a conversion model on held-out speakers.

Works on log-mels (no vocoder), so it runs wherever the model trains. The
speaker judge is the independent verifier of :mod:`vckit.speaker_verification`.
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F

from vckit.data import FeatureStore, dequantize


def _mel(store: FeatureStore, u: dict[str, Any]) -> torch.Tensor:
    return dequantize(store.mels[u["offset"] : u["offset"] + u["frames"]]).T


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
    """
    model.eval()
    judge.eval()
    cos_t, cos_s, wins, l1 = [], [], 0, []
    for src, ref, other in pairs:
        m_src = _mel(store, utts[src])[:, :max_frames].to(device)[None]
        m_ref = _mel(store, utts[ref])[:, :max_frames].to(device)[None]
        m_oth = _mel(store, utts[other])[:, :max_frames].to(device)[None]
        conv = model.convert(m_src, model.embed_speaker(m_ref))
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
            m = _mel(store, utts[i])[:, :max_frames].to(device)[None]
            rec = model.convert(m, model.embed_speaker(_mel(store, utts[r])[:, :max_frames].to(device)[None]))
            l1.append(float((rec - m).abs().mean()))
    n = max(1, len(pairs))
    return {
        "sim_to_target": sum(cos_t) / n,
        "sim_to_source": sum(cos_s) / n,
        "closer_to_target": wins / n,
        "recon_mel_l1": sum(l1) / max(1, len(l1)),
        "pairs": len(pairs),
    }
