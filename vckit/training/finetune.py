"""Fine-tune a trained model on a few minutes of new speakers, then enroll them.

    vckit finetune --data my_voice/ --speaker me --out runs/finetune/me

The run starts from an inference checkpoint (no adversary, no optimiser
state; by default the shipped model), caches the new speakers' log-mels, and
trains with the ordinary :class:`~vckit.training.vc.Trainer` step (reconstruct a
segment from its content codes and the embedding of *another* segment of
the same speaker) at a small learning rate for a few hundred steps. By
default only the speaker encoder and the decoder learn: the content encoder
and its VQ codebook stay frozen. When the source model's own training data
is on the machine (its cache, as its config names it), half of each batch
is replayed from it, which keeps the decoder from forgetting how to speak
clearly (``recipes/custom/README.md`` has the measured effect). The result
is a normal checkpoint folder (fp16, with the weights' sha256) that
``vckit.load`` and ``vckit convert --checkpoint`` read, and each new speaker
is enrolled with it in the speaker bank.

A model with an F0 path or phonetic input reads per-frame features besides
the mels: they are computed for the new speakers' cache, the teacher's
features projected exactly as the source model projects them (the buffers
its content encoder carries), and the replay cache is used only when it
holds the same features with the same projection (else a warning says why
replay is skipped).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch

from vckit.checkpoint import check_state_dict, load_checkpoint, read_config, read_meta, save_checkpoint
from vckit.config import Amount, Config, Count, DataConfig, Fraction, Positive, Range, Size, TrainConfig, check_ranges, from_dict, to_dict
from vckit.data.features import cache_features, merge_feature_caches, subset_feature_cache
from vckit.data.manifest import read_manifest, write_manifest
from vckit.data.prepare import spread_rows
from vckit.data.sampling import valid_batches
from vckit.errors import ConfigError, VckitError
from vckit.models.vc import export_for_inference
from vckit.training.loop import make_optimizer
from vckit.training.losses import masked_l1
from vckit.training.finetune_data import usable_seconds, collect_rows, find_replay, frame_features_needed, replay_problem, source_projection
from vckit.training.vc import Trainer, frames_of

log = logging.getLogger(__name__)

PARTS = ("content_encoder", "speaker_encoder", "decoder")
MIN_REFERENCE_FRAMES = 100  # ~1.2 s after trimming: enough for Converter.embed_speaker


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune; the defaults fit about 5 minutes of audio in ~10 minutes on 2 CPU cores."""

    steps: Size = 500
    batch_size: Size = 16
    segment_frames: Annotated[int, Range(8)] = 128
    lr: Positive = 1e-4
    warmup_steps: Count = 50
    train: tuple[str, ...] = ("speaker_encoder", "decoder")  # the parts that learn; the rest stay frozen
    time_budget: Amount = 0.0  # >0: stop after this many training seconds (the LR schedule follows time)
    augment: bool = False  # the training-time speed / mel-shift augmentation (makes virtual speakers)
    # with the content encoder frozen, feed the decoder the codes it reads at inference: the
    # continuous ones when the model skips its VQ at inference (model.vq.at_inference false)
    inference_codes: bool = True
    min_seconds: Amount = 10.0  # refuse a speaker with less usable audio than this
    # mixed into each batch against forgetting: "auto" (the source model's own training data, when its
    # manifest and feature cache are on this machine), "" (none), or a prepared cache (train.jsonl + features/)
    replay: str = "auto"
    replay_fraction: Fraction = 0.5  # share of each batch drawn from the replay speakers
    replay_minutes: Amount = 180.0  # at most this much replay audio, spread over its speakers
    seed: Count = 0

    def __post_init__(self) -> None:
        unknown = [p for p in self.train if p not in PARTS]
        if unknown or not self.train:
            raise ConfigError(f"finetune: parts to train must be some of {', '.join(PARTS)}, got {', '.join(self.train) or 'none'}")
        check_ranges(self, "finetune")


@dataclass
class FinetuneResult:
    checkpoint: Path
    speakers: dict[str, float]  # name -> seconds of usable audio
    profiles: dict[str, Path]
    steps: int
    train_seconds: float
    total_seconds: float
    recon_before: float  # mel L1 (normalised units) of the new speakers' self-reconstruction
    recon_after: float
    skipped: list[str] = field(default_factory=list)
    replay: str = ""  # the replayed manifest, if any
    replay_speakers: int = 0  # its speakers
    new_share: float = 1.0  # the new speakers' share of each batch
    interrupted: bool = False  # stopped by Ctrl-C or SIGTERM: ``checkpoint`` holds the ``steps`` trained until then
    total_steps: int = 0  # the steps the run was set to train (``finetune(resume=True)`` trains the rest)


class FineTuner(Trainer):
    """A :class:`Trainer` that starts from an inference checkpoint's weights
    (all of them, checked strictly), trains only ``parts`` and saves inference
    weights only (no optimiser state, no event files).

    With replay speakers in the manifest besides the ``new`` ones, the new
    speakers get ``1 - replay_fraction`` of each batch (evenly), the others
    the rest (by frames ** 0.3, as in training).
    """

    def __init__(self, cfg: Config, source: str | os.PathLike, parts: tuple[str, ...], new: list[str], replay_fraction: float = 0.0, *, inference_codes: bool = False, device: str = "auto"):
        super().__init__(cfg, device=device)
        self.new_speakers = new
        self.new_utts = [u for u in self.train_utts if u["speaker"] in set(new)]
        self._weight_speakers(replay_fraction)
        _, sd, _ = load_checkpoint(source, self.device)
        check_state_dict(self.model, sd)
        self.model.load_state_dict(sd, strict=True)
        self.parts = parts
        self.frozen = [name for name, _ in self.model.named_children() if not self._learns(name)]
        vq = cfg.model.vq
        self.continuous_codes = inference_codes and vq.enabled and not vq.at_inference and "content_encoder" in self.frozen
        for name in self.frozen:
            getattr(self.model, name).requires_grad_(False)
        self.optimizer = make_optimizer(self.model, self.cfg)
        self.saved: Path | None = None

    @property
    def interrupted(self) -> bool:
        """Whether the last :meth:`run` stopped on a signal."""
        return self._stop

    def _weight_speakers(self, replay_fraction: float) -> None:
        s = self.sampler
        is_new = torch.tensor([spk in set(self.new_speakers) for spk in s.speakers], device=s.spk_frames.device)
        if bool(is_new.all()):
            return
        old = torch.where(is_new, torch.zeros_like(s.spk_frames), s.spk_frames.pow(0.3)).float()
        s.spk_probs = is_new.float() / is_new.sum() * (1 - replay_fraction) + old / old.sum() * replay_fraction

    @property
    def new_share(self) -> float:
        """The new speakers' share of each batch."""
        s = self.sampler
        return float(sum(p for spk, p in zip(s.speakers, s.spk_probs.tolist()) if spk in set(self.new_speakers)))

    def _learns(self, module: str) -> bool:
        # the VQ codebook follows the content encoder
        return module in self.parts or (module == "vq" and "content_encoder" in self.parts)

    def set_train_mode(self) -> None:
        self.model.train()
        for name in self.frozen:  # no dropout, no VQ codebook updates in the frozen parts
            getattr(self.model, name).eval()
        if self.continuous_codes:  # the model itself "not training": encode_content skips the VQ (and the code noise)
            self.model.training = False

    def _open_writer(self) -> None:
        self.writer = None

    def save(self) -> Path:
        folder = self.out_dir / "last"
        sd = {k: v for k, v in self.model.state_dict().items() if not k.startswith("classifier.")}
        self.saved = save_checkpoint(folder, self.cfg, sd, step=self.step, extra={"speakers": self.new_speakers})
        return self.saved

    @torch.no_grad()
    def recon_l1(self, max_items: int = 64) -> float:
        """Self-reconstruction L1 on fixed segments of the new speakers (reference: another utterance)."""
        self.model.eval()
        total, n = 0.0, 0
        for b in valid_batches(self.store, self.new_utts, self.cfg.data.segment_frames, 16, max_items):
            out = self.model(frames_of(b), b["ref"])
            k = b["mel"].shape[0]
            total += float(masked_l1(out.pred, out.target, b["mask"])) * k
            n += k
        self.set_train_mode()
        return total / max(1, n)


def _config(source_cfg: Config, work: Path, features: Path, ft: FinetuneConfig) -> Config:
    model = dataclasses.replace(
        source_cfg.model,
        n_speakers=0,
        classifier=dataclasses.replace(source_cfg.model.classifier, enabled=False),
        # training-only parts that an inference checkpoint does not carry
        phonetic_head=dataclasses.replace(source_cfg.model.phonetic_head, enabled=False),
        discriminator=dataclasses.replace(source_cfg.model.discriminator, enabled=False),
    )
    augment = source_cfg.data.augment if ft.augment else dataclasses.replace(source_cfg.data.augment, prob=0.0)
    if source_cfg.model.f0.enabled:  # a mel-axis shift would not move the F0 the decoder reads
        augment = dataclasses.replace(augment, pitch_bins=0.0)
    data = DataConfig(
        train_manifest=str(work / "train.jsonl"),
        valid_manifest="",
        features=str(features),
        segment_frames=ft.segment_frames,
        speaker_sampling_power=0.0,
        augment=augment,
    )
    train = TrainConfig(
        out_dir=str(work / "run"),
        batch_size=ft.batch_size,
        steps=ft.steps,
        time_budget=ft.time_budget,
        lr=ft.lr,
        warmup_steps=min(ft.warmup_steps, max(1, ft.steps // 5)),
        min_lr_ratio=0.1,
        log_every=max(1, min(50, ft.steps // 10)),
        valid_every=10**9,
        ckpt_every=10**9,
        keep_last=1,
        seed=ft.seed,
    )
    return Config(mel=source_cfg.mel, model=model, data=data, train=train)


# -- the whole job --------------------------------------------------------
def finetune(
    source: str | os.PathLike,
    data: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    speaker: str | None = None,
    config: FinetuneConfig | None = None,
    bank: str | os.PathLike | None = None,
    device: str = "auto",
    overwrite: bool = False,
    enroll: bool = True,
    progress: bool = True,
    resume: bool = False,
) -> FinetuneResult:
    """Fine-tune the model in ``source`` on the audio in ``data``, write it to ``out``, enroll the speakers.

    Args:
        source: a checkpoint folder (e.g. ``checkpoints/default``); never modified.
        data: a folder of recordings, a CSV (``path,speaker``) or a JSONL manifest
            (with ``resume``, None: the interrupted run's data and speaker).
        out: the new checkpoint folder; an existing one is replaced only with ``overwrite``.
        speaker: the name of the one speaker in ``data``; without it the
            first folder level of ``data`` names the speakers.
        bank: the speaker bank to enroll into (default: :func:`vckit.speakers.default_bank`).
        overwrite: replace ``out`` and enrolled profiles of the same names.
        enroll: enroll every fine-tuned speaker with the new model.
        resume: ``out`` holds a fine-tuning that was interrupted (Ctrl-C): train
            its remaining steps from its weights, with its settings (``config``
            is ignored) and the learning-rate schedule where it stopped (Adam's
            moments start afresh), then replace it and its enrolled speakers.

    Raises:
        VckitError: missing or unusable data, too little audio for a
        speaker, a bad name, an existing output, or an interrupted run.
    """
    from vckit.data.frame_features import cache_frame_features
    from vckit.speakers import check_name, default_bank

    t_start = time.time()
    ft = config or FinetuneConfig()
    source, out = Path(source), Path(out)
    done = 0
    start = source  # the weights training starts from
    if resume:
        ft, done, source, rec = _interrupted(out)
        start, overwrite = out, True  # the run's own output and profiles, replaced when it finishes
        data = rec.get("data") if data is None else data
        speaker = rec.get("speaker") if speaker is None else speaker
    if data is None:
        raise VckitError("no data to fine-tune on: give --data")
    read_meta(source)  # a clear error for a missing or foreign checkpoint
    if out.resolve() == source.resolve():
        raise VckitError("the output folder is the source checkpoint: give fine-tuning its own --out folder")
    if out.exists() and not overwrite:
        raise VckitError(f"{out} already exists (use --overwrite to replace it, or --resume to go on with an interrupted fine-tuning)")
    if speaker is not None:
        check_name(speaker)
    rows = collect_rows(data, speaker)
    names = sorted({r["speaker"] for r in rows})
    for name in names:
        check_name(name)
    bank = Path(bank) if bank else default_bank()
    if enroll and not overwrite:
        taken = [n for n in names if (bank / f"{n}.safetensors").exists()]
        if taken:
            raise VckitError(f"speaker {taken[0]!r} is already enrolled in {bank} (use --overwrite to replace it, or another name)")
    source_cfg, source_sd, _ = load_checkpoint(start)
    needed = frame_features_needed(source_cfg)
    projection = source_projection(start, source_sd) if "phonetic" in needed else None
    del source_sd
    # the replay data is the source model's: an interrupted run's own config names its deleted work folder
    replay = find_replay(ft.replay, read_config(source) if resume else source_cfg)
    if replay is not None:
        problem = replay_problem(replay[1], needed, projection)
        if problem:
            log.warning("replay skipped: the source model reads %s, but %s", " and ".join(needed), problem)
            replay = None

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.finetune-", dir=out.parent))
    try:
        try:
            index = cache_features(rows, source_cfg.mel, work / "new", progress=progress)
        except VckitError:
            raise VckitError(f"no usable audio in {data}: all {len(rows)} file(s) are unreadable, silent or too short") from None
        seconds = usable_seconds(index, source_cfg.mel.frame_rate)
        for name in names:
            s = seconds.get(name, 0.0)
            if s < ft.min_seconds:
                raise VckitError(f"speaker {name!r} has {s:.1f} s of usable audio: fine-tuning needs at least {ft.min_seconds:g} s (a few minutes is best)")
            if s < 60:
                log.warning("speaker %r has only %.0f s of audio: a few minutes gives a closer voice", name, s)
        if needed:
            # the source model's projection is written to new/phonetic.json, which the Trainer copies into the model
            cache_frame_features(work / "new", projection=projection, progress=progress, teacher=source_cfg.model.content.teacher)
        features, manifest = work / "new", rows
        if replay is not None:
            old = spread_rows(read_manifest(replay[0]), ft.replay_minutes * 60)
            subset_feature_cache(replay[1], {r["path"] for r in old}, work / "replay", frame_features=needed)
            features, manifest = work / "features", rows + old
            # new first: the merged phonetic.json is the source model's projection
            merge_feature_caches([work / "new", work / "replay"], features, frame_features=needed)
        write_manifest(manifest, work / "train.jsonl")
        cfg = _config(source_cfg, work, features, ft)
        trainer = FineTuner(cfg, start, ft.train, names, ft.replay_fraction, inference_codes=ft.inference_codes, device=device)
        trainer.step = done  # a resumed run goes on where its schedule stopped
        before = trainer.recon_l1()
        t0 = time.time()
        trainer.run(progress=progress)
        train_seconds = time.time() - t0
        if trainer.interrupted:  # what was learnt until the signal is kept: the trainer saved it, it ships below
            log.warning("interrupted after %d of %d steps: writing the model as it is", trainer.step, ft.steps)
        after = trainer.recon_l1()
        log.info("self-reconstruction L1 on the new speakers: %.4f -> %.4f", before, after)
        assert trainer.saved is not None
        extra = {
            "name": f"{read_meta(source).get('name', source.name)}-finetuned",
            "finetuned_from": str(source),
            "finetune": {**to_dict(ft), "seconds": {n: round(seconds[n], 1) for n in names}, "steps_done": trainer.step, "interrupted": trainer.interrupted,
                         "source": str(source.resolve()), "data": str(Path(data).resolve()), "speaker": speaker},
        }
        export_for_inference(trainer.saved, out, extra=extra)
        profiles = _enroll(out, index, names, bank, device, overwrite) if enroll else {}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return FinetuneResult(
        checkpoint=out,
        speakers={n: seconds[n] for n in names},
        profiles=profiles,
        steps=trainer.step,
        train_seconds=train_seconds,
        total_seconds=time.time() - t_start,
        recon_before=before,
        recon_after=after,
        skipped=list(index["skipped"]),
        replay=str(replay[0]) if replay else "",
        replay_speakers=len(trainer.sampler.speakers) - len(names),
        new_share=trainer.new_share,
        interrupted=trainer.interrupted,
        total_steps=ft.steps,
    )


def _interrupted(out: Path) -> tuple[FinetuneConfig, int, Path, dict[str, Any]]:
    """(settings, steps done, source checkpoint, the whole record) of the interrupted fine-tuning in ``out``;
    :class:`VckitError` when ``out`` holds none."""
    if not out.exists():
        raise VckitError(f"nothing to resume: {out} does not exist (drop --resume to start a fine-tuning)")
    meta = read_meta(out)
    rec = meta.get("finetune")
    if not isinstance(rec, dict) or "steps_done" not in rec:
        raise VckitError(f"nothing to resume: {out} is not the output of vckit finetune")
    if not rec.get("interrupted"):
        raise VckitError(f"nothing to resume: the fine-tuning in {out} finished ({rec['steps_done']} steps); use --overwrite to train it again")
    names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    try:
        ft = from_dict(FinetuneConfig, {k: v for k, v in rec.items() if k in names}, "finetune")
        done = int(rec["steps_done"])
    except (ConfigError, TypeError, ValueError) as e:
        raise VckitError(f"cannot resume {out}: its fine-tuning record is unreadable ({e})") from None
    source = Path(rec.get("source") or meta.get("finetuned_from", ""))
    return ft, done, source, rec


def _enroll(checkpoint: Path, index: dict[str, Any], names: list[str], bank: Path, device: str, overwrite: bool) -> dict[str, Path]:
    """Enroll each speaker with the new model, as ``vckit enroll`` would with its usable files
    (one :meth:`~vckit.api.Converter.voice` call: each file decoded once for the embedding and the F0)."""
    from vckit.api import load
    from vckit.speakers import enroll

    vc = load(checkpoint, device=device, vocoder="griffinlim")
    paths: dict[str, Path] = {}
    for name in names:
        utts = [u for u in index["utterances"] if u["speaker"] == name]
        refs = [u["path"] for u in utts if u["frames"] >= MIN_REFERENCE_FRAMES] or [max(utts, key=lambda u: u["frames"])["path"]]
        paths[name] = enroll(vc, name, refs, bank=bank, overwrite=overwrite, checkpoint=checkpoint, meta={"finetuned": True}).path
    return paths


__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "collect_rows"]
