"""Virtual speakers: each training speaker again with pitch and formants scaled.

Reading each utterance ``r`` times faster moves every frequency, the F0 and
the formants, by the factor ``r``; stretching its mel frames back in time
restores the timing, so the copy lines up frame by frame with the original.
Its F0 is the original's times ``r``, and its phonetic teacher features are
the original's: the words did not change. A model trained with these copies
sees the same content codes decoded in many registers, the case a
cross-gender conversion needs and plain reconstruction of real speakers
never gives (a female utterance's content with a lower F0 and voice).

    vckit prepare virtual-speakers cache/shared_dev --ratios 0.72 1.38

writes ``cache/shared_dev/virtual/`` (``train.jsonl`` with the original and the
virtual rows, and ``features/`` with both), from a cache prepared with
``--frame-features``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vckit.errors import VckitError

log = logging.getLogger(__name__)


def virtual_name(speaker: str, ratio: float) -> str:
    return f"{speaker}@{ratio:g}"


def stretch_frames(x: np.ndarray, n: int) -> np.ndarray:
    """Linear interpolation of frames ``(T, D)`` to ``(n, D)`` (frame centres kept in place)."""
    if len(x) == n:
        return x
    pos = (np.arange(n) + 0.5) * len(x) / n - 0.5
    pos = np.clip(pos, 0, len(x) - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(x) - 1)
    w = (pos - lo)[:, None]
    return x[lo] * (1 - w) + x[hi] * w


def scaled_mel(wav: np.ndarray, sr: int, ratio: float, n_frames: int, mel_cfg: Any) -> np.ndarray:
    """Log-mel ``(n_frames, n_mels)`` of ``wav`` with every frequency times ``ratio``, at the original timing."""
    from vckit.audio import log_mel, resample

    fast = resample(wav, sr, max(1000, int(round(sr / ratio))))  # played at sr: ratio times faster and higher
    mel = log_mel(fast, mel_cfg).numpy().T  # (frames / ratio, n_mels)
    return stretch_frames(mel, n_frames).astype(np.float32)


def build(folder: str | os.PathLike, train_manifest: str | os.PathLike, out: str | os.PathLike, ratios: Sequence[float], progress: bool = True) -> dict[str, Any]:
    """Write ``out/train.jsonl`` (the training rows and their virtual copies) and
    ``out/features`` (the cache of ``folder`` plus the copies' mels, F0 and
    teacher features). Returns a summary."""
    from vckit.audio import load_audio
    from vckit.config import MelConfig, from_dict
    from vckit.data.features import merge_feature_caches, to_uint8
    from vckit.data.frame_features import FRAME_ARRAYS
    from vckit.data.manifest import read_manifest, write_manifest

    folder, out = Path(folder), Path(out)
    index = json.loads((folder / "index.json").read_text())
    mel_cfg = from_dict(MelConfig, index["mel"])
    arrays = {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in FRAME_ARRAYS if (folder / f"{k}.npy").is_file()}
    if "f0" not in arrays:
        raise VckitError(f"{folder} has no frame features: prepare it with --frame-features first")
    rows = read_manifest(train_manifest)
    train_paths = {r["path"] for r in rows}
    utts = [u for u in index["utterances"] if u["path"] in train_paths]
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".virtual-", dir=out))
    try:
        shards = [folder]
        new_rows = list(rows)
        by_path = {r["path"]: r for r in rows}
        for ratio in ratios:
            total = sum(u["frames"] for u in utts)
            mels = np.zeros((total, mel_cfg.n_mels), np.uint8)
            extra = {k: np.zeros((total, *a.shape[1:]), a.dtype) for k, a in arrays.items()}
            vutts, off = [], 0
            it: Any = utts
            if progress:
                from tqdm import tqdm

                it = tqdm(utts, desc=f"virtual x{ratio:g}", unit="file")
            for u in it:
                n, o = u["frames"], u["offset"]
                wav = load_audio(u["path"], mel_cfg.sample_rate, min_seconds=0.1)
                mels[off : off + n] = to_uint8(scaled_mel(wav, mel_cfg.sample_rate, ratio, n, mel_cfg))
                for k, a in arrays.items():
                    extra[k][off : off + n] = a[o : o + n]
                extra["f0"][off : off + n] = np.asarray(arrays["f0"][o : o + n], np.float32) * ratio
                vutts.append({**u, "path": f"{u['path']}#x{ratio:g}", "speaker": virtual_name(u["speaker"], ratio), "offset": off})
                off += n
            shard = work / f"x{ratio:g}"
            shard.mkdir()
            np.save(shard / "mels.npy", mels)
            for k, a in extra.items():
                np.save(shard / f"{k}.npy", a)
            if (folder / "phonetic.json").is_file():
                shutil.copy(folder / "phonetic.json", shard / "phonetic.json")
            (shard / "index.json").write_text(json.dumps({**index, "frames": off, "utterances": vutts, "skipped": []}))
            shards.append(shard)
            new_rows += [{**by_path[u["path"].rsplit("#", 1)[0]], "path": u["path"], "speaker": u["speaker"]} for u in vutts]
        merged = merge_feature_caches(shards, out / "features")
        write_manifest(new_rows, out / "train.jsonl")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"frames": merged["frames"], "rows": len(new_rows), "speakers": len({r["speaker"] for r in new_rows})}
