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
    from vckit.training.vc import train

    cfg = load_config(args.config, args.set)
    last = train(cfg, resume=args.resume, device=args.device, max_steps=args.max_steps, time_limit=args.time_limit, init_from=args.init_from, progress=not args.quiet)
    if last:
        print(" ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())))
    return 0


def _cmd_train_sv(args: argparse.Namespace) -> int:
    from vckit.config import load_config
    from vckit.models.verifier import SVConfig
    from vckit.training.verifier import train_sv

    res = train_sv(load_config(args.config, args.set, cls=SVConfig), device=args.device, progress=not args.quiet)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(res.items())))
    return 0


def _cmd_train_vocoder(args: argparse.Namespace) -> int:
    import os

    import torch

    from vckit.training.vocoder import export, load_vocoder_config, train

    if args.export:
        out = export(args.export[0], args.export[1], torch.float32 if args.fp32 else torch.float16)
        print(f"exported {args.export[0]} -> {out}")
        return 0
    if not args.config:
        raise VckitError("train-vocoder needs --config (or --export CHECKPOINT DEST)")
    cfg = load_vocoder_config(args.config, args.set)
    last = train(cfg, resume=args.resume, device=args.device, max_steps=args.max_steps, time_limit=args.time_limit, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0 and last:
        print(" ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())))
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    from vckit import live
    from vckit.api import load

    if args.list_devices:
        print(live.list_devices())
        return 0
    if not (args.ref or args.speaker):
        raise VckitError("give the target voice with either --ref FILE [FILE ...] or --speaker NAME")
    if bool(args.input) != bool(args.output):
        raise VckitError("--input and --output go together (a file through the live path); give neither to use the microphone")
    if args.output and Path(args.output).exists() and not args.overwrite:
        raise VckitError(f"{args.output} exists: pass --overwrite to replace it")
    if not args.input:
        live.sounddevice()  # a machine without PortAudio says so before the model loads
    vc = load(args.checkpoint or "stream", device="cpu")
    stream = vc.stream(_target_args(args, vc), pitch_shift=args.pitch_shift, chunk_ms=args.block_ms)
    if args.input:
        from vckit.audio import load_audio

        out, report = live.stream_file(stream, load_audio(args.input, vc.sample_rate, trim=False, min_seconds=0.1))
        vc.save(args.output, out, overwrite=args.overwrite)
        print(f"wrote {args.output}: {report.summary()}")
        return 0
    report = live.run_devices(stream, input_device=args.input_device, output_device=args.output_device, on_start=lambda m: print(m, file=sys.stderr))
    print(report.summary(), file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import json

    from vckit.checkpoint import load_checkpoint
    from vckit.models.vc import build_model, count_parameters

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


def _target_args(args: argparse.Namespace, vc):
    """The target :class:`~vckit.api.Voice` from --ref or --speaker."""
    from vckit.api import Voice

    if args.speaker:
        from vckit.speakers import default_bank, load_profile

        prof = load_profile(args.bank or default_bank(), args.speaker)
        if prof.model_id and vc.model_id and prof.model_id != vc.model_id:
            raise VckitError(f"speaker {args.speaker!r} was enrolled with another model: enroll it again with this one")
        return Voice(prof.embedding, prof.f0_median, prof.model_id)
    return _said(vc.voice(args.ref))


def _said(voice):
    """Print a voice's speech seconds and reference warnings (``warning: ...``), as one line each."""
    print(f"reference: {voice.speech_seconds:.1f} s of speech in {voice.seconds:.1f} s of audio", file=sys.stderr)
    for w in voice.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return voice


def _bounded(cast, lo: float, hi: float, what: str, unit: str, kind: str):
    """An argparse type: ``cast(value)`` that must lie in ``[lo, hi]``, else one clear message."""

    def parse(value: str):
        try:
            v = cast(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {value!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be between {lo:g} and {hi:g} {unit}, got {value}")
        return v

    return parse


_sample_rate = _bounded(int, 4000, 192000, "the output sample rate", "Hz", "a whole number of Hz")
_semitones = _bounded(float, -24.0, 24.0, "a pitch shift", "semitones", "a number of semitones")


def _vq_choice(value: str) -> bool | float | None:
    """``--vq``: auto (None), on (True), off (False) or a mix between 0 and 1."""
    named = {"auto": None, "on": True, "off": False}
    if value in named:
        return named[value]
    try:
        mix = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, on, off or a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= mix <= 1.0:
        raise argparse.ArgumentTypeError(f"a mix must be between 0 and 1, got {value}")
    return mix


def _cmd_convert(args: argparse.Namespace) -> int:
    from vckit.api import load
    from vckit.data.manifest import source_files

    if bool(args.ref) == bool(args.speaker):
        raise VckitError("give the target voice with either --ref FILE [FILE ...] or --speaker NAME")
    batch = source_files(args.source)
    out = Path(args.output)
    if batch is None:
        if not Path(args.source).exists():
            raise VckitError(f"source not found: {args.source}")
        if out.is_dir():
            raise VckitError(f"{out} is a folder: give an output file name, e.g. {out / (Path(args.source).stem + '.wav')}")
        if out.suffix.lower() != ".wav":
            raise VckitError(f"{out}: vckit writes 16-bit WAV; name the output .wav (e.g. {out.with_suffix('.wav')})")
        if out.exists() and not args.overwrite:
            raise VckitError(f"{out} already exists (use --overwrite to replace it)")
    elif out.exists() and not out.is_dir():
        raise VckitError(f"{out} exists and is not a folder: batch conversion writes into a folder")
    vc = load(args.checkpoint, device=args.device, vocoder=args.vocoder, quantize=args.vq)
    target = _target_args(args, vc)
    opts = dict(pitch_shift=args.pitch_shift, match_pitch=args.match_pitch)
    if batch is None:
        wav = vc.convert(args.source, target=target, **opts)
        vc.save(out, wav, overwrite=args.overwrite, sample_rate=args.sample_rate)
        print(f"wrote {out} ({len(wav) / vc.sample_rate:.2f} s)")
        return 0
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    failures, used = [], set()
    for f in tqdm(batch, desc="converting", unit="file", file=sys.stderr):
        name = f.stem
        while name in used:
            name += "_"
        used.add(name)
        dst = out / f"{name}.wav"
        try:
            if dst.exists() and not args.overwrite:
                raise VckitError(f"{dst} already exists (use --overwrite to replace it)")
            vc.save(dst, vc.convert(f, target=target, **opts), overwrite=args.overwrite, sample_rate=args.sample_rate)
        except VckitError as e:
            failures.append((f, str(e)))
    print(f"converted {len(batch) - len(failures)} of {len(batch)} files into {out}")
    for f, msg in failures:
        print(f"failed: {f}: {msg}", file=sys.stderr)
    return 1 if failures else 0


def _cmd_enroll(args: argparse.Namespace) -> int:
    from vckit.api import load
    from vckit.speakers import check_name, default_bank, new_profile, save_profile

    check_name(args.name)
    bank = Path(args.bank) if args.bank else default_bank()
    if (bank / f"{args.name}.safetensors").exists() and not args.overwrite:
        raise VckitError(f"speaker {args.name!r} is already enrolled in {bank} (use --overwrite to replace it)")
    vc = load(args.checkpoint, device=args.device, vocoder="griffinlim")
    voice = _said(vc.voice(args.refs))
    prof = new_profile(args.name, voice.embedding, vc.model_id, [str(Path(r).resolve()) for r in args.refs], voice.seconds, voice.f0_median)
    path = save_profile(bank, prof, overwrite=args.overwrite)
    f0 = f", median F0 {prof.f0_median:.0f} Hz" if prof.f0_median else ""
    print(f"enrolled {args.name} from {len(args.refs)} file(s), {voice.speech_seconds:.1f} s of speech{f0}: {path}")
    return 0


def _cmd_speakers(args: argparse.Namespace) -> int:
    from vckit.speakers import default_bank, list_profiles

    bank = Path(args.bank) if args.bank else default_bank()
    profs = list_profiles(bank)
    if not profs:
        print(f"no enrolled speakers in {bank} (add one with: vckit enroll NAME REF.wav ...)")
        return 0
    for p in profs:
        f0 = f"{p.f0_median:.0f} Hz" if p.f0_median else "-"
        print(f"{p.name:<24} {p.meta.get('seconds', 0):>7.1f} s  F0 {f0:>7}  {len(p.meta.get('references', []))} file(s)  {p.meta.get('created', '')}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from vckit.training.finetune import FinetuneConfig, finetune

    from vckit.api import default_checkpoint

    parts = ("content_encoder", "speaker_encoder", "decoder") if args.train_content else FinetuneConfig.train
    replay = "" if args.replay == "none" else args.replay
    opts = (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr), ("time_budget", args.time_budget), ("replay", replay), ("replay_fraction", args.replay_fraction))
    given = {k: v for k, v in opts if v is not None}
    cfg = FinetuneConfig(train=parts, **given)
    out = args.out or str(Path("runs") / "finetune" / (args.speaker or Path(args.data).stem))
    res = finetune(args.source or default_checkpoint(), args.data, out, speaker=args.speaker, config=cfg, bank=args.bank, device=args.device, overwrite=args.overwrite, progress=not args.quiet)
    audio = ", ".join(f"{n} ({s / 60:.1f} min)" for n, s in res.speakers.items())
    print(f"fine-tuned on {audio}: {res.steps} steps in {res.train_seconds:.0f} s ({res.total_seconds:.0f} s in all)")
    print(f"self-reconstruction L1 {res.recon_before:.3f} -> {res.recon_after:.3f}; {len(res.skipped)} file(s) skipped")
    if res.replay:
        print(f"replayed {res.replay_speakers} speakers of {res.replay} ({1 - res.new_share:.0%} of each batch)")
    print(f"wrote {res.checkpoint}")
    for name, path in res.profiles.items():
        print(f"enrolled {name}: {path}  (vckit convert SRC --checkpoint {res.checkpoint} --speaker {name} -o OUT.wav)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import shlex

    from vckit.training.loop import pick_device
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
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
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

    i = sub.add_parser("info", help="print a checkpoint's config, parameter counts and steps")
    i.add_argument("checkpoint")
    i.set_defaults(func=_cmd_info)

    c = sub.add_parser("convert", help="convert a file, a folder or a manifest to another voice")
    c.add_argument("source", help="an audio file, a folder of them, or a manifest (.jsonl / .txt / .csv)")
    tgt = c.add_mutually_exclusive_group()
    tgt.add_argument("--ref", nargs="+", help="reference recording(s) of the target voice (at least 1 s each)")
    tgt.add_argument("--speaker", help="an enrolled speaker (see vckit enroll)")
    c.add_argument("-o", "--output", required=True, help="output WAV, or a folder for a batch")
    c.add_argument("--checkpoint", default=None, help="model folder (default: the shipped model)")
    c.add_argument("--vocoder", default="hifigan", help="hifigan (default), griffinlim, or a path")
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    c.add_argument("--vq", default="auto", type=_vq_choice, metavar="{auto,on,off,MIX}", help="content codes: the nearest codebook entries (on), the encoder's own (off), or a MIX between 0 and 1 of the way from the encoder's toward the nearest; auto: as the checkpoint says")
    c.add_argument("--pitch-shift", type=_semitones, default=0.0, help="move the converted voice's register this many semitones (-24 to 24); through the F0 path where the model has one, else by shifting the source first")
    c.add_argument("--match-pitch", action="store_true", help="models without an F0 path: shift the source so its median F0 matches the target's (models with one always do)")
    c.add_argument("--sample-rate", type=_sample_rate, default=None, help="output sample rate, 4000 to 192000 Hz (default 22050)")
    c.add_argument("--bank", default=None, help="speaker bank folder for --speaker (default: user data dir)")
    c.add_argument("--overwrite", action="store_true", help="replace existing output files")
    c.set_defaults(func=_cmd_convert)

    st = sub.add_parser("stream", help="live conversion: the microphone to the speakers in another voice (or a file through the same path)")
    tgt = st.add_mutually_exclusive_group()
    tgt.add_argument("--ref", nargs="+", help="reference recording(s) of the target voice")
    tgt.add_argument("--speaker", help="a speaker enrolled with the streaming model (vckit enroll --checkpoint stream)")
    st.add_argument("--input", help="stream this file instead of the microphone (with --output)")
    st.add_argument("--output", help="write the streamed file here (.wav)")
    st.add_argument("--list-devices", action="store_true", help="list the audio devices and exit")
    st.add_argument("--input-device", help="microphone: a number or name from --list-devices (default: the system's)")
    st.add_argument("--output-device", help="speakers: a number or name from --list-devices (default: the system's)")
    st.add_argument("--block-ms", type=_bounded(float, 1.0, 2000.0, "the block", "ms", "a number of ms"), default=None, help="audio converted per step, rounded up to whole model blocks (default one block, 69.7 ms: the shortest delay)")
    st.add_argument("--pitch-shift", type=_semitones, default=0.0, help="semitones on top of the target's register (-24 to 24)")
    st.add_argument("--checkpoint", default=None, help="a causal model folder (default: the shipped streaming model)")
    st.add_argument("--bank", default=None, help="speaker bank folder for --speaker")
    st.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    st.set_defaults(func=_cmd_stream)

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
    f.add_argument("--data", required=True, help="a folder of recordings (with --speaker), a folder of <speaker>/ folders, or a .csv/.jsonl")
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
    logging.getLogger("vckit.api.references").setLevel(logging.ERROR)  # _said prints them as warning: lines
    if args.command in ("train", "train-sv", "train-vocoder"):
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
