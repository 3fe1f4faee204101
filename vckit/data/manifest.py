"""The one reader of data specs: folders of recordings, metadata CSVs, JSONL manifests.

A manifest is JSONL, one utterance a line: ``{"path", "speaker", "duration", ...}``
(extra keys such as ``gender`` or ``corpus`` are kept). :func:`read_data_spec`
takes any layout the toolkit knows and returns such rows with ``file``, the
resolved path; :data:`AUDIO_EXTS` is the one list of audio file extensions.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from vckit.errors import VckitError
from vckit.files import atomic_path

log = logging.getLogger(__name__)

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")
LIST_EXTS = (".jsonl", ".txt", ".csv", ".list")  # lists of source files for batch conversion


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
    """Every audio file under ``root`` (any depth), sorted."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in AUDIO_EXTS and p.is_file())


def manifest_from_folder(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows for every audio file under ``root/<speaker>/...``; the speaker is the first folder."""
    root = Path(root)
    if not root.is_dir():
        raise VckitError(f"data folder not found: {root}")
    files = [f for f in audio_files(root) if len(f.relative_to(root).parts) >= 2]
    rows = [r for r in (audio_row(f, f.relative_to(root).parts[0]) for f in files) if r]
    if not rows:
        raise VckitError(f"no audio files ({', '.join(AUDIO_EXTS)}) in speaker folders under {root}")
    return rows


def manifest_from_csv(csv_path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Rows from a metadata CSV with at least ``path`` and ``speaker`` columns.

    Relative paths are taken relative to ``root`` (default: the CSV's folder);
    ``duration_s`` or ``duration`` is used when present.
    """
    csv_path = Path(csv_path)
    root = Path(root) if root else csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            return _csv_rows(csv.DictReader(f), csv_path, root)
    except UnicodeDecodeError:
        raise VckitError(f"{csv_path} is not a UTF-8 text file") from None
    except csv.Error as e:
        raise VckitError(f"{csv_path} is not a readable CSV file ({e})") from None
    except OSError as e:
        raise VckitError(f"cannot read {csv_path}: {e.strerror or e}") from None


def _csv_rows(reader: csv.DictReader, csv_path: Path, root: Path) -> list[dict[str, Any]]:
    missing = {"path", "speaker"} - set(reader.fieldnames or [])
    if missing:
        raise VckitError(f"{csv_path} lacks column(s) {', '.join(sorted(missing))}")
    rows = []
    for r in reader:
        line = reader.line_num
        if not r.get("path"):
            raise VckitError(f"{csv_path}:{line} has no path")
        row: dict[str, Any] = {k: v for k, v in r.items() if isinstance(k, str) and v not in (None, "")}
        row["path"] = str(root / r["path"])
        dur = r.get("duration_s") or r.get("duration")
        row.pop("duration_s", None)
        if dur:
            try:
                row["duration"] = float(dur)
            except (TypeError, ValueError):
                raise VckitError(f"{csv_path}:{line}: duration {dur!r} is not a number of seconds") from None
        rows.append(row)
    return rows



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



def write_manifest(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a JSONL manifest; each needs "path" and "speaker"."""
    rows = read_jsonl(path, ("path", "speaker"))
    if not rows:
        raise VckitError(f"manifest {path} is empty")
    return rows


def read_jsonl(path: str | os.PathLike, required: tuple[str, ...] = ("path",)) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one a line (blank and ``#`` lines skipped).

    A line that is not valid JSON, not an object, or lacks a ``required`` key
    (with a string "path") raises :class:`VckitError` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise VckitError(f"manifest not found: {path}")
    rows = []
    for i, line in enumerate(_text_lines(path), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise VckitError(f"{path}:{i} is not valid JSON ({e.msg})") from None
        if not isinstance(r, dict):
            raise VckitError(f"{path}:{i} is not a JSON object: each line needs one, like {{\"path\": \"a.wav\"}}")
        if any(k not in r for k in required) or not isinstance(r.get("path", ""), str):
            raise VckitError(f"{path}:{i} needs {' and '.join(repr(k) for k in required)}" + (" (a string)" if "path" in r else ""))
        rows.append(r)
    return rows


def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise VckitError(f"{path} is not a UTF-8 text file") from None
    except OSError as e:
        raise VckitError(f"cannot read {path}: {e.strerror or e}") from None


# -- any spec -------------------------------------------------------------
def resolve_path(path: str, base: Path) -> Path:
    """``path`` as it is when it exists or is absolute, else relative to ``base``."""
    q = Path(path)
    if q.is_absolute() or q.exists():
        return q.resolve()
    return (base / q).resolve()


def read_data_spec(spec: str | os.PathLike, *, speaker: str | None = None, durations: bool = False) -> list[dict[str, Any]]:
    """Utterance rows of any data spec, each with ``file``, its resolved path.

    ``spec`` is a manifest (``.jsonl``; paths relative to the working folder
    or to the manifest's), a metadata ``.csv``, a corpus folder with
    ``metadata.csv``, a folder of such corpora (speakers become
    ``<corpus>:<speaker>``) or ``<speaker>/<file>`` folders. With ``speaker``,
    every utterance is that speaker's, and a folder's audio at any depth is
    read. ``durations`` reads the durations rows lack from the files (rows
    whose file soundfile cannot read are dropped). Raises
    :class:`VckitError` for a missing or unknown spec or one without
    utterances.
    """
    p = Path(spec)
    if not p.exists():
        raise VckitError(f"data not found: {p}")
    if p.is_file() and p.suffix.lower() == ".jsonl":
        rows, base = read_manifest(p), p.parent
        base = Path.cwd() if all(resolve_path(r["path"], Path.cwd()).exists() for r in rows[:5]) else base
    elif p.is_file() and p.suffix.lower() == ".csv":
        rows, base = manifest_from_csv(p), p.parent
    elif p.is_dir() and speaker is not None:
        rows, base = rows_from_folder(p, speaker), p
    elif p.is_dir() and (p / "metadata.csv").is_file():
        rows, base = manifest_from_csv(p / "metadata.csv"), p
    elif p.is_dir() and any(p.glob("*/metadata.csv")):
        rows, base = [], p
        for meta in sorted(p.glob("*/metadata.csv")):
            rows += [{**r, "speaker": f"{meta.parent.name}:{r['speaker']}"} for r in manifest_from_csv(meta)]
    elif p.is_dir():
        rows, base = manifest_from_folder(p), p
    else:
        raise VckitError(f"data must be a manifest (.jsonl), a metadata .csv or a folder, got {p}")
    if durations:
        rows = [r for r in (_with_duration(r) for r in rows) if r]
    if not rows:
        raise VckitError(f"no utterances in {p}")
    out = [{**r, "file": str(resolve_path(r["path"], base))} for r in rows]
    return [{**r, "speaker": speaker} for r in out] if speaker is not None else out


def _with_duration(r: dict[str, Any]) -> dict[str, Any] | None:
    if "duration" in r:
        return r
    full = audio_row(r["path"], r["speaker"])
    return None if full is None else {**full, **r, "duration": full["duration"]}


HEADER_NAMES = ("path", "file", "filename", "source", "audio", "wav")  # first columns a list's header row may name


def source_files(spec: str | os.PathLike) -> list[Path] | None:
    """The audio files a batch conversion reads: every audio file of a folder, or
    the paths a list names (``.jsonl`` with "path"; ``.csv`` the first column;
    ``.txt``/``.list`` one path a line; ``#`` lines are comments); None when
    ``spec`` is neither (one file). Relative paths are taken as they are when
    they exist, else relative to the list's folder. A ``.csv``/``.txt`` first
    line that is a header (its first field ``path``, ``file``, ... and no such
    file) is skipped; nothing else is.
    """
    p = Path(spec)
    if p.is_dir():
        files = audio_files(p)
        if not files:
            raise VckitError(f"no audio files ({', '.join(AUDIO_EXTS)}) in {p}")
        return files
    if p.suffix.lower() not in LIST_EXTS or not p.is_file():
        return None
    if p.suffix.lower() == ".jsonl":
        paths = [r["path"] for r in read_jsonl(p)]
    else:
        lines = [ln.strip() for ln in _text_lines(p)]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if p.suffix.lower() == ".csv":
            lines = [(row[0].strip() if row else "") for row in csv.reader(lines)]
        if lines and lines[0].lower() in HEADER_NAMES and not (p.parent / lines[0]).exists():
            lines = lines[1:]
        paths = [ln for ln in lines if ln]
    out = [f if f.is_absolute() or f.exists() else p.parent / f for f in map(Path, paths)]
    if not out:
        raise VckitError(f"manifest {p} lists no files")
    return out


def output_paths(files: list[Path], spec: str | os.PathLike, out_dir: str | os.PathLike, suffix: str = ".wav") -> list[Path]:
    """Where a batch conversion of ``files`` (from :func:`source_files`) writes each:
    its path relative to the folder ``spec`` (for a list, to the files' common
    folder) under ``out_dir``, so ``TM1/1.wav`` and ``SF1/1.wav`` stay apart, with
    ``suffix``; two sources that would share a name (``a.wav``, ``a.flac``) get
    ``a.wav`` and ``a_2.wav``."""
    p = Path(spec)
    if p.is_dir():
        rels = [f.relative_to(p) for f in files]
    else:
        full = [Path(os.path.abspath(f)) for f in files]
        root = os.path.commonpath([str(f.parent) for f in full]) if full else ""
        rels = [f.relative_to(root) for f in full]
    out, used = [], set()
    for rel in rels:
        rel = rel.with_suffix(suffix)
        dst, k = rel, 1
        while dst in used:
            k += 1
            dst = rel.with_name(f"{rel.stem}_{k}{suffix}")
        used.add(dst)
        out.append(Path(out_dir) / dst)
    return out
