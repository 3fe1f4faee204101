"""Writing audio files, atomically, in the format the file name's suffix names.

:func:`write_audio` writes 16-bit WAV or FLAC, OGG Vorbis, or MP3 where
libsndfile has it (>= 1.1; :func:`output_format` says what this install
writes); :func:`write_wav` always writes WAV. A file is encoded in memory and
put in place whole (:func:`write_file_atomically`), never half-written.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import numpy as np
import torch

from vckit.errors import NonFiniteAudioError, VckitError
from vckit.files import write_file_atomically

log = logging.getLogger(__name__)

# output formats by file suffix: (soundfile format, subtype); MP3 only where libsndfile has it (>= 1.1)
OUTPUT_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS"), ".mp3": ("MP3", "MPEG_LAYER_III")}
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def output_format(path: str | os.PathLike, sample_rate: int | None = None, *, what: str | None = None) -> tuple[str, str]:
    """(soundfile format, subtype) that ``path``'s suffix names; :class:`VckitError`
    (naming ``what``, default ``path``) for a suffix this install cannot write, or
    an MP3 ``sample_rate`` MP3 lacks."""
    what = what or str(path)
    import soundfile as sf

    have = [ext for ext, (fmt, _) in OUTPUT_FORMATS.items() if fmt in sf.available_formats()]
    ext = Path(path).suffix.lower()
    if ext not in have:
        why = "this install's libsndfile cannot write MP3" if ext in OUTPUT_FORMATS else f"cannot write {ext or 'a file without an extension'}"
        raise VckitError(f"{what}: {why}; name the output {', '.join(have)}")
    if ext == ".mp3" and sample_rate and sample_rate not in MP3_RATES:
        raise VckitError(f"{what}: MP3 takes {', '.join(map(str, MP3_RATES))} Hz, not {sample_rate}: choose one (--sample-rate) or another format")
    return OUTPUT_FORMATS[ext]


def write_wav(path: str | os.PathLike, wav: np.ndarray | torch.Tensor, sr: int, *, overwrite: bool = False) -> Path:
    """Write 16-bit PCM WAV atomically (temp file, fsync, rename); see :func:`write_audio`."""
    return write_audio(path, wav, sr, overwrite=overwrite, format=OUTPUT_FORMATS[".wav"])


def write_audio(path: str | os.PathLike, wav: np.ndarray | torch.Tensor, sr: int, *, overwrite: bool = False, format: tuple[str, str] | None = None) -> Path:
    """Write audio atomically (temp file, fsync, rename) in the format its suffix
    names (:func:`output_format`: 16-bit WAV or FLAC, OGG Vorbis, MP3), or ``format``.

    The file is encoded in memory first, so a full disk or an unwritable
    folder is an ``OSError`` with its reason, turned into :class:`VckitError`;
    ``path`` is never left half-written. Also raises :class:`VckitError` if
    ``path`` exists and ``overwrite`` is false.
    """
    import io

    import soundfile as sf

    path = Path(path)
    fmt, subtype = format or output_format(path, sr)
    if path.exists() and not overwrite:
        raise VckitError(f"{path} already exists (pass overwrite to replace it)")
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().float().numpy()
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if not np.isfinite(wav).all():
        raise NonFiniteAudioError(f"cannot write {path}: the audio contains NaN or infinite samples")
    buf = io.BytesIO()
    try:
        sf.write(buf, np.clip(wav, -1.0, 1.0), sr, format=fmt, subtype=subtype)
    except sf.LibsndfileError as e:
        raise VckitError(f"cannot write {path} as {fmt} at {sr} Hz: {e.error_string}") from None
    try:
        if path.parent.exists() and not path.parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{path.parent} is not a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomically(path, buf.getbuffer(), overwrite=overwrite)
    except FileExistsError:
        raise VckitError(f"{path} already exists (pass overwrite to replace it)") from None
    except OSError as e:
        raise VckitError(f"cannot write {path}: {e.strerror or e}") from None
    return path
