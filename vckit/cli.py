"""The ``vckit`` command: a thin layer over the library.

Errors reach the user as one line on stderr and a non-zero exit code:
0 done; 1 a batch finished but some files failed (each is listed); 2 bad usage
or input (argparse's own code, and every :class:`VckitError`); 3 a bug in vckit
(one line, the traceback with ``-v``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from vckit import __version__
from vckit.errors import VckitError, reason


def _cmd_train(args: argparse.Namespace) -> int:
    from vckit.config_files import load_config
    from vckit.training.loop import train
    from vckit.training.vc import Trainer

    cfg = load_config(args.config, args.set)
    last = train(Trainer, cfg, resume=args.resume, device=args.device, max_steps=args.max_steps, time_limit=args.time_limit, init_from=args.init_from, progress=not args.quiet)
    if last:
        print(" ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())))
    return 0


def _cmd_train_sv(args: argparse.Namespace) -> int:
    from vckit.config_files import load_config
    from vckit.models.verifier import SVConfig
    from vckit.training.loop import train
    from vckit.training.verifier import VerifierTrainer

    res = train(VerifierTrainer, load_config(args.config, args.set, cls=SVConfig), resume=args.resume, device=args.device,
                max_steps=args.max_steps, time_limit=args.time_limit, progress=not args.quiet)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(res.items())))
    return 0


def _cmd_train_vocoder(args: argparse.Namespace) -> int:
    import os

    import torch

    from vckit.training.loop import train
    from vckit.training.vocoder import VocoderTrainer, export, load_vocoder_config

    if args.export:
        out = export(args.export[0], args.export[1], torch.float32 if args.fp32 else torch.float16)
        print(f"exported {args.export[0]} -> {out}")
        return 0
    if not args.config:
        raise VckitError("train-vocoder needs --config (or --export CHECKPOINT DEST)")
    cfg = load_vocoder_config(args.config, args.set)
    last = train(VocoderTrainer, cfg, resume=args.resume, device=args.device, max_steps=args.max_steps, time_limit=args.time_limit, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0 and last:
        print(" ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())))
    return 0


def _cmd_train_student(args: argparse.Namespace) -> int:
    import torch

    from vckit.training.loop import train
    from vckit.training.phone_student import StudentTrainer, export, load_student_config

    if args.export:
        out = export(args.export[0], args.export[1], torch.float32 if args.fp32 else torch.float16)
        print(f"exported {args.export[0]} -> {out}")
        return 0
    if not args.config:
        raise VckitError("train-student needs --config (or --export CHECKPOINT DEST)")
    last = train(StudentTrainer, load_student_config(args.config, args.set), resume=args.resume, device=args.device, max_steps=args.max_steps, time_limit=args.time_limit, progress=not args.quiet)
    if last:
        print(" ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from vckit.api import checkpoint_path
    from vckit.shipped import FOLDERS, shipped_dir

    name = str(args.checkpoint)
    path = shipped_dir(name) if name in FOLDERS and name != "examples" and not Path(name).exists() else checkpoint_path(name)
    _print_info(path, *_load_any(path))
    return 0


def _load_any(path: Path) -> tuple[str, Any, dict[str, Any]]:
    """A checkpoint folder of any kind, loaded by its own reader (so weights and config are checked):
    (what it is, the model, its metadata with the config as read)."""
    from vckit.checkpoint import KINDS, folder_kind, load_checkpoint, read_folder

    kind = folder_kind(path)
    if kind == "vc":
        from vckit.models.vc import build_model

        cfg, sd, meta = load_checkpoint(path)
        model = build_model(cfg, sd, for_training=any(k.startswith("classifier.") for k in sd))
        speakers = meta.pop("speakers", None)
        meta = {**({"training speakers": len(speakers)} if speakers is not None else {}), **meta, "config": cfg.to_dict()}
    elif kind == "verifier":
        from vckit.models.verifier import load_verifier

        model, meta = load_verifier(path)
    elif kind == "phone_student":
        from vckit.models.phone_student import load_student

        model, meta = load_student(path)
    else:
        from vckit.models.vocoder.vocos import Vocos

        model, meta = Vocos.from_folder(path), read_folder(path, kind)
    return KINDS[kind][1], model, meta


def _print_info(path: Path, what: str, model: Any, meta: dict[str, Any]) -> None:
    """``vckit info``'s one layout for every kind: what and where, the figures, the parameters (per part where
    there are several), then the settings."""
    import json

    from vckit.models.vc import count_parameters

    print(f"checkpoint: {path}")
    print(f"kind: {what}")
    print(f"step: {meta.get('step', 0)}")
    nested = {}
    for k, v in meta.items():
        if k in ("format", "format_version", "step", "sha256", "parameters"):
            continue
        if isinstance(v, (dict, list)):
            nested[k] = v
        else:
            print(f"{k}: {v}")
    counts = count_parameters(model)
    print(f"parameters: {counts['total']:,}")
    if len(counts) > 2:  # several parts besides the total
        for part, n in counts.items():
            print(f"  {part:<16} {n:>12,}")
    for k, v in nested.items():
        print(f"{k}:")
        print(json.dumps(v, indent=2))


def _cmd_enroll(args: argparse.Namespace) -> int:
    from vckit.api import checkpoint_path, load
    from vckit.cli_convert import said
    from vckit.speakers import check_name, default_bank, enroll

    check_name(args.name)
    bank = Path(args.bank) if args.bank else default_bank()
    if (bank / f"{args.name}.safetensors").exists() and not args.overwrite:  # before the model loads
        raise VckitError(f"speaker {args.name!r} is already enrolled in {bank} (use --overwrite to replace it)")
    vc = load(args.checkpoint, device=args.device, vocoder="griffinlim")
    voice = said(vc.voice(args.refs))
    done = enroll(vc, args.name, args.refs, bank=bank, overwrite=args.overwrite, checkpoint=checkpoint_path(args.checkpoint), voice=voice)
    f0 = f", median F0 {done.profile.f0_median:.0f} Hz" if done.profile.f0_median else ""
    print(f"enrolled {args.name} from {len(args.refs)} file(s), {voice.speech_seconds:.1f} s of speech{f0}: {done.path}")
    return 0


def _cmd_speakers(args: argparse.Namespace) -> int:
    from vckit.speakers import default_bank, list_profiles

    bank = Path(args.bank) if args.bank else default_bank()
    profs = list_profiles(bank)
    if not profs:
        print(f"no enrolled speakers in {bank} (add one with: vckit enroll NAME REF.wav ...)")
        return 0
    print(f"{'name':<24} {'speech':>8}  {'F0':>7}  {'files':>5}  {'model':<24} created")
    for p in profs:
        f0 = f"{p.f0_median:.0f} Hz" if p.f0_median else "-"
        speech = p.meta.get("speech_seconds", p.meta.get("seconds", 0))  # profiles before 2026-12 kept the audio's seconds only
        model = Path(p.meta["checkpoint"]).name if p.meta.get("checkpoint") else f"weights {p.model_id[:12]}" if p.model_id else "-"
        print(f"{p.name:<24} {speech:>6.1f} s  {f0:>7}  {len(p.meta.get('references', [])):>5}  {model:<24} {p.meta.get('created', '')}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from vckit.training.finetune import FinetuneConfig, finetune

    from vckit.api import default_checkpoint

    parts = ("content_encoder", "speaker_encoder", "decoder") if args.train_content else FinetuneConfig.train
    replay = "" if args.replay == "none" else args.replay
    opts = (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr), ("time_budget", args.time_budget), ("replay", replay), ("replay_fraction", args.replay_fraction))
    given = {k: v for k, v in opts if v is not None}
    cfg = FinetuneConfig(train=parts, **given)
    if args.data is None and not args.resume:
        raise VckitError("give the new speaker's recordings with --data (or --resume an interrupted fine-tuning with its --out)")
    if args.resume and not args.out and not (args.speaker or args.data):
        raise VckitError("--resume needs the interrupted run's --out folder")
    out = args.out or str(Path("runs") / "finetune" / (args.speaker or Path(args.data).stem))
    res = finetune(args.source or default_checkpoint(), args.data, out, speaker=args.speaker, config=cfg, bank=args.bank, device=args.device, overwrite=args.overwrite,
                   progress=not args.quiet, resume=args.resume)
    audio = ", ".join(f"{n} ({s / 60:.1f} min)" for n, s in res.speakers.items())
    print(f"fine-tuned on {audio}: {res.steps} steps in {res.train_seconds:.0f} s ({res.total_seconds:.0f} s in all)")
    print(f"self-reconstruction L1 {res.recon_before:.3f} -> {res.recon_after:.3f}; {len(res.skipped)} file(s) skipped")
    if res.replay:
        print(f"replayed {res.replay_speakers} speakers of {res.replay} ({1 - res.new_share:.0%} of each batch)")
    print(f"wrote {res.checkpoint}")
    for name, path in res.profiles.items():
        print(f"enrolled {name}: {path}  (vckit convert SRC --checkpoint {res.checkpoint} --speaker {name} -o OUT.wav)")
    if res.interrupted:
        print(f"interrupted after {res.steps} of {res.total_steps} steps: the model as it was then is written and usable; "
              f"vckit finetune --resume --out {res.checkpoint} trains the rest", file=sys.stderr)
        return 130
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import shlex

    from vckit.evaluation.metrics import check_eval_packages

    check_eval_packages(plots=not args.no_plots)  # before any work: one line naming what to install
    from vckit.devices import pick_device
    from vckit.evaluation.run import EvalConfig, evaluate

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    given = {k: v for k, v in (("parallel_pairs", args.parallel_pairs), ("pairs_per_kind", args.pairs_per_kind)) if v is not None}
    cfg = EvalConfig(seed=args.seed, plots=not args.no_plots, **given)
    opts = [("--checkpoint", args.checkpoint), ("--data", args.data), ("--pairs", args.pairs), ("--judge", args.judge), ("-o", args.output)]
    opts += [(k, v) for k, v, d in (("--vocoder", args.vocoder, "hifigan"), ("--device", args.device, "auto"), ("--seed", args.seed, 0),
                                    ("--parallel-pairs", args.parallel_pairs, None), ("--pairs-per-kind", args.pairs_per_kind, None),
                                    ("--threads", args.threads, None)) if v != d]
    command = " ".join(["vckit eval"] + [f"{k} {shlex.quote(str(v))}" for k, v in opts if v is not None] + (["--no-plots"] if args.no_plots else []))
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    report = evaluate(args.checkpoint, args.data, args.output, pairs=args.pairs, judge=args.judge, vocoder=args.vocoder,
                      device=str(pick_device(args.device)), cfg=cfg, command=command, progress=say)
    from vckit.evaluation.report import summary_table

    print(summary_table(report))
    t = report["timing"]
    print("\ntiming: " + ", ".join(f"{k} {v}" for k, v in t.items()))
    print(f"wrote {Path(args.output) / 'report.json'} and {Path(args.output) / 'report.md'}")
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
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. train.steps=2000")
    s.add_argument("--resume", action="store_true", help="go on from the latest checkpoint in train.out_dir")
    s.add_argument("--max-steps", type=int, default=None, help="stop at this step (the schedule still follows train.steps)")
    s.add_argument("--time-limit", type=float, default=None, metavar="S", help="stop (and save) after S seconds of wall time")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_train_sv)

    v = sub.add_parser("train-vocoder", help="train the fast vocoder (Vocos), or export a checkpoint of it for shipping")
    v.add_argument("--config", help="recipes/vocoder/conf/<name>.yaml")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. train.batch_size=8")
    v.add_argument("--resume", action="store_true", help="go on from the latest checkpoint in train.out_dir")
    v.add_argument("--time-limit", type=float, default=None, metavar="S", help="stop (and save) after S seconds of wall time")
    v.add_argument("--max-steps", type=int, default=None, help="stop at this step (before train.steps)")
    v.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    v.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bar")
    v.add_argument("--export", nargs=2, metavar=("CHECKPOINT", "DEST"), help="export a step folder (or a run's latest) for shipping")
    v.add_argument("--fp32", action="store_true", help="with --export: keep float32 weights (default float16)")
    v.set_defaults(func=_cmd_train_vocoder)

    ps = sub.add_parser("train-student", help="train the phone student (log-mels -> the phonetic teacher's posteriors), or export one for shipping")
    ps.add_argument("--config", help="recipes/shared_dev/conf/phone_student.yaml")
    ps.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. model.lookahead_frames=3")
    ps.add_argument("--resume", action="store_true", help="go on from the latest checkpoint in train.out_dir")
    ps.add_argument("--time-limit", type=float, default=None, metavar="S", help="stop (and save) after S seconds of wall time")
    ps.add_argument("--max-steps", type=int, default=None, help="stop at this step (the schedule still follows train.steps)")
    ps.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    ps.add_argument("--quiet", action="store_true", help="no progress bar")
    ps.add_argument("--export", nargs=2, metavar=("CHECKPOINT", "DEST"), help="export a step folder (or a run's latest) for shipping")
    ps.add_argument("--fp32", action="store_true", help="with --export: keep float32 weights (default float16)")
    ps.set_defaults(func=_cmd_train_student)

    i = sub.add_parser("info", help="print a checkpoint's config, parameter counts and steps")
    i.add_argument("checkpoint", help="a checkpoint folder (a conversion model, the judge, a phone student or a fast vocoder), or a shipped model's name: default, stream, speaker_verification")
    i.set_defaults(func=_cmd_info)

    from vckit.cli_convert import add_parser as add_convert

    add_convert(sub)

    from vckit.cli_stream import add_parser as add_stream

    add_stream(sub)

    from vckit.cli_prepare import add_parser as add_prepare

    add_prepare(sub)

    e = sub.add_parser("enroll", help="store a speaker profile from reference recordings")
    e.add_argument("name")
    e.add_argument("refs", nargs="+", help="reference recordings (at least 1 s each)")
    e.add_argument("--bank", default=None, help="speaker bank folder (default: user data dir, or $VCKIT_BANK)")
    e.add_argument("--checkpoint", default=None)
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    e.add_argument("--overwrite", action="store_true", help="replace an enrolled speaker of the same name")
    e.set_defaults(func=_cmd_enroll)

    f = sub.add_parser("finetune", help="adapt a model to new speakers from a few minutes of their audio, and enroll them")
    f.add_argument("--from", dest="source", default=None, help="the checkpoint to start from (default: the shipped model; not modified)")
    f.add_argument("--data", default=None, help="a folder of recordings (with --speaker), a folder of <speaker>/ folders, or a .csv/.jsonl (with --resume: the interrupted run's)")
    f.add_argument("--speaker", default=None, help="the name of the one speaker in --data (enrolled under it)")
    f.add_argument("--out", default=None, help="the new checkpoint folder (default: runs/finetune/<speaker or data folder name>)")
    f.add_argument("--steps", type=int, default=None, help="training steps (default 500)")
    f.add_argument("--batch-size", type=int, default=None, help="segments per step (default 16)")
    f.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-4)")
    f.add_argument("--time-budget", type=float, default=None, help="stop after this many training seconds")
    f.add_argument("--train-content", action="store_true", help="also train the content encoder (frozen by default)")
    f.add_argument("--replay", default=None, metavar="auto|none|CACHE", help="training data mixed into each batch against forgetting: auto (default: the source model's own, if its cache is here), none, or a prepared cache folder")
    f.add_argument("--replay-fraction", type=float, default=None, help="share of each batch from --replay (default 0.5)")
    f.add_argument("--bank", default=None, help="speaker bank to enroll into (default: user data dir, or $VCKIT_BANK)")
    f.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    f.add_argument("--overwrite", action="store_true", help="replace an existing --out folder and enrolled speakers of the same names")
    f.add_argument("--resume", action="store_true", help="go on with the fine-tuning that Ctrl-C interrupted in --out: its remaining steps, with its settings")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.set_defaults(func=_cmd_finetune)

    ev = sub.add_parser("eval", help="objective evaluation: MCD/F0 on parallel pairs, speaker similarity, disentanglement probe")
    ev.add_argument("--checkpoint", default=None, help="model folder (default: the shipped model)")
    ev.add_argument("--data", required=True, help="utterances of speakers to evaluate on: a manifest (.jsonl), a metadata .csv, or a folder")
    ev.add_argument("--pairs", default=None, help="CSV of conversion pairs: source,target_speaker[,target][,refs] (default: chosen from --data)")
    ev.add_argument("-o", "--output", required=True, help="report folder (report.json, report.md, plots)")
    ev.add_argument("--judge", default=None, help="speaker-verification model (default: checkpoints/speaker_verification)")
    ev.add_argument("--vocoder", default="hifigan", help="hifigan (default), griffinlim, or a path")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--parallel-pairs", type=int, default=None, help="pairs with a same-content target utterance (default 20)")
    ev.add_argument("--pairs-per-kind", type=int, default=None, help="more pairs, not parallel, for each of M->F, F->M, F->F, M->M (default 3)")
    ev.add_argument("--threads", type=int, default=None, help="CPU threads for torch (1 is fastest on a busy machine)")
    ev.add_argument("--no-plots", action="store_true", help="no PNG plots")
    ev.add_argument("--quiet", action="store_true", help="no progress lines")
    ev.set_defaults(func=_cmd_eval)

    sp = sub.add_parser("speakers", help="list enrolled speakers")
    sp.add_argument("--bank", default=None)
    sp.set_defaults(func=_cmd_speakers)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vckit.api.references").setLevel(logging.ERROR)  # cli_convert.said prints them as warning: lines
    if args.command in ("train", "train-sv", "train-vocoder", "train-student"):
        logging.getLogger("vckit").setLevel(logging.INFO)
    try:
        return args.func(args)
    except VckitError as e:
        print("error: " + " ".join(str(e).splitlines()), file=sys.stderr)  # one line, whatever a name in it holds
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vckit info ... | head`: the reader has gone, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would complain
        return 0
    except Exception as e:  # a bug: one line for the user, the traceback for a report
        if args.verbose:
            traceback.print_exc()
        hint = "" if args.verbose else "; rerun with -v for the traceback"
        print(f"error: unexpected {type(e).__name__}: {reason(e)} (a bug in vckit; please report it{hint})", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
