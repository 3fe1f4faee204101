"""Phonetic features as a live stream hears them, for training causal models.

A streaming converter hears the teacher block by block: each block's frames
come from one teacher run over the last ``teacher_context_s`` seconds, which
ends ``teacher_lookahead_ms`` past the block (see
:class:`vckit.frontend.Frontend`, which a live stream uses too). hama's recogniser looks far
ahead, so these features differ much from the whole-utterance ones; a causal
model (``model.stream.causal``) must train on them. This builds a copy of a
feature cache whose ``phonetic.npy`` holds them (the other arrays are links
to the original), projected with the same PCA projection:

    vckit prepare stream-features cache/shared_dev/features cache/shared_dev/features_stream

It takes about 4 minutes on one CPU thread for the 2.4 hours of
``recipes/shared_dev``.

With ``--student DIR`` (a causal phone student, ``vckit train-student``) the
features are that student's last hidden layer instead, heard the same way,
with their own PCA projection (``phonetic.json`` is then written, not linked);
``stream.json`` records the student's folder and weights' sha256, and the
trainer copies those weights into the model (``content_encoder.student``),
which then needs no hama at all:

    vckit prepare stream-features cache/shared_dev/features cache/shared_dev/features_student \
        --student recipes/shared_dev/phone_student_la3 --lookahead-ms 58 --context-s 1
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from vckit.config import MelConfig, PhoneStudentConfig, StreamConfig, from_dict, to_dict
from vckit.errors import VckitError
from vckit.files import atomic_path, write_text_atomically

log = logging.getLogger(__name__)

SETTINGS_FILE = "stream.json"


def stream_settings(stream: StreamConfig) -> dict:
    """What the features depend on, recorded beside them and checked by the trainer."""
    out = {"block_frames": stream.block_frames, "teacher_lookahead_ms": stream.teacher_lookahead_ms, "teacher_context_s": stream.teacher_context_s,
           "phonetic": stream.phonetic}
    if stream.phonetic == "student":
        out["student"] = to_dict(stream.student)
    return out


def made_settings(folder: str | os.PathLike) -> dict | None:
    """The settings a streamed cache was made with (:data:`SETTINGS_FILE`), None for whole-utterance features;
    caches made before students were a choice heard hama."""
    path = Path(folder) / SETTINGS_FILE
    return {"phonetic": "hama", **json.loads(path.read_text())} if path.is_file() else None


def build(
    src: str | os.PathLike, dst: str | os.PathLike, stream: StreamConfig, *, student: str | os.PathLike | None = None, threads: int = 1, progress: bool = True
) -> dict:
    """Copy the cache ``src`` to ``dst`` with streamed phonetic features; returns a summary.

    ``student``: a phone-student folder; the features are then its hidden layer (``stream`` must say
    ``phonetic: student`` with that student's shape: :func:`student_stream` makes such settings)."""
    from vckit.data.frame_features import (PROJECTION_FILE, cache_waves, fit_projection, link_cache, load_projection, project,
                                           quantize_frames, quantize_phonetic, sample_frames, write_projection)
    from vckit.frontend import Frontend

    src, dst = Path(src).resolve(), Path(dst)
    index = json.loads((src / "index.json").read_text()) if (src / "index.json").is_file() else None
    if index is None or not (src / "phonetic.npy").is_file():
        raise VckitError(f"{src} is not a feature cache with phonetic features (prepare.py --frame-features)")
    if dst.exists() and any(dst.iterdir()):
        raise VckitError(f"{dst} exists and is not empty: remove it or pick another folder")
    if (student is not None) != (stream.phonetic == "student"):
        raise VckitError("a student's features need stream settings with phonetic: student, and those need the student's folder")
    mel = from_dict(MelConfig, index["mel"])
    projection = load_projection(src)
    dims = projection["proj"].shape[0]
    extra: dict = {}
    if student is None:
        from vckit.models.teacher import PhoneticTeacher

        teacher = PhoneticTeacher(threads=threads)
    else:
        from vckit.models.phone_student import StudentTeacher, load_student

        model, _ = load_student(student)
        if model.cfg != stream.student:
            raise VckitError(f"the student in {student} has the shape {to_dict(model.cfg)}, the stream settings {to_dict(stream.student)}")
        teacher = StudentTeacher(model, mel)
        if dims > teacher.hidden_dim:
            raise VckitError(f"the cache's features have {dims} dims, more than the student's {teacher.hidden_dim} channels")
        extra = {"student_folder": str(Path(student).resolve()), "student_sha256": student_sha256(student)}
    frontend = Frontend(mel, phonetic=True, stream=stream, teacher=teacher)
    total = int(index["frames"])
    hidden = np.zeros((total, teacher.hidden_dim), np.float32) if student is not None else None  # projected once all is heard
    phon = np.zeros((total, dims), np.uint8)
    t0 = time.time()
    for u, wav in cache_waves(index, mel, "streamed " + ("student" if student is not None else "teacher"), progress):
        n, off = int(u["frames"]), int(u["offset"])
        h = frontend.features(wav, n).hidden
        if hidden is not None:
            hidden[off : off + n] = h
        else:
            phon[off : off + n] = quantize_phonetic(project(h, projection))
    if hidden is not None:  # the student's own whitened principal components
        projection = fit_projection(sample_frames(hidden), dims)
        phon = quantize_frames(hidden, projection)
        extra["explained_variance"] = round(float(projection["explained"]), 4)
    own = {"phonetic.npy", SETTINGS_FILE} | ({PROJECTION_FILE} if student is not None else set())  # written here; the rest linked
    link_cache(src, dst, own)
    with atomic_path(dst / "phonetic.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, phon)
    if student is not None:
        write_projection(dst, projection, f"phone student {extra['student_folder']}, last hidden layer", fitted=True)
    summary = {**stream_settings(stream), **extra, "frames": total, "seconds": round(time.time() - t0, 1)}
    write_text_atomically(dst / SETTINGS_FILE, json.dumps(summary, indent=1))
    return summary


def student_stream(student: str | os.PathLike, **settings) -> StreamConfig:
    """Causal stream settings that hear the phone student in the folder ``student`` (its shape from its config)."""
    from vckit.checkpoint import read_folder

    meta = read_folder(student, "phone_student")
    return StreamConfig(causal=True, phonetic="student", student=from_dict(PhoneStudentConfig, meta["model"], "model"), **settings)


def student_sha256(student: str | os.PathLike) -> str:
    """The sha256 of a phone student's weights, which the trainer checks before copying them into a model."""
    import hashlib

    from vckit.checkpoint import WEIGHTS_FILE

    return hashlib.sha256((Path(student) / WEIGHTS_FILE).read_bytes()).hexdigest()
