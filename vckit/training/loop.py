"""The loop every trainer shares: set-up (devices, DDP), budgets, logging, validation, checkpoints, signals.

One explicit loop for CPU, one GPU, or several via torchrun (DDP): torchrun
sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and :func:`setup_distributed`
joins the group. :func:`pick_device` is the one device choice of the toolkit
(conversion, evaluation and every trainer): ``auto`` is CUDA when there is a
GPU, else the CPU; ``mps`` is used when asked for.
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

from vckit.checkpoint import latest_checkpoint, load_train_state, prune_checkpoints
from vckit.config import LoopConfig
from vckit.devices import pick_device  # noqa: F401  (where trainers have always found it)
from vckit.errors import VckitError

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
    dev = pick_device(device, local)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local), dev


def validation_utterances(store: Any, manifest: str) -> list[dict[str, Any]]:
    """The cached utterances (:class:`vckit.data.features.FeatureStore`) of the validation manifest;
    none when it is ``""`` (training without validation)."""
    if not manifest:
        return []
    if Path(manifest).is_file() and not Path(manifest).read_text().strip():
        raise VckitError(
            f"the validation manifest {manifest} is empty: give one of held-out speakers, "
            "or train without validation with --set data.valid_manifest="
        )
    return store.utterances_in(manifest)


def make_optimizer(model: torch.nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """AdamW over ``model``'s parameters from ``cfg.train`` (lr, betas, weight_decay; no decay on biases and norms)."""
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


def lr_at(step: int, t: LoopConfig, elapsed: float = 0.0) -> float:
    """The learning rate at ``step`` of a run with train section ``t``: every trainer's one schedule.

    Linear warm-up over ``warmup_steps``, then a cosine decay to ``lr * min_lr_ratio`` at ``steps``. With
    ``time_budget`` the decay follows training seconds instead (for budgeted runs; not bit-reproducible, since it
    depends on speed). With ``cooldown_steps`` it is warm-up, stable, decay: the peak until the last
    ``cooldown_steps`` steps before ``steps``, then a linear fall to ``lr * min_lr_ratio`` (a run held at its peak,
    as the background run is, is branched off and cooled down to ship).
    """
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.cooldown_steps > 0:
        left = min(1.0, max(0.0, (t.steps - step) / t.cooldown_steps))  # 1 until the cool-down starts, 0 at steps
        return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * left)
    if t.time_budget > 0:
        progress = min(1.0, elapsed / t.time_budget)
    else:
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(trainer: type[TrainingLoop], cfg: Any, *, resume: bool = False, device: str = "auto", max_steps: int | None = None,
          time_limit: float | None = None, progress: bool = True, **options: Any) -> dict[str, Any]:
    """Build ``trainer(cfg, ..., **options)`` (``options``: the VC trainer's ``init_from``) and run it; a run that
    reached its end then calls :meth:`~TrainingLoop.finish` (the judge: its EER and folder), whose figures join the
    last logged ones. Tears the process group down after."""
    try:
        run = trainer(cfg, device=device, resume=resume, **options)
        last = run.run(max_steps=max_steps, time_limit=time_limit, progress=progress)
        return {**last, **run.finish()} if run.dist.main and run.finished else last
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


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
    cpu_seconds: float = 0.0  # the process's CPU time in training steps, over all resumes (all threads)
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
        own = self.sampler.state_dict()["rng"].cpu()
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
            "cpu_seconds": self.cpu_seconds,
            "best": self.best,
        }

    def _restore_loop_state(self, state: dict[str, Any]) -> None:
        """The inverse of :meth:`_loop_state`, for this rank."""
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.cpu_seconds = float(state.get("cpu_seconds", self.elapsed))  # runs saved before it was kept: their training seconds
        self.best = dict(state.get("best", {}))
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        samplers = state["sampler"]
        if len(samplers) == self.dist.world:
            self.sampler.load_state_dict({"rng": samplers[self.dist.rank]})
        else:
            log.warning("resuming on %d processes from a run on %d: batches will differ", self.dist.world, len(samplers))

    def _training_state(self, **holders: Any) -> dict[str, Any] | None:
        """What ``train_state.pt`` holds: the loop's state and each holder's ``state_dict()`` under its keyword
        (None holders left out); None on the ranks that do not save. Collective under DDP: every rank calls it."""
        state = self._loop_state()
        if not self.dist.main:
            return None
        state.update({key: holder.state_dict() for key, holder in holders.items() if holder is not None})
        return state

    def _restore_training(self, ck: Path, **holders: Any) -> dict[str, Any]:
        """Resume from checkpoint ``ck``'s ``train_state.pt``: each holder (an optimizer, a discriminator) loads
        the entry of its keyword's name where the state has one, then the loop's own state; returns the state."""
        state = load_train_state(ck)
        for key, holder in holders.items():
            if holder is not None and key in state:
                holder.load_state_dict(state[key])
        self._restore_loop_state(state)
        log.info("resumed from %s at step %d", ck, self.step)
        return state

    def _saved(self, path: Path) -> Path:
        """After :meth:`save` wrote ``path``: keep the newest ``train.keep_last`` checkpoints."""
        prune_checkpoints(self.out_dir, self.cfg.train.keep_last)
        log.info("saved %s", path)
        return path

    def _latest(self) -> Path | None:
        """The checkpoint to resume from (None, with a warning, when the run has none yet)."""
        ck = latest_checkpoint(self.out_dir)
        if ck is None:
            log.warning("no checkpoint in %s yet: this run starts afresh", self.out_dir)
        return ck

    def _set_lr(self, *optimizers: torch.optim.Optimizer) -> float:
        """Give every parameter group of ``optimizers`` this step's rate (:func:`lr_at`); return it."""
        lr = lr_at(self.step, self.cfg.train, self.elapsed)
        for opt in optimizers:
            for g in opt.param_groups:
                g["lr"] = lr
        return lr

    def train_step(self) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def save(self) -> Path | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_train_mode(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        return {}

    @property
    def _budget_spent(self) -> bool:  # train.time_budget, when set, is used up: an end like train.steps
        return 0 < self.cfg.train.time_budget <= self.elapsed

    @property
    def finished(self) -> bool:
        """The run reached ``train.steps`` or its ``train.time_budget`` (not a signal, a step or a wall-time limit)."""
        return self.step >= self.cfg.train.steps or self._budget_spent

    def finish(self) -> dict[str, Any]:
        """What a finished run does last (the judge measures its EER and writes its folder); its figures."""
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
        saved_at, saved_time = self.step, time.time()
        self._follow_threads_file()
        self.set_train_mode()
        name, key = self.progress_key
        try:
            while self.step < end and not self._budget_spent:
                t_step, c_step = time.time(), time.process_time()
                stats = self.train_step()
                self.elapsed += time.time() - t_step
                self.cpu_seconds += time.process_time() - c_step
                if bar:
                    bar.update(1)
                if self.step % t.log_every == 0 or self.step == end:
                    last = {k: float(v) for k, v in stats.items()}
                    if not math.isfinite(last[self.loss_key]):
                        raise VckitError(f"training diverged at step {self.step} (loss is {last[self.loss_key]}); lower train.lr")
                    self._log({**last, "cpu_hours": self.cpu_seconds / 3600}, "train/")
                    log.debug("step %d %s=%.4f cpu_h=%.3f", self.step, key, last[key], self.cpu_seconds / 3600)
                    if bar:
                        bar.set_postfix({name: f"{last[key]:.3f}"}, refresh=False)
                    self._follow_threads_file()
                if self.step % t.valid_every == 0 and self.dist.main:
                    v = self.validate()
                    last.update(v)
                    self._log(v)
                    self.after_validate()
                    if v:
                        log.info("step %d %s", self.step, " ".join(f"{k}={x:.4f}" for k, x in v.items()))
                timed_out = (time_limit is not None and time.time() - t0 > time_limit) or self._budget_spent
                stop = self._agree_stop(self._stop or timed_out)
                due = t.ckpt_minutes > 0 and self._agree_stop(time.time() - saved_time > 60 * t.ckpt_minutes)
                if self.step % t.ckpt_every == 0 or stop or due:
                    self.save()
                    saved_at, saved_time = self.step, time.time()
                if stop:
                    log.info("stopping at step %d (%s)", self.step, "time limit" if timed_out else "signal")
                    break
            if saved_at != self.step:
                self.save()
            if self.dist.world > 1 and dist.is_initialized():
                # the ranks leave together (train() then tears the group down): a rank that tore it
                # down while rank 0 still saved made gloo abort at exit
                dist.barrier()
        finally:
            if bar:
                bar.close()
            if self.writer:
                self.writer.flush()
            for s, h in old.items():
                signal.signal(s, h)
        return last

    def _follow_threads_file(self) -> None:
        """Set torch's CPU threads to the number in ``<out_dir>/THREADS``, when that file exists.

        A long CPU run can so be given one core while someone works on the
        machine and all of them when they stop (``echo 2 > runs/x/THREADS``),
        without a restart. A bad value is logged once and ignored.
        """
        path = self.out_dir / "THREADS"
        if self.device.type != "cpu" or not path.is_file():
            return
        text = path.read_text().strip()
        try:
            n = int(text)
            if n < 1:
                raise ValueError
        except ValueError:
            if text != getattr(self, "_bad_threads", None):
                log.warning("%s should hold a whole number of threads, not %r: ignored", path, text)
                self._bad_threads = text
            return
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
            log.info("step %d: now %d CPU threads (%s)", self.step, n, path)

    @staticmethod
    def _in_main_thread() -> bool:
        import threading

        return threading.current_thread() is threading.main_thread()
