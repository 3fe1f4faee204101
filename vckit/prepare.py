"""Corpus preparation shared by the recipes and by fine-tuning.

Each recipe's ``prepare.py`` only knows its corpus's layout: it turns the
files into rows (``{"path", "speaker", "duration", ...}``) and hands them to
:func:`prepare`, which holds some speakers out for validation, writes
``train.jsonl`` / ``valid.jsonl`` and computes the feature cache (in several
processes for the large corpora) and, with ``--frame-features``, the
per-frame F0 and phonetic-teacher features beside it
(:mod:`vckit.frame_features`), which models with an F0 path
(``model.f0.enabled``) or phonetic input (``model.content.input: phonetic``)
need.
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


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _frame_arrays_to_carry(folders: Sequence[Path], indexes: list[dict[str, Any]], frame_features: Sequence[str] | None) -> list[str]:
    """The per-frame arrays a merge or subset of ``folders`` carries (see :func:`merge_feature_caches`).

    Checks that each carried array has one row per cached frame, the same
    dtype and row shape in every input, and that the inputs' teacher
    projections agree; raises :class:`VckitError` otherwise.
    """
    import numpy as np

    from vckit.frame_features import FRAME_ARRAYS, PROJECTION_FILE, frame_arrays, load_projection, same_projection

    counted = [(f, ix) for f, ix in zip(folders, indexes) if ix["frames"] > 0] or list(zip(folders, indexes))
    have = {f: set(frame_arrays(f)) for f, _ in counted}
    if frame_features is None:
        names = [n for n in FRAME_ARRAYS if any(n in h for h in have.values())]
        for n in names:
            lacking = [str(f) for f, h in have.items() if n not in h]
            if lacking:
                owner = next(f for f, h in have.items() if n in h)
                raise VckitError(
                    f"feature cache {owner} has {n}.npy but {lacking[0]} has not: compute the frame features for all "
                    "of them (prepare.py --frame-features) or leave them out (frame_features=())"
                )
    else:
        names = list(frame_features)
        unknown = [n for n in names if n not in FRAME_ARRAYS]
        if unknown:
            raise VckitError(f"unknown per-frame array {unknown[0]!r}: the cache holds {', '.join(FRAME_ARRAYS)}")
        for n in names:
            lacking = [str(f) for f, h in have.items() if n not in h]
            if lacking:
                raise VckitError(f"feature cache {lacking[0]} has no {n}.npy (compute the frame features: prepare.py --frame-features)")
    for n in names:
        first = None
        for f, ix in counted:
            arr = np.load(f / f"{n}.npy", mmap_mode="r")
            if arr.shape[0] != ix["frames"]:
                raise VckitError(f"feature cache {f}: {n}.npy has {arr.shape[0]} frames, the index {ix['frames']}: compute the frame features again")
            if first is None:
                first = (f, arr.dtype, arr.shape[1:])
            elif (arr.dtype, arr.shape[1:]) != first[1:]:
                raise VckitError(f"feature caches {first[0]} and {f} store {n}.npy differently ({first[1]} {first[2]} vs {arr.dtype} {arr.shape[1:]} per frame)")
    if "phonetic" in names:
        ref_folder = counted[0][0]
        if not (ref_folder / PROJECTION_FILE).is_file():
            raise VckitError(f"feature cache {ref_folder} has phonetic.npy but no {PROJECTION_FILE}: compute the frame features again")
        ref = load_projection(ref_folder)
        for f, _ in counted[1:]:
            if not same_projection(load_projection(f), ref):
                raise VckitError(f"feature caches {ref_folder} and {f} project the phonetic teacher differently: compute the frame features of one with the other's projection")
    return names


def merge_feature_caches(
    folders: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    frame_features: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Copy feature caches back to back into one (``out_dir/mels.npy`` + ``index.json``).

    The per-frame arrays of :mod:`vckit.frame_features` (``f0``,
    ``phonetic``, ``posteriors_idx``, ``posteriors_p``) follow the mels, row
    for row, with the first input's ``phonetic.json``. ``frame_features``
    says which: None, those the inputs have (every input holding frames
    must have the same ones); a sequence of names, exactly these; ``()``,
    the mels only. Every file is written atomically, ``index.json`` last.

    The copy goes through a memory map, so the caches never have to fit in
    memory twice. Raises :class:`VckitError` if their mel configs differ,
    they hold no frames at all, only some of them have a per-frame array
    (with ``frame_features=None``), one lacks an asked-for array, or their
    phonetic projections differ.
    """
    import numpy as np

    from vckit.frame_features import PROJECTION_FILE, remove_frame_features

    folders = [Path(f) for f in folders]
    out_dir = Path(out_dir)
    if any(f.resolve() == out_dir.resolve() for f in folders):
        raise VckitError(f"cannot merge feature caches into one of them ({out_dir}): give another output folder")
    indexes = [json.loads((f / "index.json").read_text()) for f in folders]
    for f, ix in zip(folders, indexes):
        if ix["mel"] != indexes[0]["mel"]:
            raise VckitError(f"feature cache {f} was made with another mel config than {folders[0]}")
    total = sum(ix["frames"] for ix in indexes)
    if total == 0:
        raise VckitError("no usable audio in the manifest")
    names = _frame_arrays_to_carry(folders, indexes, frame_features)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_frame_features(out_dir, keep=names)
    for name in ["mels", *names]:
        shape: tuple[int, ...] = (int(indexes[0]["mel"]["n_mels"]),)
        dtype: Any = np.uint8
        if name != "mels":
            first = np.load(next(f for f, ix in zip(folders, indexes) if ix["frames"] > 0) / f"{name}.npy", mmap_mode="r")
            shape, dtype = first.shape[1:], first.dtype
        tmp = out_dir / f"{name}.npy.tmp"
        merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(total, *shape))
        offset = 0
        for folder, ix in zip(folders, indexes):
            if ix["frames"]:
                merged[offset : offset + ix["frames"]] = np.load(folder / f"{name}.npy", mmap_mode="r")
            offset += ix["frames"]
        merged.flush()
        del merged
        os.replace(tmp, out_dir / f"{name}.npy")
    if "phonetic" in names:
        src = next(f for f, ix in zip(folders, indexes) if ix["frames"] > 0)
        _write_text(out_dir / PROJECTION_FILE, (src / PROJECTION_FILE).read_text())
    utts: list[dict[str, Any]] = []
    skipped: list[str] = []
    offset = 0
    for ix in indexes:
        utts += [{**u, "offset": u["offset"] + offset} for u in ix["utterances"]]
        skipped += ix["skipped"]
        offset += ix["frames"]
    index = {**indexes[0], "frames": total, "utterances": utts, "skipped": skipped}
    _write_text(out_dir / "index.json", json.dumps(index, indent=1))
    return index


def subset_feature_cache(
    folder: str | os.PathLike,
    paths: set[str],
    out_dir: str | os.PathLike,
    *,
    frame_features: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A new cache in ``out_dir`` with only the utterances of ``folder`` whose path is in ``paths``.

    The per-frame arrays of :mod:`vckit.frame_features` follow the mels
    (with ``phonetic.json``): ``frame_features=None`` carries those the
    cache has, a sequence of names exactly these (:class:`VckitError` if
    one is missing), ``()`` none. Files are written atomically, ``index.json`` last.
    """
    import numpy as np

    from vckit.frame_features import PROJECTION_FILE, remove_frame_features

    folder, out_dir = Path(folder), Path(out_dir)
    if folder.resolve() == out_dir.resolve():
        raise VckitError(f"cannot subset the feature cache {folder} in place: give another output folder")
    index = json.loads((folder / "index.json").read_text())
    names = _frame_arrays_to_carry([folder], [index], frame_features)
    keep = [u for u in index["utterances"] if u["path"] in paths]
    total = sum(u["frames"] for u in keep)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_frame_features(out_dir, keep=names)
    for name in ["mels", *names]:
        src = np.load(folder / f"{name}.npy", mmap_mode="r")
        tmp = out_dir / f"{name}.npy.tmp"
        dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=(total, *src.shape[1:]))
        offset = 0
        for u in keep:
            dst[offset : offset + u["frames"]] = src[u["offset"] : u["offset"] + u["frames"]]
            offset += u["frames"]
        dst.flush()
        del dst
        os.replace(tmp, out_dir / f"{name}.npy")
    if "phonetic" in names:
        _write_text(out_dir / PROJECTION_FILE, (folder / PROJECTION_FILE).read_text())
    utts, offset = [], 0
    for u in keep:
        utts.append({**u, "offset": offset})
        offset += u["frames"]
    index = {**index, "frames": total, "utterances": utts, "skipped": []}
    _write_text(out_dir / "index.json", json.dumps(index))
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
    frame_features: bool = False,
    workers: int = 1,
    mel: MelConfig | None = None,
    progress: bool = True,
) -> list[str]:
    """Split ``rows``, write ``out/train.jsonl``, ``out/valid.jsonl`` and ``out/features/``.

    With ``frame_features``, the per-frame F0 and phonetic-teacher features
    are computed after the mels, into the same folder (see
    :func:`vckit.frame_features.cache_frame_features`; the teacher's PCA
    projection is fitted on the training rows only). Models with an F0 path
    (``model.f0.enabled``) or phonetic input (``model.content.input:
    phonetic``) need them; the others ignore them.

    Returns the summary lines a recipe prints. Raises :class:`VckitError` if
    ``rows`` is empty, or if ``frame_features`` is asked for without ``features``.
    """
    if not rows:
        raise VckitError("no audio found to prepare")
    if frame_features and not features:
        raise VckitError("the frame features are computed beside the mel features: ask for both, or for neither")
    out = Path(out)
    train, held = split_speakers(rows, valid, n_valid)
    write_manifest(train, out / "train.jsonl")
    write_manifest(held, out / "valid.jsonl")
    lines = [describe("train", train), describe("valid", held) if held else "valid: none (train with --set data.valid_manifest='')"]
    if features:
        from vckit.frame_features import remove_frame_features

        remove_frame_features(out / "features")  # those of an earlier run would not match the new mels
        index = cache_features_parallel(train + held, mel or MelConfig(), out / "features", workers, progress)
        lines.append(f"features: {index['frames']} frames in {out / 'features'} ({len(index['skipped'])} skipped)")
    if frame_features:
        lines.append(add_frame_features(out / "features", train, threads=workers, progress=progress))
    return lines


def add_frame_features(features: str | os.PathLike, train: list[dict[str, Any]], *, threads: int = 1, progress: bool = True) -> str:
    """Compute the F0 and phonetic-teacher features of the cache in
    ``features`` (the PCA fitted on the ``train`` rows); returns the summary line."""
    from vckit.frame_features import cache_frame_features

    s = cache_frame_features(features, fit_paths=[r["path"] for r in train], threads=max(1, threads), progress=progress)
    return f"frame features: F0 ({s['voiced']:.0%} of frames voiced) and the phonetic teacher ({s['explained_variance']:.0%} of its variance kept) in {s['seconds']:.0f} s"


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
    ap.add_argument(
        "--frame-features",
        action="store_true",
        help="also cache per-frame F0 and phonetic-teacher features (needed by models with an F0 path or phonetic input)",
    )
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
        lines = prepare(
            rows,
            args.out,
            valid=held,
            n_valid=args.n_valid,
            features=not args.no_features,
            frame_features=args.frame_features,
            workers=args.workers,
            progress=not args.quiet,
        )
    except VckitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in lines:
        print(line, file=out)
    return 0
