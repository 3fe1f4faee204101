"""The demo's example swaps: ``examples`` (or a few validation pairs of ``shared/data``),
and the example voices they hold, one per reference speaker."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vckit.shipped import REPO_ROOT, shipped_dir

EXAMPLES_DIR = shipped_dir("examples")
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# used when examples/ holds no examples: (name, source, reference) under shared/data
FALLBACK_PAIRS = [
    ("m2f", "vcc2016/SM1/200001.wav", "vcc2016/SF1/200002.wav"),
    ("f2m", "vcc2016/SF1/200003.wav", "vcc2016/TM1/200004.wav"),
]


@dataclass(frozen=True)
class Example:
    """One example swap: ``source`` spoken in the voice of ``reference``."""

    name: str  # e.g. "01_m2f"
    label: str  # e.g. "01 male to female"
    source: Path
    reference: Path
    converted: Path | None = None
    speaker: str = ""  # the reference's speaker, e.g. "vctk:p228" (the README's table), "" when unknown
    gender: str = ""  # "female" or "male" where the README's kind says so


@dataclass(frozen=True)
class ExampleVoice:
    """One reference speaker of the examples, with all its clips."""

    label: str  # e.g. "p228 (female, VCTK)"
    references: tuple[Path, ...]


CORPUS_NAMES = {"vctk": "VCTK", "libri": "LibriSpeech", "cmu_arctic": "CMU ARCTIC", "vcc2016": "VCC 2016"}


def _readme_rows(folder: Path) -> dict[str, tuple[str, str]]:
    """``{"01": ("male to female", "vctk:p228")}`` (kind, reference speaker) from the examples README table."""
    try:
        text = (folder / "README.md").read_text(encoding="utf-8")
    except OSError:
        return {}
    rows = {}
    for m in re.finditer(r"^\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|(.*)$", text, re.M):
        cells = [c.strip() for c in m.group(3).split("|")]
        speaker = cells[1].split(",")[0].strip() if len(cells) > 1 else ""
        rows.setdefault(m.group(1), (m.group(2).strip(), speaker if ":" in speaker else ""))
    return rows


def _gender(kind: str) -> str:
    """The target's gender where the kind names it ("male to female" -> "female")."""
    last = kind.rsplit(" to ", 1)[-1].strip() if " to " in kind else ""
    return last if last in ("female", "male") else ""


def example_voices(examples: list[Example]) -> list[ExampleVoice]:
    """The examples' reference speakers, each once with all its clips, named by speaker."""
    groups: dict[str, list[Example]] = {}
    for e in examples:
        groups.setdefault(e.speaker or f"the voice of example {e.name}", []).append(e)
    out = []
    for speaker, group in groups.items():
        corpus, _, ident = speaker.rpartition(":")
        gender = next((e.gender for e in group if e.gender), "")
        detail = ", ".join(x for x in (gender, CORPUS_NAMES.get(corpus, corpus)) if x)
        label = f"{ident} ({detail})" if detail else ident
        out.append(ExampleVoice(label, tuple(dict.fromkeys(e.reference for e in group))))
    return out


def list_examples(folder: str | os.PathLike = EXAMPLES_DIR, fallback_data: str | os.PathLike | None = SHARED_DATA) -> list[Example]:
    """The example swaps in ``folder`` (``NN_kind_source.wav`` + ``NN_kind_reference.wav``).

    When there are none, a few pairs of validation speakers from
    ``fallback_data`` (``shared/data`` beside the checkout) stand in, where
    those files exist.
    """
    folder = Path(folder)
    out = []
    rows = _readme_rows(folder)
    for src in sorted(folder.glob("*_source.wav")) if folder.is_dir() else []:
        name = src.name[: -len("_source.wav")]
        ref = folder / f"{name}_reference.wav"
        if not ref.is_file():
            continue
        conv = folder / f"{name}_converted.wav"
        num, _, kind = name.partition("_")
        kind, speaker = rows.get(num, (kind.replace("2", " to "), ""))
        label = f"{num} {kind}" if kind else name
        out.append(Example(name, label, src, ref, conv if conv.is_file() else None, speaker, _gender(kind)))
    if out or fallback_data is None:
        return out
    data = Path(fallback_data)
    for i, (kind, s, r) in enumerate(FALLBACK_PAIRS, 1):
        if (data / s).is_file() and (data / r).is_file():
            words = kind.replace("2", " to ")
            label = f"{i:02d} {words} ({Path(s).parent.name} to {Path(r).parent.name})"
            out.append(Example(f"{i:02d}_{kind}", label, data / s, data / r, None, f"{Path(r).parts[0]}:{Path(r).parent.name}", _gender(words)))
    return out
