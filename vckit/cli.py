"""The ``vckit`` command: a thin layer over the library.

Errors reach the user as one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vckit import __version__
from vckit.errors import VckitError


def _cmd_train(args: argparse.Namespace) -> int:
    from vckit.config import load_config
    from vckit.train import train

    cfg = load_config(args.config, args.set)
    last = train(cfg, resume=args.resume, device=args.device, max_steps=args.max_steps, time_limit=args.time_limit, init_from=args.init_from, progress=not args.quiet)
    if last:
        print(" ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())))
    return 0


def _cmd_train_sv(args: argparse.Namespace) -> int:
    import yaml

    from vckit.config import apply_override, from_dict
    from vckit.speaker_verification import SVConfig, train_sv

    path = Path(args.config)
    if not path.is_file():
        raise VckitError(f"config file not found: {path}")
    d = yaml.safe_load(path.read_text()) or {}
    for ov in args.set:
        apply_override(d, ov)
    res = train_sv(from_dict(SVConfig, d), device=args.device, progress=not args.quiet)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(res.items())))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import json

    from vckit.checkpoint import build_model, load_checkpoint
    from vckit.models import count_parameters

    cfg, sd, meta = load_checkpoint(args.checkpoint)
    model = build_model(cfg, sd, for_training=any(k.startswith("classifier.") for k in sd))
    print(f"checkpoint: {args.checkpoint}")
    print(f"step: {meta.get('step', 0)}")
    if "speakers" in meta:
        print(f"training speakers: {len(meta['speakers'])}")
    for k, v in meta.items():
        if k not in ("config", "speakers", "format", "format_version", "step", "sha256"):
            print(f"{k}: {v}")
    print("parameters:")
    for name, n in count_parameters(model).items():
        print(f"  {name:<16} {n:>12,}")
    print("config:")
    print(json.dumps(cfg.to_dict(), indent=2))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from vckit.api import load

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise VckitError(f"{out} already exists (use --overwrite to replace it)")
    vc = load(args.checkpoint, device=args.device, vocoder=args.vocoder)
    target = vc.embed_speaker(args.ref)
    wav = vc.convert(args.source, target=target, pitch_shift=args.pitch_shift)
    vc.save(out, wav, overwrite=args.overwrite)
    print(f"wrote {out} ({len(wav) / vc.sample_rate:.2f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vckit", description="Disentangling voice conversion.")
    p.add_argument("--version", action="version", version=f"vckit {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a recipe config")
    t.add_argument("--config", required=True, help="recipes/<corpus>/conf/<name>.yaml")
    t.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    t.add_argument("--max-steps", type=int, default=None, help="stop at this step (the schedule still follows train.steps)")
    t.add_argument("--time-limit", type=float, default=None, help="stop cleanly and checkpoint after this many seconds")
    t.add_argument("--init-from", default=None, help="start from the weights of this checkpoint")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. train.lr=1e-4")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("train-sv", help="train the independent speaker-verification model used to judge conversions")
    s.add_argument("--config", required=True)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_train_sv)

    i = sub.add_parser("info", help="print a checkpoint's config, parameter counts and steps")
    i.add_argument("checkpoint")
    i.set_defaults(func=_cmd_info)

    c = sub.add_parser("convert", help="convert SOURCE to the voice of the reference(s)")
    c.add_argument("source")
    c.add_argument("--ref", nargs="+", required=True, help="reference recording(s) of the target voice")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--checkpoint", default=None, help="model folder (default: the shipped model)")
    c.add_argument("--vocoder", default="hifigan", help="hifigan, griffinlim, or a path")
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    c.add_argument("--pitch-shift", type=float, default=0.0, help="shift the source by this many semitones first (e.g. +4 for a male source to a female voice)")
    c.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    c.set_defaults(func=_cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "train":
        logging.getLogger("vckit").setLevel(logging.INFO)
    try:
        return args.func(args)
    except VckitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
