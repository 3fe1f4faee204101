"""The sets the words benchmarks score (benchmarks/word_sets.py): who is a source, who a target, and where a text comes from."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from word_sets import build_broad_set, build_wide_set, pseudo_texts  # noqa: E402


def _rows() -> list[dict]:
    """A validation manifest in miniature: two transcribed speakers of each gender with many utterances,
    an untranscribed pair, a speaker with one utterance, digits, and StarGAN outputs in a speaker's name."""
    rows = []

    def add(spk, gender, corpus, n, text=True, dur=3.0):
        for k in range(n):
            rows.append({"path": f"{spk}/{k:03d}.wav", "speaker": spk, "gender": gender, "corpus": corpus, "duration": dur,
                         "utt_id": f"{spk}_{k}", "text": f"words of {spk} number {k}" if text else ""})

    add("vctk:p226", "M", "vctk", 9)
    add("vctk:p228", "F", "vctk", 9)
    add("vcc2016:SM1", "M", "vcc2016", 8, text=False)
    add("vcc2016:SF1", "F", "vcc2016", 8, text=False)
    add("libri:1034", "M", "librispeech", 1, text=False, dur=12.0)
    add("fsdd:lucas", "M", "fsdd", 10, dur=0.5)
    add("vctk:p232", "M", "vctk_more", 9, text=False)
    return rows


def test_broad_set_takes_every_real_speaker_with_or_without_text_and_reconstructs_from_the_source_itself():
    items = build_broad_set(_rows(), per_speaker=6)
    speakers = {it["speaker"] for it in items}
    assert speakers == {"vctk:p226", "vctk:p228", "vcc2016:SM1", "vcc2016:SF1", "libri:1034"}  # no digits, no StarGAN
    assert max(sum(it["speaker"] == s for it in items) for s in speakers) == 6
    assert len({it["src"] for it in items}) == len(items)  # each source once
    gender = {r["speaker"]: r["gender"] for r in _rows()}
    for it in items:
        assert it["recon"]["refs"] == [it["src"]]
        assert gender[it["cross"]["speaker"]] != it["gender"] and gender[it["same"]["speaker"]] == it["gender"]
        assert it["same"]["speaker"] != it["speaker"] and "vctk:p232" not in (it["cross"]["speaker"], it["same"]["speaker"])
        assert it["src"] not in it["cross"]["refs"] + it["same"]["refs"]
    assert build_broad_set(_rows(), per_speaker=6) == items  # the same set every time
    assert {it["speaker"] for it in items if it["length"] == "long"} == {"libri:1034"}  # 12 s; the read sentences are short


def test_the_wer_splits_by_the_sources_length():
    from intelligibility import by_source

    items = build_broad_set(_rows(), per_speaker=2)
    per_item = [(3, 10) if it["length"] == "long" else (1, 10) for it in items]
    split = by_source(items, {"per_item": {"cross": per_item}}, "length")
    assert split == {"cross": {"long": 0.3, "short": 0.1}}


def test_pseudo_texts_hear_each_untranscribed_source_once_and_leave_corpus_text_alone():
    items = build_broad_set(_rows(), per_speaker=3) + build_broad_set(_rows(), per_speaker=3, seed=0)[:2]
    heard: list[str] = []

    def hear(path: str) -> str:
        heard.append(path)
        return f"heard {path}"

    n = pseudo_texts(items, hear)
    assert n == len(heard) == len(set(heard)) == 7  # SM1 3, SF1 3, libri:1034 1
    for it in items:
        if it["speaker"].startswith("vctk"):
            assert it["text_from"] == "corpus" and it["text"].startswith("words of")
        else:
            assert it["text_from"] == "judge" and it["text"] == f"heard {it['src']}"


def test_wide_set_is_still_the_transcribed_sources_twice():
    items = build_wide_set(_rows())
    assert {it["speaker"] for it in items} == {"vctk:p226", "vctk:p228"}
    assert len(items) == 2 * 18 and all(it["recon"]["refs"] != [it["src"]] for it in items)
