"""Build manifests and the feature cache for ../shared/data (all eleven corpora).

    python recipes/shared_dev/prepare.py --data ../shared/data --out cache/shared_dev [--frame-features]

Writes ``train.jsonl`` and ``valid.jsonl`` (validation speakers are never
trained on: both genders, several corpora) and ``features/`` (log-mels of every
utterance, computed once). The same person in two corpora (VCTK p225-p228,
LibriSpeech 1088 and 6415) gets one speaker id.

``--frame-features`` also caches each frame's F0 and the phonetic teacher's
features beside the mels (the teacher's PCA fitted on the training speakers):
models with an F0 path (``model.f0.enabled``) or phonetic input
(``model.content.input: phonetic``) need them.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
from pathlib import Path

from vckit.config import MelConfig
from vckit.data.features import cache_features
from vckit.data.manifest import manifest_from_csv, write_manifest
from vckit.errors import VckitError
from vckit.data.frame_features import remove_frame_features
from vckit.data.prepare import add_frame_features

# held-out speakers: (speaker id, gender); chosen across corpora and genders,
# with enough audio to convert and measure on
VALID_SPEAKERS = {
    "vcc2016:SF1": "F", "vcc2016:SM1": "M",  # parallel with the VCC training speakers
    "vctk:p228": "F", "vctk:p226": "M",
    "vctk:p249": "F", "vctk:p232": "M",
    "libri:225": "F", "libri:296": "M",
    "cmu_arctic:ljm": "F", "cmu_arctic:rms": "M",
    "fsdd:lucas": "M",
    # ten one-utterance LibriSpeech readers (genders from SPEAKERS.TXT; the
    # manifests take theirs from metadata.csv, these labels are documentation)
    "libri:1069": "F", "libri:1088": "F", "libri:1116": "F", "libri:1098": "F", "libri:1183": "F",
    "libri:1034": "M", "libri:1040": "M", "libri:1081": "M", "libri:118": "M", "libri:1235": "M",
}

FAMILY = {
    "vctk": "vctk", "vctk_autovc16k": "vctk", "vctk_more": "vctk",
    "librispeech_train_clean_100": "libri", "librispeech_more": "libri",
    "vcc2016": "vcc2016", "vcc2016_more": "vcc2016",
    "cmu_arctic_dev": "cmu_arctic",
}


def speaker_id(corpus: str, speaker: str) -> str:
    return f"{FAMILY.get(corpus, corpus)}:{speaker}"


def collect(data: Path) -> list[dict]:
    rows = []
    for meta in sorted(data.glob("*/metadata.csv")):
        corpus = meta.parent.name
        for r in manifest_from_csv(meta):
            rows.append({
                "path": r["path"],
                "speaker": speaker_id(corpus, r["speaker"]),
                "duration": r.get("duration", 0.0),
                "corpus": corpus,
                "gender": r.get("gender", ""),
                "utt_id": r.get("utt_id", Path(r["path"]).stem),
                "text": r.get("text", ""),
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", help="folder holding the corpora")
    ap.add_argument("--out", default="cache/shared_dev", help="where manifests and features go")
    ap.add_argument("--limit", type=int, default=0, help="keep only N files (for quick tests)")
    ap.add_argument("--no-features", action="store_true", help="write manifests only")
    ap.add_argument(
        "--frame-features",
        action="store_true",
        help="also cache per-frame F0 and phonetic-teacher features (needed by models with an F0 path or phonetic input)",
    )
    ap.add_argument("--threads", type=int, default=max(1, min(8, os.cpu_count() or 1)), help="threads of the phonetic teacher")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        print(f"error: data folder not found: {data}", file=sys.stderr)
        return 2
    if args.frame_features and args.no_features:
        print("error: the frame features are computed beside the mel features: drop --no-features", file=sys.stderr)
        return 2
    rows = collect(data)
    if not rows:
        print(f"error: no corpus with a metadata.csv under {data}", file=sys.stderr)
        return 2
    if args.limit:
        rows = rows[:: max(1, len(rows) // args.limit)][: args.limit]
    train = [r for r in rows if r["speaker"] not in VALID_SPEAKERS]
    valid = [r for r in rows if r["speaker"] in VALID_SPEAKERS]
    write_manifest(train, out / "train.jsonl")
    write_manifest(valid, out / "valid.jsonl")
    for name, part in (("train", train), ("valid", valid)):
        spk = collections.Counter(r["speaker"] for r in part)
        minutes = sum(r["duration"] for r in part) / 60
        genders = collections.Counter(r["gender"] for r in {r["speaker"]: r for r in part}.values())
        print(f"{name}: {len(part)} files, {len(spk)} speakers ({dict(genders)}), {minutes:.1f} min")
    if not args.no_features:
        remove_frame_features(out / "features")  # those of an earlier run would not match the new mels
        index = cache_features(rows, MelConfig(), out / "features")
        print(f"features: {index['frames']} frames in {out / 'features'} ({len(index['skipped'])} skipped)")
    if args.frame_features:
        try:
            print(add_frame_features(out / "features", train, threads=args.threads))
        except VckitError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
