"""``vckit stream``: live conversion from the microphone to the speakers, or a file through the same path."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vckit.cli_convert import _target, bounded, check_target, semitones
from vckit.errors import VckitError
from vckit.shipped import LIVE_VOCODER


def run(args: argparse.Namespace) -> int:
    from vckit import stream_io
    from vckit.api import load

    if args.list_devices:
        print(stream_io.list_devices())
        return 0
    if not (args.ref or args.speaker):
        raise VckitError("give the target voice with either --ref FILE [FILE ...] or --speaker NAME")
    if bool(args.input) != bool(args.output):
        raise VckitError("--input and --output go together (a file through the live path); give neither to use the microphone")
    if args.output and Path(args.output).exists() and not args.overwrite:
        raise VckitError(f"{args.output} exists: pass --overwrite to replace it")
    if not args.input:
        stream_io.sounddevice()  # a machine without PortAudio says so before the model loads
    check_target(args)
    vc = load(args.checkpoint or "stream", device="cpu", vocoder=args.vocoder, precision=args.precision)
    if not args.input:  # a machine without PortAudio, or a device that cannot take the rate, says so before any work
        stream_io.check_devices(args.input_device, args.output_device, vc.sample_rate)
    stream = vc.stream(_target(args, vc), pitch_shift=args.pitch_shift, chunk_ms=args.block_ms)
    if args.input:
        from vckit.audio import load_audio

        out, report = stream_io.stream_file(stream, load_audio(args.input, vc.sample_rate, trim=False, min_seconds=0.1))
        vc.save(args.output, out, overwrite=args.overwrite)
        print(f"wrote {args.output}: {report.summary()}")
        return 0
    report = stream_io.run_devices(stream, input_device=args.input_device, output_device=args.output_device, on_start=lambda m: print(m, file=sys.stderr))
    print(report.summary(), file=sys.stderr)
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    st = sub.add_parser("stream", help="live conversion: the microphone to the speakers in another voice (or a file through the same path)")
    tgt = st.add_mutually_exclusive_group()
    tgt.add_argument("--ref", nargs="+", help="reference recording(s) of the target voice")
    tgt.add_argument("--speaker", help="an enrolled speaker (vckit enroll); one enrolled with another model is made anew from its reference files")
    st.add_argument("--input", help="stream this file instead of the microphone (with --output)")
    st.add_argument("--output", help="write the streamed file here (.wav, .flac, .ogg or .mp3, by its suffix)")
    st.add_argument("--list-devices", action="store_true", help="list the audio devices and exit")
    st.add_argument("--input-device", help="microphone: a number or name from --list-devices (default: the system's)")
    st.add_argument("--output-device", help="speakers: a number or name from --list-devices (default: the system's)")
    st.add_argument("--block-ms", type=bounded(float, 1.0, 2000.0, "the block", "ms", "a number of ms"), default=None, help="audio converted per step, rounded up to whole model blocks (default one block, 69.7 ms: the shortest delay)")
    st.add_argument("--pitch-shift", type=semitones, default=0.0, help="semitones on top of the target's register (-24 to 24)")
    st.add_argument("--checkpoint", default=None, help="a causal model folder (default: the shipped streaming model)")
    st.add_argument("--vocoder", default=LIVE_VOCODER, help="fast (default: the distilled vocoder, half HiFi-GAN's compute per block, so a 2-core CPU keeps up), hifigan (a few more words kept, where the CPU keeps up with it), or a vocoder folder")
    st.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="the vocoder's arithmetic: auto (default) runs it in bfloat16 where the CPU has it natively; fp32 as trained")
    st.add_argument("--bank", default=None, help="speaker bank folder for --speaker")
    st.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    st.set_defaults(func=run)
    return st
