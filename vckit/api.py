"""The public API: load a model, embed a speaker, convert.

    >>> import vckit
    >>> vc = vckit.load()                                 # the shipped model, offline
    >>> spk = vc.embed_speaker(["ref1.wav", "ref2.wav"])  # one embedding from several clips
    >>> wav = vc.convert("source.wav", target=spk)        # float32 at vc.sample_rate
    >>> vc.save("out.wav", wav)

Paths or arrays go in (arrays with ``sr=``), float32 arrays come out at
``vc.sample_rate``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from vckit.audio import AudioInput, load_audio, log_mel, write_wav
from vckit.checkpoint import build_model, load_checkpoint
from vckit.config import Config
from vckit.errors import CheckpointError, VckitError

log = logging.getLogger(__name__)

MIN_REFERENCE_S = 1.0
MIN_SOURCE_S = 0.1
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO_ROOT / "checkpoints" / "default"

Target = Union[AudioInput, Sequence[AudioInput], torch.Tensor]


def default_checkpoint() -> Path:
    """The shipped model (``$VCKIT_CHECKPOINT`` overrides it)."""
    env = os.environ.get("VCKIT_CHECKPOINT")
    path = Path(env) if env else DEFAULT_CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"the shipped model is not at {path}: install vckit from its source tree (pip install -e .) or pass a checkpoint path")
    return path


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise VckitError("--device cuda was asked for, but no CUDA GPU is available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise VckitError("--device mps was asked for, but MPS is not available")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise VckitError(f"unknown device {device!r} (auto, cpu, cuda or mps)")
    return torch.device(device)


class Converter:
    """A loaded model and vocoder. Create it with :func:`load`."""

    def __init__(self, model: torch.nn.Module, config: Config, vocoder: torch.nn.Module, device: torch.device):
        self.model = model.eval()
        self.config = config
        self.vocoder = vocoder
        self.device = device

    @property
    def sample_rate(self) -> int:
        """Sample rate of everything this converter returns."""
        return int(self.vocoder.sample_rate)

    # -- features ------------------------------------------------------------
    def _mel(self, src: AudioInput, sr: int | None, *, trim: bool, min_seconds: float, what: str | None) -> torch.Tensor:
        wav = load_audio(src, self.config.mel.sample_rate, sr, trim=trim, min_seconds=min_seconds, what=what)
        return log_mel(wav, self.config.mel, self.device)[None]  # (1, n_mels, frames)

    # -- the three calls -------------------------------------------------------
    @torch.inference_mode()
    def embed_speaker(self, refs: AudioInput | Sequence[AudioInput], sr: int | None = None) -> torch.Tensor:
        """One speaker embedding ``(dim,)`` from one or several reference clips.

        Each clip needs at least 1 s of speech after trimming silence; the
        embeddings of several clips are averaged.
        """
        if isinstance(refs, (str, os.PathLike, np.ndarray, torch.Tensor)):
            refs = [refs]
        if len(refs) == 0:
            raise VckitError("no reference audio given")
        embs = []
        for r in refs:
            name = Path(r).name if isinstance(r, (str, os.PathLike)) else "reference"
            mel = self._mel(r, sr, trim=True, min_seconds=MIN_REFERENCE_S, what=f"reference {name}" if name != "reference" else "reference")
            embs.append(self.model.embed_speaker(mel)[0])
        return torch.stack(embs).mean(0)

    @torch.inference_mode()
    def convert_mel(self, source: AudioInput, target: Target, sr: int | None = None) -> torch.Tensor:
        """Converted log-mel ``(n_mels, frames)`` of ``source`` in ``target``'s voice."""
        spk = self._target(target, sr)
        mel = self._mel(source, sr, trim=False, min_seconds=MIN_SOURCE_S, what=None)
        return self.model.convert(mel, spk[None].to(self.device))[0]

    def convert(self, source: AudioInput, target: Target, sr: int | None = None, pitch_shift: float | None = None) -> np.ndarray:
        """Speech of ``source`` in the voice of ``target``.

        Args:
            source: path or array (then ``sr`` is needed).
            target: a speaker embedding from :meth:`embed_speaker`, or
                reference audio (path, array or a list of them).
            sr: sample rate of array inputs.
            pitch_shift: semitones to shift the source before conversion
                (None or 0: none).

        Returns:
            float32 waveform at :attr:`sample_rate`, as long as the source
            (within one hop).
        """
        if pitch_shift:
            source = self._shift(source, sr, pitch_shift)
            sr = self.config.mel.sample_rate
        mel = self.convert_mel(source, target, sr)
        return self._vocode(mel)

    def reconstruct(self, source: AudioInput, sr: int | None = None) -> np.ndarray:
        """Copy-synthesis through the model: ``source`` in its own voice."""
        return self.convert(source, target=source, sr=sr)

    def save(self, path: str | os.PathLike, wav: np.ndarray, *, overwrite: bool = False) -> Path:
        """Write ``wav`` (from :meth:`convert`) as 16-bit WAV, atomically."""
        return write_wav(path, wav, self.sample_rate, overwrite=overwrite)

    # -- helpers -------------------------------------------------------------
    def _target(self, target: Target, sr: int | None) -> torch.Tensor:
        if isinstance(target, torch.Tensor) and target.dim() == 1 and target.shape[0] == self.config.model.speaker.dim and target.is_floating_point():
            return target.to(self.device)
        return self.embed_speaker(target, sr)

    def _shift(self, source: AudioInput, sr: int | None, semitones: float) -> np.ndarray:
        import torchaudio.functional as AF

        rate = self.config.mel.sample_rate
        wav = load_audio(source, rate, sr, trim=False)
        out = AF.pitch_shift(torch.from_numpy(wav)[None], rate, n_steps=float(semitones), bins_per_octave=12)[0]
        return out.numpy()

    @torch.inference_mode()
    def _vocode(self, mel: torch.Tensor) -> np.ndarray:
        wav = self.vocoder.vocode(mel)
        return wav.detach().float().cpu().numpy().astype(np.float32)


def load(checkpoint: str | os.PathLike | None = None, *, device: str = "auto", vocoder: str = "hifigan") -> Converter:
    """Load a model for conversion.

    Args:
        checkpoint: a checkpoint folder; default: the shipped model.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        vocoder: ``hifigan`` (the universal HiFi-GAN, default), ``griffinlim``,
            or a path to a HiFi-GAN generator in the released format.
    """
    from vckit.models.vocoder import load_vocoder

    dev = pick_device(device)
    path = Path(checkpoint) if checkpoint else default_checkpoint()
    config, sd, _ = load_checkpoint(path, dev)
    model = build_model(config, sd).to(dev).eval()
    voc = load_vocoder(vocoder, config.mel, device=dev)
    return Converter(model, config, voc, dev)
