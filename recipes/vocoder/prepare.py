"""Build the waveform cache the fast vocoder trains on.

    python recipes/vocoder/prepare.py                                   # the VC recipe's manifests
    python recipes/vocoder/prepare.py --max-minutes 20 --flac           # a subset small enough to carry to a GPU
    python recipes/vocoder/prepare.py --data /path/to/wavs --out cache/my_vocoder

By default it reads the shared_dev manifests (``cache/shared_dev/train.jsonl``
and ``valid.jsonl``; run ``recipes/shared_dev/prepare.py --no-features`` first
if they are missing), so the vocoder holds out the same speakers as the VC
model. With ``--data`` it takes every audio file under a folder instead and
holds out every ``--valid-every``-th file. Each file is read with
``vckit.audio.load_audio`` at 22050 Hz (mono, trimmed, loudness-normalised)
and stored as int16 in ``OUT/wavs.npy`` (or ``OUT/wavs.flac``) with
``OUT/index.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vckit.config import MelConfig
from vckit.data.manifest import AUDIO_EXTS, read_manifest
from vckit.errors import VckitError
from vckit.data.waves import write_wave_cache


def folder_rows(root: Path, valid_every: int) -> dict[str, list[dict]]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTS)
    if not files:
        raise VckitError(f"no audio files ({', '.join(AUDIO_EXTS)}) under {root}")
    rows = [{"path": str(p), "speaker": p.parent.name} for p in files]
    valid = rows[valid_every - 1 :: valid_every] if valid_every > 0 else []
    taken = {r["path"] for r in valid}
    return {"train": [r for r in rows if r["path"] not in taken], "valid": valid}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default="cache/shared_dev/train.jsonl", help="training manifest (JSONL rows with 'path')")
    ap.add_argument("--valid", default="cache/shared_dev/valid.jsonl", help="validation manifest")
    ap.add_argument("--data", default=None, help="take every audio file under this folder instead of the manifests")
    ap.add_argument("--valid-every", type=int, default=20, help="with --data: every N-th file is held out")
    ap.add_argument("--out", default="cache/vocoder", help="cache folder to write")
    ap.add_argument("--max-minutes", type=float, default=0.0, help="cap the training audio (a seeded random subset); 0 = all")
    ap.add_argument("--max-valid-minutes", type=float, default=3.0, help="cap the validation audio; 0 = all")
    ap.add_argument("--flac", action="store_true", help="store one FLAC file (about half the bytes) instead of .npy")
    ap.add_argument("--seed", type=int, default=0, help="seed of the subset order")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    sr = MelConfig().sample_rate
    try:
        if args.data:
            splits = folder_rows(Path(args.data), args.valid_every)
        else:
            splits = {"train": read_manifest(args.train), "valid": read_manifest(args.valid)}
        caps = {"train": args.max_minutes, "valid": args.max_valid_minutes}
        index = write_wave_cache(splits, args.out, sr, max_minutes=caps, flac=args.flac, seed=args.seed)
    except VckitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    size = (out / index["file"]).stat().st_size
    for split in ("train", "valid"):
        utts = [u for u in index["utterances"] if u["split"] == split]
        minutes = sum(u["length"] for u in utts) / sr / 60
        print(f"{split}: {len(utts)} files, {minutes:.1f} min")
    print(f"{out / index['file']}: {size / 2**20:.1f} MiB ({len(index['skipped'])} files skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
