"""Corpus preparation shared by the recipes and by fine-tuning.

Each recipe's ``prepare.py`` only knows its corpus's layout: it turns the
files into rows (``{"path", "speaker", "duration", ...}``) and hands them to
:func:`prepare`, which holds some speakers out for validation, writes
``train.jsonl`` / ``valid.jsonl`` and computes the feature cache (in several
processes for the large corpora) and, with ``--frame-features``, the
per-frame F0 and phonetic-teacher features beside it
(:mod:`vckit.data.frame_features`), which models with an F0 path
(``model.f0.enabled``) or phonetic input (``model.content.input: phonetic``)
need.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from vckit.config import MelConfig
from vckit.data.features import cache_features_parallel
from vckit.data.manifest import write_manifest
from vckit.errors import VckitError

log = logging.getLogger(__name__)



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
    genders = collections.Counter(r.get("gender") or "unknown" for r in first.values())
    minutes = sum(float(r.get("duration", 0.0)) for r in rows) / 60
    known = any(k != "unknown" for k in genders)  # nothing to say when no gender is known
    g = f" ({', '.join(f'{k} {v}' for k, v in sorted(genders.items()))})" if known else ""
    return f"{name}: {len(rows)} files, {len(first)} speakers{g}, {minutes:.1f} min"


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
    :func:`vckit.data.frame_features.cache_frame_features`; the teacher's PCA
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
    lines = [describe("train", train), describe("valid", held) if held else "valid: none (train with --set data.valid_manifest=)"]
    if features:
        from vckit.data.frame_features import remove_frame_features

        remove_frame_features(out / "features")  # those of an earlier run would not match the new mels
        index = cache_features_parallel(train + held, mel or MelConfig(), out / "features", workers, progress)
        lines.append(f"features: {index['frames']} frames in {out / 'features'} ({len(index['skipped'])} skipped)")
    if frame_features:
        lines.append(add_frame_features(out / "features", train, threads=workers, progress=progress))
    return lines


def add_frame_features(features: str | os.PathLike, train: list[dict[str, Any]], *, threads: int = 1, progress: bool = True) -> str:
    """Compute the F0 and phonetic-teacher features of the cache in
    ``features`` (the PCA fitted on the ``train`` rows); returns the summary line."""
    from vckit.data.frame_features import cache_frame_features

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
