"""Corpus preparation shared by the recipes and by fine-tuning.

Each recipe's ``prepare.py`` only knows its corpus's layout: it turns the
files into rows (``{"path", "speaker", "duration", ...}``) and hands them to
:func:`prepare`, which holds some speakers out for validation, writes
``train.jsonl`` / ``valid.jsonl`` and computes the feature cache (in several
processes for the large corpora).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TextIO

from vckit.config import MelConfig, to_dict
from vckit.data import AUDIO_EXTS, QUANT_HI, QUANT_LO, cache_features, manifest_from_csv, manifest_from_folder, write_manifest
from vckit.errors import VckitError

log = logging.getLogger(__name__)


# -- rows -----------------------------------------------------------------
def audio_row(path: str | os.PathLike, speaker: str, **extra: Any) -> dict[str, Any] | None:
    """A manifest row with the file's duration, or None (with a warning) if soundfile cannot read it."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
        duration = info.frames / info.samplerate
    except Exception:
        log.warning("skipping unreadable file %s", path)
        return None
    return {"path": str(path), "speaker": speaker, "duration": round(duration, 3), "utt_id": Path(path).stem, **extra}


def audio_files(root: str | os.PathLike) -> list[Path]:
    """Every audio file under ``root``, sorted."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in AUDIO_EXTS and p.is_file())


def rows_from_folder(root: str | os.PathLike, speaker: str | None = None) -> list[dict[str, Any]]:
    """Rows for a folder of recordings.

    With ``speaker``, every audio file under ``root`` (at any depth) is that
    speaker's; without, the first folder level names the speaker
    (``root/<speaker>/...``). Raises :class:`VckitError` when there is no
    readable audio.
    """
    root = Path(root)
    if not root.is_dir():
        raise VckitError(f"data folder not found: {root}")
    if speaker is None:
        return manifest_from_folder(root)
    rows = [r for r in (audio_row(p, speaker) for p in audio_files(root)) if r]
    if not rows:
        raise VckitError(f"no readable audio files ({', '.join(AUDIO_EXTS)}) under {root}")
    return rows


def rows_from_csv(csv_path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Rows of a CSV with ``path`` and ``speaker`` columns (more columns are kept);
    durations are read from the files where the CSV has none."""
    rows = []
    for r in manifest_from_csv(csv_path, root):
        if "duration" not in r:
            full = audio_row(r["path"], r["speaker"])
            if full is None:
                continue
            r = {**full, **r, "duration": full["duration"]}
        rows.append(r)
    if not rows:
        raise VckitError(f"{csv_path} lists no readable audio")
    return rows


# -- splits ---------------------------------------------------------------
def split_speakers(rows: list[dict[str, Any]], valid: Sequence[str] = (), n_valid: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, valid) rows; validation speakers are never trained on.

    ``valid`` names the held-out speakers (those missing from ``rows`` are
    ignored); when none of them is present, ``n_valid`` speakers spread
    evenly over the sorted speaker list are held out instead, at most a
    quarter of them (so a corpus of fewer than four speakers has none).
    """
    speakers = sorted({r["speaker"] for r in rows})
    held = [s for s in valid if s in speakers]
    n = min(n_valid, len(speakers) // 4)
    if not held and n > 0:
        held = [speakers[(2 * i + 1) * len(speakers) // (2 * n)] for i in range(n)]
    held_set = set(held)
    return [r for r in rows if r["speaker"] not in held_set], [r for r in rows if r["speaker"] in held_set]


def describe(name: str, rows: list[dict[str, Any]]) -> str:
    """One line: files, speakers (by gender where known) and minutes."""
    first = {r["speaker"]: r for r in rows}
    genders = collections.Counter(r.get("gender") or "?" for r in first.values())
    minutes = sum(float(r.get("duration", 0.0)) for r in rows) / 60
    g = ", ".join(f"{k} {v}" for k, v in sorted(genders.items()))
    return f"{name}: {len(rows)} files, {len(first)} speakers ({g}), {minutes:.1f} min"


# -- features -------------------------------------------------------------
def _cache_shard(args: tuple[list[dict[str, Any]], MelConfig, str]) -> str:
    import numpy as np

    rows, mel, out = args
    try:
        cache_features(rows, mel, out, progress=False)
    except VckitError:  # no usable file in this shard: an empty cache that lists them as skipped
        Path(out).mkdir(parents=True, exist_ok=True)
        np.save(Path(out) / "mels.npy", np.zeros((0, mel.n_mels), dtype=np.uint8))
        index = {"mel": to_dict(mel), "quant": [QUANT_LO, QUANT_HI], "frames": 0, "utterances": [], "skipped": [r["path"] for r in rows]}
        (Path(out) / "index.json").write_text(json.dumps(index))
    return out


def merge_feature_caches(folders: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> dict[str, Any]:
    """Copy feature caches back to back into one (``out_dir/mels.npy`` + ``index.json``).

    The copy goes through a memory map, so the caches never have to fit in
    memory twice. Raises :class:`VckitError` if their mel configs differ or
    they hold no frames at all.
    """
    import numpy as np

    out_dir = Path(out_dir)
    indexes = [json.loads((Path(f) / "index.json").read_text()) for f in folders]
    for f, ix in zip(folders, indexes):
        if ix["mel"] != indexes[0]["mel"]:
            raise VckitError(f"feature cache {f} was made with another mel config than {folders[0]}")
    total = sum(ix["frames"] for ix in indexes)
    if total == 0:
        raise VckitError("no usable audio in the manifest")
    out_dir.mkdir(parents=True, exist_ok=True)
    merged = np.lib.format.open_memmap(out_dir / "mels.npy.tmp", mode="w+", dtype=np.uint8, shape=(total, int(indexes[0]["mel"]["n_mels"])))
    utts: list[dict[str, Any]] = []
    skipped: list[str] = []
    offset = 0
    for folder, ix in zip(folders, indexes):
        merged[offset : offset + ix["frames"]] = np.load(Path(folder) / "mels.npy", mmap_mode="r")
        utts += [{**u, "offset": u["offset"] + offset} for u in ix["utterances"]]
        skipped += ix["skipped"]
        offset += ix["frames"]
    merged.flush()
    del merged
    os.replace(out_dir / "mels.npy.tmp", out_dir / "mels.npy")
    index = {**indexes[0], "frames": total, "utterances": utts, "skipped": skipped}
    (out_dir / "index.json").write_text(json.dumps(index, indent=1))
    return index


def subset_feature_cache(folder: str | os.PathLike, paths: set[str], out_dir: str | os.PathLike) -> dict[str, Any]:
    """A new cache in ``out_dir`` with only the utterances of ``folder`` whose path is in ``paths``."""
    import numpy as np

    folder, out_dir = Path(folder), Path(out_dir)
    index = json.loads((folder / "index.json").read_text())
    keep = [u for u in index["utterances"] if u["path"] in paths]
    total = sum(u["frames"] for u in keep)
    src = np.load(folder / "mels.npy", mmap_mode="r")
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = np.lib.format.open_memmap(out_dir / "mels.npy", mode="w+", dtype=np.uint8, shape=(total, src.shape[1]))
    utts, offset = [], 0
    for u in keep:
        dst[offset : offset + u["frames"]] = src[u["offset"] : u["offset"] + u["frames"]]
        utts.append({**u, "offset": offset})
        offset += u["frames"]
    dst.flush()
    del dst
    index = {**index, "frames": total, "utterances": utts, "skipped": []}
    (out_dir / "index.json").write_text(json.dumps(index))
    return index


def spread_rows(rows: list[dict[str, Any]], max_seconds: float) -> list[dict[str, Any]]:
    """At most ``max_seconds`` of ``rows``, taken round-robin over the speakers
    (each speaker's first utterance, then each one's second, ...)."""
    by_spk: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_spk.setdefault(r["speaker"], []).append(r)
    out: list[dict[str, Any]] = []
    total, i = 0.0, 0
    while total < max_seconds and any(i < len(v) for v in by_spk.values()):
        for spk in sorted(by_spk):
            if i < len(by_spk[spk]) and total < max_seconds:
                out.append(by_spk[spk][i])
                total += float(by_spk[spk][i].get("duration", 0.0))
        i += 1
    return out


def cache_features_parallel(rows: list[dict[str, Any]], mel: MelConfig, out_dir: str | os.PathLike, workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """:func:`vckit.data.cache_features` in ``workers`` processes: the rows are
    cut into contiguous shards, each cached into a temporary folder, then
    merged with :func:`merge_feature_caches`."""
    if workers <= 1 or len(rows) < 2 * workers:
        return cache_features(rows, mel, out_dir, progress=progress)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_shards = min(len(rows), workers * 4)
    bounds = [len(rows) * i // n_shards for i in range(n_shards + 1)]
    tmp = Path(tempfile.mkdtemp(prefix=".shards-", dir=out_dir))
    try:
        jobs = [(rows[a:b], mel, str(tmp / f"{i:04d}")) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:  # no fork of a threaded torch
            it: Iterable = pool.map(_cache_shard, jobs)
            if progress:
                from tqdm import tqdm

                it = tqdm(it, total=len(jobs), desc="features", unit="shard")
            shards = list(it)
        return merge_feature_caches(shards, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare(
    rows: list[dict[str, Any]],
    out: str | os.PathLike,
    *,
    valid: Sequence[str] = (),
    n_valid: int = 0,
    features: bool = True,
    workers: int = 1,
    mel: MelConfig | None = None,
    progress: bool = True,
) -> list[str]:
    """Split ``rows``, write ``out/train.jsonl``, ``out/valid.jsonl`` and ``out/features/``.

    Returns the summary lines a recipe prints. Raises :class:`VckitError` if
    ``rows`` is empty.
    """
    if not rows:
        raise VckitError("no audio found to prepare")
    out = Path(out)
    train, held = split_speakers(rows, valid, n_valid)
    write_manifest(train, out / "train.jsonl")
    write_manifest(held, out / "valid.jsonl")
    lines = [describe("train", train), describe("valid", held) if held else "valid: none (train with --set data.valid_manifest='')"]
    if features:
        index = cache_features_parallel(train + held, mel or MelConfig(), out / "features", workers, progress)
        lines.append(f"features: {index['frames']} frames in {out / 'features'} ({len(index['skipped'])} skipped)")
    return lines


# -- the command line of recipes/*/prepare.py -----------------------------
def recipe_parser(doc: str | None, default_out: str) -> argparse.ArgumentParser:
    """The options every recipe's ``prepare.py`` shares; a recipe may add its own."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="where you put the corpus (it is not downloaded)")
    ap.add_argument("--out", default=default_out, help="where manifests and features go")
    ap.add_argument("--valid-speakers", nargs="*", default=None, metavar="SPK", help="speakers held out for validation (default: the recipe's list)")
    ap.add_argument("--n-valid", type=int, default=8, help="speakers held out when none of --valid-speakers is present")
    ap.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 1))), help="processes computing features")
    ap.add_argument("--limit", type=int, default=0, help="keep only N files spread over the corpus (for quick tests)")
    ap.add_argument("--no-features", action="store_true", help="write manifests only")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def run_recipe(args: argparse.Namespace, collect: Callable[[], tuple[list[dict[str, Any]], Sequence[str]]], out: TextIO | None = None) -> int:
    """Collect ``(rows, validation speakers)``, prepare them as ``args`` says,
    write the summary to ``out`` (default stdout); a :class:`VckitError`
    becomes one line on stderr and exit code 2."""
    import sys

    out = out or sys.stdout
    try:
        rows, valid = collect()
        if args.limit:
            rows = rows[:: max(1, len(rows) // args.limit)][: args.limit]
        held = valid if args.valid_speakers is None else args.valid_speakers
        lines = prepare(rows, args.out, valid=held, n_valid=args.n_valid, features=not args.no_features, workers=args.workers, progress=not args.quiet)
    except VckitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in lines:
        print(line, file=out)
    return 0
