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
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from vckit.config import MelConfig, StreamConfig, from_dict
from vckit.errors import VckitError
from vckit.files import atomic_path, write_text_atomically

log = logging.getLogger(__name__)

SETTINGS_FILE = "stream.json"


def stream_settings(stream: StreamConfig) -> dict:
    """What the features depend on, recorded beside them and checked by the trainer."""
    return {"block_frames": stream.block_frames, "teacher_lookahead_ms": stream.teacher_lookahead_ms, "teacher_context_s": stream.teacher_context_s}


def build(src: str | os.PathLike, dst: str | os.PathLike, stream: StreamConfig, *, threads: int = 1, progress: bool = True) -> dict:
    """Copy the cache ``src`` to ``dst`` with streamed phonetic features; returns a summary."""
    from vckit.audio import load_audio
    from vckit.data.frame_features import load_projection, project, quantize_phonetic
    from vckit.frontend import Frontend
    from vckit.models.teacher import PhoneticTeacher

    src, dst = Path(src).resolve(), Path(dst)
    index = json.loads((src / "index.json").read_text()) if (src / "index.json").is_file() else None
    if index is None or not (src / "phonetic.npy").is_file():
        raise VckitError(f"{src} is not a feature cache with phonetic features (prepare.py --frame-features)")
    if dst.exists() and any(dst.iterdir()):
        raise VckitError(f"{dst} exists and is not empty: remove it or pick another folder")
    mel = from_dict(MelConfig, index["mel"])
    projection = load_projection(src)
    frontend = Frontend(mel, phonetic=True, stream=stream, teacher=PhoneticTeacher(threads=threads))
    total = int(index["frames"])
    phon = np.zeros((total, projection["proj"].shape[0]), np.uint8)
    utts = index["utterances"]
    it = utts
    if progress:
        from tqdm import tqdm

        it = tqdm(utts, desc="streamed teacher", unit="file")
    t0 = time.time()
    for u in it:
        wav = load_audio(u["path"], mel.sample_rate, min_seconds=0.1)
        n, off = int(u["frames"]), int(u["offset"])
        phon[off : off + n] = quantize_phonetic(project(frontend.features(wav, n).hidden, projection))
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "phonetic.npy" and not f.name.endswith(".tmp"):
            (dst / f.name).symlink_to(f)
    with atomic_path(dst / "phonetic.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, phon)
    summary = {**stream_settings(stream), "frames": total, "seconds": round(time.time() - t0, 1)}
    write_text_atomically(dst / SETTINGS_FILE, json.dumps(summary, indent=1))
    return summary
