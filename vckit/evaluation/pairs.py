"""Which utterances ``vckit eval`` converts: data loading and conversion pairs.

:func:`load_data` reads any data spec (:mod:`vckit.data.manifest`) and marks
which utterances are parallel; :func:`make_pairs` picks conversion
pairs, parallel ones (same content) first; :func:`read_pairs` takes them from
a CSV instead.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vckit.data.manifest import read_data_spec, resolve_path
from vckit.errors import VckitError

KINDS = ("m->f", "f->m", "f->f", "m->m")
REF_SECONDS = 3.0  # target reference audio gathered per pair
REF_MAX_UTTS = 8


@dataclass
class Pair:
    source: int  # utterance indices into the data
    target_speaker: str
    refs: list[int]
    heldout: int
    parallel: bool
    kind: str = ""
    scores: dict[str, Any] = field(default_factory=dict)


# -- data -----------------------------------------------------------------------
def load_data(spec: str | Path) -> list[dict[str, Any]]:
    """The utterances of a data spec (:func:`vckit.data.manifest.read_data_spec`), each
    with ``gender`` (``m``, ``f`` or ``?``), ``utt_id`` and ``key`` (what makes two
    utterances parallel: the normalised transcript, else the utterance id)."""
    out = []
    for r in read_data_spec(spec):
        g = str(r.get("gender", "")).strip().lower()[:1]
        text = re.sub(r"[^a-z0-9 ]", "", str(r.get("text", "")).lower()).strip()
        utt_id = str(r.get("utt_id") or Path(r["path"]).stem)
        out.append({**r, "speaker": str(r["speaker"]), "gender": g if g in ("m", "f") else "?",
                    "utt_id": utt_id, "key": f"text:{' '.join(text.split())}" if text else f"id:{utt_id}"})
    return out


def _kind(utts: list[dict[str, Any]], src: int, tgt_spk: str, gender: dict[str, str]) -> str:
    return f"{utts[src]['gender']}->{gender[tgt_spk]}"


def _pick_refs(rng: random.Random, cands: list[int], dur: np.ndarray) -> list[int]:
    refs, total = [], 0.0
    for i in rng.sample(cands, len(cands)):
        refs.append(i)
        total += dur[i]
        if total >= REF_SECONDS or len(refs) == REF_MAX_UTTS:
            break
    return refs if total >= 1.0 else []


def make_pairs(
    utts: list[dict[str, Any]],
    dur: np.ndarray,
    *,
    parallel: int = 20,
    per_kind: int = 3,
    seed: int = 0,
    source_seconds: tuple[float, float] = (0.3, 10.0),
) -> list[Pair]:
    """Conversion pairs from utterances (:func:`load_data` rows; ``dur`` in seconds).

    First up to ``parallel`` pairs whose target utterance has the source's
    content (round robin over source->target speaker directions), then
    ``per_kind`` non-parallel pairs of each gender combination (M->F, F->M,
    F->F, M->M; one kind ``?->?`` when genders are unknown). Sources last
    ``source_seconds``; references never hold the source's content nor the
    scored utterance. Deterministic for a seed.
    """
    rng = random.Random(seed)
    lo, hi = source_seconds
    by_spk: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        by_spk.setdefault(u["speaker"], []).append(i)
    gender = {s: utts[ix[0]]["gender"] for s, ix in by_spk.items()}
    ok_src = lambda i: lo <= dur[i] <= hi  # noqa: E731

    def target_side(tgt: str, src: int, heldout: int | None) -> tuple[list[int], int] | None:
        key = utts[src]["key"]
        pool = [i for i in by_spk[tgt] if utts[i]["key"] != key and dur[i] > 0]
        if heldout is None:
            held = [i for i in pool if dur[i] >= 1.0] or pool
            if not held:
                return None
            heldout = rng.choice(held)
        refs = _pick_refs(rng, [i for i in pool if i != heldout], dur)
        return (refs, heldout) if refs else None

    pairs: list[Pair] = []
    # parallel: candidates per (source speaker, target speaker) direction
    by_key: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        by_key.setdefault(u["key"], []).append(i)
    directions: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for ix in by_key.values():
        for s in ix:
            for t in ix:
                if utts[s]["speaker"] != utts[t]["speaker"] and ok_src(s) and dur[t] >= lo:
                    directions.setdefault((utts[s]["speaker"], utts[t]["speaker"]), []).append((s, t))
    order = sorted(directions)
    for d in order:
        rng.shuffle(directions[d])
    while len(pairs) < parallel and any(directions.values()):
        for d in order:
            if len(pairs) >= parallel or not directions[d]:
                continue
            s, t = directions[d].pop()
            side = target_side(d[1], s, t)
            if side:
                pairs.append(Pair(s, d[1], side[0], side[1], True))
    # non-parallel, per gender combination
    kinds = KINDS if all(g in "mf" for g in gender.values()) else ("?->?",)
    for kind in kinds:
        sg, tg = kind.split("->")
        srcs = sorted(s for s in by_spk if (sg == "?" or gender[s] == sg) and any(ok_src(i) for i in by_spk[s]))
        tgts = sorted(s for s in by_spk if (tg == "?" or gender[s] == tg) and len(by_spk[s]) >= 2)
        made = 0
        for _ in range(20 * per_kind):
            if made >= per_kind or not srcs or not tgts:
                break
            s_spk, t_spk = rng.choice(srcs), rng.choice(tgts)
            if s_spk == t_spk:
                continue
            src = rng.choice([i for i in by_spk[s_spk] if ok_src(i)])
            side = target_side(t_spk, src, None)
            if side:
                pairs.append(Pair(src, t_spk, side[0], side[1], False))
                made += 1
    for p in pairs:
        p.kind = _kind(utts, p.source, p.target_speaker, gender)
    return pairs


def read_pairs(path: str | Path, utts: list[dict[str, Any]], dur: np.ndarray, seed: int = 0) -> list[Pair]:
    """Pairs from a CSV with columns ``source,target_speaker`` and optionally
    ``target`` (a target utterance with the source's content: MCD and F0 are
    measured against it) and ``refs`` (``;``-separated reference utterances).
    Paths must be utterances of the data."""
    path = Path(path)
    if not path.is_file():
        raise VckitError(f"pairs file not found: {path}")
    index = {u["file"]: i for i, u in enumerate(utts)}
    index.update({u["path"]: i for i, u in enumerate(utts)})
    speakers = {u["speaker"] for u in utts}
    gender = {u["speaker"]: u["gender"] for u in utts}

    def find(p: str, line: int) -> int:
        p = p.strip()
        i = index.get(p, index.get(str(resolve_path(p, path.parent))))
        if i is None:
            raise VckitError(f"{path}:{line}: {p} is not an utterance of the data")
        return i

    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"source", "target_speaker"} - set(reader.fieldnames or [])
        if missing:
            raise VckitError(f"{path} lacks column(s) {', '.join(sorted(missing))} (source,target_speaker[,target][,refs])")
        rng = random.Random(seed)
        pairs = []
        for line, r in enumerate(reader, 2):
            src, spk = find(r["source"], line), r["target_speaker"].strip()
            if spk not in speakers:
                raise VckitError(f"{path}:{line}: speaker {spk!r} is not in the data")
            tgt = find(r["target"], line) if (r.get("target") or "").strip() else None
            pool = [i for i, u in enumerate(utts) if u["speaker"] == spk and u["key"] != utts[src]["key"]]
            if tgt is None:
                held = [i for i in pool if dur[i] >= 1.0] or pool
                if not held:
                    raise VckitError(f"{path}:{line}: speaker {spk!r} has no utterance to score against")
                tgt = rng.choice(held)
            refs = [find(x, line) for x in (r.get("refs") or "").split(";") if x.strip()] or _pick_refs(rng, [i for i in pool if i != tgt], dur)
            if not refs:
                raise VckitError(f"{path}:{line}: speaker {spk!r} has no reference audio besides the scored utterance")
            pairs.append(Pair(src, spk, refs, tgt, bool((r.get("target") or "").strip()), f"{utts[src]['gender']}->{gender[spk]}"))
    if not pairs:
        raise VckitError(f"{path} lists no pairs")
    return pairs
