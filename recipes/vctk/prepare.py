"""Manifests and the feature cache for VCTK 0.92 (110 speakers), from where you put it.

    python recipes/vctk/prepare.py --data /path/to/VCTK-Corpus-0.92 --out cache/vctk

VCTK is not downloaded here: get ``VCTK-Corpus-0.92.zip`` from the
Edinburgh DataShare (CC BY 4.0) and unzip it. This reads the layout of that
release, the silence-trimmed 48 kHz FLACs:

    wav48_silence_trimmed/p225/p225_001_mic1.flac   (and _mic2: --mic)
    txt/p225/p225_001.txt                           (p315 has no text)
    speaker-info.txt                                (ID AGE GENDER ACCENTS REGION COMMENTS)

and the older 0.80 layout (``wav48/p225/p225_001.wav``) when there is no
``wav48_silence_trimmed``. Eight speakers (4 F / 4 M, four of them the
VCTK speakers held out in ``recipes/shared_dev``) are kept for validation.

``--frame-features`` also caches each frame's F0 and the phonetic teacher's
features beside the mels: models with an F0 path (``model.f0.enabled``) or
phonetic input (``model.content.input: phonetic``) need them.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

from vckit.errors import VckitError
from vckit.data.manifest import audio_row
from vckit.data.prepare import recipe_parser, run_recipe

VALID_SPEAKERS = ["p226", "p228", "p232", "p249", "p256", "p262", "p272", "p294"]
UTT = re.compile(r"^(?P<spk>[ps]\d+)_(?P<num>\d+)(?:_(?P<mic>mic[12]))?$")


def corpus_root(data: Path) -> Path:
    """The folder holding ``wav48_silence_trimmed`` (or ``wav48``): ``data`` or the one folder inside it."""
    for root in (data, *sorted(p for p in data.iterdir() if p.is_dir())):
        if (root / "wav48_silence_trimmed").is_dir() or (root / "wav48").is_dir():
            return root
    raise VckitError(f"no VCTK under {data}: expected wav48_silence_trimmed/ (VCTK 0.92) or wav48/ (0.80)")


def read_genders(path: Path) -> dict[str, str]:
    """Speaker -> F/M from ``speaker-info.txt`` (0.92 writes ``p225``, 0.80 ``225``)."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[2] in ("F", "M"):
            spk = parts[0] if parts[0][0] in "ps" else f"p{parts[0]}"
            out[spk] = parts[2]
    return out


def collect(data: Path, mic: str = "mic1") -> list[dict[str, Any]]:
    if not data.is_dir():
        raise VckitError(f"data folder not found: {data}")
    root = corpus_root(data)
    wav_dir = root / "wav48_silence_trimmed" if (root / "wav48_silence_trimmed").is_dir() else root / "wav48"
    genders = read_genders(root / "speaker-info.txt")
    rows = []
    for path in sorted(p for p in wav_dir.glob("*/*") if p.suffix in (".flac", ".wav")):
        m = UTT.match(path.stem)
        if not m or (m["mic"] and mic != "both" and m["mic"] != mic):
            continue
        spk, utt = m["spk"], f"{m['spk']}_{m['num']}"
        txt = root / "txt" / spk / f"{utt}.txt"
        text = txt.read_text(errors="replace").strip() if txt.is_file() else ""
        row = audio_row(path, spk, corpus="vctk", gender=genders.get(spk, ""), text=text)
        if row:
            rows.append({**row, "utt_id": path.stem})
    if not rows:
        raise VckitError(f"no VCTK recordings ({mic}) under {wav_dir}")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = recipe_parser(__doc__, "cache/vctk")
    ap.add_argument("--mic", choices=["mic1", "mic2", "both"], default="mic1", help="which of 0.92's two microphones")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return run_recipe(args, lambda: (collect(Path(args.data), args.mic), VALID_SPEAKERS))


if __name__ == "__main__":
    sys.exit(main())
