"""Training the fast vocoder (Vocos generator, MPD + MRD discriminators).

    vckit train-vocoder --config recipes/vocoder/conf/smoke.yaml [--resume] [--time-limit S]
    torchrun --nproc_per_node 8 -m vckit.cli train-vocoder --config recipes/vocoder/conf/base.yaml
    vckit train-vocoder --export runs/vocoder checkpoints/vocoder_fast

Each step draws random waveform segments on the device from the cache that
``recipes/vocoder/prepare.py`` writes, computes their log-mels on the device
with the front-end, and vocodes them. With ``data.teacher`` (a cache of
``vckit prepare vocoder-teacher``) it distils instead: it draws windows of
cached log-mels, real and converted, and the target is the teacher vocoder's
waveform for them, which fixes each bin's phase too, so ``loss.spectral_weight``
and ``loss.phase_weight`` can teach the STFT's magnitude and phase themselves
(:class:`~vckit.training.losses.TeacherSpectralLoss`), and no discriminator
is needed. For the first ``disc_start_step`` steps
the generator learns from the multi-resolution mel L1 alone; after that each
step updates the discriminators (hinge or LSGAN), then the generator (mel L1
x 45 + feature matching + adversarial). Two AdamW optimisers with exponential
learning-rate decay, bf16 autocast on CUDA, gradient clipping. Checkpoints
(generator, discriminators and both optimisers where the run has an adversarial
loss, else the generator and its optimiser; step, every RNG state) are
written atomically, and a resumed deterministic run reaches the same weights
as one never stopped. Distributed training is the VC trainer's: torchrun sets
the environment and :func:`vckit.training.loop.setup_distributed` joins the group.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch

from vckit.audio import MelSpectrogram
from vckit.checkpoint import WEIGHTS_FILE, check_state_dict, latest_checkpoint, read_folder, read_weights, step_folder
from vckit.config import Amount, Count, Fraction, LoopConfig, MelConfig, OneOf, Positive, Probability, Size, from_dict, to_dict
from vckit.config_files import load_config
from vckit.errors import CheckpointError, ConfigError, VckitError
from vckit.models.vocoder.discriminators import Discriminators, WaveDiscriminatorConfig
from vckit.models.vocoder.vocos import Vocos, VocosConfig, export_vocos, save_vocos
from vckit.training.loop import TrainingLoop, autocast_for, make_optimizer
from vckit.training.losses import MultiResolutionMelLoss, TeacherSpectralLoss, discriminator_loss, feature_matching_loss, generator_loss
from vckit.data.distill import TeacherSampler, TeacherStore
from vckit.data.waves import WaveSampler, WaveStore

log = logging.getLogger(__name__)

__all__ = ["LossConfig", "VocoderConfig", "VocoderDataConfig", "VocoderTrainConfig", "VocoderTrainer", "export", "load_vocoder_config"]

DISC_FILE = "discriminators.safetensors"


# -- configuration ---------------------------------------------------------
@dataclass(frozen=True)
class VocoderDataConfig:
    cache: str = "cache/vocoder"  # folder written by recipes/vocoder/prepare.py
    segment: Size = 8192  # samples per training segment (a multiple of hop_length)
    gain_db: Amount = 3.0  # random gain, uniform +- (peak kept below 0.99)
    valid_utterances: Count = 8
    valid_seconds: Positive = 5.0  # each validation utterance is cut to this
    teacher: str = ""  # a teacher cache (vckit prepare vocoder-teacher): learn its waveforms, not real audio
    context_frames: Count = 8  # teacher mode: mel frames the student hears either side of the segment the loss reads
    # teacher mode: the chance that a batch's windows end early, 2 to context_frames frames after the segment the
    # loss reads, as the live path's newest frames do (vckit.streaming: 2 frames of look-ahead); the target stays
    # the teacher's waveform made with the whole utterance
    stream_edge: Probability = 0.0


@dataclass(frozen=True)
class LossConfig:
    mel_weight: Amount = 45.0
    fm_weight: Amount = 2.0
    adv_weight: Amount = 1.0
    mrd_weight: Amount = 1.0  # weight of the resolution discriminators relative to the period ones
    adversarial: Annotated[str, OneOf(("hinge", "lsgan"))] = "hinge"
    mel_resolutions: tuple[tuple[Size, Size, Size], ...] = ((512, 128, 40), (1024, 256, 80), (2048, 512, 128))  # n_fft, hop, n_mels
    spectral_weight: Amount = 0.0  # teacher mode: L1 of the power-compressed STFT magnitudes
    phase_weight: Amount = 0.0  # teacher mode: phase, instantaneous frequency and group delay, anti-wrapped
    spectral_compress: Probability = 0.3  # the compression exponent of the magnitudes (and of the phase's weights)


@dataclass(frozen=True)
class VocoderTrainConfig(LoopConfig):
    """The fast vocoder's run: :class:`~vckit.config.LoopConfig` with the vocoder's defaults (no warm-up, a cosine
    to a tenth of the rate, the same ``lr`` for both optimisers) and when the discriminators join."""

    out_dir: str = "runs/vocoder"
    batch_size: Size = 16
    steps: Size = 500_000
    lr: Positive = 2e-4
    betas: tuple[Fraction, Fraction] = (0.8, 0.99)
    weight_decay: Amount = 0.01
    warmup_steps: Count = 0
    min_lr_ratio: Probability = 0.1
    grad_clip: Positive = 1000.0  # a guard against spikes; Adam is scale-invariant below it
    valid_every: Size = 2000
    ckpt_every: Size = 2000
    disc_start_step: Count = 0  # generator learns from the mel loss alone before this step
    compile: bool = False


@dataclass(frozen=True)
class VocoderConfig:
    mel: MelConfig = field(default_factory=MelConfig)
    generator: VocosConfig = field(default_factory=VocosConfig)
    discriminator: WaveDiscriminatorConfig = field(default_factory=WaveDiscriminatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: VocoderDataConfig = field(default_factory=VocoderDataConfig)
    train: VocoderTrainConfig = field(default_factory=VocoderTrainConfig)

    def __post_init__(self) -> None:
        if self.data.segment % self.mel.hop_length or self.data.segment < 4 * self.mel.hop_length:
            raise ConfigError(f"data.segment must be a multiple of hop_length {self.mel.hop_length} and at least 4 hops")
        if self.data.stream_edge and not self.data.teacher:
            raise ConfigError("data.stream_edge needs data.teacher: it cuts the teacher windows' right context")
        if self.data.teacher and self.data.context_frames < 2:
            raise ConfigError("data.context_frames must be at least 2 with a teacher cache (the STFT loss reads 1.5 frames past the segment)")
        if (self.loss.spectral_weight or self.loss.phase_weight) and not self.data.teacher:
            raise ConfigError("loss.spectral_weight and loss.phase_weight need data.teacher: only a teacher's waveform has the phase of the mel it was made from")
        if self.train.amp == "fp16":
            raise ConfigError("train.amp fp16 needs a grad scaler the vocoder trainer does not have: use bf16 or none")


def load_vocoder_config(path: str | os.PathLike, overrides: list[str] | None = None) -> VocoderConfig:
    """Read a YAML/JSON vocoder config with ``key.sub=value`` overrides; unknown keys are errors."""
    return load_config(path, overrides, cls=VocoderConfig)


def _load_weights(module: torch.nn.Module, folder: Path, name: str, meta: dict, device: torch.device) -> None:
    sd = read_weights(folder, meta, name, device)
    check_state_dict(module, sd)
    module.load_state_dict(sd, strict=True)


# -- the loop --------------------------------------------------------------
class VocoderTrainer(TrainingLoop):
    """Holds the run's state; :meth:`run` trains until the step or time budget."""

    def __init__(self, cfg: VocoderConfig, *, device: str = "auto", resume: bool = False):
        self.cfg = cfg
        self._setup(device)
        t = cfg.train
        seed = t.seed + 1000 * self.dist.rank + 1
        self.context = cfg.data.context_frames if cfg.data.teacher else 0
        if cfg.data.teacher:
            m = cfg.mel
            self.store = TeacherStore.load(cfg.data.teacher, sample_rate=m.sample_rate, hop=m.hop_length, n_mels=m.n_mels, device=self.device)
            self.sampler = TeacherSampler(self.store, self.store.split("train"), segment=cfg.data.segment // m.hop_length, context=self.context, seed=seed)
        else:
            self.store = WaveStore.load(cfg.data.cache, cfg.mel.sample_rate, self.device)
            self.sampler = WaveSampler(self.store, self.store.split("train"), cfg.data.segment, seed, cfg.data.gain_db)
        self.valid_utts = self.store.split("valid")[: cfg.data.valid_utterances]
        self.mel = MelSpectrogram(cfg.mel).to(self.device)
        self.generator = Vocos(cfg.generator, cfg.mel).to(self.device)
        # the discriminators exist only in a run that can use them: a distillation without an adversarial loss
        # (the shipped fast vocoder's) neither builds nor saves their 41 M parameters and their Adam moments
        self.disc: Discriminators | None = Discriminators(cfg.discriminator).to(self.device) if _adversarial(cfg) else None
        self.mel_loss = MultiResolutionMelLoss(cfg.mel, cfg.loss.mel_resolutions).to(self.device)
        self.spectral_loss = TeacherSpectralLoss(cfg.mel, cfg.loss.spectral_compress).to(self.device)
        self.disc_weights = self.disc.weights(cfg.loss.mrd_weight) if self.disc is not None else []
        self.opt_g = make_optimizer(self.generator, cfg)  # AdamW; reads cfg.train.lr, betas, weight_decay
        self.opt_d = make_optimizer(self.disc, cfg) if self.disc is not None else None
        self.step = 0
        self.elapsed = 0.0  # training seconds over all resumes
        self.best: dict[str, float] = {}
        if resume:
            self._resume()
        # gen_net and disc_net are what the optimisers' steps run through (DDP-wrapped under torchrun); the
        # generator's step calls the plain self.disc, so that its backward does not all-reduce the discriminators
        self.gen_net: torch.nn.Module = self.generator
        self.disc_net: torch.nn.Module | None = self.disc
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.gen_net = torch.nn.parallel.DistributedDataParallel(self.generator, device_ids=ids)
            if self.disc is not None:
                self.disc_net = torch.nn.parallel.DistributedDataParallel(self.disc, device_ids=ids)
        if t.compile:  # the generator only: the discriminators' weight norm fails in inductor's backward (torch 2.9)
            self.gen_net = torch.compile(self.gen_net)
        self.writer = None
        self._stop = False

    # checkpoints ------------------------------------------------------------
    def save(self) -> Path | None:
        state = self._training_state(opt_g=self.opt_g, opt_d=self.opt_d)
        if state is None:
            return None
        path = save_vocos(
            step_folder(self.out_dir, self.step),
            self.generator,
            step=self.step,
            extra={"training": to_dict(self.cfg)},
            extra_weights={DISC_FILE: self.disc.state_dict()} if self.disc is not None else None,
            train_state=state,
        )
        return self._saved(path)

    def _resume(self) -> None:
        ck = self._latest()
        if ck is None:
            return
        meta = read_folder(ck, "vocoder")
        training = meta.get("training", {})
        for name, cls in (("mel", MelConfig), ("generator", VocosConfig), ("discriminator", WaveDiscriminatorConfig)):
            try:
                same = from_dict(cls, training.get(name, {}), name) == getattr(self.cfg, name)
            except ConfigError:
                same = False
            if not same:
                raise VckitError(f"{ck} was trained with another {name} config; use a new out_dir or the same config")
        _load_weights(self.generator, ck, WEIGHTS_FILE, meta, self.device)
        if self.disc is not None:
            if (ck / DISC_FILE).is_file():
                _load_weights(self.disc, ck, DISC_FILE, meta, self.device)
            else:  # a run that distilled without them, going on with an adversarial loss
                log.info("%s has no discriminators: they start afresh", ck)
        self._restore_training(ck, opt_g=self.opt_g, opt_d=self.opt_d)

    # one step ---------------------------------------------------------------
    def train_step(self) -> dict[str, torch.Tensor]:
        t, L = self.cfg.train, self.cfg.loss
        mel, real = self._batch(t.batch_size)  # (batch, n_mels, frames), (batch, frames * hop)
        hop, segment = self.cfg.mel.hop_length, self.cfg.data.segment // self.cfg.mel.hop_length
        if self.context:
            right = self._right_context()
            mel, real = mel[..., : self.context + segment + right], real[:, : (self.context + segment + right) * hop]
        lr = self._set_lr(*(o for o in (self.opt_g, self.opt_d) if o is not None))
        stats: dict[str, torch.Tensor] = {"lr": torch.tensor(lr)}
        with autocast_for(self.device, t.amp):
            fake = self.gen_net(mel, clamp=False)  # (batch, frames * hop), float32
        spectral = None
        if L.spectral_weight or L.phase_weight:  # the middle frames' STFTs, read from the whole window (teacher mode)
            spectral = self.spectral_loss(fake, real, self.context, segment)
        if self.context:  # the losses read the middle: the samples whose mel context the student heard
            fake, real = (x[:, self.context * hop : (self.context + segment) * hop] for x in (fake, real))
        adversarial = self.disc is not None and self.step >= t.disc_start_step

        if adversarial:  # discriminator step: real high, generated low
            with autocast_for(self.device, t.amp):
                out = self.disc_net(torch.cat([real, fake.detach()]))
            d_real, d_fake = _split(out, real.shape[0])
            loss_d = discriminator_loss(d_real, d_fake, L.adversarial, self.disc_weights)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            stats["grad_norm/disc"] = torch.nn.utils.clip_grad_norm_(self.disc.parameters(), t.grad_clip).detach()
            self.opt_d.step()
            stats["loss/disc"] = loss_d.detach()

        mel_l1 = self.mel_loss(fake, real)
        loss_g = L.mel_weight * mel_l1
        stats["loss/mel_l1"] = mel_l1.detach()
        if spectral is not None:
            loss_g = loss_g + L.spectral_weight * spectral[0] + L.phase_weight * spectral[1]
            stats["loss/spectral"], stats["loss/phase"] = spectral[0].detach(), spectral[1].detach()
        if adversarial:  # generator step through the updated discriminators, whose weights stay put
            self.disc.requires_grad_(False)
            try:
                with autocast_for(self.device, t.amp):
                    g_fake = self.disc(fake)
                    with torch.no_grad():
                        g_real = self.disc(real)
                adv = generator_loss(g_fake, L.adversarial, self.disc_weights)
                fm = feature_matching_loss(g_real, g_fake, self.disc_weights)
            finally:
                self.disc.requires_grad_(True)
            loss_g = loss_g + L.adv_weight * adv + L.fm_weight * fm
            stats["loss/gen_adv"] = adv.detach()
            stats["loss/feature_matching"] = fm.detach()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        stats["grad_norm/gen"] = torch.nn.utils.clip_grad_norm_(self.generator.parameters(), t.grad_clip).detach()
        self.opt_g.step()
        self.step += 1
        stats["loss/gen_total"] = loss_g.detach()
        return stats  # tensors: converted to floats only when logged

    def _right_context(self) -> int:
        """Mel frames the step's windows keep after the loss's segment: ``context_frames``, or with chance
        ``data.stream_edge`` 2 to ``context_frames``. Drawn from the seed and the step, so a resumed run draws the same."""
        d = self.cfg.data
        rng = random.Random(self.cfg.train.seed * 1_000_003 + self.step)
        return rng.randint(2, self.context) if rng.random() < d.stream_edge else self.context

    def _batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` training examples: (log-mel ``(n, n_mels, frames)``, target waveform ``(n, frames * hop)``)."""
        if self.context:
            return self.sampler.sample(n)  # cached mels and the teacher's waveform for them
        real = self.sampler.sample(n)
        with torch.no_grad():
            return self.mel(real), real

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Held-out mel L1 (nats, the front-end's mel), as benchmarks/vocoder.py: copy synthesis of real audio,
        or in teacher mode the distance to the teacher's waveform for the same mel."""
        if not self.valid_utts:
            return {}
        self.generator.eval()
        hop, n, total = self.cfg.mel.hop_length, 0, 0.0
        first = None
        for u in self.valid_utts:
            if self.context:
                mel, target = self.store.utterance(u, int(self.cfg.data.valid_seconds * self.cfg.mel.sample_rate) // hop)
                mel, target = mel[None], target[None]
            else:
                wav = self.store.audio(u, int(self.cfg.data.valid_seconds * self.cfg.mel.sample_rate))
                target = wav[None, : wav.shape[0] // hop * hop]
                mel = self.mel(target)
            if target.shape[1] < 4 * hop:
                continue
            out = self.generator(mel)
            total += float((self.mel(out) - self.mel(target)).abs().mean())
            n += 1
            first = out[0] if first is None else first
        self.generator.train()
        if self.writer is not None and first is not None:
            self.writer.add_audio("valid/audio_0", first.float().cpu()[None], self.step, self.cfg.mel.sample_rate)
        return {"valid/mel_l1": total / max(1, n)}

    # hooks of the shared loop -----------------------------------------------
    loss_key = "loss/gen_total"
    progress_key = ("mel", "loss/mel_l1")

    def set_train_mode(self) -> None:
        self.generator.train()
        if self.disc is not None:
            self.disc.train()


def _adversarial(cfg: VocoderConfig) -> bool:
    """Whether the run's discriminators can ever matter: an adversarial or feature-matching weight, and a start step
    that the run reaches."""
    return bool(cfg.loss.adv_weight or cfg.loss.fm_weight) and cfg.train.disc_start_step < cfg.train.steps


def _split(outputs: list[tuple[torch.Tensor, list[torch.Tensor]]], n: int) -> tuple[list, list]:
    """Discriminator outputs on ``cat([real, fake])`` -> (outputs on real, outputs on fake)."""
    real = [(lg[:n], [f[:n] for f in fs]) for lg, fs in outputs]
    fake = [(lg[n:], [f[n:] for f in fs]) for lg, fs in outputs]
    return real, fake


def export(src: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype = torch.float16) -> Path:
    """Export a step checkpoint, or the latest one of a run folder, as a shippable fast vocoder."""
    src = Path(src)
    if not (src / "config.json").is_file():
        ck = latest_checkpoint(src)
        if ck is None:
            raise CheckpointError(f"{src} is neither a fast-vocoder checkpoint nor a run folder holding one")
        src = ck
    return export_vocos(src, dst, dtype)
