"""The demo's example swaps: ``checkpoints/examples`` (or a few validation pairs of ``shared/data``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO_ROOT / "checkpoints" / "examples"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# used when checkpoints/examples holds no examples: (name, source, reference) under shared/data
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


def _readme_labels(folder: Path) -> dict[str, str]:
    """``{"01": "male to female"}`` from the examples README table, if there is one."""
    try:
        text = (folder / "README.md").read_text(encoding="utf-8")
    except OSError:
        return {}
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|", text, re.M)}


def list_examples(folder: str | os.PathLike = EXAMPLES_DIR, fallback_data: str | os.PathLike | None = SHARED_DATA) -> list[Example]:
    """The example swaps in ``folder`` (``NN_kind_source.wav`` + ``NN_kind_reference.wav``).

    When there are none, a few pairs of validation speakers from
    ``fallback_data`` (``shared/data`` beside the checkout) stand in, where
    those files exist.
    """
    folder = Path(folder)
    out = []
    labels = _readme_labels(folder)
    for src in sorted(folder.glob("*_source.wav")) if folder.is_dir() else []:
        name = src.name[: -len("_source.wav")]
        ref = folder / f"{name}_reference.wav"
        if not ref.is_file():
            continue
        conv = folder / f"{name}_converted.wav"
        num, _, kind = name.partition("_")
        label = f"{num} {labels.get(num, kind.replace('2', ' to '))}" if kind else name
        out.append(Example(name, label, src, ref, conv if conv.is_file() else None))
    if out or fallback_data is None:
        return out
    data = Path(fallback_data)
    for i, (kind, s, r) in enumerate(FALLBACK_PAIRS, 1):
        if (data / s).is_file() and (data / r).is_file():
            out.append(Example(f"{i:02d}_{kind}", f"{i:02d} {kind.replace('2', ' to ')} ({Path(s).parent.name} to {Path(r).parent.name})", data / s, data / r))
    return out
