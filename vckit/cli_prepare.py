"""``vckit prepare ...``: the feature-cache tools of :mod:`vckit.data`, as subcommands.

- ``vckit prepare stream-features SRC DST``: a copy of a feature cache with the
  phonetic teacher's features as a live stream hears them (for causal models);
- ``vckit prepare virtual-speakers CACHE``: the training speakers again with
  pitch and formants scaled.

A recipe's own ``prepare.py`` makes the cache these start from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vckit.config import StreamConfig
from vckit.errors import VckitError


def add_parser(sub) -> argparse.ArgumentParser:
    pr = sub.add_parser("prepare", help="derived feature caches: streamed teacher features, virtual speakers")
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
    vs = tools.add_parser("virtual-speakers", help="add each training speaker again with pitch and formants scaled")
    vs.add_argument("cache", help="a prepared recipe cache (train.jsonl, features/ with --frame-features)")
    vs.add_argument("--ratios", type=float, nargs="+", default=[0.72, 1.38], help="frequency scale factors (0.72 and 1.38: -5.7 and +5.6 semitones)")
    vs.add_argument("--out", default=None, help="default: CACHE/virtual")
    vs.add_argument("--quiet", action="store_true", help="no progress bar")
    vs.set_defaults(func=_virtual_speakers)
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


def _virtual_speakers(args: argparse.Namespace) -> int:
    from vckit.data.virtual_speakers import build

    if any(not 0.5 <= r <= 2.0 or r == 1.0 for r in args.ratios):
        raise VckitError("--ratios must lie between 0.5 and 2, and not be 1")
    cache = Path(args.cache)
    s = build(cache / "features", cache / "train.jsonl", Path(args.out) if args.out else cache / "virtual", args.ratios, progress=not args.quiet)
    print(f"virtual speakers: {s['rows']} rows, {s['speakers']} speakers, {s['frames']} frames")
    return 0
