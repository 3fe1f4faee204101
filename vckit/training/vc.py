"""Training the VC model: one explicit loop for CPU, one GPU, or several via torchrun (DDP).

    vckit train --config recipes/shared_dev/conf/smoke.yaml [--resume]

Each step draws a batch on the device from cached features, reconstructs
each segment from its content codes and the speaker embedding of *another*
segment of the same speaker, and adds the adversarial, VQ and KL terms.
Checkpoints (model, optimiser, step, every RNG state) are written atomically
every ``ckpt_every`` steps and on a clean stop, so a run killed at any moment
resumes from its last checkpoint and, in deterministic mode, reaches the same
parameters as a run never stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch

from vckit.checkpoint import STATE_FILE, load_checkpoint, load_train_state, save_checkpoint, step_folder
from vckit.config import Config
from vckit.data.features import FeatureStore
from vckit.data.sampling import SegmentSampler, augment, mel_shift, valid_batches
from vckit.errors import VckitError
from vckit.frontend import Frames
from vckit.models.vc import build_model
from vckit.training.losses import adversarial_weight, discriminator_loss, envelope_gradient, feature_matching_loss, generator_loss, masked_l1, model_losses
from vckit.training.loop import TrainingLoop, autocast_for, make_optimizer, validation_utterances

log = logging.getLogger(__name__)


def frames_of(batch: dict[str, torch.Tensor]) -> Frames:
    """The model's per-frame inputs in a batch from :class:`SegmentSampler` or :func:`valid_batches`."""
    return Frames(batch["mel"], batch.get("f0"), batch.get("phonetic"))



class Trainer(TrainingLoop):
    """Holds the run's state; :meth:`run` trains until the step or time budget."""

    def __init__(self, cfg: Config, *, device: str = "auto", resume: bool = False, init_from: str | None = None):
        self.cfg = cfg
        self._setup(device)
        t = cfg.train
        self.store = FeatureStore.load(cfg.data.features, cfg.mel, self.device)
        self.train_utts = self.store.utterances_in(cfg.data.train_manifest)
        self.valid_utts = validation_utterances(self.store, cfg.data.valid_manifest)
        self.sampler = SegmentSampler(self.store, self.train_utts, cfg.data.segment_frames, cfg.data.speaker_sampling_power, seed=t.seed + 1000 * self.dist.rank)
        n_spk = len(self.sampler.speakers)
        if cfg.model.n_speakers not in (0, n_spk):
            raise VckitError(f"config says {cfg.model.n_speakers} training speakers but the manifest has {n_spk}")
        self.cfg = cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_speakers=n_spk))
        self._check_store(cfg)
        self.model = build_model(cfg, for_training=True).to(self.device)
        if t.speaker_from:
            self.model.speaker_encoder.requires_grad_(False)  # shared with the model in train.speaker_from
        self.optimizer = make_optimizer(self.model, cfg)
        self.disc, self.disc_opt = None, None
        if cfg.model.discriminator.enabled and (t.mel_gan > 0 or t.feature_matching > 0):
            from vckit.models.mel_discriminator import MelDiscriminator

            self.disc = MelDiscriminator(cfg.model.discriminator).to(self.device)
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=t.lr, betas=t.betas)
        self.ema: dict[str, torch.Tensor] | None = None  # train.ema's average of the weights (fp32)
        self.student = self._load_student() if t.phone_loss > 0 else None
        self.step = 0
        self.elapsed = 0.0  # training seconds over all resumes
        self.best: dict[str, float] = {}
        # --resume goes on from the run's own last checkpoint; where there is none yet,
        # --init-from (if given) warm-starts it, so one command serves a run's every start
        resumed = self._resume() if resume else False
        if not resumed and init_from:
            _, sd, meta = load_checkpoint(init_from, self.device)
            self.cpu_seconds = 3600 * float(meta.get("training_cpu_hours", 0.0))  # the lineage's count goes on
            own = self.model.state_dict()
            sd = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
            self.model.load_state_dict(sd, strict=False)
            log.info("initialised %d tensors from %s", len(sd), init_from)
            self._warm_discriminator(Path(init_from))
        if not resumed and self.model.needs_phonetic:
            self._set_projection()
        if not resumed and t.speaker_from:
            self._share_speaker_encoder()
        if t.ema > 0 and self.ema is None:  # a new run, or one saved before it kept an average
            self.ema = {k: v.detach().clone().float() for k, v in self.model.state_dict().items() if v.is_floating_point()}
        self.net: torch.nn.Module = self.model
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if t.compile:
            self.net = torch.compile(self.net)
        self.writer = None
        self._stop = False

    def _check_store(self, cfg: Config) -> None:
        """The feature cache must hold what this model reads or learns from."""
        need = []
        if cfg.model.f0.enabled:
            need.append("f0")
        if cfg.model.content.input != "mel":
            need.append("phonetic")
        if (cfg.model.phonetic_head.enabled and cfg.train.phonetic_kl > 0) or cfg.train.phone_loss > 0:
            need += ["posteriors_idx", "posteriors_p"]
        missing = [k for k in need if k not in self.store.extra]
        if missing:
            raise VckitError(f"the feature cache {cfg.data.features} has no {', '.join(missing)}: run the recipe's prepare.py with --frame-features")
        if "phonetic" in need and self.store.extra["phonetic"].shape[1] != cfg.model.content.input_dim:
            raise VckitError(f"model.content.input_dim is {cfg.model.content.input_dim} but the cache's phonetic features have {self.store.extra['phonetic'].shape[1]} dims")
        if "phonetic" in need:
            _check_stream_features(cfg)
        if cfg.model.f0.enabled and cfg.data.augment.pitch_bins > 0:
            log.warning("data.augment.pitch_bins > 0 moves the mel but not the F0 the decoder reads: set it to 0 for models with an F0 path")

    def _load_student(self) -> torch.nn.Module:
        """The frozen phone student of ``train.phone_student``, which must read the decoder's units."""
        from vckit.models.phone_student import load_student

        t, m = self.cfg.train, self.cfg.model
        if not t.phone_student:
            raise VckitError("train.phone_loss > 0 needs train.phone_student: a folder made by vckit train-student")
        student, _ = load_student(t.phone_student, self.device)
        if (student.cfg.mel_mean, student.cfg.mel_std, student.cfg.n_mels) != (m.mel_mean, m.mel_std, self.cfg.mel.n_mels):
            raise VckitError(f"the phone student {t.phone_student} reads mels normalised otherwise than this model's decoder emits them")
        return student

    def _phone_loss(self, out: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The student's soft cross-entropy to the source's teacher posteriors, over the reconstructions and the conversions."""
        from vckit.data.frame_features import dense_posteriors
        from vckit.models.phonetic_head import soft_cross_entropy

        decoded = out.pred if out.converted is None else torch.cat([out.pred, out.converted])
        target = dense_posteriors(batch["posteriors_idx"], batch["posteriors_p"], self.student.cfg.classes)
        mask = batch["mask"]
        if out.converted is not None:
            target, mask = torch.cat([target, target]), torch.cat([mask, mask])
        with autocast_for(self.device, self.cfg.train.amp):
            logits = self.student(decoded)
        return soft_cross_entropy(logits, target, mask)

    def _voice_consistency(self, out: Any) -> torch.Tensor:
        """1 - cosine between the speaker encoder's embedding of each conversion and the one it was decoded with.

        The encoder's weights and the target embedding are detached: only the decoder (and what feeds it) learns
        from this term, so the encoder cannot satisfy it by forgetting voices."""
        enc = self.model.speaker_encoder
        frozen = {k: v.detach() for k, v in enc.named_parameters()}
        with autocast_for(self.device, self.cfg.train.amp):
            emb = torch.func.functional_call(enc, frozen, (envelope_gradient(out.converted, self.cfg.train.voice_consistency_envelope),))
        cos = torch.nn.functional.cosine_similarity(emb.float(), out.converted_speaker.detach().float(), dim=1)
        return (1.0 - cos).mean()

    def _warm_discriminator(self, donor: Path) -> None:
        """A warm start from a training checkpoint (a step folder, not a shipped model) takes its mel discriminator
        and that one's optimizer too, so a branch (e.g. one that cools down with ``train.speaker_from``) does
        not start its adversarial game afresh; the model's optimizer starts afresh, under the warm-up."""
        if self.disc is None or not (donor / STATE_FILE).is_file():
            return
        state = load_train_state(donor)
        if "discriminator" not in state:
            return
        own = self.disc.state_dict()
        if state["discriminator"].keys() != own.keys() or any(v.shape != own[k].shape for k, v in state["discriminator"].items()):
            log.warning("%s's mel discriminator is not of this config's shape (model.discriminator): it starts afresh", donor)
            return
        self.disc.load_state_dict(state["discriminator"])
        if "discriminator_optimizer" in state:
            self.disc_opt.load_state_dict(state["discriminator_optimizer"])
            for g in self.disc_opt.param_groups:  # this run's rate, not the donor's last (a cooled branch ends at 0)
                g["lr"] = self.cfg.train.lr
        log.info("mel discriminator from %s", donor)

    def _share_speaker_encoder(self) -> None:
        """Take ``train.speaker_from``'s speaker encoder (frozen since the model was built)."""
        _, sd, _ = load_checkpoint(self.cfg.train.speaker_from, self.device)
        own = self.model.speaker_encoder.state_dict()
        part = {k.removeprefix("speaker_encoder."): v for k, v in sd.items() if k.startswith("speaker_encoder.")}
        if part.keys() != own.keys() or any(v.shape != own[k].shape for k, v in part.items()):
            raise VckitError(f"the speaker encoder of {self.cfg.train.speaker_from} is not of this model's shape (model.speaker)")
        self.model.speaker_encoder.load_state_dict({k: v.to(own[k].dtype) for k, v in part.items()})
        log.info("speaker encoder from %s, frozen", self.cfg.train.speaker_from)

    def _set_projection(self) -> None:
        """Copy the cache's teacher projection into the model, which carries it to conversion; and, for a model
        that reads a phone student's features, that student's weights (checked against the ones that made them)."""
        from vckit.data.frame_features import load_projection

        proj = load_projection(self.cfg.data.features)
        enc = self.model.content_encoder
        if proj["mean"].shape != enc.teacher_mean.shape:
            raise VckitError(f"the cache's phonetic projection reads {proj['mean'].shape[0]} features, the model's {enc.teacher_mean.shape[0]}")
        enc.teacher_mean.copy_(torch.from_numpy(proj["mean"]))
        enc.teacher_proj.copy_(torch.from_numpy(proj["proj"]))
        if enc.student is not None:
            from vckit.data.stream_features import made_settings, student_sha256
            from vckit.models.phone_student import load_student

            made = made_settings(self.cfg.data.features) or {}
            folder = made.get("student_folder", "")
            if not Path(folder, "config.json").is_file() or student_sha256(folder) != made.get("student_sha256"):
                raise VckitError(f"the phone student that made {self.cfg.data.features} is no longer at {folder or '(none recorded)'} as it was: remake the features")
            enc.student.load_state_dict(load_student(folder)[0].state_dict())

    # checkpoints ------------------------------------------------------------
    def save(self) -> Path | None:
        state = self._training_state(optimizer=self.optimizer, discriminator=self.disc, discriminator_optimizer=self.disc_opt)
        if state is None:
            return None
        if self.ema is not None:
            state["ema"] = self.ema
        path = save_checkpoint(
            step_folder(self.out_dir, self.step),
            self.cfg,
            self.model.state_dict(),
            step=self.step,
            extra={"speakers": self.sampler.speakers, "training_cpu_hours": self.cpu_seconds / 3600},
            train_state=state,
        )
        return self._saved(path)

    def _resume(self) -> bool:
        """Load the run's last checkpoint; False when it has none yet."""
        ck = self._latest()
        if ck is None:
            return False
        cfg_ck, sd, meta = load_checkpoint(ck, self.device)
        if cfg_ck.model != self.cfg.model or cfg_ck.mel != self.cfg.mel:
            raise VckitError(f"{ck} was trained with another model or mel config; use a new out_dir or the same config")
        self.model.load_state_dict(sd, strict=True)
        state = self._restore_training(ck, optimizer=self.optimizer, discriminator=self.disc, discriminator_optimizer=self.disc_opt)
        if self.cfg.train.ema > 0 and "ema" in state:
            self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        return True

    # one step ---------------------------------------------------------------
    def train_step(self) -> dict[str, torch.Tensor]:
        """Draw and augment a batch, reconstruct it, add the loss terms, step."""
        cfg, t = self.cfg, self.cfg.train
        batch = self._batch()
        lr = self._set_lr(self.optimizer)
        c = cfg.model.classifier
        adv_w = adversarial_weight(self.step, c.weight, c.start_step, c.warmup_steps)
        perturbed = self._perturbed(batch["mel"]) if t.content_invariance > 0 else None
        with autocast_for(self.device, t.amp):
            out = self.net(
                frames_of(batch),
                batch["ref"],
                speaker_ids=batch["speaker"],
                adv_weight=adv_w,
                cycle=t.content_cycle > 0,
                perturbed=perturbed,
                convert=(self.disc is not None and t.gan_on_conversions) or t.voice_consistency > 0,
            )
        loss, stats = model_losses(out, batch, cfg)
        if self.student is not None:
            phone = self._phone_loss(out, batch)
            loss = loss + t.phone_loss * phone
            stats["loss/phone_student"] = phone.detach()
        if t.voice_consistency > 0:
            voice = self._voice_consistency(out)
            loss = loss + t.voice_consistency * voice
            stats["loss/voice_consistency"] = voice.detach()
        if self.disc is not None:
            loss, gan_stats = self._gan_step(out, batch, loss)
            stats.update(gan_stats)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self._update_ema()
        self.step += 1
        stats.update({"loss/total": loss.detach(), "grad_norm": gn.detach(), "lr": torch.tensor(lr), "adv/weight": torch.tensor(adv_w)})
        return stats  # tensors: converted to floats only when logged

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- ema + (1 - decay) * (weights - ema), over every floating tensor of the model."""
        names = list(self.ema)
        sd = self.model.state_dict()
        torch._foreach_lerp_([self.ema[k] for k in names], [sd[k].float() for k in names], 1.0 - self.cfg.train.ema)

    def _batch(self) -> dict[str, torch.Tensor]:
        aug, seg = self.cfg.data.augment, self.cfg.data.segment_frames
        gather_len = math.ceil(seg * (1 + aug.speed)) if aug.prob > 0 else seg
        batch = self.sampler.sample(self.cfg.train.batch_size, gather_len)
        return augment(batch, aug, self.sampler.rng, seg) if aug.prob > 0 else batch

    def _perturbed(self, mel: torch.Tensor) -> torch.Tensor:
        """``mel`` shifted 1..invariance_bins mel bins up or down (content-invariance loss)."""
        b, gen = mel.shape[0], self.sampler.rng
        size = 1 + (self.cfg.train.invariance_bins - 1) * torch.rand((b,), generator=gen, device=mel.device)
        sign = torch.where(torch.rand((b,), generator=gen, device=mel.device) < 0.5, -1.0, 1.0)
        return mel_shift(mel, sign * size)

    def _gan_step(self, out: Any, batch: dict[str, torch.Tensor], loss: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Update the mel discriminator on real vs decoded mels; return the
        decoder's loss with the adversarial and feature-matching terms added."""
        t = self.cfg.train
        m = batch["mask"][:, None]
        real, fake = out.target * m, out.pred * m
        conv = out.converted * m if out.converted is not None and t.gan_on_conversions else None
        fakes = fake if conv is None else torch.cat([fake, conv])  # conversions have no target: judged, not matched
        with autocast_for(self.device, t.amp):  # the discriminator runs in the model's precision
            on_real, on_fake = self.disc(real), self.disc(fakes.detach())
        d_loss = discriminator_loss([on_real], [on_fake])  # least squares
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.disc_opt.step()
        if self.step < t.gan_start_step:
            return loss, {"gan/d": d_loss.detach()}
        with autocast_for(self.device, t.amp):
            on_real, on_fake = self.disc(real), self.disc(fakes)
        n = fake.shape[0]  # the reconstructions, which have targets to match
        g = generator_loss([on_fake])
        fm = feature_matching_loss([on_real], [(on_fake[0], [f[:n] for f in on_fake[1]])])
        return loss + t.mel_gan * g + t.feature_matching * fm, {"gan/d": d_loss.detach(), "gan/g": g.detach(), "gan/fm": fm.detach()}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Reconstruction L1 on the validation speakers, and how close a
        conversion's embedding (the model's own speaker encoder) is to the
        target's and to the source's."""
        if not self.valid_utts:
            return {}
        self.model.eval()
        l1s, sim_t, sim_s, n = 0.0, 0.0, 0.0, 0
        cos = torch.nn.functional.cosine_similarity
        for b in valid_batches(self.store, self.valid_utts, self.cfg.data.segment_frames, 32):
            with autocast_for(self.device, self.cfg.train.amp):
                out = self.model(frames_of(b), b["ref"])
                l1 = masked_l1(out.pred, out.target, b["mask"])
                tgt = b["ref"].roll(1, 0)  # another utterance, mostly of another speaker
                conv = self.model.convert(frames_of(b), self.model.embed_speaker(tgt))
                e_conv = self.model.embed_speaker(conv).float()
                e_t = self.model.embed_speaker(tgt).float()
                e_s = self.model.embed_speaker(b["ref"]).float()
            k = b["mel"].shape[0]
            l1s += float(l1) * k
            sim_t += float(cos(e_conv, e_t).sum())
            sim_s += float(cos(e_conv, e_s).sum())
            n += k
        self.model.train()
        return {"valid/recon_l1": l1s / n, "valid/conv_sim_target": sim_t / n, "valid/conv_sim_source": sim_s / n}

    # logging ---------------------------------------------------------------
    def set_train_mode(self) -> None:
        self.model.train()

    def after_validate(self) -> None:
        self._log_mels()

    def _log_mels(self) -> None:
        if self.writer is None or not self.valid_utts:
            return
        b = next(valid_batches(self.store, self.valid_utts[:1], self.cfg.data.segment_frames, 1))
        self.model.eval()
        with torch.no_grad():
            out = self.model(frames_of(b), b["ref"])
        self.model.train()
        img = torch.cat([out.target[0], out.pred[0].float()], dim=0).flip(0)
        img = ((img - img.min()) / (img.max() - img.min() + 1e-5)).cpu()
        self.writer.add_image("mel/target_top_vs_pred_bottom", img[None], self.step)


def _check_stream_features(cfg: Config) -> None:
    """A causal model must read phonetic features made as its stream will hear them, and only such a model."""
    from vckit.data.stream_features import made_settings, stream_settings

    made = made_settings(cfg.data.features)
    if cfg.model.stream.causal:
        want = stream_settings(cfg.model.stream)
        if made is None or any(made.get(k) != v for k, v in want.items()):
            raise VckitError(
                f"a causal model reads phonetic features made block by block with {want}, but {cfg.data.features} has {made or 'whole-utterance features'}: "
                f"vckit prepare stream-features {cfg.data.features} <new folder>"
            )
    elif made is not None:
        raise VckitError(f"{cfg.data.features} holds streamed phonetic features, which only a causal model (model.stream.causal) reads")
