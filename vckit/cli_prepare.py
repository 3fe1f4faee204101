"""``vckit prepare ...``: the feature-cache tools of :mod:`vckit.data`, as subcommands.

- ``vckit prepare stream-features SRC DST``: a copy of a feature cache with the
  phonetic teacher's features as a live stream hears them (for causal models);
- ``vckit prepare whisper-features SRC DST``: a copy of a recipe's cache with
  Whisper tiny.en's encoder as the phonetic features (``model.content.teacher: whisper``);
- ``vckit prepare virtual-speakers CACHE``: the training speakers again with
  pitch and formants scaled;
- ``vckit prepare vocoder-teacher``: log-mels of real speech and of
  conversions, each with the universal HiFi-GAN's waveform (what the fast
  vocoder distils, :mod:`vckit.data.distill`).

A recipe's own ``prepare.py`` makes the cache these start from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vckit.config import StreamConfig
from vckit.errors import VckitError


def add_parser(sub) -> argparse.ArgumentParser:
    pr = sub.add_parser("prepare", help="derived feature caches: streamed teacher features, Whisper's features, virtual speakers")
    tools = pr.add_subparsers(dest="tool", required=True, metavar="TOOL")
    sf = tools.add_parser("stream-features", help="copy a feature cache with the teacher's features as a live stream hears them (for model.stream.causal)")
    sf.add_argument("src", help="a feature cache with phonetic features (prepare.py --frame-features)")
    sf.add_argument("dst", help="the new cache (links to src's arrays, its own phonetic.npy)")
    sf.add_argument("--block-frames", type=int, default=StreamConfig.block_frames)
    sf.add_argument("--lookahead-ms", type=float, default=StreamConfig.teacher_lookahead_ms)
    sf.add_argument("--context-s", type=float, default=StreamConfig.teacher_context_s)
    sf.add_argument("--student", default=None, metavar="DIR", help="hear this causal phone student (vckit train-student) instead of hama; the model then carries it")
    sf.add_argument("--threads", type=int, default=1)
    sf.add_argument("--quiet", action="store_true", help="no progress bar")
    sf.set_defaults(func=_stream_features)
    wf = tools.add_parser("whisper-features", help="copy a recipe's cache with Whisper tiny.en's encoder as the phonetic features (model.content.teacher: whisper)")
    wf.add_argument("src", help="a recipe cache with frame features (train.jsonl, features/: prepare.py --frame-features)")
    wf.add_argument("dst", help="the new cache (links to src's files, its own phonetic.npy)")
    wf.add_argument("--dims", type=int, default=64, help="principal components kept (model.content.input_dim)")
    wf.add_argument("--beside", action="store_true", help="keep src's (hama's) features and put Whisper's after them (model.content.teacher: hama+whisper)")
    wf.add_argument("--threads", type=int, default=1)
    wf.add_argument("--quiet", action="store_true", help="no progress bar")
    wf.set_defaults(func=_whisper_features)
    vs = tools.add_parser("virtual-speakers", help="add each training speaker again with pitch and formants scaled")
    vs.add_argument("cache", help="a prepared recipe cache (train.jsonl, features/ with --frame-features)")
    vs.add_argument("--ratios", type=float, nargs="+", default=[0.72, 1.38], help="frequency scale factors (0.72 and 1.38: -5.7 and +5.6 semitones)")
    vs.add_argument("--out", default=None, help="default: CACHE/virtual")
    vs.add_argument("--quiet", action="store_true", help="no progress bar")
    vs.set_defaults(func=_virtual_speakers)
    vt = tools.add_parser("vocoder-teacher", help="log-mels of speech and of conversions, with the universal HiFi-GAN's waveform for each (the fast vocoder distils it)")
    vt.add_argument("--out", default="cache/vocoder_teacher")
    vt.add_argument("--train", default="cache/shared_dev/train.jsonl", help="manifest the training mels come from")
    vt.add_argument("--valid", default="cache/shared_dev/valid.jsonl", help="manifest of held-out speakers")
    vt.add_argument("--minutes", type=float, default=12.0, help="of real speech's mels (a speaker at a time)")
    vt.add_argument("--converted-minutes", type=float, default=12.0, help="of conversions' mels: each source in another training speaker's voice")
    vt.add_argument("--valid-minutes", type=float, default=1.0, help="of each kind, from the held-out speakers")
    vt.add_argument("--checkpoint", default=None, help="the VC model that converts (default: the shipped one)")
    vt.add_argument("--seed", type=int, default=0)
    vt.set_defaults(func=_vocoder_teacher)
    return pr


def _stream_features(args: argparse.Namespace) -> int:
    from vckit.data.stream_features import build

    if args.block_frames < 1 or args.threads < 1 or args.lookahead_ms < 0 or args.context_s <= 0:
        raise VckitError("--block-frames and --threads must be at least 1, --lookahead-ms at least 0, --context-s above 0")
    settings = {"block_frames": args.block_frames, "teacher_lookahead_ms": args.lookahead_ms, "teacher_context_s": args.context_s}
    if args.student:
        from vckit.data.stream_features import student_stream

        stream = student_stream(args.student, **settings)
    else:
        stream = StreamConfig(causal=True, **settings)
    summary = build(args.src, args.dst, stream, student=args.student, threads=args.threads, progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def _whisper_features(args: argparse.Namespace) -> int:
    from vckit.data.frame_features import whisper_cache

    if args.dims < 1 or args.threads < 1:
        raise VckitError("--dims and --threads must be at least 1")
    summary = whisper_cache(args.src, args.dst, dims=args.dims, beside=args.beside, threads=args.threads, progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def _virtual_speakers(args: argparse.Namespace) -> int:
    from vckit.data.virtual_speakers import build

    if any(not 0.5 <= r <= 2.0 or r == 1.0 for r in args.ratios):
        raise VckitError("--ratios must lie between 0.5 and 2, and not be 1")
    cache = Path(args.cache)
    s = build(cache / "features", cache / "train.jsonl", Path(args.out) if args.out else cache / "virtual", args.ratios, progress=not args.quiet)
    print(f"virtual speakers: {s['rows']} rows, {s['speakers']} speakers, {s['frames']} frames")
    return 0


def _vocoder_teacher(args: argparse.Namespace) -> int:
    import random

    import torch

    from vckit.api import load
    from vckit.audio import load_audio, log_mel
    from vckit.data.distill import write_teacher_cache
    from vckit.data.manifest import read_manifest
    from vckit.data.waves import round_robin

    if min(args.minutes, args.converted_minutes, args.valid_minutes) < 0 or args.minutes + args.converted_minutes <= 0:
        raise VckitError("--minutes, --converted-minutes and --valid-minutes must be at least 0, and some training minutes asked")
    vc = load(args.checkpoint, device="cpu", precision="fp32")  # the teacher's float32 waveform is the target
    cfg, rate = vc.config.mel, vc.config.mel.sample_rate
    rng = random.Random(args.seed)

    def items(split: str, rows: list[dict], kind: str, minutes: float):
        taken, refs = 0.0, [r for r in rows if r.get("duration", 2.0) >= 2.0]
        for r in round_robin(rows, rng.randrange(2**31)):
            if taken >= minutes * 60:
                return
            wav = load_audio(r["path"], rate)
            if kind == "real":
                mel = log_mel(wav, cfg)
            else:  # the model's conversion into a random other speaker of the split, before any vocoder
                ref = rng.choice([q for q in refs if q["speaker"] != r["speaker"]])
                mel = vc._convert_mel(wav, vc.voice(ref["path"]), sr=rate)  # not public: users get audio
            taken += mel.shape[1] * cfg.hop_length / rate
            yield {"path": r["path"], "speaker": r["speaker"], "split": split, "kind": kind}, mel.numpy()

    def teacher(mel):
        with torch.inference_mode():
            return vc.vocoder.vocode(torch.from_numpy(mel)).numpy()

    train, valid = read_manifest(args.train), read_manifest(args.valid)
    todo = [("train", train, "real", args.minutes), ("train", train, "converted", args.converted_minutes),
            ("valid", valid, "real", args.valid_minutes), ("valid", valid, "converted", args.valid_minutes)]
    stream = (item for split, rows, kind, minutes in todo if minutes > 0 for item in items(split, rows, kind, minutes))
    index = write_teacher_cache(stream, args.out, teacher, sample_rate=rate, hop=cfg.hop_length, teacher_name=f"{vc.vocoder.name} float32")
    for split, kind in {(u["split"], u["kind"]) for u in index["utterances"]}:
        utts = [u for u in index["utterances"] if (u["split"], u["kind"]) == (split, kind)]
        print(f"{split} {kind}: {len(utts)} utterances, {sum(u['frames'] for u in utts) * cfg.hop_length / rate / 60:.1f} min")
    return 0
