"""Whole-path conversion speed and memory: read, features, model, vocoder, write.

    python benchmarks/convert.py [--lengths 10 60 600] [--vocoders griffinlim hifigan] [--precisions auto] [--threads 2] [--device cpu]
    python benchmarks/convert.py --lengths 10 600 --vocoders hifigan --precisions fp32 bf16   # what bf16 gains (issue 28)

Each case runs in a fresh process (so peak RSS is that case's own): it loads
the shipped model, converts a source of the given length (real speech from
../shared/data, tiled, written as a 16 kHz WAV) to a reference voice and
writes the WAV. RTF = conversion seconds / audio seconds, model loading
excluded (reported separately). ``--precisions`` are ``vckit.load``'s
(the vocoder's arithmetic; Griffin-Lim always runs in float32).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SOURCE_FILES = ["vcc2016/SM1/200001.wav", "vcc2016/SM1/200002.wav", "vcc2016/SM1/200003.wav"]
REFERENCE = "vcc2016/SF1/200004.wav"


def make_source(seconds: float, path: Path) -> None:
    import numpy as np
    import soundfile as sf

    parts = [sf.read(str(DATA / f), dtype="float32")[0] for f in SOURCE_FILES]
    speech = np.concatenate(parts)
    n = int(seconds * 16000)
    wav = np.tile(speech, n // len(speech) + 1)[:n]
    sf.write(str(path), wav, 16000, subtype="PCM_16")


def one_case(src: str, vocoder: str, device: str, threads: int, precision: str = "auto") -> dict:
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    import soundfile as sf

    import vckit

    t0 = time.perf_counter()
    vc = vckit.load(device=device, vocoder=vocoder, precision=precision)
    voice = vc.voice(str(DATA / REFERENCE))
    load_s = time.perf_counter() - t0
    out = Path(tempfile.mkdtemp()) / "out.wav"
    dur = sf.info(src).duration
    t1 = time.perf_counter()
    wav = vc.convert(src, target=voice)
    vc.save(out, wav)
    if device == "cuda":
        torch.cuda.synchronize()
    conv_s = time.perf_counter() - t1
    out_dur = sf.info(str(out)).duration
    return {
        "vocoder": vocoder,
        "precision": f"{precision} ({str(vc.vocoder.dtype).removeprefix('torch.')})",
        "device": device if device != "cpu" else f"cpu x{threads}",
        "seconds": round(dur, 1),
        "rtf": round(conv_s / dur, 4),
        "convert_s": round(conv_s, 2),
        "load_s": round(load_s, 2),
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "length_diff_samples": int(round((out_dur - dur) * vc.sample_rate)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=float, nargs="+", default=[10, 60, 600])
    ap.add_argument("--vocoders", nargs="+", default=["griffinlim", "hifigan"])
    ap.add_argument("--precisions", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--case", nargs=3, metavar=("SRC", "VOCODER", "PRECISION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case[0], args.case[1], args.device, args.threads, args.case[2])))
        return 0
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for seconds in args.lengths:
        src = tmp / f"src_{int(seconds)}s.wav"
        make_source(seconds, src)
        for voc in args.vocoders:
            for precision in args.precisions if voc != "griffinlim" else ["fp32"]:
                cmd = [sys.executable, __file__, "--case", str(src), voc, precision, "--device", args.device, "--threads", str(args.threads)]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    print(f"{seconds:.0f} s / {voc} / {precision}: failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                    continue
                row = json.loads(res.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(json.dumps(row), flush=True)
    if rows:
        keys = list(rows[0])
        print("| " + " | ".join(keys) + " |")
        print("|" + "---|" * len(keys))
        for r in rows:
            print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
