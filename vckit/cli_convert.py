"""``vckit convert``: one file, a folder or a manifest to another voice.

A folder or a manifest is a batch: outputs mirror the sources' subfolders
under the output folder, and outputs that already exist are skipped (so an
interrupted batch resumes where it stopped); ``--overwrite`` converts them
again. A single file refuses to replace its output unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vckit.errors import VckitError
from vckit.shards import Shard, current_shard, device_for, leave, share_cores, shard_arg, summed

LONG_SOURCE_S = 30.0  # a single source longer than this gets a progress bar
SHORT_SOURCE_S = 0.5  # a source shorter than this is converted with a warning: hardly a word fits in it


def bounded(cast, lo: float, hi: float, what: str, unit: str, kind: str):
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


sample_rate = bounded(int, 4000, 192000, "the output sample rate", "Hz", "a whole number of Hz")
semitones = bounded(float, -24.0, 24.0, "a pitch shift", "semitones", "a number of semitones")


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


def check_target(args: argparse.Namespace) -> None:
    """What can be checked of --ref / --speaker before the model loads: the files exist, the speaker is enrolled."""
    if args.speaker:
        from vckit.speakers import default_bank, load_profile

        load_profile(args.bank or default_bank(), args.speaker)  # "no enrolled speaker ..." in a blink, not after loading
    for r in args.ref or []:
        if not Path(r).is_file():
            raise VckitError(f"reference not found: {r}")


def _target(args: argparse.Namespace, vc):
    """The target :class:`~vckit.api.Voice` from --ref or --speaker."""
    if args.speaker:
        return vc.enrolled(args.speaker, args.bank)
    return said(vc.voice(args.ref))


def said(voice):
    """Print a voice's speech seconds and reference warnings (``warning: ...``), one line each."""
    print(f"reference: {voice.speech_seconds:.1f} s of speech in {voice.seconds:.1f} s of audio", file=sys.stderr)
    for w in voice.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return voice


def _bar(total: float, unit: str, quiet: bool):
    """A progress bar on stderr and a callback that moves it to a position in [0, total]
    (files done plus the share of the current one); (None, None) with --quiet."""
    if quiet:
        return None, None
    from tqdm import tqdm

    count = f" {{n:.1f}}/{{total:.0f}} {unit}" if unit else ""
    bar = tqdm(total=total, file=sys.stderr, desc="converting", bar_format="{desc}: {percentage:3.0f}%|{bar}|" + count + " [{elapsed}<{remaining}]")

    def at(pos: float) -> None:
        bar.n = min(max(float(pos), bar.n), total)
        bar.refresh()

    return bar, at


def _seconds(path: Path) -> float:
    import soundfile as sf

    try:
        return sf.info(str(path)).duration
    except Exception:  # unreadable: the conversion says why
        return 0.0


def _model(args: argparse.Namespace):
    """The converter --checkpoint names, once --ref / --speaker are known to be there."""
    from vckit.api import load

    check_target(args)
    return load(args.checkpoint, device=args.device, vocoder=args.vocoder, quantize=args.vq, precision=args.precision)


def _options(args: argparse.Namespace) -> dict:
    return dict(pitch_shift=args.pitch_shift, match_pitch=args.match_pitch)


def _load(args: argparse.Namespace):
    vc = _model(args)
    return vc, _target(args, vc), _options(args)


def _convert_one(args: argparse.Namespace, out: Path) -> int:
    from vckit.audio import output_format

    src = Path(args.source)
    if not src.exists():
        raise VckitError(f"source not found: {args.source}")
    if out.is_dir():
        raise VckitError(f"{out} is a folder: give an output file name, e.g. {out / (src.stem + '.wav')}")
    if args.format and out.suffix.lower() != f".{args.format}":
        raise VckitError(f"--format is for folders and manifests: for one file, name the output {out.with_suffix('.' + args.format)}")
    output_format(out, args.sample_rate)
    if out.exists() and not args.overwrite:
        raise VckitError(f"{out} already exists (use --overwrite to replace it)")
    from vckit.api import MIN_SOURCE_S
    from vckit.audio import load_audio

    vc = _model(args)
    rate = vc.config.mel.sample_rate
    # a bad source fails before the voice is made
    source = load_audio(args.source, rate, trim=False, min_seconds=MIN_SOURCE_S, what=f"source {src.name}")
    if len(source) < SHORT_SOURCE_S * rate:
        print(f"warning: source {src.name} is only {len(source) / rate:.1f} s long, too short to hold a word: converted anyway", file=sys.stderr)
    target, opts = _target(args, vc), _options(args)
    bar, at = _bar(1.0, "", args.quiet or _seconds(src) <= LONG_SOURCE_S)
    try:
        wav = vc.convert(source, target=target, sr=rate, progress=at, **opts)
    finally:
        if bar is not None:
            bar.close()
    vc.save(out, wav, overwrite=args.overwrite, sample_rate=args.sample_rate)
    print(f"wrote {out} ({len(wav) / vc.sample_rate:.2f} s)")
    return 0


def _convert_batch(args: argparse.Namespace, files: list[Path], out: Path) -> int:
    import os

    from vckit.audio import output_format
    from vckit.data.manifest import output_paths

    if out.exists() and not out.is_dir():
        raise VckitError(f"{out} exists and is not a folder: batch conversion writes into a folder")
    suffix = f".{args.format or 'wav'}"
    output_format(out / f"x{suffix}", args.sample_rate, what=f"--format {args.format or 'wav'}")
    inside = os.path.abspath(out) + os.sep
    if Path(args.source).is_dir() and inside.startswith(os.path.abspath(args.source) + os.sep):
        files = [f for f in files if not os.path.abspath(f).startswith(inside)]  # never a former run's outputs
        if not files:
            raise VckitError(f"no source files in {args.source} outside the output folder {out}")
    shard = current_shard(args.shard)
    try:
        return _convert_jobs(args, shard.take(list(zip(files, output_paths(files, args.source, out, suffix)))), out, shard)
    finally:
        leave(shard)


def _convert_jobs(args: argparse.Namespace, jobs: list[tuple[Path, Path]], out: Path, shard: Shard) -> int:
    """Convert this process's ``jobs`` [(source, output)]; the summary sums every process's counts."""
    todo = jobs if args.overwrite else [(f, dst) for f, dst in jobs if not dst.exists()]
    failures, done = [], 0
    bar = at = None
    if todo:
        share_cores(shard)
        args.device = device_for(shard, args.device)
        vc, target, opts = _load(args)
        bar, at = _bar(len(todo), "files", args.quiet or not shard.reports)
    try:
        for i, (f, dst) in enumerate(todo):
            step = None if at is None else (lambda share, i=i: at(i + share))
            try:
                wav = vc.convert(f, target=target, progress=step, **opts)
                vc.save(dst, wav, overwrite=args.overwrite, sample_rate=args.sample_rate)
                done += 1
            except VckitError as e:
                failures.append((f, str(e)))
            if at is not None:
                at(i + 1)
    except KeyboardInterrupt:
        left = len(todo) - done - len(failures)
        print(f"{shard.prefix()}interrupted: converted {done} of {len(todo)} files into {out}; the same command again converts the other {left}"
              + ("" if args.overwrite else " and keeps what is done"), file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    for f, msg in failures:
        print(f"{shard.prefix()}failed: {f}: {msg}", file=sys.stderr)
    n_jobs, n_done, n_failed = summed(shard, [len(jobs), done, len(failures)])
    n_there = n_jobs - n_done - n_failed
    if shard.reports:
        print(shard.prefix() + _summary(n_jobs, n_done, n_failed, n_there, out, shard))
    return 1 if n_failed else 0


def _summary(jobs: int, done: int, failed: int, there: int, out: Path, shard: Shard) -> str:
    if not jobs:
        return "no files fall to this shard: nothing to convert"
    if not done and not failed:
        return f"nothing to convert: all {jobs} outputs are already in {out} (--overwrite converts them again)"
    parts = [f"converted {done} file{'s' if done != 1 else ''} into {out}{shard.label()}"]
    parts += [f"{failed} failed (listed above)"] if failed else []
    parts += [f"{there} already in {out} left as they were (--overwrite converts them again)"] if there else []
    return "; ".join(parts)


def run(args: argparse.Namespace) -> int:
    from vckit.data.manifest import source_files

    if bool(args.ref) == bool(args.speaker):
        raise VckitError("give the target voice with either --ref FILE [FILE ...] or --speaker NAME")
    files = source_files(args.source)
    if files is None:
        return _convert_one(args, Path(args.output))
    return _convert_batch(args, files, Path(args.output))


def add_parser(sub) -> argparse.ArgumentParser:
    c = sub.add_parser("convert", help="convert a file, a folder or a manifest to another voice")
    c.add_argument("source", help="an audio file, a folder of them (subfolders too), or a manifest (.jsonl with \"path\"; .csv first column; .txt one path a line)")
    tgt = c.add_mutually_exclusive_group()
    tgt.add_argument("--ref", nargs="+", help="reference recording(s) of the target voice (at least 1 s each)")
    tgt.add_argument("--speaker", help="an enrolled speaker (see vckit enroll)")
    c.add_argument("-o", "--output", required=True, help="output file (.wav, .flac, .ogg or .mp3: the suffix sets the format), or a folder for a batch")
    c.add_argument("--format", choices=["wav", "flac", "ogg", "mp3"], default=None, help="batches: the output files' format (default wav)")
    c.add_argument("--checkpoint", default=None, help="model folder (default: the shipped model)")
    c.add_argument("--vocoder", default="hifigan", help="hifigan (default), fast (distilled from HiFi-GAN: a quarter of the time, less natural), griffinlim (no weights; rougher still), or a path to a vocoder folder or file")
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    c.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="the vocoder's arithmetic: auto (default) runs it in bfloat16 where the CPU or GPU has it natively (1.5x quicker on long files); fp32 as trained")
    c.add_argument("--vq", default="auto", type=_vq_choice, metavar="{auto,on,off,MIX}", help="content codes: the nearest codebook entries (on), the encoder's own (off), or a MIX between 0 and 1 of the way from the encoder's toward the nearest; auto: as the checkpoint says")
    c.add_argument("--pitch-shift", type=semitones, default=0.0, help="move the converted voice's register this many semitones (-24 to 24); through the F0 path where the model has one, else by shifting the source first")
    c.add_argument("--match-pitch", action="store_true", help="models without an F0 path: shift the source so its median F0 matches the target's (models with one always do)")
    c.add_argument("--sample-rate", type=sample_rate, default=None, help="output sample rate, 4000 to 192000 Hz (default 22050)")
    c.add_argument("--bank", default=None, help="speaker bank folder for --speaker (default: user data dir)")
    c.add_argument("--overwrite", action="store_true", help="replace existing output files (a batch otherwise skips them)")
    c.add_argument("--shard", type=shard_arg, default=None, metavar="I/N", help="batches: convert only task I's share (0 to N-1) of N, as a scheduler's array job; under torchrun the ranks share the batch by themselves")
    c.add_argument("--quiet", action="store_true", help=f"no progress bar (shown for batches and files over {LONG_SOURCE_S:.0f} s)")
    c.set_defaults(func=run)
    return c
