"""Training the phone student (:mod:`vckit.models.phone_student`) on the teacher's cached posteriors.

    vckit train-student --config recipes/shared_dev/conf/phone_student.yaml
    vckit train-student --config ... --set model.lookahead_frames=3 --set train.out_dir=runs/student/la3
    vckit train-student --export runs/student/whole checkpoints/phone_student

Each step draws segments of cached log-mels with the teacher's top-k frame
posteriors beside them (:mod:`vckit.data.frame_features`), augments them as
the VC trainer does (gain, time stretch, a shift along the mel axis, light
noise: the posteriors follow the stretch), then makes some of them look
decoded (:func:`decoder_like`: a light blur along time and frequency and
Gaussian noise), and minimises the soft cross-entropy to the renormalised
top-k posteriors, as the VC model's phonetic head does. The loop, budgets
and checkpoints are the shared ones (:class:`~vckit.training.loop.TrainingLoop`).
:func:`agreement` measures how often the student's argmax is the teacher's
top-1 on whole utterances (``benchmarks/phone_student.py`` prints it).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable

import torch

from vckit.checkpoint import latest_checkpoint, read_folder, step_folder
from vckit.config import Amount, Count, DataConfig, LoopConfig, MelConfig, Positive, Probability, Range, Size, from_dict, to_dict
from vckit.config_files import load_config
from vckit.data.features import FeatureStore, from_uint8
from vckit.data.frame_features import dense_posteriors
from vckit.data.sampling import SegmentSampler, augment
from vckit.errors import CheckpointError, ConfigError, VckitError
from vckit.models.phone_student import PhoneStudent, PhoneStudentConfig, load_student, save_student
from vckit.models.phonetic_head import soft_cross_entropy
from vckit.models.teacher import BLANK
from vckit.training.loop import TrainingLoop, autocast_for, make_optimizer, validation_utterances

log = logging.getLogger(__name__)

__all__ = ["Agreement", "StudentConfig", "StudentTrainConfig", "StudentTrainer", "agreement", "decoder_like", "export", "load_store", "load_student_config", "run_config"]

TARGETS = ("posteriors_idx", "posteriors_p")


# -- configuration ---------------------------------------------------------
@dataclass(frozen=True)
class StudentTrainConfig(LoopConfig):
    """The phone student's run: :class:`~vckit.config.LoopConfig` with the student's defaults, and how much of its
    input is made to look decoded."""

    out_dir: str = "runs/student/whole"
    batch_size: Size = 16
    steps: Size = 20000
    lr: Positive = 3e-3
    warmup_steps: Count = 100
    keep_last: Size = 2
    # decoded-looking input (decoder_like): the share of segments changed, the most weight each
    # neighbour gets in a 3-tap blur along time and along the mel axis, the most noise (normalised units)
    decoded_prob: Probability = 0.5
    decoded_blur: Annotated[float, Range(0, 0.5)] = 0.2
    decoded_noise: Amount = 0.1
    valid_utterances: Count = 64  # validation speakers' utterances the loop checks (0: all); benchmarks use all


@dataclass(frozen=True)
class StudentConfig:
    """Everything ``vckit train-student`` needs: the cache's mel, the student, the data and the run."""

    mel: MelConfig = field(default_factory=MelConfig)
    model: PhoneStudentConfig = field(default_factory=PhoneStudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: StudentTrainConfig = field(default_factory=StudentTrainConfig)

    def __post_init__(self) -> None:
        if self.model.n_mels != self.mel.n_mels:
            raise ConfigError(f"model.n_mels {self.model.n_mels} differs from mel.n_mels {self.mel.n_mels}")


def load_student_config(path: str | os.PathLike, overrides: list[str] | None = None) -> StudentConfig:
    """Read a YAML/JSON phone-student config with ``key.sub=value`` overrides; unknown keys are errors."""
    return load_config(path, overrides, cls=StudentConfig)


# -- data ------------------------------------------------------------------
def load_store(features: str, mel: MelConfig | None = None, device: str | torch.device = "cpu") -> FeatureStore:
    """The feature cache with only the mels and the teacher's posteriors (what the student needs)."""
    store = FeatureStore.load(features, mel, device)
    missing = [k for k in TARGETS if k not in store.extra]
    if missing:
        raise VckitError(f"the feature cache {features} has no {' or '.join(missing)}: run the recipe's prepare.py with --frame-features")
    return dataclasses.replace(store, extra={k: store.extra[k] for k in TARGETS})


def decoder_like(mel: torch.Tensor, *, prob: float, blur: float, noise: float, rng: torch.Generator) -> torch.Tensor:
    """Make a share ``prob`` of the segments look decoded: a 3-tap blur
    ``[a, 1 - 2a, a]`` along time and another along the mel axis (each ``a``
    uniform in ``[0, blur]``), then Gaussian noise of a std uniform in
    ``[0, noise]``. mel: (batch, n_mels, frames), normalised -> same shape."""
    b, dev = mel.shape[0], mel.device

    def u() -> torch.Tensor:
        return torch.rand((b,), generator=rng, device=dev)[:, None, None]

    on = (u() < prob).float()

    def smooth(x: torch.Tensor, a: torch.Tensor, dim: int) -> torch.Tensor:
        n = x.shape[dim]
        if n < 2:
            return x
        prev = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
        nxt = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
        return x + a * (prev + nxt - 2 * x)

    x = smooth(mel, on * blur * u(), 2)
    x = smooth(x, on * blur * u(), 1)
    return x + torch.randn(mel.shape, generator=rng, device=dev) * (on * noise * u())


@dataclass
class Agreement:
    """How often the student's most likely symbol is the teacher's, over whole utterances."""

    frames: int
    non_blank_frames: int  # frames whose teacher top-1 is not the CTC blank
    all: float  # share of all frames where the student's argmax equals the teacher's top-1
    non_blank: float  # the same share over the non-blank frames
    non_blank_near: float  # share of non-blank frames whose teacher top-1 the student's argmax hits within +-near frames


@torch.no_grad()
def agreement(
    student: PhoneStudent,
    store: FeatureStore,
    utts: list[dict[str, Any]],
    *,
    batch: int = 16,
    near: int = 2,
    mel_of: Callable[[dict[str, Any]], torch.Tensor] | None = None,
) -> Agreement:
    """Frame agreement of ``student`` with the cached teacher on the utterances ``utts`` of ``store``.

    ``mel_of(u)`` gives the log-mel ``(n_mels, frames)`` in nats the student
    hears for utterance ``u`` (default: the cached one; e.g. a VC model's
    reconstruction of it, scored against the teacher's view of the source).
    Utterances go whole, a batch of similar lengths at a time, zero-padded on
    the right in normalised units: as the student's convolutions are causal
    and its look-ahead is zero-padded the same way, the padding changes no
    output frame of an utterance. The teacher's non-blank symbols are
    spikes of 1 to 3 frames, so ``non_blank_near`` also counts a spike the
    student places up to ``near`` frames early or late.
    """
    if not utts:
        raise VckitError("no utterances to measure the phone student's agreement on")
    was_training = student.training
    student.eval()
    dev = next(student.parameters()).device
    top1 = store.extra["posteriors_idx"]
    hit = hit_nb = hit_near = frames = nb = 0
    order = sorted(utts, key=lambda u: u["frames"])
    for i in range(0, len(order), batch):
        chunk = order[i : i + batch]
        t = max(u["frames"] for u in chunk)
        mel = torch.zeros(len(chunk), student.cfg.n_mels, t, device=dev)
        for j, u in enumerate(chunk):
            log_mel = mel_of(u) if mel_of is not None else from_uint8(store.mels[u["offset"] : u["offset"] + u["frames"]]).T
            mel[j, :, : u["frames"]] = student.normalize(log_mel.to(dev))
        pred = student(mel).argmax(1)
        for j, u in enumerate(chunk):
            teacher = top1[u["offset"] : u["offset"] + u["frames"], 0].to(dev).long()
            p = pred[j, : u["frames"]]
            same = p == teacher
            voiced = teacher != BLANK
            hit += int(same.sum())
            hit_nb += int((same & voiced).sum())
            around = torch.stack([_shifted(p, k) for k in range(-near, near + 1)])  # (2 near + 1, frames)
            hit_near += int(((around == teacher).any(0) & voiced).sum())
            frames += u["frames"]
            nb += int(voiced.sum())
    student.train(was_training)
    return Agreement(frames=frames, non_blank_frames=nb, all=hit / frames, non_blank=hit_nb / max(1, nb), non_blank_near=hit_near / max(1, nb))


def _shifted(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` (frames,) read ``k`` frames later (``out[t] = x[t + k]``), -1 past either end."""
    if k == 0:
        return x
    out = torch.full_like(x, -1)
    if k > 0:
        out[:-k] = x[k:]
    else:
        out[-k:] = x[:k]
    return out


# -- the loop --------------------------------------------------------------
class StudentTrainer(TrainingLoop):
    """Holds the run's state; :meth:`run` trains until the step or time budget."""

    loss_key = "loss/ce"
    progress_key = ("ce", "loss/ce")

    def __init__(self, cfg: StudentConfig, *, device: str = "auto", resume: bool = False):
        self.cfg = cfg
        self._setup(device)
        t = cfg.train
        self.store = load_store(cfg.data.features, cfg.mel, self.device)
        self.train_utts = self.store.utterances_in(cfg.data.train_manifest)
        valid = validation_utterances(self.store, cfg.data.valid_manifest)
        self.valid_utts = valid[: t.valid_utterances] if t.valid_utterances > 0 else valid
        self.sampler = SegmentSampler(self.store, self.train_utts, cfg.data.segment_frames, cfg.data.speaker_sampling_power, seed=t.seed + 1000 * self.dist.rank)
        self.model = PhoneStudent(cfg.model).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.step = 0
        self.elapsed = 0.0
        self.best: dict[str, float] = {}
        if resume:
            self._resume()
        self.net: torch.nn.Module = self.model
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.writer = None
        self._stop = False

    # checkpoints ------------------------------------------------------------
    def save(self) -> Path | None:
        state = self._training_state(optimizer=self.optimizer)
        if state is None:
            return None
        path = save_student(step_folder(self.out_dir, self.step), self.model, step=self.step, extra={"training": to_dict(self.cfg)}, train_state=state)
        return self._saved(path)

    def _resume(self) -> None:
        ck = self._latest()
        if ck is None:
            return
        model, meta = load_student(ck, self.device, frozen=False)
        if model.cfg != self.cfg.model:
            raise VckitError(f"{ck} was trained with another model config; use a new out_dir or the same config")
        self.model.load_state_dict(model.state_dict(), strict=True)
        self._restore_training(ck, optimizer=self.optimizer)

    # one step ---------------------------------------------------------------
    def _batch(self) -> dict[str, torch.Tensor]:
        aug, seg = self.cfg.data.augment, self.cfg.data.segment_frames
        gather_len = math.ceil(seg * (1 + aug.speed)) if aug.prob > 0 else seg
        batch = self.sampler.sample(self.cfg.train.batch_size, gather_len)
        return augment(batch, aug, self.sampler.rng, seg) if aug.prob > 0 else batch

    def train_step(self) -> dict[str, torch.Tensor]:
        """Draw and augment a batch, predict the teacher's posteriors, step."""
        t = self.cfg.train
        batch = self._batch()
        mel = decoder_like(self.model.normalize(batch["mel"]), prob=t.decoded_prob, blur=t.decoded_blur, noise=t.decoded_noise, rng=self.sampler.rng)
        target = dense_posteriors(batch["posteriors_idx"], batch["posteriors_p"], self.cfg.model.classes)  # (B, T, classes)
        lr = self._set_lr(self.optimizer)
        with autocast_for(self.device, t.amp):
            logits = self.net(mel)
        loss = soft_cross_entropy(logits, target, batch["mask"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        self.step += 1
        m = batch["mask"]
        agree = ((logits.detach().argmax(1) == batch["posteriors_idx"][..., 0].long()) & m).sum() / m.sum().clamp(min=1)
        return {"loss/ce": loss.detach(), "agree": agree, "grad_norm": gn.detach(), "lr": torch.tensor(lr)}

    def validate(self) -> dict[str, float]:
        if not self.valid_utts:
            return {}
        a = agreement(self.model, self.store, self.valid_utts)
        return {"valid/agree": a.all, "valid/agree_non_blank": a.non_blank}

    def set_train_mode(self) -> None:
        self.model.train()


def export(src: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype = torch.float16, extra: dict[str, Any] | None = None) -> Path:
    """Copy a step checkpoint (or a run folder's latest) for shipping: no training state,
    weights cast to ``dtype``, their sha256 recorded; ``extra`` goes into ``config.json``."""
    src = Path(src)
    if not (src / "config.json").is_file():
        ck = latest_checkpoint(src)
        if ck is None:
            raise CheckpointError(f"{src} is neither a phone-student checkpoint nor a run folder holding one")
        src = ck
    model, _ = load_student(src)
    meta = read_folder(src, "phone_student")
    keep = {k: meta[k] for k in ("training",) if k in meta}
    return save_student(dst, model, step=int(meta.get("step", 0)), extra={**keep, "exported_from": str(src), **(extra or {})}, dtype=dtype)


def run_config(folder: str | os.PathLike) -> StudentConfig:
    """The :class:`StudentConfig` a student folder was trained with (its ``training`` entry)."""
    meta = read_folder(folder, "phone_student")
    try:
        return from_dict(StudentConfig, meta["training"])
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder}/config.json holds no valid training config: {e}") from None
