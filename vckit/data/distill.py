"""A teacher cache for distilling a vocoder: log-mels in, the teacher vocoder's waveform for each.

The fast vocoder learns from the universal HiFi-GAN's own outputs. For every
utterance the cache holds the log-mel the student will read (the mel of real
speech, or a conversion's mel, which is what a vocoder hears at run time) and
the teacher's waveform for exactly that mel. The teacher is deterministic, so
its waveform is a function of the mel, phase included: the student can be
taught the phase of each STFT bin as well as its magnitude, with no
discriminator. One folder::

    index.json    {"format": "vckit-teacher-cache", "sample_rate", "hop", "n_mels", "frames", "teacher",
                   "utterances": [{"path", "speaker", "split", "kind", "frame", "frames"}, ...]}
    mels.npy      (frames, n_mels) float16: every utterance's log-mel, back to back
    teacher.npy   (frames * hop,) int16: the teacher's waveform, sample ``t * hop`` at frame ``t``

Training draws windows of ``segment + 2 * context`` frames and their
samples (:class:`TeacherSampler`): the student hears the context either
side, and the loss reads the middle, where the teacher heard no more than
the student.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from vckit.data.waves import WindowStarts
from vckit.errors import VckitError
from vckit.files import atomic_path, write_text_atomically

FORMAT = "vckit-teacher-cache"
INDEX_FILE = "index.json"
MELS_FILE, WAVE_FILE = "mels.npy", "teacher.npy"


def write_teacher_cache(
    items: Iterable[tuple[dict[str, Any], np.ndarray]],
    out_dir: str | os.PathLike,
    teacher: Callable[[np.ndarray], np.ndarray],
    *,
    sample_rate: int,
    hop: int,
    teacher_name: str,
) -> dict[str, Any]:
    """Write ``(row, mel)`` pairs and the teacher's waveform for each mel into a cache folder.

    Args:
        items: ``row`` carries ``path``, ``speaker``, ``split`` and ``kind``
            ("real" or "converted"); ``mel`` is ``(n_mels, frames)``.
        teacher: ``mel (n_mels, frames) -> waveform (frames * hop,)`` in [-1, 1].
        teacher_name: recorded in the index (which vocoder, at what precision).

    Returns the index (also written to ``out_dir/index.json``). Refuses an ``out_dir`` that holds anything.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):  # as vckit prepare stream-features: a cache is never overwritten
        raise VckitError(f"{out_dir} exists and is not empty: remove it or pick another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    mels: list[np.ndarray] = []
    waves: list[np.ndarray] = []
    utts: list[dict[str, Any]] = []
    frame = 0
    n_mels = None
    for row, mel in items:
        mel = np.asarray(mel, dtype=np.float16).astype(np.float32)  # the teacher hears what the cache keeps
        if n_mels is None:
            n_mels = mel.shape[0]
        if mel.ndim != 2 or mel.shape[0] != n_mels:
            raise VckitError(f"{row.get('path')}: mel of shape {mel.shape}, the cache holds ({n_mels}, frames)")
        wav = np.asarray(teacher(mel), dtype=np.float32)
        if wav.shape != (mel.shape[1] * hop,):
            raise VckitError(f"the teacher gave {wav.shape[0]} samples for {mel.shape[1]} frames (hop {hop})")
        mels.append(mel.T.astype(np.float16))  # exact: these values are float16 already
        waves.append(np.round(np.clip(wav, -1.0, 1.0) * 32767.0).astype(np.int16))
        utts.append({**{k: row.get(k, "") for k in ("path", "speaker", "split", "kind")}, "frame": frame, "frames": int(mel.shape[1])})
        frame += mel.shape[1]
    if not utts:
        raise VckitError("no utterance to cache")
    for name, parts in ((MELS_FILE, mels), (WAVE_FILE, waves)):
        with atomic_path(out_dir / name) as tmp, open(tmp, "wb") as f:
            np.save(f, np.concatenate(parts))
    index = {"format": FORMAT, "sample_rate": sample_rate, "hop": hop, "n_mels": int(n_mels), "frames": frame,
             "teacher": teacher_name, "utterances": utts}
    write_text_atomically(out_dir / INDEX_FILE, json.dumps(index, indent=1))
    return index


class TeacherStore:
    """A loaded teacher cache: ``mels (frames, n_mels)`` float16 and ``wave (frames * hop,)`` int16, on a device."""

    def __init__(self, mels: torch.Tensor, wave: torch.Tensor, index: dict[str, Any]):
        self.mels, self.wave, self.index = mels, wave, index
        self.hop = int(index["hop"])
        self.utterances: list[dict[str, Any]] = index["utterances"]

    @classmethod
    def load(cls, folder: str | os.PathLike, *, sample_rate: int, hop: int, n_mels: int, device: str | torch.device = "cpu") -> "TeacherStore":
        folder = Path(folder)
        try:
            index = json.loads((folder / INDEX_FILE).read_text())
        except FileNotFoundError:
            raise VckitError(f"no teacher cache in {folder} (make one with vckit prepare vocoder-teacher)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VckitError(f"{folder / INDEX_FILE} is not readable JSON: {e}") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise VckitError(f"{folder} is not a teacher cache (index.json has no format '{FORMAT}')")
        want = {"sample_rate": sample_rate, "hop": hop, "n_mels": n_mels}
        have = {k: index.get(k) for k in want}
        if have != want:
            raise VckitError(f"teacher cache {folder} was made for {have}, this vocoder needs {want}")
        try:
            mels = np.load(folder / MELS_FILE)
            wave = np.load(folder / WAVE_FILE)
        except (OSError, ValueError) as e:
            raise VckitError(f"teacher cache {folder} is unreadable: {e}") from None
        if mels.shape != (index["frames"], n_mels) or wave.shape != (index["frames"] * hop,):
            raise VckitError(f"teacher cache {folder}: arrays of {mels.shape} and {wave.shape} disagree with its index")
        return cls(torch.from_numpy(mels).to(device), torch.from_numpy(wave).to(device), index)

    def split(self, name: str) -> list[dict[str, Any]]:
        return [u for u in self.utterances if u["split"] == name]

    def utterance(self, utt: dict[str, Any], max_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One utterance: (mel ``(n_mels, frames)`` float, teacher waveform ``(frames * hop,)`` float in [-1, 1])."""
        n = utt["frames"] if max_frames is None else min(utt["frames"], max_frames)
        a = utt["frame"]
        return self.mels[a : a + n].float().T, self.wave[a * self.hop : (a + n) * self.hop].float() / 32767.0


class TeacherSampler:
    """Random windows of ``segment + 2 * context`` frames and the teacher's samples under them
    (:class:`~vckit.data.waves.WindowStarts`: every window inside one utterance equally likely)."""

    def __init__(self, store: TeacherStore, utterances: list[dict[str, Any]], *, segment: int, context: int, seed: int):
        dev = store.mels.device
        self.store, self.width, self.hop = store, segment + 2 * context, store.hop
        self.starts = WindowStarts([(u["frame"], u["frames"]) for u in utterances], self.width, seed, dev, unit="frames")
        self.frames = torch.arange(self.width, device=dev)
        self.samples = torch.arange(self.width * self.hop, device=dev)

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mel ``(batch, n_mels, width)``, teacher waveform ``(batch, width * hop)``), floats."""
        start = self.starts.draw(batch)
        mel = self.store.mels[start[:, None] + self.frames].float().transpose(1, 2)
        wave = self.store.wave[start[:, None] * self.hop + self.samples].float() / 32767.0
        return mel, wave

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.starts.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.starts.load_state_dict(state)
