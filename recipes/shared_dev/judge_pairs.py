"""Judge pairs of the GPU scripts: (source, reference, held-out reference) utterance indices."""

from __future__ import annotations

import random
from typing import Any


def judge_pairs(utts: list[dict[str, Any]], n: int = 80, cross_gender_only: bool = False, seed: int = 0) -> list[tuple[int, int, int]]:
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
