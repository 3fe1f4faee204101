"""Fine-tuning: time, and speaker similarity before and after, on a held-out speaker.

The target is a validation speaker of ``recipes/shared_dev`` (never trained
on; default ``vcc2016:SM1``, 35 utterances, 2.3 min). Its utterances are
split by id: the last ``--heldout`` are kept out of fine-tuning and are only
scored against; the rest are the fine-tuning audio (and the enrollment
audio of the "before" model, exactly what ``vckit enroll`` would use).

Sources are 2-8 s utterances of the other validation speakers (none with the
id of a held-out utterance, so parallel corpora never score a sentence
against itself). Each source is converted on log-mels (no vocoder) by

* **before**: the shipped model, the target enrolled from the fine-tuning audio;
* **after**: the model ``vckit.training.finetune`` made from that audio, with the
  profile it enrolled;

and embedded by the independent judge (``checkpoints/speaker_verification``).
Printed per model: mean cosine to the held-out target recordings, the share
of (conversion, held-out recording) trials the judge accepts at its EER
threshold, the share the judge identifies as the target among all 21
validation speakers (centroids of their real recordings), cosine to the
source, the self-reconstruction L1 of the held-out target utterances, and
the word error rate of the conversions (vocoded with HiFi-GAN, transcribed
with Moonshine base; sources with a corpus transcript only). ``--timing``
adds a run on 5 minutes of one speaker's audio (a training speaker of the
shipped model: only its time counts).

    python benchmarks/finetune.py                      # the figures in recipes/custom/README.md
    python benchmarks/finetune.py --steps 200 --threads 1
    python benchmarks/finetune.py --timing             # also time 5 minutes of audio
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import vckit  # noqa: E402
from vckit.audio import load_audio, log_mel  # noqa: E402
from vckit.training.finetune import FinetuneConfig, finetune  # noqa: E402
from vckit.models.verifier import load_verifier  # noqa: E402
from vckit.speakers import load_profile  # noqa: E402
from quality import read_rows  # noqa: E402  (benchmarks/quality.py: manifest rows with absolute paths)


def write_csv(rows: list[dict[str, Any]], name: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "speaker"])
        for r in rows:
            w.writerow([r["file"], name])
    return path


def pick_sources(rows: list[dict[str, Any]], target: str, banned_ids: set[str], per_speaker: int) -> list[dict[str, Any]]:
    by_spk: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: r["file"]):
        if r["speaker"] != target and 2.0 <= r["duration"] <= 8.0 and r["utt_id"] not in banned_ids:
            by_spk.setdefault(r["speaker"], []).append(r)
    return [u for spk in sorted(by_spk) for u in by_spk[spk][:per_speaker]]


class Scorer:
    """Judge embeddings of log-mels and the figures of one model."""

    def __init__(self, heldout: list[dict[str, Any]], others: dict[str, list[dict[str, Any]]], mel_cfg: Any, asr_threads: int = 0):
        self.judge, meta = load_verifier(REPO / "checkpoints" / "speaker_verification")
        self.threshold = float(meta["threshold"])
        self.mel_cfg = mel_cfg
        self.heldout_mels = [self.mel(r["file"]) for r in heldout]
        self.heldout = torch.cat([self.embed(m) for m in self.heldout_mels])
        # speaker identification: the target's held-out centroid against every other validation speaker's
        cents = [F.normalize(self.heldout.mean(0), dim=0)]
        for spk in sorted(others):
            e = torch.cat([self.embed(self.mel(r["file"])) for r in others[spk][:5]])
            cents.append(F.normalize(e.mean(0), dim=0))
        self.centroids = torch.stack(cents)  # row 0: the target
        self.asr = None
        if asr_threads:
            from moonshine_asr import MoonshineASR

            self.asr = MoonshineASR(threads=asr_threads)

    def mel(self, path: str, trim: bool = True) -> torch.Tensor:
        return log_mel(load_audio(path, self.mel_cfg.sample_rate, trim=trim), self.mel_cfg)[None]

    @torch.no_grad()
    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        return self.judge(mel.float())

    def words(self, vc: Any, mel: torch.Tensor) -> list[str]:
        """ASR words of a log-mel vocoded with ``vc``'s vocoder."""
        import torchaudio.functional as AF
        from moonshine_asr import normalize_text

        wav = vc.vocoder.vocode(mel[0].to(vc.device), chunk_frames=256).detach().float().cpu()
        return normalize_text(self.asr.transcribe(AF.resample(wav, vc.sample_rate, 16000).numpy()))

    def wer(self, vc: Any, mels: list[torch.Tensor], sources: list[dict[str, Any]]) -> float | None:
        """Word error rate over the sources with a transcript (None without ASR)."""
        from moonshine_asr import normalize_text, word_errors

        if self.asr is None:
            return None
        errors, words = 0, 0
        for mel, r in zip(mels, sources):
            if r.get("text"):
                ref = normalize_text(r["text"])
                errors += word_errors(ref, self.words(vc, mel))
                words += len(ref)
        return errors / max(1, words)

    @torch.no_grad()
    def score(self, vc: Any, spk: torch.Tensor, sources: list[dict[str, Any]]) -> dict[str, float | None]:
        model = vc.model
        sims, accept, to_src, ident, convs = [], [], [], [], []
        for r in sources:
            src = self.mel(r["file"], trim=False)
            conv = model.convert(src.to(vc.device), spk[None].to(vc.device)).cpu()
            convs.append(conv)
            e = self.embed(conv)
            c = F.cosine_similarity(e, self.heldout)
            sims.append(float(c.mean()))
            accept.append(float((c >= self.threshold).float().mean()))
            to_src.append(float(F.cosine_similarity(e, self.embed(src)).mean()))
            ident.append(float(int((e @ self.centroids.T).argmax()) == 0))
        recon = []
        for m in self.heldout_mels:
            rec = model.convert(m.to(vc.device), spk[None].to(vc.device)).cpu()
            recon.append(float((rec - m).abs().mean()))
        n = len(sources)
        return {
            "sim_to_target": sum(sims) / n,
            "accept": sum(accept) / n,
            "sim_to_source": sum(to_src) / n,
            "identified": sum(ident) / n,
            "recon_l1_heldout": sum(recon) / len(recon),
            "wer": self.wer(vc, convs, sources),
        }

    @torch.no_grad()
    def real(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """The same figures for real recordings (genuine or impostor trials)."""
        e = torch.cat([self.embed(self.mel(r["file"])) for r in rows])
        c = e @ self.heldout.T
        ident = (e @ self.centroids.T).argmax(1) == 0
        return {"sim_to_target": float(c.mean()), "accept": float((c >= self.threshold).float().mean()), "identified": float(ident.float().mean())}


def run_finetune(csv_path: Path, name: str, out: Path, bank: Path, args: argparse.Namespace) -> Any:
    replay = {"auto": "auto", "none": ""}.get(args.replay, str(REPO / args.replay))
    cfg = FinetuneConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, train=tuple(args.train), augment=args.augment, inference_codes=not args.quantized_codes, replay=replay, replay_fraction=args.replay_fraction)
    return finetune(REPO / "checkpoints" / "default", csv_path, out, config=cfg, bank=bank, device=args.device, overwrite=True, progress=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speaker", default="vcc2016:SM1", help="a validation speaker of cache/shared_dev")
    ap.add_argument("--heldout", type=int, default=10, help="utterances of the target kept out of fine-tuning")
    ap.add_argument("--sources-per-speaker", type=int, default=3)
    ap.add_argument("--steps", type=int, default=FinetuneConfig.steps)
    ap.add_argument("--batch-size", type=int, default=FinetuneConfig.batch_size)
    ap.add_argument("--lr", type=float, default=FinetuneConfig.lr)
    ap.add_argument("--train", nargs="+", default=list(FinetuneConfig.train), help="parts that learn")
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--quantized-codes", action="store_true", help="train the decoder on the nearest VQ codes even when inference skips the VQ (the old default)")
    ap.add_argument("--replay", default="auto", help="auto (the shipped model's cache/shared_dev, if prepared), none, or a prepared cache")
    ap.add_argument("--replay-fraction", type=float, default=FinetuneConfig.replay_fraction)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timing", action="store_true", help="also time a run on 5 minutes of audio")
    ap.add_argument("--no-asr", action="store_true", help="skip the word error rate (HiFi-GAN + Moonshine ASR)")
    ap.add_argument("--work", default="runs/bench_finetune")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    os.chdir(REPO)  # the shipped model's config names its training data relative to the repository
    torch.set_num_threads(args.threads)
    work = REPO / args.work
    shutil.rmtree(work, ignore_errors=True)
    cache = REPO / "cache" / "shared_dev"
    valid = read_rows(cache / "valid.jsonl")

    target = sorted((r for r in valid if r["speaker"] == args.speaker), key=lambda r: r["utt_id"])
    if len(target) <= args.heldout:
        raise SystemExit(f"{args.speaker} has {len(target)} utterances: not enough to hold out {args.heldout}")
    tune, heldout = target[: -args.heldout], target[-args.heldout :]
    sources = pick_sources(valid, args.speaker, {r["utt_id"] for r in heldout}, args.sources_per_speaker)
    name = args.speaker.split(":")[-1]
    tune_s = sum(r["duration"] for r in tune)

    vocoder = "griffinlim" if args.no_asr else "hifigan"
    before_vc = vckit.load(REPO / "checkpoints" / "default", device=args.device, vocoder=vocoder)
    others: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(valid, key=lambda r: r["file"]):
        if r["speaker"] != args.speaker:
            others.setdefault(r["speaker"], []).append(r)
    scorer = Scorer(heldout, others, before_vc.config.mel, 0 if args.no_asr else args.threads)
    t0 = time.time()
    before = scorer.score(before_vc, before_vc.voice([r["file"] for r in tune]).embedding, sources)
    score_s = time.time() - t0

    res = run_finetune(write_csv(tune, name, work / "tune.csv"), name, work / "model", work / "bank", args)
    after_vc = vckit.load(res.checkpoint, device=args.device, vocoder=vocoder)
    after = scorer.score(after_vc, load_profile(work / "bank", name).embedding, sources)
    genuine = scorer.real(tune)
    impostor = scorer.real(sources)

    figures: dict[str, Any] = {
        "speaker": args.speaker,
        "finetune_audio_s": round(tune_s, 1),
        "finetune_files": len(tune),
        "heldout_files": len(heldout),
        "sources": len(sources),
        "source_speakers": sorted({r["speaker"] for r in sources}),
        "steps": res.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train": args.train,
        "inference_codes": not args.quantized_codes,
        "replay": res.replay,
        "replay_speakers": res.replay_speakers,
        "new_share": res.new_share,
        "threads": args.threads,
        "finetune_total_s": round(res.total_seconds, 1),
        "finetune_train_s": round(res.train_seconds, 1),
        "self_recon_l1": [round(res.recon_before, 4), round(res.recon_after, 4)],
        "before": before,
        "after": after,
        "real_target_recordings": genuine,
        "real_source_recordings": impostor,
        "wer_sources_vocoded": scorer.wer(before_vc, [scorer.mel(r["file"], trim=False) for r in sources], sources),
        "judge_threshold": scorer.threshold,
        "scoring_s": round(score_s, 1),
    }
    if args.timing:
        train_rows = read_rows(cache / "train.jsonl")
        by_spk: dict[str, list[dict[str, Any]]] = {}
        for r in train_rows:
            by_spk.setdefault(r["speaker"], []).append(r)
        spk = max(by_spk, key=lambda s: sum(r["duration"] for r in by_spk[s]))
        five, total = [], 0.0
        for r in sorted(by_spk[spk], key=lambda r: r["utt_id"]):
            if total >= 300:
                break
            five.append(r)
            total += r["duration"]
        res5 = run_finetune(write_csv(five, "five_min", work / "five.csv"), "five_min", work / "model5", work / "bank5", args)
        figures["timing_5min"] = {"speaker": spk, "audio_s": round(total, 1), "files": len(five), "total_s": round(res5.total_seconds, 1), "train_s": round(res5.train_seconds, 1), "steps": res5.steps}

    print(f"target {args.speaker}: fine-tuned on {len(tune)} files ({tune_s:.0f} s), scored on {len(heldout)} held-out files; {len(sources)} sources from {len(figures['source_speakers'])} speakers")
    print(f"fine-tuning: {res.steps} steps x batch {args.batch_size}, {res.train_seconds:.0f} s training, {res.total_seconds:.0f} s in all ({args.threads} threads, {args.device})")
    print(f"self-reconstruction L1 of the fine-tuning audio: {res.recon_before:.3f} -> {res.recon_after:.3f}")
    print(f"replay: {res.replay or 'none'} ({res.replay_speakers} speakers, {1 - res.new_share:.0%} of each batch)")
    print()
    n_id = len(scorer.centroids)
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    print(f"| | sim to held-out target ↑ | judge accepts ↑ | identified among {n_id} ↑ | sim to source ↓ | recon L1 held-out ↓ | WER ↓ |")
    print("|---|---|---|---|---|---|---|")
    for label, s in (("before (shipped model, enrolled)", before), ("after fine-tuning", after)):
        print(f"| {label} | {s['sim_to_target']:.3f} | {s['accept']:.2f} | {s['identified']:.2f} | {s['sim_to_source']:.3f} | {s['recon_l1_heldout']:.3f} | {pct(s['wer'])} |")
    for label, s in (("target", genuine), ("sources", impostor)):
        extra = f" {pct(figures['wer_sources_vocoded'])} |" if label == "sources" else " |"
        print(f"| real recordings of the {label} | {s['sim_to_target']:.3f} | {s['accept']:.2f} | {s['identified']:.2f} | | |{extra}")
    if "timing_5min" in figures:
        t = figures["timing_5min"]
        print(f"\n5 minutes of audio ({t['speaker']}, {t['files']} files, {t['audio_s']:.0f} s): {t['total_s']:.0f} s in all, {t['train_s']:.0f} s of it training ({t['steps']} steps)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
