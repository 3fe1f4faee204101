"""Batch conversion: one process against N under torchrun, on the same manifest, side by side.

    python benchmarks/batch_scaleout.py                       # 12 validation sources, 1 process vs 2, HiFi-GAN
    python benchmarks/batch_scaleout.py --files 40 --procs 2 --repeats 2

Each run converts the whole manifest into a fresh folder (model loading
included, as a user's command pays it) and the figure is wall seconds per
run; the ratio is one process's median over N processes'. One process uses
every core through torch's threads; under torchrun each of N processes takes
its share of the cores (``vckit.shards.share_cores``). Measure on an idle
machine: a background training run takes cores from both.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", default=str(REPO / "cache/shared_dev/valid.jsonl"), help="sources are taken from here, the longest first skipped")
    ap.add_argument("--files", type=int, default=12)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--vocoder", default="hifigan")
    args = ap.parse_args(argv)
    rows = [json.loads(line) for line in Path(args.manifest).read_text().splitlines() if line.strip()]
    rows = sorted((r for r in rows if 2.0 <= r.get("duration", 0) <= 8.0), key=lambda r: r["path"])[: args.files]
    ref = rows[0]["path"]
    work = Path(tempfile.mkdtemp(prefix="scaleout-"))
    manifest = work / "list.jsonl"
    manifest.write_text("".join(json.dumps({"path": str(Path(r["path"]).resolve())}) + "\n" for r in rows[1:]))
    seconds = sum(r["duration"] for r in rows[1:])
    common = ["convert", str(manifest), "--ref", str(Path(ref).resolve()), "--vocoder", args.vocoder, "--device", "cpu", "--quiet"]
    launch = {1: [sys.executable, "-m", "vckit"],
              args.procs: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.procs), "-m", "vckit"]}
    times: dict[int, list[float]] = {1: [], args.procs: []}
    try:
        for k in range(args.repeats):
            for n, cmd in launch.items():
                out = work / f"out-{n}-{k}"
                t0 = time.perf_counter()
                proc = subprocess.run([*cmd, *common, "-o", str(out)], capture_output=True, text=True, cwd=REPO)
                times[n].append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    print(proc.stderr[-2000:], file=sys.stderr)
                    return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(rows) - 1} files, {seconds:.0f} s of speech, vocoder {args.vocoder}, {args.repeats} run(s) each")
    for n, ts in times.items():
        med = statistics.median(ts)
        print(f"{n} process{'es' if n > 1 else ''}: median {med:.1f} s wall ({seconds / med:.1f} s of audio per second)")
    print(f"speed-up of {args.procs} processes over 1: {statistics.median(times[1]) / statistics.median(times[args.procs]):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
