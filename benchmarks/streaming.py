"""Live conversion: does the stream keep up, and what does streaming cost in words and voice?

    python benchmarks/streaming.py [--checkpoint stream] [-n 25] [--threads 2] [--bf16] [--out FILE]

On the intelligibility set of ``benchmarks/intelligibility.py`` (validation
speakers never trained on, each source converted to a speaker of the other
gender, "cross", and of the same gender, "same"), each source is

* **streamed**: pushed through ``vc.stream(voice)`` in 512-sample pieces as
  a sound card would (``vckit.stream_io.stream_file``), HiFi-GAN block by block;
* converted **offline by the same causal model** in one go (``vc.convert``);
* converted **offline by the default model** (``vckit.load()``), what
  ``vckit convert`` gives.

Printed: compute time per block (median, 99th percentile, share of blocks
slower than the block itself) and the fixed algorithmic delay; per variant
the word error rate (Moonshine base), the judge's cosine to a held-out
utterance of the target and to the source; the log-mel L1 between the
streamed and the offline output of the same model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
CONDS = ("cross", "same")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="stream", help="the causal model (default: the shipped streaming model)")
    ap.add_argument("--default", default="default", help="the offline model to compare with ('' to skip)")
    ap.add_argument("--manifest", default=str(REPO / "cache/shared_dev/valid.jsonl"))
    ap.add_argument("--judge", default=str(REPO / "checkpoints/speaker_verification"))
    ap.add_argument("-n", type=int, default=25, help="source utterances (25: the set of the shipped figures)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocoder", default="hifigan", help="the live model's vocoder: hifigan (default), or a fast vocoder's folder")
    ap.add_argument("--bf16", action="store_true", help="also stream with the vocoder in bfloat16")
    ap.add_argument("--no-dnsmos", action="store_true", help="skip DNSMOS (speechmos, the [eval] extra)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import torchaudio.functional as AF
    from word_sets import build_set
    from moonshine_asr import MoonshineASR, normalize_text, word_errors

    import vckit
    from vckit.audio import load_audio, log_mel
    from vckit.data.manifest import read_manifest
    from vckit.stream_io import stream_file
    from vckit.models.verifier import load_verifier

    items = build_set(read_manifest(args.manifest), args.n, 0)
    live = vckit.load(args.checkpoint, device="cpu", vocoder=args.vocoder)
    offline = vckit.load(args.default, device="cpu") if args.default else None
    judge, _ = load_verifier(args.judge, "cpu")
    judge.eval()
    asr = MoonshineASR(threads=args.threads)
    sr, mel_cfg = live.sample_rate, live.config.mel

    def mel(wav: np.ndarray) -> torch.Tensor:
        return log_mel(wav, mel_cfg)

    def words(wav: np.ndarray) -> list[str]:
        return normalize_text(asr.transcribe(AF.resample(torch.from_numpy(wav), sr, 16000).numpy()))

    def mos(wav: np.ndarray) -> float:
        from quality import dnsmos

        return dnsmos(AF.resample(torch.from_numpy(wav), sr, 16000).numpy())["ovrl_mos"]

    def emb(wav: np.ndarray) -> torch.Tensor:
        return judge(mel(wav)[None])

    variants = ["streamed"] + (["streamed bf16"] if args.bf16 else []) + ["offline, same model"] + (["offline, default model"] if offline else [])
    errs = {(v, c): [0, 0] for v in variants for c in CONDS}
    sims: dict[tuple[str, str], list[tuple[float, float]]] = {(v, c): [] for v in variants for c in CONDS}
    l1: dict[str, list[float]] = {v: [] for v in variants if v.startswith("streamed")}
    mos_of: dict[str, list[float]] = {v: [] for v in variants}
    compute: dict[str, list[float]] = {v: [] for v in l1}
    delay = block = 0.0
    t0 = time.time()
    with torch.inference_mode():
        for i, it in enumerate(items):
            src = load_audio(it["src"], sr, trim=False)
            ref_words = normalize_text(it["text"])
            src_emb = emb(src)
            for cond in CONDS:
                refs = np.concatenate([load_audio(p, sr, trim=True) for p in it[cond]["refs"]])
                target = emb(load_audio(it[cond]["heldout"], sr, trim=True))
                outs = {}
                voice = live.voice(refs, sr=sr)
                for v in l1:
                    stream = live.stream(voice, bf16=v.endswith("bf16"))
                    outs[v], report = stream_file(stream, src)
                    compute[v] += report.compute_ms
                    delay, block = report.delay_ms, report.block_ms
                outs["offline, same model"] = live.convert(src, voice, sr=sr)
                if offline:
                    outs["offline, default model"] = offline.convert(src, offline.voice(refs, sr=sr), sr=sr)
                for v, wav in outs.items():
                    errs[(v, cond)][0] += word_errors(ref_words, words(wav))
                    errs[(v, cond)][1] += len(ref_words)
                    e = emb(wav)
                    if not args.no_dnsmos:
                        mos_of[v].append(mos(wav))
                    sims[(v, cond)].append((float(F.cosine_similarity(e, target)), float(F.cosine_similarity(e, src_emb))))
                    if v in l1:
                        a, b = mel(wav), mel(outs["offline, same model"])
                        n = min(a.shape[-1], b.shape[-1])
                        l1[v].append(float((a[:, :n] - b[:, :n]).abs().mean()))
            print(f"{i + 1}/{len(items)} sources, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    res: dict = {"items": len(items), "threads": args.threads, "delay_ms": delay, "block_ms": block, "variants": {}}
    print(f"\n{len(items)} sources x {len(CONDS)} targets; delay {delay:.1f} ms, block {block:.1f} ms, {args.threads} threads")
    for v in compute:
        c = np.asarray(compute[v])
        res[f"compute_{v}"] = {"median_ms": float(np.median(c)), "p99_ms": float(np.percentile(c, 99)), "late_share": float((c > block).mean()), "blocks": len(c)}
        print(f"{v}: compute per block median {np.median(c):.1f} ms, 99th percentile {np.percentile(c, 99):.1f} ms, slower than the block {(c > block).mean():.1%} of {len(c)}")
    print("| variant | WER cross | WER same | cos target (cross) | cos source (cross) | closer (cross) | DNSMOS | mel L1 to offline |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for v in variants:
        r = {f"wer_{c}": errs[(v, c)][0] / max(1, errs[(v, c)][1]) for c in CONDS}
        cross = sims[(v, "cross")]
        r.update(cos_target_cross=float(np.mean([a for a, _ in cross])), cos_source_cross=float(np.mean([b for _, b in cross])), closer_cross=float(np.mean([a > b for a, b in cross])))
        if v in l1:
            r["mel_l1_to_offline"] = float(np.mean(l1[v]))
        r["dnsmos"] = float(np.mean(mos_of[v])) if mos_of[v] else float("nan")
        res["variants"][v] = r
        print(f"| {v} | {r['wer_cross']:.1%} | {r['wer_same']:.1%} | {r['cos_target_cross']:.3f} | {r['cos_source_cross']:.3f} | {r['closer_cross']:.0%} | {r['dnsmos']:.2f} | {r.get('mel_l1_to_offline', float('nan')):.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
