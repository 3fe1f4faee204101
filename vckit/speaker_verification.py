"""An independent speaker-verification model, to judge conversions.

A conv encoder with statistics pooling trained with additive angular margin
softmax (AAM-softmax) on the training speakers, separately from the voice
conversion model, so it does not share that model's blind spots. Its equal
error rate (EER) on held-out speakers says how far to trust it.

    vckit train-sv --config recipes/speaker_verification/conf/base.yaml
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vckit.config import AugmentConfig, MelConfig, SpeakerConfig, from_dict, to_dict
from vckit.errors import CheckpointError, VckitError, reason
from vckit.models.speaker import SpeakerEncoder

log = logging.getLogger(__name__)
SV_FORMAT = "vckit-speaker-verification"


@dataclass(frozen=True)
class SVConfig:
    mel: MelConfig = field(default_factory=MelConfig)
    encoder: SpeakerConfig = field(default_factory=lambda: SpeakerConfig(channels=256, blocks=6, kernel_size=5, dim=192))
    train_manifest: str = "cache/shared_dev/train.jsonl"
    valid_manifest: str = "cache/shared_dev/valid.jsonl"
    features: str = "cache/shared_dev/features"
    out_dir: str = "runs/speaker_verification"
    segment_frames: int = 200
    batch_size: int = 128
    steps: int = 20000
    time_budget: float = 0.0
    lr: float = 2e-3
    margin: float = 0.2
    scale: float = 30.0
    seed: int = 7
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(speed=0.0, pitch_bins=0.0))


class SpeakerVerifier(nn.Module):
    """log-mel (batch, n_mels, frames) -> unit-length embedding (batch, dim)."""

    def __init__(self, cfg: SVConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = SpeakerEncoder(cfg.mel.n_mels, cfg.encoder)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel - mel.mean(dim=-1, keepdim=True)  # cepstral-mean-style channel normalisation
        return F.normalize(self.encoder(x / 2.0), dim=-1)


class AAMSoftmax(nn.Module):
    def __init__(self, dim: int, n_classes: int, margin: float, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) * 0.01)
        self.margin, self.scale = margin, scale

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos = emb.float() @ F.normalize(self.weight.float(), dim=-1).T
        theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
        target = torch.cos(theta + self.margin)
        onehot = F.one_hot(labels, cos.shape[1]).bool()
        logits = self.scale * torch.where(onehot, target, cos)
        return F.cross_entropy(logits, labels), (cos.argmax(-1) == labels).float().mean()


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


def evaluate_eer(model: SpeakerVerifier, store: Any, utts: list[dict[str, Any]], device: Any = "cpu") -> dict[str, float]:
    """EER over every pair of the given utterances (same vs different speaker)."""
    mels = [_utt_mel(store, u) for u in utts]
    emb = embed_utterances(model, mels, device)
    spk = np.array([u["speaker"] for u in utts])
    sim = (emb @ emb.T).numpy()
    iu = np.triu_indices(len(utts), 1)
    eer, thr = equal_error_rate(sim[iu], (spk[:, None] == spk[None])[iu])
    return {"eer": eer, "threshold": thr, "trials": int(len(iu[0]))}


def _utt_mel(store: Any, u: dict[str, Any]) -> torch.Tensor:
    from vckit.data import dequantize

    return dequantize(store.mels[u["offset"] : u["offset"] + u["frames"]]).T


def save_sv(folder: str | os.PathLike, model: SpeakerVerifier, meta: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "model.safetensors.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"format": SV_FORMAT, "config": to_dict(model.cfg), **meta}, indent=2))
    return folder


def load_sv(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SpeakerVerifier, dict[str, Any]]:
    """A trained verifier and its metadata (EER, threshold)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise CheckpointError(f"{folder} is not a speaker-verification model (no readable config.json)") from None
    if meta.get("format") != SV_FORMAT:
        raise CheckpointError(f"{folder} is not a speaker-verification model")
    model = SpeakerVerifier(from_dict(SVConfig, meta["config"]))
    try:
        sd = load_file(str(folder / "model.safetensors"))
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    except Exception as e:
        raise CheckpointError(f"{folder}/model.safetensors does not load: {reason(e)}") from None
    return model.to(device).eval(), meta


def train_sv(cfg: SVConfig, device: str = "auto", progress: bool = True) -> dict[str, float]:
    """Train the verifier on the training manifest; report EER on the validation one."""
    from vckit.data import FeatureStore, SegmentSampler, augment, read_manifest

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    torch.manual_seed(cfg.seed)
    store = FeatureStore.load(cfg.features, cfg.mel, dev)
    train_paths = {r["path"] for r in read_manifest(cfg.train_manifest)}
    valid_paths = {r["path"] for r in read_manifest(cfg.valid_manifest)}
    train_utts = [u for u in store.utterances if u["path"] in train_paths]
    valid_utts = [u for u in store.utterances if u["path"] in valid_paths]
    if not train_utts:
        raise VckitError("no training utterances for the speaker-verification model")
    sampler = SegmentSampler(store, train_utts, cfg.segment_frames, power=0.0, seed=cfg.seed)
    model = SpeakerVerifier(cfg).to(dev)
    head = AAMSoftmax(cfg.encoder.dim, len(sampler.speakers), cfg.margin, cfg.scale).to(dev)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    t0, step, elapsed = time.time(), 0, 0.0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, unit="step", mininterval=30.0)
    stats: dict[str, float] = {}
    while step < cfg.steps and (cfg.time_budget <= 0 or elapsed < cfg.time_budget):
        progress_frac = elapsed / cfg.time_budget if cfg.time_budget > 0 else step / cfg.steps
        lr = cfg.lr * min(1.0, (step + 1) / 500) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_frac))))
        for g in opt.param_groups:
            g["lr"] = lr
        b = sampler.sample(cfg.batch_size)
        b = augment(b, cfg.augment, sampler.gen, cfg.segment_frames)
        # margin ramps in over the first 2000 steps
        head.margin = cfg.margin * min(1.0, step / 2000)
        with amp:
            emb = model(b["mel"])
        loss, acc = head(emb, b["speaker"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        step += 1
        elapsed = time.time() - t0
        if bar:
            bar.update(1)
        if step % 200 == 0:
            stats = {"loss": float(loss), "acc": float(acc), "step": step}
            log.info("sv step %d loss %.3f acc %.3f", step, stats["loss"], stats["acc"])
    if bar:
        bar.close()
    res = evaluate_eer(model, store, valid_utts, dev) if valid_utts else {}
    stats.update(res)
    stats["seconds"] = time.time() - t0
    save_sv(cfg.out_dir, model.cpu(), {"step": step, "eer": res.get("eer"), "threshold": res.get("threshold"), "trials": res.get("trials")})
    return stats
