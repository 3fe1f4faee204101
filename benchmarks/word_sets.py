"""The conversion sets that the words benchmarks score (``intelligibility.py``, ``f0_fidelity.py``, ``streaming.py``).

Each item is one source with a target per condition, drawn from the validation speakers of
``recipes/shared_dev`` (never trained on):
``{src, text, speaker, gender, length, group, cross: {speaker, refs, heldout}, same: {...}, recon: {...}}``
(``length``: ``short`` up to ``SHORT_S`` seconds, else ``long``).

* ``build_set`` (fast): up to 25-30 sources with a corpus transcript, the old 378-word set.
* ``build_wide_set`` (wide): every validation utterance with a corpus transcript, twice. Its
  sources come from five speakers (VCTK p226 and p228, LibriSpeech 225 and 296, ARCTIC rms).
* ``build_broad_set`` (broad): up to six utterances of every validation speaker, with or
  without a transcript, once each. Where the corpus has no text, the reference is what
  Moonshine hears in the source itself (``pseudo_texts``), so the WER counts the words a
  conversion changes, not the judge's own mistakes on that speaker. Reconstruction is
  copy-synthesis, the source as its own reference (``vc.convert(x, x)``): ten LibriSpeech
  speakers have one utterance.
"""

from __future__ import annotations

import random
from typing import Any, Callable

CONDITIONS = ("cross", "same", "recon")
# StarGAN-VC2 outputs in VCTK p232's name (vctk_more/metadata.csv: converted/p229_to_p232): not a person's speech
NOT_SPEECH = ("vctk:p232",)
# a source this long or shorter is a "short" one: the read sentences (VCTK, VCC, ARCTIC) that lose the most words;
# the long LibriSpeech readings give the judge context that carries it over a blurred word
SHORT_S = 8.0


def _pools(rows: list[dict[str, Any]]) -> tuple[dict[str, list[dict[str, Any]]], list[str], dict[str, Any]]:
    """Utterances by speaker, the speakers with enough utterances to be targets, and each speaker's gender."""
    by_spk: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_spk.setdefault(r["speaker"], []).append(r)
    many = sorted(s for s, us in by_spk.items() if len(us) >= 4)  # 3 references + 1 held out
    gender = {s: us[0].get("gender") for s, us in by_spk.items()}
    return by_spk, many, gender


def _item(s: dict[str, Any], rng: random.Random, by_spk: dict[str, list[dict[str, Any]]], many: list[str], gender: dict[str, Any],
          avoid: dict[str, str] | None = None, self_recon: bool = False) -> dict[str, Any] | None:
    """One source with a target per condition (None when a condition has no candidate).

    ``avoid`` maps a condition to a target speaker not to pick again when another may be;
    ``self_recon`` makes the source its own reference in ``recon``.
    """
    item = {"src": s["path"], "text": s.get("text"), "speaker": s["speaker"], "gender": s.get("gender"),
            "length": "short" if s["duration"] <= SHORT_S else "long"}
    for cond in CONDITIONS:
        if cond == "recon" and self_recon:
            item[cond] = {"speaker": s["speaker"], "refs": [s["path"]], "heldout": s["path"]}
            continue
        if cond == "recon":  # another utterance or more of the source speaker
            pool = [s["speaker"]] if len(by_spk[s["speaker"]]) >= 2 else []
        else:
            pool = [t for t in many if t != s["speaker"] and (gender[t] == s.get("gender")) == (cond == "same")]
            if avoid and len(pool) > 1:
                pool = [t for t in pool if t != avoid.get(cond)]
        if not pool:
            return None
        t = rng.choice(pool)
        cands = [u for u in by_spk[t] if u["path"] != s["path"] and u.get("utt_id") != s.get("utt_id")]
        rng.shuffle(cands)
        if len(cands) < (1 if cond == "recon" else 4):
            return None
        item[cond] = {"speaker": t, "refs": [u["path"] for u in cands[:3]], "heldout": cands[-1]["path"]}
    return item


def build_set(rows: list[dict[str, Any]], n: int = 30, seed: int = 0) -> list[dict[str, Any]]:
    """The fast set: up to ``n`` sources with a transcript (2-8 s, at most a third from one speaker)."""
    rng = random.Random(seed)
    by_spk, many, gender = _pools(rows)
    srcs = [r for r in rows if r.get("text") and not r["corpus"].startswith("fsdd") and 2.0 <= r["duration"] <= 8.0]
    rng.shuffle(srcs)
    # at most a third of the set from one speaker, so no voice dominates
    cap, count, items = max(1, n // 3), {}, []
    for s in srcs:
        if len(items) >= n or count.get(s["speaker"], 0) >= cap:
            continue
        item = _item(s, rng, by_spk, many, gender)
        if item is not None:
            items.append(item)
            count[s["speaker"]] = count.get(s["speaker"], 0) + 1
    return items


def build_wide_set(rows: list[dict[str, Any]], rounds: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """The wide set: every validation utterance with a transcript (1-20 s; the FSDD
    digits, one word each, left out) as a source ``rounds`` times, each time
    to other targets where there are others, so each condition holds at least
    1,000 words. Items of one source share ``group`` (the bootstrap resamples
    sources, not conversions)."""
    rng = random.Random(seed)
    by_spk, many, gender = _pools(rows)
    srcs = sorted((r for r in rows if r.get("text") and not r["corpus"].startswith("fsdd") and 1.0 <= r["duration"] <= 20.0), key=lambda r: r["path"])
    items = []
    for s in srcs:
        last: dict[str, str] = {}
        for _ in range(rounds):
            item = _item(s, rng, by_spk, many, gender, avoid=last)
            if item is None:
                break
            item["group"] = s["path"]
            last = {c: item[c]["speaker"] for c in CONDITIONS}
            items.append(item)
    return items


def build_broad_set(rows: list[dict[str, Any]], per_speaker: int = 6, seed: int = 0) -> list[dict[str, Any]]:
    """The broad set: up to ``per_speaker`` utterances (2-20 s, else 1-20 s) of every validation
    speaker but the FSDD digits and ``NOT_SPEECH``, each once as a source; targets are drawn as in
    the wide set, reconstruction is copy-synthesis. ``text`` is None where the corpus has none:
    :func:`pseudo_texts` fills it in."""
    rng = random.Random(seed)
    rows = [r for r in rows if not r["corpus"].startswith("fsdd") and r["speaker"] not in NOT_SPEECH]
    by_spk, many, gender = _pools(rows)
    items = []
    for spk in sorted(by_spk):
        us = sorted((u for u in by_spk[spk] if 1.0 <= u["duration"] <= 20.0), key=lambda u: u["path"])
        longer = [u for u in us if u["duration"] >= 2.0]
        pick = longer if len(longer) >= min(per_speaker, len(us)) else us
        for s in rng.sample(pick, min(per_speaker, len(pick))):
            item = _item(s, rng, by_spk, many, gender, self_recon=True)
            if item is not None:
                item["group"] = s["path"]
                items.append(item)
    return items


def pseudo_texts(items: list[dict[str, Any]], hear: Callable[[str], str]) -> int:
    """Fill in ``text`` where the corpus has none with ``hear(path)`` (what the judge hears
    in the source itself), marking ``text_from`` (``corpus`` or ``judge``); returns how many.
    Items of one source are heard once."""
    heard: dict[str, str] = {}
    for it in items:
        if it.get("text"):
            it["text_from"] = "corpus"
            continue
        if it["src"] not in heard:
            heard[it["src"]] = hear(it["src"])
        it["text"], it["text_from"] = heard[it["src"]], "judge"
    return len(heard)
