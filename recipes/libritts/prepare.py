"""Manifests and the feature cache for LibriTTS or LibriTTS-R, from where you put it.

    python recipes/libritts/prepare.py --data /path/to/LibriTTS --out cache/libritts \
        --subsets train-clean-100 train-clean-360 --workers 16

LibriTTS is not downloaded here: get the subsets from OpenSLR (SLR60, or
SLR141 for LibriTTS-R; CC BY 4.0) and untar them into one folder. This reads
their layout:

    <subset>/<speaker>/<chapter>/<speaker>_<chapter>_<para>_<sent>.wav
    <subset>/<speaker>/<chapter>/<speaker>_<chapter>_<para>_<sent>.normalized.txt
    speakers.tsv                      (READER GENDER SUBSET NAME), or SPEAKERS.txt

The speakers of ``dev-clean`` (when it is there: ``--valid-subset``) are the
validation speakers, up to ``--valid-per-speaker`` utterances each; without
it, ``--n-valid`` training speakers are held out. Utterances shorter than
``--min-seconds`` are left out (LibriTTS has many sub-second ones).

``--frame-features`` also caches each frame's F0 and the phonetic teacher's
features beside the mels: models with an F0 path (``model.f0.enabled``) or
phonetic input (``model.content.input: phonetic``) need them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from vckit.errors import VckitError
from vckit.data.manifest import audio_row
from vckit.data.prepare import recipe_parser, run_recipe

SUBSETS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other", "test-clean", "test-other")


def corpus_root(data: Path, subsets: list[str]) -> Path:
    """``data`` or the folder inside it (``LibriTTS/``, ``LibriTTS_R/``) that holds the subsets."""
    for root in (data, *sorted(p for p in data.iterdir() if p.is_dir())):
        if any((root / s).is_dir() for s in subsets):
            return root
    raise VckitError(f"none of the subsets {', '.join(subsets)} is under {data}")


def read_genders(root: Path) -> dict[str, str]:
    """Speaker -> F/M from ``speakers.tsv`` (LibriTTS) or ``SPEAKERS.txt`` (LibriSpeech style)."""
    out: dict[str, str] = {}
    tsv, txt = root / "speakers.tsv", root / "SPEAKERS.txt"
    if tsv.is_file():
        for line in tsv.read_text(errors="replace").splitlines()[1:]:
            parts = line.split("\t")
            if len(parts) >= 2:
                out[parts[0].strip()] = parts[1].strip().upper()
    elif txt.is_file():
        for line in txt.read_text(errors="replace").splitlines():
            parts = [p.strip() for p in line.split("|")]
            if not line.startswith(";") and len(parts) >= 2:
                out[parts[0]] = parts[1].upper()
    return out


def collect_subset(root: Path, subset: str, genders: dict[str, str], min_seconds: float, per_speaker: int = 0) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    count: dict[str, int] = {}
    for path in sorted((root / subset).glob("*/*/*.wav")):
        spk = path.parts[-3]
        if per_speaker and count.get(spk, 0) >= per_speaker:
            continue
        norm = path.with_suffix(".normalized.txt")
        text = norm.read_text(errors="replace").strip() if norm.is_file() else ""
        row = audio_row(path, spk, corpus=f"libritts/{subset}", gender=genders.get(spk, ""), text=text)
        if row and row["duration"] >= min_seconds:
            rows.append(row)
            count[spk] = count.get(spk, 0) + 1
    return rows


def collect(data: Path, subsets: list[str], valid_subset: str, per_speaker: int, min_seconds: float) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, validation speakers)."""
    if not data.is_dir():
        raise VckitError(f"data folder not found: {data}")
    root = corpus_root(data, subsets)
    genders = read_genders(root)
    rows = [r for s in subsets if (root / s).is_dir() for r in collect_subset(root, s, genders, min_seconds)]
    if not rows:
        raise VckitError(f"no LibriTTS utterances of {min_seconds:g} s or more in {', '.join(subsets)} under {root}")
    valid: list[dict[str, Any]] = []
    if valid_subset and (root / valid_subset).is_dir():
        valid = collect_subset(root, valid_subset, genders, min_seconds, per_speaker)
    return rows + valid, sorted({r["speaker"] for r in valid})


def main(argv: list[str] | None = None) -> int:
    ap = recipe_parser(__doc__, "cache/libritts")
    ap.add_argument("--subsets", nargs="+", default=["train-clean-100", "train-clean-360"], choices=SUBSETS)
    ap.add_argument("--valid-subset", default="dev-clean", help="whose speakers validate ('' to hold out training speakers)")
    ap.add_argument("--valid-per-speaker", type=int, default=20)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return run_recipe(args, lambda: collect(Path(args.data), args.subsets, args.valid_subset, args.valid_per_speaker, args.min_seconds))


if __name__ == "__main__":
    sys.exit(main())
