"""Waveform cache and on-device segment sampling for vocoder training.

The VC model trains on cached log-mels; a vocoder needs the audio. The cache
is one folder::

    index.json       {"format": "vckit-wave-cache", "sample_rate", "samples", "file",
                      "utterances": [{"path", "speaker", "split", "offset", "length"}, ...]}
    wavs.npy         every utterance back to back, int16   (or)
    wavs.flac        the same samples as one 16-bit FLAC (about half the size)

Each utterance is read once with :func:`vckit.audio.load_audio` (mono,
resampled, silence-trimmed, loudness-normalised: exactly what inference sees).
Training puts the whole cache on the device and draws random segments there.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from vckit.errors import VckitError
from vckit.files import atomic_path, write_text_atomically

log = logging.getLogger(__name__)

FORMAT = "vckit-wave-cache"
INDEX_FILE = "index.json"


def write_wave_cache(
    splits: dict[str, list[dict[str, Any]]],
    out_dir: str | os.PathLike,
    sample_rate: int,
    *,
    max_minutes: dict[str, float] | None = None,
    flac: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Decode the rows of each split (``{"train": rows, "valid": rows}``) into a cache folder.

    Args:
        splits: manifest rows (``path``, optional ``speaker``) per split name.
        max_minutes: per split, stop after this many minutes of audio; the
            rows are then taken one speaker at a time in a seeded random
            order (a file of each speaker, then a second of each...), so a
            capped cache spans as many speakers as it can.
        flac: store the samples as one FLAC file instead of ``.npy``.

    Returns the index (also written to ``out_dir/index.json``). Unusable files
    are skipped with a warning; raises :class:`VckitError` if none is usable.
    """
    from vckit.audio import load_audio

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chunks: list[np.ndarray] = []
    utts: list[dict[str, Any]] = []
    skipped: list[str] = []
    offset = 0
    for split, rows in splits.items():
        cap = (max_minutes or {}).get(split, 0.0) * 60 * sample_rate
        if cap > 0:
            rows = round_robin(rows, seed)
        it: Iterable = rows
        if progress:
            from tqdm import tqdm

            it = tqdm(rows, desc=f"audio ({split})", unit="file")
        taken = 0
        for r in it:
            if cap > 0 and taken >= cap:
                break
            try:
                wav = load_audio(r["path"], sample_rate, min_seconds=0.1)
            except VckitError as e:
                skipped.append(str(r["path"]))
                log.warning("skipping %s: %s", r["path"], e)
                continue
            q = np.round(np.clip(wav, -1.0, 1.0) * 32767.0).astype(np.int16)
            chunks.append(q)
            utts.append({"path": str(r["path"]), "speaker": r.get("speaker", ""), "split": split, "offset": offset, "length": int(q.size)})
            offset += q.size
            taken += q.size
    if not chunks:
        raise VckitError("no usable audio to cache")
    samples = np.concatenate(chunks)
    name = "wavs.flac" if flac else "wavs.npy"
    with atomic_path(out_dir / name) as tmp, open(tmp, "wb") as f:
        if flac:
            import soundfile as sf

            sf.write(f, samples, sample_rate, format="FLAC", subtype="PCM_16")
        else:
            np.save(f, samples)
    for stale in {"wavs.flac", "wavs.npy"} - {name}:
        (out_dir / stale).unlink(missing_ok=True)
    index = {"format": FORMAT, "sample_rate": sample_rate, "samples": int(offset), "file": name, "utterances": utts, "skipped": skipped}
    write_text_atomically(out_dir / INDEX_FILE, json.dumps(index, indent=1))
    return index


def round_robin(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Rows shuffled, then reordered so each speaker's k-th file comes before anyone's (k+1)-th."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    seen: dict[str, int] = {}
    rank = []
    for r in rows:
        spk = str(r.get("speaker") or r["path"])
        rank.append(seen.get(spk, 0))
        seen[spk] = rank[-1] + 1
    return [r for _, r in sorted(zip(rank, rows), key=lambda x: x[0])]


class WaveStore:
    """A loaded cache: ``wav (samples,)`` int16 on the device, and the utterance index."""

    def __init__(self, wav: torch.Tensor, utterances: list[dict[str, Any]], sample_rate: int):
        self.wav = wav
        self.utterances = utterances
        self.sample_rate = sample_rate

    @classmethod
    def load(cls, folder: str | os.PathLike, sample_rate: int, device: str | torch.device = "cpu") -> "WaveStore":
        folder = Path(folder)
        index_path = folder / INDEX_FILE
        if not index_path.is_file():
            raise VckitError(f"no waveform cache in {folder} (run recipes/vocoder/prepare.py first)")
        try:
            index = json.loads(index_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise VckitError(f"{index_path} is not readable JSON: {e}") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise VckitError(f"{folder} is not a waveform cache (index.json has no format '{FORMAT}')")
        if index["sample_rate"] != sample_rate:
            raise VckitError(f"waveform cache {folder} is at {index['sample_rate']} Hz but the mel config needs {sample_rate} Hz")
        path = folder / index["file"]
        if not path.is_file():
            raise VckitError(f"waveform cache {folder} lacks {index['file']}")
        if path.suffix == ".flac":
            try:
                import soundfile as sf
            except ImportError:
                raise VckitError(f"reading {path} needs the soundfile package: install it, or prepare the cache without --flac") from None
            samples, _ = sf.read(str(path), dtype="int16")
        else:
            samples = np.load(path)
        if samples.shape != (index["samples"],):
            raise VckitError(f"{path} holds {samples.shape} samples, its index says {index['samples']}")
        return cls(torch.from_numpy(np.ascontiguousarray(samples)).to(device), index["utterances"], int(index["sample_rate"]))

    def split(self, name: str) -> list[dict[str, Any]]:
        return [u for u in self.utterances if u["split"] == name]

    def audio(self, utt: dict[str, Any], max_samples: int | None = None) -> torch.Tensor:
        """One utterance as float ``(samples,)`` in [-1, 1], optionally cut to ``max_samples``."""
        n = utt["length"] if max_samples is None else min(utt["length"], max_samples)
        return self.wav[utt["offset"] : utt["offset"] + n].float() / 32767.0


class WindowStarts:
    """Seeded draws of windows ``width`` long that lie wholly inside one of the ``spans`` ``(first, length)``:
    every start of every long-enough span is equally likely, so spans weigh by their length. The
    generator's state is saved with checkpoints, for exact resume."""

    def __init__(self, spans: list[tuple[int, int]], width: int, seed: int, device: str | torch.device = "cpu", unit: str = "samples"):
        usable = [(first, n) for first, n in spans if n >= width]
        if not usable:
            raise VckitError(f"no utterance is at least {width} {unit} long ({len(spans)} in the split)")
        counts = torch.tensor([n - width + 1 for _, n in usable], dtype=torch.long)
        self.firsts = torch.tensor([first for first, _ in usable], dtype=torch.long, device=device)
        self.counts = counts.to(device)
        self.cum = counts.cumsum(0).to(device)
        self.total = int(counts.sum())
        self.skipped = len(spans) - len(usable)
        self.rng = torch.Generator(device=device).manual_seed(seed)

    def draw(self, batch: int) -> torch.Tensor:
        """``(batch,)`` window starts."""
        u = torch.randint(0, self.total, (batch,), generator=self.rng, device=self.firsts.device)
        i = torch.searchsorted(self.cum, u, right=True)
        return self.firsts[i] + u - (self.cum[i] - self.counts[i])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.rng.set_state(state["rng"].cpu())


class WaveSampler:
    """Random segments of ``segment`` samples from ``utterances``, drawn on the store's device.

    Every start position of every long-enough utterance is equally likely
    (so utterances weigh by length). Optional random gain of up to
    ``gain_db`` either way, limited so the peak stays below 0.99. The
    generator's state is saved with checkpoints for exact resume.
    """

    def __init__(self, store: WaveStore, utterances: list[dict[str, Any]], segment: int, seed: int, gain_db: float = 0.0):
        dev = store.wav.device
        self.starts = WindowStarts([(u["offset"], u["length"]) for u in utterances], segment, seed, dev)
        if self.starts.skipped:
            log.info("%d utterances shorter than one segment are not sampled", self.starts.skipped)
        self.store, self.segment, self.gain_db = store, segment, gain_db
        self.arange = torch.arange(segment, device=dev)
        self.rng = self.starts.rng  # the gain draws share the window draws' generator

    def sample(self, batch: int) -> torch.Tensor:
        """``(batch, segment)`` float waveforms in [-1, 1]."""
        start = self.starts.draw(batch)
        wav = self.store.wav[start[:, None] + self.arange].float() / 32767.0
        if self.gain_db > 0:
            dev = wav.device
            db = (torch.rand(batch, 1, generator=self.rng, device=dev) * 2 - 1) * self.gain_db
            peak = wav.abs().amax(dim=1, keepdim=True).clamp(min=1e-4)
            wav = wav * torch.minimum(10 ** (db / 20), 0.99 / peak)
        return wav

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.starts.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.starts.load_state_dict(state)
