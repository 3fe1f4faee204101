"""The training loop: one explicit loop for CPU, one GPU, or several via torchrun (DDP).

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
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vckit.checkpoint import (
    build_model,
    latest_checkpoint,
    load_checkpoint,
    load_train_state,
    prune_checkpoints,
    save_checkpoint,
    step_folder,
)
from vckit.config import Config
from vckit.data import FeatureStore, SegmentSampler, augment, mel_shift, read_manifest, valid_batches
from vckit.errors import VckitError
from vckit.models.vc import Frames
from vckit.losses import adversarial_weight, masked_l1, model_losses

log = logging.getLogger(__name__)


# -- set-up ----------------------------------------------------------------
@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> tuple[Dist, torch.device]:
    """Join the torchrun process group if there is one; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise VckitError("--device cuda was asked for, but no CUDA GPU is available")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local), dev


def lr_at(step: int, cfg: Config, elapsed: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to ``lr * min_lr_ratio`` at ``steps``.

    With ``train.time_budget`` the decay follows training seconds instead
    (for budgeted GPU runs; not bit-reproducible, since it depends on speed).
    """
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.time_budget > 0:
        progress = min(1.0, elapsed / t.time_budget)
    else:
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw: dict[str, Any] = {}
    if next(model.parameters()).device.type == "cuda":
        kw["fused"] = True
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=cfg.train.betas, **kw)


def autocast_for(device: torch.device, amp: str):
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    if amp == "none":
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if dtype is None:
        raise VckitError(f"train.amp must be auto, bf16, fp16 or none, got {amp!r}")
    return torch.autocast(device_type=device.type, dtype=dtype)


def _select(store: FeatureStore, manifest: str) -> list[dict[str, Any]]:
    paths = {r["path"] for r in read_manifest(manifest)}
    utts = [u for u in store.utterances if u["path"] in paths]
    if not utts:
        raise VckitError(f"none of the files in {manifest} are in the feature cache (run prepare.py again)")
    return utts


def frames_of(batch: dict[str, torch.Tensor]) -> Frames:
    """The model's per-frame inputs in a batch from :class:`SegmentSampler` or :func:`valid_batches`."""
    return Frames(batch["mel"], batch.get("f0"), batch.get("phonetic"))


# -- the loop --------------------------------------------------------------
class TrainingLoop:
    """The loop every trainer shares: budgets, logging, validation, checkpoints, signals.

    A subclass sets ``cfg`` (with a ``train`` section: steps, time_budget,
    log_every, valid_every, ckpt_every), ``dist``, ``out_dir``, ``step``,
    ``elapsed``, and implements :meth:`train_step`, :meth:`save` and
    :meth:`set_train_mode`; :meth:`validate` and :meth:`after_validate` are
    optional. ``loss_key`` is checked for divergence, ``progress_key`` shown
    on the progress bar.
    """

    loss_key = "loss/total"
    progress_key = ("recon", "loss/recon_l1")
    cfg: Any
    sampler: Any  # with state_dict() / load_state_dict() of its generator
    best: dict[str, float]
    dist: Dist
    device: torch.device
    out_dir: Path
    step: int
    elapsed: float
    writer: Any = None
    _stop: bool = False

    def _setup(self, device: str) -> None:
        """Join the process group, pick the device, set determinism and seed from ``cfg.train``."""
        self.dist, self.device = setup_distributed(device)
        t = self.cfg.train
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(t.seed + self.dist.rank)
        self.out_dir = Path(t.out_dir)

    def _loop_state(self) -> dict[str, Any]:
        """Step, training time, RNG states and every rank's sampler state, for ``train_state.pt``.

        Collective under DDP: every rank must call it (only the main one saves).
        """
        own = self.sampler.state_dict()["gen"].cpu()
        samplers: list[Any] = [own]
        if self.dist.world > 1:
            samplers = [None] * self.dist.world
            dist.all_gather_object(samplers, own)
        return {
            "step": self.step,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "sampler": samplers,
            "world": self.dist.world,
            "elapsed": self.elapsed,
            "best": self.best,
        }

    def _restore_loop_state(self, state: dict[str, Any]) -> None:
        """The inverse of :meth:`_loop_state`, for this rank."""
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.best = dict(state.get("best", {}))
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        samplers = state["sampler"]
        if len(samplers) == self.dist.world:
            self.sampler.load_state_dict({"gen": samplers[self.dist.rank]})
        else:
            log.warning("resuming on %d processes from a run on %d: batches will differ", self.dist.world, len(samplers))

    def train_step(self) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def save(self) -> Path | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_train_mode(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        return {}

    def after_validate(self) -> None:
        """Called on the main process after each validation (e.g. to log images)."""

    def _log(self, stats: dict[str, Any], prefix: str = "") -> None:
        if self.writer is None:
            return
        for k, v in stats.items():
            self.writer.add_scalar(prefix + k, float(v), self.step)

    def _open_writer(self) -> None:
        if not self.dist.main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed: no event files (pip install tensorboard)")
            return
        self.writer = SummaryWriter(str(self.out_dir / "tb"))

    def _handle_signal(self, signum: int, frame: Any) -> None:
        log.warning("signal %d: stopping after this step and saving a checkpoint", signum)
        self._stop = True

    def _agree_stop(self, stop: bool) -> bool:
        if self.dist.world == 1:
            return stop
        flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def _check_writable(self) -> None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            probe = self.out_dir / f".write-test.{os.getpid()}"  # one per process: ranks share the folder
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise VckitError(f"cannot write to the output folder {self.out_dir}: {e.strerror or e}") from None

    def run(self, *, max_steps: int | None = None, time_limit: float | None = None, progress: bool = True) -> dict[str, float]:
        """Train until ``train.steps`` (or ``max_steps``), ``train.time_budget``
        training seconds or ``time_limit`` wall seconds; checkpoint on the way
        out. Returns the last logged statistics."""
        t = self.cfg.train
        end = min(t.steps, max_steps) if max_steps else t.steps
        self._check_writable()
        self._open_writer()
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)} if self._in_main_thread() else {}
        for s in old:
            signal.signal(s, self._handle_signal)
        bar = None
        if progress and self.dist.main:
            from tqdm import tqdm

            bar = tqdm(total=end, initial=self.step, unit="step", dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
        t0 = time.time()
        last: dict[str, float] = {}
        saved_at = self.step
        self.set_train_mode()
        name, key = self.progress_key
        try:
            while self.step < end and not (t.time_budget > 0 and self.elapsed >= t.time_budget):
                t_step = time.time()
                stats = self.train_step()
                self.elapsed += time.time() - t_step
                if bar:
                    bar.update(1)
                if self.step % t.log_every == 0 or self.step == end:
                    last = {k: float(v) for k, v in stats.items()}
                    if not math.isfinite(last[self.loss_key]):
                        raise VckitError(f"training diverged at step {self.step} (loss is {last[self.loss_key]}); lower train.lr")
                    self._log(last, "train/")
                    if bar:
                        bar.set_postfix({name: f"{last[key]:.3f}"}, refresh=False)
                if self.step % t.valid_every == 0 and self.dist.main:
                    v = self.validate()
                    last.update(v)
                    self._log(v)
                    self.after_validate()
                    if v:
                        log.info("step %d %s", self.step, " ".join(f"{k}={x:.4f}" for k, x in v.items()))
                timed_out = (time_limit is not None and time.time() - t0 > time_limit) or (t.time_budget > 0 and self.elapsed >= t.time_budget)
                stop = self._agree_stop(self._stop or timed_out)
                if self.step % t.ckpt_every == 0 or stop:
                    self.save()
                    saved_at = self.step
                if stop:
                    log.info("stopping at step %d (%s)", self.step, "time limit" if timed_out else "signal")
                    break
            if saved_at != self.step:
                self.save()
        finally:
            if bar:
                bar.close()
            if self.writer:
                self.writer.flush()
            for s, h in old.items():
                signal.signal(s, h)
        return last

    @staticmethod
    def _in_main_thread() -> bool:
        import threading

        return threading.current_thread() is threading.main_thread()


class Trainer(TrainingLoop):
    """Holds the run's state; :meth:`run` trains until the step or time budget."""

    def __init__(self, cfg: Config, *, device: str = "auto", resume: bool = False, init_from: str | None = None):
        self.cfg = cfg
        self._setup(device)
        t = cfg.train
        self.store = FeatureStore.load(cfg.data.features, cfg.mel, self.device)
        self.train_utts = _select(self.store, cfg.data.train_manifest)
        self.valid_utts = _select(self.store, cfg.data.valid_manifest) if cfg.data.valid_manifest else []
        self.sampler = SegmentSampler(self.store, self.train_utts, cfg.data.segment_frames, cfg.data.speaker_sampling_power, seed=t.seed + 1000 * self.dist.rank)
        n_spk = len(self.sampler.speakers)
        if cfg.model.n_speakers not in (0, n_spk):
            raise VckitError(f"config says {cfg.model.n_speakers} training speakers but the manifest has {n_spk}")
        self.cfg = cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_speakers=n_spk))
        self._check_store(cfg)
        self.model = build_model(cfg, for_training=True).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.disc, self.disc_opt = None, None
        if cfg.model.discriminator.enabled and (t.mel_gan > 0 or t.feature_matching > 0):
            from vckit.models.discriminator import MelDiscriminator

            self.disc = MelDiscriminator(cfg.model.discriminator).to(self.device)
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=t.lr, betas=t.betas)
        self.step = 0
        self.elapsed = 0.0  # training seconds over all resumes
        self.best: dict[str, float] = {}
        if resume:
            self._resume()
        elif init_from:
            _, sd, _ = load_checkpoint(init_from, self.device)
            own = self.model.state_dict()
            sd = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
            self.model.load_state_dict(sd, strict=False)
            log.info("initialised %d tensors from %s", len(sd), init_from)
        if not resume and self.model.needs_phonetic:
            self._set_projection()
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
        if cfg.model.content.input == "phonetic":
            need.append("phonetic")
        if cfg.model.phonetic_head.enabled and cfg.train.phonetic_kl > 0:
            need += ["posteriors_idx", "posteriors_p"]
        missing = [k for k in need if k not in self.store.extra]
        if missing:
            raise VckitError(f"the feature cache {cfg.data.features} has no {', '.join(missing)}: run the recipe's prepare.py with --frame-features")
        if "phonetic" in need and self.store.extra["phonetic"].shape[1] != cfg.model.content.input_dim:
            raise VckitError(f"model.content.input_dim is {cfg.model.content.input_dim} but the cache's phonetic features have {self.store.extra['phonetic'].shape[1]} dims")
        if cfg.model.f0.enabled and cfg.data.augment.pitch_bins > 0:
            log.warning("data.augment.pitch_bins > 0 moves the mel but not the F0 the decoder reads: set it to 0 for models with an F0 path")

    def _set_projection(self) -> None:
        """Copy the cache's teacher projection into the model, which carries it to conversion."""
        from vckit.frame_features import load_projection

        proj = load_projection(self.cfg.data.features)
        enc = self.model.content_encoder
        enc.teacher_mean.copy_(torch.from_numpy(proj["mean"]))
        enc.teacher_proj.copy_(torch.from_numpy(proj["proj"]))

    # checkpoints ------------------------------------------------------------
    def save(self) -> Path | None:
        state = self._loop_state()
        if not self.dist.main:
            return None
        state["optimizer"] = self.optimizer.state_dict()
        if self.disc is not None:
            state["discriminator"] = self.disc.state_dict()
            state["discriminator_optimizer"] = self.disc_opt.state_dict()
        path = save_checkpoint(
            step_folder(self.out_dir, self.step),
            self.cfg,
            self.model.state_dict(),
            step=self.step,
            extra={"speakers": self.sampler.speakers},
            train_state=state,
        )
        prune_checkpoints(self.out_dir, self.cfg.train.keep_last)
        log.info("saved %s", path)
        return path

    def _resume(self) -> None:
        ck = latest_checkpoint(self.out_dir)
        if ck is None:
            log.warning("no checkpoint in %s: starting from scratch", self.out_dir)
            return
        cfg_ck, sd, meta = load_checkpoint(ck, self.device)
        if cfg_ck.model != self.cfg.model or cfg_ck.mel != self.cfg.mel:
            raise VckitError(f"{ck} was trained with another model or mel config; use a new out_dir or the same config")
        self.model.load_state_dict(sd, strict=True)
        state = load_train_state(ck)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.disc is not None and "discriminator" in state:
            self.disc.load_state_dict(state["discriminator"])
            self.disc_opt.load_state_dict(state["discriminator_optimizer"])
        self._restore_loop_state(state)
        log.info("resumed from %s at step %d", ck, self.step)

    # one step ---------------------------------------------------------------
    def train_step(self) -> dict[str, torch.Tensor]:
        """Draw and augment a batch, reconstruct it, add the loss terms, step."""
        cfg, t = self.cfg, self.cfg.train
        batch = self._batch()
        lr = lr_at(self.step, cfg, self.elapsed)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
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
                convert=self.disc is not None and t.gan_on_conversions,
            )
        loss, stats = model_losses(out, batch, cfg)
        if self.disc is not None:
            loss, gan_stats = self._gan_step(out, batch, loss)
            stats.update(gan_stats)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        self.step += 1
        stats.update({"loss/total": loss.detach(), "grad_norm": gn.detach(), "lr": torch.tensor(lr), "adv/weight": torch.tensor(adv_w)})
        return stats  # tensors: converted to floats only when logged

    def _batch(self) -> dict[str, torch.Tensor]:
        aug, seg = self.cfg.data.augment, self.cfg.data.segment_frames
        gather_len = math.ceil(seg * (1 + aug.speed)) if aug.prob > 0 else seg
        batch = self.sampler.sample(self.cfg.train.batch_size, gather_len)
        return augment(batch, aug, self.sampler.gen, seg) if aug.prob > 0 else batch

    def _perturbed(self, mel: torch.Tensor) -> torch.Tensor:
        """``mel`` shifted 1..invariance_bins mel bins up or down (content-invariance loss)."""
        b, gen = mel.shape[0], self.sampler.gen
        size = 1 + (self.cfg.train.invariance_bins - 1) * torch.rand((b,), generator=gen, device=mel.device)
        sign = torch.where(torch.rand((b,), generator=gen, device=mel.device) < 0.5, -1.0, 1.0)
        return mel_shift(mel, sign * size)

    def _gan_step(self, out: Any, batch: dict[str, torch.Tensor], loss: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Update the mel discriminator on real vs decoded mels; return the
        decoder's loss with the adversarial and feature-matching terms added."""
        from vckit.models.discriminator import discriminator_loss, feature_matching_loss, generator_loss

        t = self.cfg.train
        m = batch["mask"][:, None]
        real, fake = out.target * m, out.pred * m
        conv = out.converted * m if out.converted is not None else None
        fakes = fake if conv is None else torch.cat([fake, conv])  # conversions have no target: judged, not matched
        d_real, _ = self.disc(real)
        d_fake, _ = self.disc(fakes.detach())
        d_loss = discriminator_loss(d_real, d_fake)
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.disc_opt.step()
        if self.step < t.gan_start_step:
            return loss, {"gan/d": d_loss.detach()}
        d_real, f_real = self.disc(real)
        d_fake, f_fake = self.disc(fakes)
        n = fake.shape[0]
        g, fm = generator_loss(d_fake), feature_matching_loss(f_real, [f[:n] for f in f_fake])
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


def train(cfg: Config, *, resume: bool = False, device: str = "auto", max_steps: int | None = None, time_limit: float | None = None, init_from: str | None = None, progress: bool = True) -> dict[str, float]:
    """Build a :class:`Trainer` and run it; tears the process group down after."""
    try:
        trainer = Trainer(cfg, device=device, resume=resume, init_from=init_from)
        return trainer.run(max_steps=max_steps, time_limit=time_limit, progress=progress)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
