"""The feature cache: uint8 log-mels of every utterance back to back, computed once.

A cache folder holds ``mels.npy`` (uint8-stored log-mels, :func:`to_uint8`),
``index.json`` (offsets, speakers, the mel config) and, with
``--frame-features``, per-frame arrays beside it (:mod:`vckit.data.frame_features`),
so an epoch decodes no audio. :class:`FeatureStore` holds a cache on the
training device; :func:`merge_feature_caches` and :func:`subset_feature_cache`
join and cut caches.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from vckit.config import MelConfig, to_dict
from vckit.data.manifest import read_manifest
from vckit.errors import VckitError
from vckit.files import atomic_path, write_text_atomically

log = logging.getLogger(__name__)

QUANT_LO = math.log(1e-5)  # log-mel range stored in uint8
QUANT_HI = 3.0


def to_uint8(mel: np.ndarray) -> np.ndarray:
    """log-mel float -> uint8 over [log(1e-5), 3]; error below 0.03 nats."""
    x = (np.clip(mel, QUANT_LO, QUANT_HI) - QUANT_LO) / (QUANT_HI - QUANT_LO) * 255.0
    return np.round(x).astype(np.uint8)


def from_uint8(q: torch.Tensor) -> torch.Tensor:
    return q.float() * ((QUANT_HI - QUANT_LO) / 255.0) + QUANT_LO


def cache_features(rows: list[dict[str, Any]], mel_cfg: MelConfig, out_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Compute log-mels of every row once and store them quantised in ``out_dir``.

    Unusable files (unreadable, silent, ...) are skipped with a warning.
    Returns the index (also written to ``out_dir/index.json``).
    """
    from vckit.audio import load_audio
    from vckit.frontend import Frontend

    frontend = Frontend(mel_cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chunks, utts, offset, skipped = [], [], 0, []
    it: Iterable = rows
    if progress:
        from tqdm import tqdm

        it = tqdm(rows, desc="features", unit="file")
    for r in it:
        try:
            wav = load_audio(r["path"], mel_cfg.sample_rate, min_seconds=0.1)
            mel = frontend.features(wav, mel=True).mel
        except VckitError as e:
            skipped.append(r["path"])
            log.warning("skipping %s: %s", r["path"], e)
            continue
        q = to_uint8(mel.T)  # (frames, n_mels)
        chunks.append(q)
        meta = {k: v for k, v in r.items() if k != "duration"}
        utts.append({**meta, "offset": offset, "frames": int(q.shape[0])})
        offset += q.shape[0]
    if not chunks:
        raise VckitError("no usable audio in the manifest")
    mels = np.concatenate(chunks, axis=0)
    with atomic_path(out_dir / "mels.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, mels)
    index = {"mel": to_dict(mel_cfg), "quant": [QUANT_LO, QUANT_HI], "frames": int(offset), "utterances": utts, "skipped": skipped}
    write_text_atomically(out_dir / "index.json", json.dumps(index, indent=1))
    return index


@dataclass
class FeatureStore:
    """Cached features: ``mels (total_frames, n_mels)`` uint8, the utterance
    index, and the per-frame arrays of :mod:`vckit.data.frame_features` where the
    cache has them (``extra``: ``f0``, ``phonetic``, ``posteriors_idx``, ``posteriors_p``)."""

    mels: torch.Tensor
    utterances: list[dict[str, Any]]
    mel: MelConfig
    extra: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | os.PathLike, mel_cfg: MelConfig | None = None, device: str | torch.device = "cpu") -> "FeatureStore":
        folder = Path(folder)
        if not (folder / "index.json").is_file() or not (folder / "mels.npy").is_file():
            raise VckitError(f"no feature cache in {folder} (run the recipe's prepare.py first)")
        index = json.loads((folder / "index.json").read_text())
        from vckit.config import from_dict

        cached = from_dict(MelConfig, index["mel"])
        if mel_cfg is not None and cached != mel_cfg:
            raise VckitError(f"feature cache {folder} was made with another mel config: {'; '.join(cached.mismatch(mel_cfg))}")
        mels = torch.from_numpy(np.load(folder / "mels.npy", mmap_mode=None)).to(device)
        from vckit.data.frame_features import load_frame_features

        extra = load_frame_features(folder, device)
        for k, v in extra.items():
            if v.shape[0] != mels.shape[0]:
                raise VckitError(f"feature cache {folder}: {k}.npy has {v.shape[0]} frames, mels.npy {mels.shape[0]}: compute the frame features again")
        return cls(mels, index["utterances"], cached, extra)

    def utterances_in(self, manifest: str | os.PathLike) -> list[dict[str, Any]]:
        """The cached utterances of the files a manifest lists (raises when it names none of them)."""
        paths = {r["path"] for r in read_manifest(manifest)}
        utts = [u for u in self.utterances if u["path"] in paths]
        if not utts:
            raise VckitError(f"none of the files in {manifest} are in the feature cache (run prepare.py again)")
        return utts

    def subset(self, keep: list[dict[str, Any]]) -> "FeatureStore":
        return FeatureStore(self.mels, keep, self.mel, self.extra)

    def gather_extra(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frame indices (B, T) -> ``f0`` (B, T) Hz, ``phonetic`` (B, D, T) and the
        top-k posteriors ``posteriors_idx``/``posteriors_p`` (B, T, k), as cached."""
        from vckit.data.frame_features import dequantize_phonetic

        out: dict[str, torch.Tensor] = {}
        for k, v in self.extra.items():
            g = v[idx]
            if k == "f0":
                g = g.float()
            elif k == "phonetic":
                g = dequantize_phonetic(g).transpose(1, 2)
            out[k] = g
        return out

    def frames(self, i: int) -> "Any":
        """Utterance ``i`` as :class:`vckit.frontend.Frames` with a batch of one."""
        from vckit.frontend import Frames

        u = self.utterances[i]
        idx = torch.arange(u["offset"], u["offset"] + u["frames"], device=self.mels.device)[None]
        ex = self.gather_extra(idx)
        return Frames(self.utterance(i)[None], ex.get("f0"), ex.get("phonetic"))

    def utterance(self, i: int) -> torch.Tensor:
        """Log-mel of utterance ``i`` as float ``(n_mels, frames)``."""
        u = self.utterances[i]
        return from_uint8(self.mels[u["offset"] : u["offset"] + u["frames"]]).T




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


def _frame_arrays_to_carry(folders: Sequence[Path], indexes: list[dict[str, Any]], frame_features: Sequence[str] | None) -> list[str]:
    """The per-frame arrays a merge or subset of ``folders`` carries (see :func:`merge_feature_caches`).

    Checks that each carried array has one row per cached frame, the same
    dtype and row shape in every input, and that the inputs' teacher
    projections agree; raises :class:`VckitError` otherwise.
    """
    import numpy as np

    from vckit.data.frame_features import FRAME_ARRAYS, PROJECTION_FILE, frame_arrays, load_projection, same_projection

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

    The per-frame arrays of :mod:`vckit.data.frame_features` (``f0``,
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

    from vckit.data.frame_features import PROJECTION_FILE, remove_frame_features

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
        with atomic_path(out_dir / f"{name}.npy") as tmp:
            merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(total, *shape))
            offset = 0
            for folder, ix in zip(folders, indexes):
                if ix["frames"]:
                    merged[offset : offset + ix["frames"]] = np.load(folder / f"{name}.npy", mmap_mode="r")
                offset += ix["frames"]
            merged.flush()
            del merged
    if "phonetic" in names:
        src = next(f for f, ix in zip(folders, indexes) if ix["frames"] > 0)
        write_text_atomically(out_dir / PROJECTION_FILE, (src / PROJECTION_FILE).read_text())
    utts: list[dict[str, Any]] = []
    skipped: list[str] = []
    offset = 0
    for ix in indexes:
        utts += [{**u, "offset": u["offset"] + offset} for u in ix["utterances"]]
        skipped += ix["skipped"]
        offset += ix["frames"]
    index = {**indexes[0], "frames": total, "utterances": utts, "skipped": skipped}
    write_text_atomically(out_dir / "index.json", json.dumps(index, indent=1))
    return index


def subset_feature_cache(
    folder: str | os.PathLike,
    paths: set[str],
    out_dir: str | os.PathLike,
    *,
    frame_features: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A new cache in ``out_dir`` with only the utterances of ``folder`` whose path is in ``paths``.

    The per-frame arrays of :mod:`vckit.data.frame_features` follow the mels
    (with ``phonetic.json``): ``frame_features=None`` carries those the
    cache has, a sequence of names exactly these (:class:`VckitError` if
    one is missing), ``()`` none. Files are written atomically, ``index.json`` last.
    """
    import numpy as np

    from vckit.data.frame_features import PROJECTION_FILE, remove_frame_features

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
        with atomic_path(out_dir / f"{name}.npy") as tmp:
            dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=(total, *src.shape[1:]))
            offset = 0
            for u in keep:
                dst[offset : offset + u["frames"]] = src[u["offset"] : u["offset"] + u["frames"]]
                offset += u["frames"]
            dst.flush()
            del dst
    if "phonetic" in names:
        write_text_atomically(out_dir / PROJECTION_FILE, (folder / PROJECTION_FILE).read_text())
    utts, offset = [], 0
    for u in keep:
        utts.append({**u, "offset": offset})
        offset += u["frames"]
    index = {**index, "frames": total, "utterances": utts, "skipped": []}
    write_text_atomically(out_dir / "index.json", json.dumps(index))
    return index




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


