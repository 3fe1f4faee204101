"""The fast vocoder: a Vocos-style generator (Siuzdak 2023), log-mel in, waveform out.

A ConvNeXt backbone runs at the mel frame rate (no upsampling), and a linear
head predicts, per frame, a log-magnitude and a phase for each STFT bin; an
inverse STFT makes the waveform. All the work happens at 86 frames a second,
which is why it is an order of magnitude cheaper than HiFi-GAN.

The inverse STFT is the exact inverse of the front-end's analysis
(:class:`vckit.audio.MelSpectrogram`): frame ``t`` covers original samples
``[t * hop - p, t * hop - p + n_fft)`` with ``p = (n_fft - hop) / 2``, frames
are overlap-added with the window and divided by the summed squared window,
and ``p`` samples are cut from each end. So ``frames`` frames give exactly
``frames * hop`` samples, aligned with the audio the mel came from.

A trained model is a folder (see :func:`save_vocos`)::

    config.json          {"format": "vckit-fast-vocoder", "mel": {...}, "generator": {...}, ...}
    model.safetensors    generator weights
    (discriminators.safetensors, train_state.pt: training checkpoints only)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vckit.checkpoint import CONFIG_FILE, KINDS, WEIGHTS_FILE, check_state_dict, read_folder, read_weights, write_folder
from vckit.config import Amount, Kernel, MelConfig, Positive, Size, check_ranges, from_dict, to_dict
from vckit.errors import CheckpointError, ConfigError
from vckit.shipped import shipped_dir
from vckit.models.vocoder.base import Vocoder

log = logging.getLogger(__name__)

FORMAT = KINDS["vocoder"][0]
PACKAGED_DIR = shipped_dir("vocoder_fast")  # a clone's checkpoints/vocoder_fast, or the wheel's copy


@dataclass(frozen=True)
class VocosConfig:
    """The generator's architecture; the STFT geometry of the head is the mel config's."""

    dim: Size = 384  # backbone channels
    intermediate_dim: Size = 1152  # ConvNeXt inverted-bottleneck width
    layers: Size = 8
    kernel_size: Kernel = 7  # depthwise conv over frames
    layer_scale: Amount = 0.0  # initial residual scale; 0 means 1 / layers
    max_log_magnitude: Positive = 7.0  # predicted log-magnitudes are clamped here (e^7 ~ 1100)

    def __post_init__(self) -> None:
        check_ranges(self, "generator")


def hann_window_padded(mel_config: MelConfig) -> torch.Tensor:
    """The front-end's analysis window ``(n_fft,)``: Hann of ``win_length``, centred in ``n_fft`` (as torch.stft)."""
    c = mel_config
    win = torch.hann_window(c.win_length)
    left = (c.n_fft - c.win_length) // 2
    return F.pad(win, (left, c.n_fft - c.win_length - left))


@torch.compiler.disable  # compiled, the FFT's backward hits a stride bug in torch 2.9's fake kernels; eager is cheap here
def istft(spec: torch.Tensor, window: torch.Tensor, hop: int) -> torch.Tensor:
    """Inverse of the front-end STFT: complex ``(batch, n_fft // 2 + 1, frames)`` -> ``(batch, frames * hop)``.

    Weighted overlap-add (divide by the summed squared window), then the
    ``(n_fft - hop) / 2`` samples of reflect padding are cut from each end.
    """
    n_fft = window.shape[0]
    frames = spec.shape[-1]
    seg = torch.fft.irfft(spec, n=n_fft, dim=1) * window[:, None]  # (batch, n_fft, frames)
    length = (frames - 1) * hop + n_fft
    wav = F.fold(seg, (1, length), (1, n_fft), stride=(1, hop))[:, 0, 0]  # (batch, length)
    w2 = (window**2)[None, :, None].expand(1, n_fft, frames)
    env = F.fold(w2, (1, length), (1, n_fft), stride=(1, hop))[0, 0, 0]
    p = (n_fft - hop) // 2
    return wav[:, p : p + frames * hop] / env[p : p + frames * hop].clamp(min=1e-8)


class ConvNeXtBlock(nn.Module):
    """``x + gamma * W2 gelu(W1 LN(dwconv(x)))``; x: ``(batch, dim, frames)`` -> same."""

    def __init__(self, dim: int, hidden: int, kernel_size: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.pwconv2 = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).transpose(1, 2)  # (batch, frames, dim)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)


class Vocos(Vocoder):
    """Vocos generator: log-mel ``(batch, n_mels, frames)`` -> waveform ``(batch, frames * hop)``.

    The constructor makes random weights; :meth:`from_folder` and
    :meth:`packaged` load trained ones.
    """

    def __init__(self, config: VocosConfig, mel_config: MelConfig, name: str = "fast"):
        super().__init__(mel_config, name)
        self.config = config
        c, d = config, config.dim
        self.embed = nn.Conv1d(mel_config.n_mels, d, c.kernel_size, padding=c.kernel_size // 2)
        self.norm = nn.LayerNorm(d, eps=1e-6)
        scale = c.layer_scale or 1.0 / c.layers
        self.blocks = nn.ModuleList(ConvNeXtBlock(d, c.intermediate_dim, c.kernel_size, scale) for _ in range(c.layers))
        self.final_norm = nn.LayerNorm(d, eps=1e-6)
        self.n_freq = mel_config.n_fft // 2 + 1
        self.head = nn.Linear(d, 2 * self.n_freq)  # log-magnitude and phase of each bin
        self.register_buffer("window", hann_window_padded(mel_config), persistent=False)
        self.apply(_init_weights)

    def spectrum(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel ``(batch, n_mels, frames)`` -> (log-magnitude, phase), each ``(batch, n_fft // 2 + 1, frames)``."""
        x = self.norm(self.embed(mel).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        # the head runs in float32 even under autocast: bf16 would quantise large phases by ~0.5 rad
        with torch.autocast(mel.device.type, enabled=False):
            out = self.head(self.final_norm(x.float().transpose(1, 2))).transpose(1, 2)  # (batch, 2 * n_freq, frames)
        log_mag, phase = out.split(self.n_freq, dim=1)
        return log_mag.clamp(max=self.config.max_log_magnitude), phase

    def forward(self, mel: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Log-mel ``(batch, n_mels, frames)`` -> waveform ``(batch, frames * hop)``.

        ``clamp=False`` (training) leaves the output unclipped so the loss sees
        and corrects samples beyond [-1, 1].
        """
        self.check_mel(mel)
        log_mag, phase = self.spectrum(mel)  # float32
        with torch.autocast(mel.device.type, enabled=False):  # the FFT runs in float32
            mag = log_mag.exp()
            spec = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))
            wav = istft(spec, self.window, self.hop_length)
        return wav.clamp(-1.0, 1.0) if clamp else wav

    @property
    def stream_context(self) -> int:  # type: ignore[override]
        """The live path hears the whole left reach: at 86 frames a second it costs about a millisecond a block."""
        return self.context_frames

    @property
    def context_frames(self) -> int:
        """Mel frames either side that reach an output sample: the convolutions' reach plus the ISTFT's overlap."""
        conv = (self.config.layers + 1) * (self.config.kernel_size // 2)
        return conv + -(-self.mel_config.n_fft // self.hop_length) - 1

    def vocode(
        self,
        mel: torch.Tensor,
        chunk_frames: int = 512,
        overlap_frames: int = 16,
        context_frames: int | None = None,
        *,
        progress: Callable[[float], None] | None = None,
    ) -> torch.Tensor:
        """As :meth:`Vocoder.vocode`; the context defaults to :attr:`context_frames`, so a chunked
        result equals the whole-utterance one (up to float rounding)."""
        ctx = self.context_frames if context_frames is None else context_frames
        return super().vocode(mel, chunk_frames, overlap_frames, ctx, progress=progress)

    # -- loading --------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: str | os.PathLike, name: str | None = None) -> "Vocos":
        """Load a fast-vocoder folder (exported or a training checkpoint); strict about keys and shapes."""
        folder = Path(folder)
        meta = read_folder(folder, "vocoder")
        try:
            gen_cfg = from_dict(VocosConfig, meta["generator"], "generator")
            mel_cfg = from_dict(MelConfig, meta["mel"], "mel")
        except (ConfigError, KeyError, TypeError) as e:
            raise CheckpointError(f"{folder / CONFIG_FILE} holds an invalid config: {e}") from None
        sd = read_weights(folder, meta)
        model = cls(gen_cfg, mel_cfg, name=name or str(folder))
        try:
            check_state_dict(model, sd)
        except CheckpointError as e:
            raise CheckpointError(f"fast vocoder {folder}: {e}") from None
        model.load_state_dict(sd, strict=True)
        n = sum(p.numel() for p in model.parameters())
        log.info("loaded fast vocoder %s (step %s, %.2f M parameters)", folder, meta.get("step"), n / 1e6)
        return model.eval()

    @classmethod
    def packaged(cls) -> "Vocos":
        """The fast vocoder shipped in ``checkpoints/vocoder_fast`` (distilled from the universal HiFi-GAN)."""
        if not (PACKAGED_DIR / CONFIG_FILE).is_file():
            raise CheckpointError(
                f"the fast vocoder is not at {PACKAGED_DIR}: use --vocoder hifigan or griffinlim, reinstall vckit, "
                "or train one with recipes/vocoder and pass its folder"
            )
        return cls.from_folder(PACKAGED_DIR, name="fast")


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv1d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)


def is_fast_vocoder(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder whose ``config.json`` says it is a vckit fast vocoder."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        meta = json.loads(cfg.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def save_vocos(
    folder: str | os.PathLike,
    model: Vocos,
    *,
    step: int = 0,
    extra: dict[str, Any] | None = None,
    extra_weights: dict[str, dict[str, torch.Tensor]] | None = None,
    train_state: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a fast-vocoder folder (:func:`vckit.checkpoint.write_folder`); return its path.

    Args:
        extra: more keys for ``config.json`` (e.g. the training config).
        extra_weights: ``{file name: state dict}`` written as more safetensors files.
        train_state: written as ``train_state.pt`` (for resuming).
        dtype: cast floating generator weights (``torch.float16`` to ship);
            the weights' sha256 is then recorded in ``config.json``.
    """
    meta = {"kind": "vocos", "mel": to_dict(model.mel_config), "generator": to_dict(model.config),
            "parameters": sum(p.numel() for p in model.parameters()), **(extra or {})}
    weights = {WEIGHTS_FILE: model.state_dict(), **(extra_weights or {})}
    return write_folder(folder, "vocoder", meta, weights, step=step, train_state=train_state, dtype=dtype, record_sha256=dtype is not None)


def export_vocos(src: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype = torch.float16) -> Path:
    """Copy a training checkpoint's generator for shipping: no discriminators or training state,
    weights cast to ``dtype``, their sha256 recorded."""
    model = Vocos.from_folder(src)
    meta = read_folder(src, "vocoder")
    keep = {k: meta[k] for k in ("training",) if k in meta}
    keep["exported_from"] = str(src)
    return save_vocos(dst, model, step=int(meta.get("step", 0)), extra=keep, dtype=dtype)


__all__ = [
    "FORMAT",
    "PACKAGED_DIR",
    "Vocos",
    "VocosConfig",
    "export_vocos",
    "is_fast_vocoder",
    "istft",
    "save_vocos",
]
