"""Training the speaker-verification judge (:mod:`vckit.models.verifier`) with AAM-softmax.

    vckit train-sv --config recipes/speaker_verification/conf/base.yaml
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vckit.errors import VckitError
from vckit.models.verifier import SpeakerVerifier, SVConfig, embed_utterances, equal_error_rate, save_verifier
from vckit.devices import pick_device

log = logging.getLogger(__name__)


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
    from vckit.data.features import from_uint8

    return from_uint8(store.mels[u["offset"] : u["offset"] + u["frames"]]).T


def train_sv(cfg: SVConfig, device: str = "auto", progress: bool = True) -> dict[str, float]:
    """Train the verifier on the training manifest; report EER on the validation one."""
    from vckit.data.features import FeatureStore
    from vckit.data.manifest import read_manifest
    from vckit.data.sampling import SegmentSampler, augment

    dev = pick_device(device)
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
        b = augment(b, cfg.augment, sampler.rng, cfg.segment_frames)
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
    save_verifier(cfg.out_dir, model.cpu(), {"step": step, "eer": res.get("eer"), "threshold": res.get("threshold"), "trials": res.get("trials")})
    return stats
