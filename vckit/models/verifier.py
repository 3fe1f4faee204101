"""An independent speaker-verification model, to judge conversions.

A conv encoder with statistics pooling, trained with additive angular margin
softmax (:mod:`vckit.training.verifier`) on the training speakers, separately
from the voice conversion model, so it does not share that model's blind
spots. Its equal error rate (EER) on held-out speakers says how far to trust
it. Its folder is a checkpoint of kind ``verifier`` (:mod:`vckit.checkpoint`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vckit.checkpoint import WEIGHTS_FILE, check_state_dict, read_folder, read_weights, write_folder
from vckit.config import AugmentConfig, Amount, Count, DataConfig, LoopConfig, MelConfig, Positive, Probability, Size, SpeakerConfig, from_dict, to_dict
from vckit.errors import CheckpointError, ConfigError
from vckit.models.speaker import SpeakerEncoder


@dataclass(frozen=True)
class SVTrainConfig(LoopConfig):
    """The judge's run (:class:`vckit.training.verifier.VerifierTrainer`): the shared loop settings with the
    judge's defaults, and its AAM-softmax margin (ramped in over ``margin_warmup_steps``) and scale."""

    out_dir: str = "runs/speaker_verification"
    batch_size: Size = 128
    steps: Size = 20000
    lr: Positive = 2e-3
    warmup_steps: Count = 500
    min_lr_ratio: Probability = 0.02
    grad_clip: Positive = 5.0
    seed: Count = 7
    log_every: Size = 200
    valid_every: Size = 1_000_000_000  # the EER over every pair is measured once, at the end
    margin: Amount = 0.2
    scale: Positive = 30.0
    margin_warmup_steps: Count = 2000


def _sv_data() -> DataConfig:
    return DataConfig(segment_frames=200, speaker_sampling_power=0.0, augment=AugmentConfig(speed=0.0, pitch_bins=0.0))


@dataclass(frozen=True)
class SVConfig:
    """The speaker-verification judge: its encoder, its data and how it is trained (``vckit train-sv``)."""

    mel: MelConfig = field(default_factory=MelConfig)
    encoder: SpeakerConfig = field(default_factory=lambda: SpeakerConfig(channels=256, blocks=6, kernel_size=5, dim=192))
    data: DataConfig = field(default_factory=_sv_data)
    train: SVTrainConfig = field(default_factory=SVTrainConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SVConfig":
        """Strict; a judge saved before the config had sections (its keys all at the top) is read as it was."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
        flat_data = {"train_manifest", "valid_manifest", "features", "segment_frames", "augment"}
        flat_train = {"out_dir", "batch_size", "steps", "time_budget", "lr", "margin", "scale", "seed"}
        if not (flat_data | flat_train) & set(d):
            return from_dict(cls, d)
        d = dict(d)
        data = {**to_dict(_sv_data()), **{k: d.pop(k) for k in flat_data & set(d)}}
        train = {k: d.pop(k) for k in flat_train & set(d)}
        return from_dict(cls, {**d, "data": {**data, **d.pop("data", {})}, "train": {**train, **d.pop("train", {})}})


class SpeakerVerifier(nn.Module):
    """log-mel (batch, n_mels, frames) -> unit-length embedding (batch, dim)."""

    def __init__(self, cfg: SVConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = SpeakerEncoder(cfg.mel.n_mels, cfg.encoder)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel - mel.mean(dim=-1, keepdim=True)  # cepstral-mean-style channel normalisation
        return F.normalize(self.encoder(x / 2.0), dim=-1)


def equal_error_rate(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """EER and its threshold from trial scores and same-speaker labels."""
    order = np.argsort(-scores)
    s, y = scores[order], same[order].astype(bool)
    n_pos, n_neg = max(1, y.sum()), max(1, (~y).sum())
    far = np.cumsum(~y) / n_neg  # accepting every trial above each threshold
    frr = 1 - np.cumsum(y) / n_pos
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2), float(s[i])


@torch.no_grad()
def embed_utterances(model: SpeakerVerifier, mels: list[torch.Tensor], device: torch.device | str = "cpu") -> torch.Tensor:
    """Embeddings (n, dim) of whole utterances ``(n_mels, frames)``."""
    model.eval()
    out = [model(m.to(device)[None].float())[0].float().cpu() for m in mels]
    return torch.stack(out)


def save_verifier(folder: str | os.PathLike, model: SpeakerVerifier, meta: dict[str, Any], train_state: dict[str, Any] | None = None) -> Path:
    """Write the judge's folder (:func:`vckit.checkpoint.write_folder`); ``meta`` holds its EER and threshold."""
    step = int(meta.get("step") or 0)
    meta = {k: v for k, v in meta.items() if k != "step"}
    return write_folder(folder, "verifier", {"config": to_dict(model.cfg), **meta}, {WEIGHTS_FILE: model.state_dict()},
                        step=step, record_sha256=True, train_state=train_state)


def load_verifier(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SpeakerVerifier, dict[str, Any]]:
    """A trained verifier and its metadata (EER, threshold); strict about keys and shapes."""
    folder = Path(folder)
    meta = read_folder(folder, "verifier")
    try:
        model = SpeakerVerifier(SVConfig.from_dict(meta["config"]))
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder}/config.json holds an invalid config: {e}") from None
    sd = read_weights(folder, meta)
    check_state_dict(model, sd)
    model.load_state_dict(sd, strict=True)
    return model.to(device).eval(), meta
