"""Manifests, the cached-feature store and on-device segment batching.

A manifest is JSONL, one utterance a line: ``{"path", "speaker", "duration", ...}``
(extra keys such as ``gender`` or ``corpus`` are kept). Features are computed
once into a folder (``mels.npy``: uint8-quantised log-mels of every utterance
back to back, ``index.json``: offsets, speakers, the mel config), so an epoch
decodes no audio. Batches are drawn on the training device: sample a speaker,
then a position uniformly among that speaker's frames, then gather.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from vckit.config import AugmentConfig, MelConfig, to_dict
from vckit.errors import VckitError

log = logging.getLogger(__name__)

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".opus")
QUANT_LO = math.log(1e-5)  # log-mel range stored in uint8
QUANT_HI = 3.0


# -- manifests -------------------------------------------------------------
def manifest_from_folder(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows for every audio file under ``root/<speaker>/...``; the speaker is the first folder."""
    import soundfile as sf

    root = Path(root)
    if not root.is_dir():
        raise VckitError(f"data folder not found: {root}")
    rows = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in AUDIO_EXTS or not p.is_file():
            continue
        rel = p.relative_to(root)
        if len(rel.parts) < 2:
            continue
        try:
            info = sf.info(str(p))
            dur = info.frames / info.samplerate
        except Exception:
            log.warning("skipping unreadable file %s", p)
            continue
        rows.append({"path": str(p), "speaker": rel.parts[0], "duration": round(dur, 3), "utt_id": p.stem})
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
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "speaker"} - set(reader.fieldnames or [])
        if missing:
            raise VckitError(f"{csv_path} lacks column(s) {', '.join(sorted(missing))}")
        rows = []
        for r in reader:
            row: dict[str, Any] = {k: v for k, v in r.items() if v not in (None, "")}
            row["path"] = str(root / r["path"])
            dur = r.get("duration_s") or r.get("duration")
            row.pop("duration_s", None)
            if dur:
                row["duration"] = float(dur)
            rows.append(row)
    return rows


def write_manifest(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise VckitError(f"manifest not found: {path}")
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                raise VckitError(f"{path}:{i} is not valid JSON") from None
            if "path" not in r or "speaker" not in r:
                raise VckitError(f"{path}:{i} needs 'path' and 'speaker'")
            rows.append(r)
    if not rows:
        raise VckitError(f"manifest {path} is empty")
    return rows


# -- feature cache ---------------------------------------------------------
def quantize(mel: np.ndarray) -> np.ndarray:
    """log-mel float -> uint8 over [log(1e-5), 3]; error below 0.03 nats."""
    x = (np.clip(mel, QUANT_LO, QUANT_HI) - QUANT_LO) / (QUANT_HI - QUANT_LO) * 255.0
    return np.round(x).astype(np.uint8)


def dequantize(q: torch.Tensor) -> torch.Tensor:
    return q.float() * ((QUANT_HI - QUANT_LO) / 255.0) + QUANT_LO


def cache_features(rows: list[dict[str, Any]], mel_cfg: MelConfig, out_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Compute log-mels of every row once and store them quantised in ``out_dir``.

    Unusable files (unreadable, silent, ...) are skipped with a warning.
    Returns the index (also written to ``out_dir/index.json``).
    """
    from vckit.audio import load_audio, log_mel

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
            mel = log_mel(wav, mel_cfg).numpy()
        except VckitError as e:
            skipped.append(r["path"])
            log.warning("skipping %s: %s", r["path"], e)
            continue
        q = quantize(mel.T)  # (frames, n_mels)
        chunks.append(q)
        meta = {k: v for k, v in r.items() if k != "duration"}
        utts.append({**meta, "offset": offset, "frames": int(q.shape[0])})
        offset += q.shape[0]
    if not chunks:
        raise VckitError("no usable audio in the manifest")
    mels = np.concatenate(chunks, axis=0)
    tmp = out_dir / "mels.npy.tmp"
    with open(tmp, "wb") as f:
        np.save(f, mels)
    os.replace(tmp, out_dir / "mels.npy")
    index = {"mel": to_dict(mel_cfg), "quant": [QUANT_LO, QUANT_HI], "frames": int(offset), "utterances": utts, "skipped": skipped}
    (out_dir / "index.json").write_text(json.dumps(index, indent=1))
    return index


@dataclass
class FeatureStore:
    """Cached features: ``mels (total_frames, n_mels)`` uint8, the utterance
    index, and the per-frame arrays of :mod:`vckit.frame_features` where the
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
        from vckit.frame_features import load_frame_features

        extra = load_frame_features(folder, device)
        for k, v in extra.items():
            if v.shape[0] != mels.shape[0]:
                raise VckitError(f"feature cache {folder}: {k}.npy has {v.shape[0]} frames, mels.npy {mels.shape[0]}: compute the frame features again")
        return cls(mels, index["utterances"], cached, extra)

    def subset(self, keep: list[dict[str, Any]]) -> "FeatureStore":
        return FeatureStore(self.mels, keep, self.mel, self.extra)

    def gather_extra(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frame indices (B, T) -> ``f0`` (B, T) Hz, ``phonetic`` (B, D, T) and the
        top-k posteriors ``posteriors_idx``/``posteriors_p`` (B, T, k), as cached."""
        from vckit.frame_features import dequantize_phonetic

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
        """Utterance ``i`` as :class:`vckit.models.vc.Frames` with a batch of one."""
        from vckit.models.vc import Frames

        u = self.utterances[i]
        idx = torch.arange(u["offset"], u["offset"] + u["frames"], device=self.mels.device)[None]
        ex = self.gather_extra(idx)
        return Frames(self.utterance(i)[None], ex.get("f0"), ex.get("phonetic"))

    def utterance(self, i: int) -> torch.Tensor:
        """Log-mel of utterance ``i`` as float ``(n_mels, frames)``."""
        u = self.utterances[i]
        return dequantize(self.mels[u["offset"] : u["offset"] + u["frames"]]).T


# -- batching --------------------------------------------------------------
class SegmentSampler:
    """Draws training batches on the store's device with no host work per step.

    A speaker is drawn with probability proportional to (its frames) **
    ``power`` (0: uniform over speakers), then a start frame uniformly among
    that speaker's frames. Utterances shorter than the segment are tiled, and
    a mask marks the real frames.
    """

    def __init__(self, store: FeatureStore, utterances: list[dict[str, Any]], segment: int, power: float = 0.3, seed: int = 0):
        if not utterances:
            raise VckitError("no training utterances")
        device = store.mels.device
        self.store, self.segment = store, segment
        speakers = sorted({u["speaker"] for u in utterances})
        self.speakers = speakers
        spk_index = {s: i for i, s in enumerate(speakers)}
        utts = sorted(utterances, key=lambda u: (spk_index[u["speaker"]], u["offset"]))
        self.utt_spk = torch.tensor([spk_index[u["speaker"]] for u in utts], device=device)
        self.utt_off = torch.tensor([u["offset"] for u in utts], device=device)
        self.utt_len = torch.tensor([u["frames"] for u in utts], device=device)
        weight = self.utt_len.clamp(min=1).double()
        self.cum_end = torch.cumsum(weight, 0)  # end of each utterance in the speaker-sorted frame line
        cum_start = self.cum_end - weight
        n_spk = len(speakers)
        spk_frames = torch.zeros(n_spk, dtype=torch.float64, device=device).index_add_(0, self.utt_spk, weight)
        first = torch.zeros(n_spk, dtype=torch.long, device=device)
        first.scatter_reduce_(0, self.utt_spk, torch.arange(len(utts), device=device), reduce="amin", include_self=False)
        self.spk_start = cum_start[first]
        self.spk_frames = spk_frames
        self.cum_start = cum_start
        probs = spk_frames.pow(power)
        self.spk_probs = (probs / probs.sum()).float()
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)

    def _positions(self, spk: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.spk_start[spk] + torch.rand(spk.shape, generator=self.gen, device=spk.device, dtype=torch.float64) * self.spk_frames[spk]
        utt = torch.searchsorted(self.cum_end, r, right=True).clamp(max=len(self.cum_end) - 1)
        n = self.utt_len[utt]
        pos = (r - self.cum_start[utt]).long().clamp(min=0)
        start = torch.minimum(pos, (n - length).clamp(min=0))  # full segment where the utterance allows
        steps = torch.arange(length, device=spk.device)
        rel = start[:, None] + steps[None]
        mask = rel < n[:, None]
        rel = torch.remainder(rel, n[:, None])  # tile utterances shorter than the segment
        idx = self.utt_off[utt][:, None] + rel
        return idx, mask

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Frame indices (B, T) -> float log-mel (B, n_mels, T)."""
        return dequantize(self.store.mels[idx]).transpose(1, 2)

    def sample(self, batch: int, length: int | None = None) -> dict[str, torch.Tensor]:
        """A batch: ``mel``, ``ref`` (another segment of the same speaker),
        ``mask`` (B, T) of real frames and ``speaker`` ids."""
        length = length or self.segment
        spk = torch.multinomial(self.spk_probs, batch, replacement=True, generator=self.gen)
        idx, mask = self._positions(spk, length)
        ref_idx, _ = self._positions(spk, length)
        return {"mel": self.gather(idx), "ref": self.gather(ref_idx), "mask": mask, "speaker": spk, **self.store.gather_extra(idx)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.gen.set_state(sd["gen"].cpu() if self.gen.device.type == "cpu" else sd["gen"].cpu())


def augment(batch: dict[str, torch.Tensor], cfg: AugmentConfig, gen: torch.Generator, length: int) -> dict[str, torch.Tensor]:
    """Segment-level augmentation on log-mels, on the batch's device.

    ``batch`` holds segments of ``ceil(length * (1 + cfg.speed))`` frames; the
    output has ``length``. A speed change (time stretch) and a shift along the
    mel axis (a pitch and formant change) are applied identically to ``mel``
    and ``ref``, making a new virtual speaker; gain and light noise are drawn
    for each separately.
    """
    mel, ref, mask = batch["mel"], batch["ref"], batch["mask"]
    b, n_mels, src_len = mel.shape
    dev = mel.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand((b,), generator=gen, device=dev)

    on = (torch.rand((b,), generator=gen, device=dev) < cfg.prob).float()
    speed = 1 + on * u(-cfg.speed, cfg.speed)
    shift = on * u(-cfg.pitch_bins, cfg.pitch_bins)
    # sampling grid over (time, mel) in [-1, 1]; output frame j reads input frame j * speed
    tx = (torch.arange(length, device=dev)[None] * speed[:, None]).clamp(max=src_len - 1) / max(src_len - 1, 1) * 2 - 1
    my = (torch.arange(n_mels, device=dev)[None] - shift[:, None]).clamp(0, n_mels - 1) / max(n_mels - 1, 1) * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(tx[:, None, :], my[:, :, None]), dim=-1)

    def warp(x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        return F.grid_sample(x[:, None], grid, mode=mode, padding_mode="border", align_corners=True)[:, 0]

    def level(x: torch.Tensor) -> torch.Tensor:
        gain = on * u(-cfg.gain_db, cfg.gain_db) * (math.log(10) / 20)
        x = x + gain[:, None, None]
        noisy = (torch.rand((b,), generator=gen, device=dev) < cfg.noise_prob).float() * on
        noise_amp = torch.pow(10.0, u(*cfg.noise_db) / 20) * noisy
        return torch.log(torch.exp(x) + noise_amp[:, None, None]).clamp(min=QUANT_LO)

    m = warp(mask[:, None, :].float().expand(b, n_mels, src_len), "nearest")[:, 0] > 0.5
    out = {**batch, "mel": level(warp(mel)), "ref": level(warp(ref)), "mask": m}
    # per-frame features follow the time stretch (nearest frame); a mel-axis shift
    # does not move them, so models with an F0 path train with pitch_bins 0
    src = (torch.arange(length, device=dev)[None] * speed[:, None]).round().long().clamp(max=src_len - 1)  # (B, length)
    for k in ("f0", "posteriors_idx", "posteriors_p"):
        if k in batch:
            v = batch[k]
            out[k] = torch.gather(v, 1, src if v.dim() == 2 else src[..., None].expand(-1, -1, v.shape[-1]))
    if "phonetic" in batch:
        v = batch["phonetic"]
        out["phonetic"] = torch.gather(v, 2, src[:, None, :].expand(-1, v.shape[1], -1))
    return out


def mel_shift(mel: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Shift log-mels (B, n_mels, T) up the mel axis by ``bins`` (B,) (fractional,
    negative: down), repeating the edge bins: a pitch and formant change."""
    b, n_mels, t = mel.shape
    pos = (torch.arange(n_mels, device=mel.device, dtype=mel.dtype)[None] - bins[:, None].to(mel.dtype)).clamp(0, n_mels - 1)
    lo = pos.floor().long().clamp(max=n_mels - 2) if n_mels > 1 else pos.floor().long()
    frac = (pos - lo.to(mel.dtype))[:, :, None]
    lo_v = torch.gather(mel, 1, lo[:, :, None].expand(b, n_mels, t))
    hi_v = torch.gather(mel, 1, (lo + 1).clamp(max=n_mels - 1)[:, :, None].expand(b, n_mels, t))
    return lo_v + frac * (hi_v - lo_v)


def valid_batches(store: FeatureStore, utterances: list[dict[str, Any]], segment: int, batch: int, max_items: int = 256) -> Iterator[dict[str, torch.Tensor]]:
    """Fixed validation batches: the middle segment of each utterance, with
    the reference taken from the speaker's next utterance (or its own start)."""
    by_spk: dict[str, list[dict[str, Any]]] = {}
    for u in utterances:
        by_spk.setdefault(u["speaker"], []).append(u)
    items = []
    for spk, us in sorted(by_spk.items()):
        for i, u in enumerate(us):
            r = us[(i + 1) % len(us)]
            items.append((u, r))
    items = items[:max_items]
    dev = store.mels.device

    def window(u: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        n = u["frames"]
        start = max(0, (n - segment) // 2)
        rel = torch.arange(segment, device=dev) + start
        mask = rel < n
        rel = torch.remainder(rel, n)
        return u["offset"] + rel, mask

    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        idx, masks = zip(*[window(u) for u, _ in chunk])
        ridx = [window(r)[0] for _, r in chunk]
        yield {
            "mel": dequantize(store.mels[torch.stack(idx)]).transpose(1, 2),
            "ref": dequantize(store.mels[torch.stack(ridx)]).transpose(1, 2),
            "mask": torch.stack(masks),
            **store.gather_extra(torch.stack(idx)),
        }
