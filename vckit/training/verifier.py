"""Training the speaker-verification judge (:mod:`vckit.models.verifier`) with AAM-softmax, on the shared loop.

    vckit train-sv --config recipes/speaker_verification/conf/base.yaml [--resume]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vckit.checkpoint import step_folder
from vckit.data.features import FeatureStore, from_uint8
from vckit.data.sampling import SegmentSampler, augment
from vckit.errors import VckitError
from vckit.models.verifier import SpeakerVerifier, SVConfig, embed_utterances, equal_error_rate, load_verifier, save_verifier
from vckit.training.loop import TrainingLoop, autocast_for, make_optimizer, validation_utterances

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
    return from_uint8(store.mels[u["offset"] : u["offset"] + u["frames"]]).T


class VerifierTrainer(TrainingLoop):
    """The judge's run on the shared loop: AAM-softmax over the training speakers' segments; resumable like every
    run. At the end, :func:`finish` measures the EER on the validation speakers and writes the judge's folder."""

    progress_key = ("acc", "train/acc")

    def __init__(self, cfg: SVConfig, *, device: str = "auto", resume: bool = False):
        self.cfg = cfg
        self._setup(device)
        d, t = cfg.data, cfg.train
        self.store = FeatureStore.load(d.features, cfg.mel, self.device)
        self.train_utts = self.store.utterances_in(d.train_manifest)
        self.valid_utts = validation_utterances(self.store, d.valid_manifest)
        if not self.train_utts:
            raise VckitError(f"no training utterances for the speaker-verification model in {d.train_manifest}")
        self.sampler = SegmentSampler(self.store, self.train_utts, d.segment_frames, power=d.speaker_sampling_power, seed=t.seed + 1000 * self.dist.rank)
        self.model = SpeakerVerifier(cfg).to(self.device)
        self.head = AAMSoftmax(cfg.encoder.dim, len(self.sampler.speakers), t.margin, t.scale).to(self.device)
        self.net = nn.ModuleDict({"encoder": self.model, "head": self.head})
        self.optimizer = make_optimizer(self.net, cfg)
        self.step, self.elapsed, self.best = 0, 0.0, {}
        if resume:
            self._resume()

    def _resume(self) -> None:
        ck = self._latest()
        if ck is None:
            return
        model, _ = load_verifier(ck, self.device)
        if model.cfg.encoder != self.cfg.encoder or model.cfg.mel != self.cfg.mel:
            raise VckitError(f"{ck} was trained with another encoder or mel config; use a new out_dir or the same config")
        self.model.load_state_dict(model.state_dict())
        self._restore_training(ck, head=self.head, optimizer=self.optimizer)

    def train_step(self) -> dict[str, torch.Tensor]:
        d, t = self.cfg.data, self.cfg.train
        lr = self._set_lr(self.optimizer)
        b = augment(self.sampler.sample(t.batch_size), d.augment, self.sampler.rng, d.segment_frames)
        self.head.margin = t.margin * min(1.0, self.step / max(1, t.margin_warmup_steps))
        with autocast_for(self.device, t.amp):
            emb = self.model(b["mel"])
        loss, acc = self.head(emb, b["speaker"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), t.grad_clip)
        self.optimizer.step()
        self.step += 1
        return {"loss/total": loss.detach(), "train/acc": acc.detach(), "lr": torch.tensor(lr)}

    def save(self) -> Path | None:
        state = self._training_state(head=self.head, optimizer=self.optimizer)
        if state is None:
            return None
        path = save_verifier(step_folder(self.out_dir, self.step), self.model, {"step": self.step}, train_state=state)
        return self._saved(path)

    def set_train_mode(self) -> None:
        self.net.train()

    def finish(self) -> dict[str, Any]:
        """The EER over every pair of validation utterances, and the judge with it in ``<train.out_dir>/judge``
        (the folder to ship as ``checkpoints/speaker_verification``)."""
        res = evaluate_eer(self.model, self.store, self.valid_utts, self.device) if self.valid_utts else {}
        folder = save_verifier(self.out_dir / "judge", self.model, {"step": self.step, "eer": res.get("eer"), "threshold": res.get("threshold"), "trials": res.get("trials")})
        return {**res, "step": self.step, "judge": str(folder)}
