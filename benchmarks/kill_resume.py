"""The long crash-safety run: ``kill -9`` of ``vckit train`` at random moments, many times.

    python benchmarks/kill_resume.py [--trials 50] [--seed N]

Runs the kill/resume property of ``tests/test_reliability.py`` with many
trials (CI runs two): each starts ``vckit train`` (tiny model, deterministic,
a checkpoint every step, the last three kept), kills it with SIGKILL just
before a random one of the run's checkpoint file-system steps (an fsync, a
rename or a removal of some save or prune; no timer, so the same seed kills at
the same moment on any machine), checks that every folder named as a checkpoint
loads whole and equals the uninterrupted run's at that step, resumes with
``--resume`` and checks the final weights and optimiser state are bit-equal
to the uninterrupted run's. Prints where the kills landed and what they cut.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=50, help="kill/resume trials (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the kill moments (default: a new one)")
    args = ap.parse_args()

    seed = args.seed or random.randrange(1, 1 << 30)
    report = Path(tempfile.mkdtemp(prefix="vckit-kill-")) / "trials.jsonl"
    env = {**os.environ, "VCKIT_KILL_TRIALS": str(args.trials), "VCKIT_KILL_SEED": str(seed), "VCKIT_KILL_REPORT": str(report)}
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    cmd = [sys.executable, "-m", "pytest", "tests/test_reliability.py", "-k", "kill_9", "-p", "no:cacheprovider", "-q"]
    code = subprocess.call(cmd, cwd=ROOT, env=env)

    trials = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    cut = collections.Counter()
    for t in trials:
        kinds = {"pruned": "a prune", "old": "a replace"}
        for name in t["cut_short"] or ["-"]:
            cut["nothing" if name == "-" else kinds.get(name.split("-", 1)[1], "a save")] += 1
    print(f"\n{len(trials)} of {args.trials} trials passed in {time.time() - t0:.0f} s (seed {seed}){'' if code == 0 else '; a trial FAILED, see above'}")
    if trials:
        landed = collections.Counter(max(t["survived"], default=0) for t in trials)
        print("newest checkpoint left by the kill (step: trials): " + ", ".join(f"{k}: {v}" for k, v in sorted(landed.items())))
        print("what the kill cut short: " + ", ".join(f"{k} {v}" for k, v in cut.most_common()))
        print(f"checkpoint folders checked whole and equal to the uninterrupted run: {sum(len(t['survived']) for t in trials)}")
    print(f"per-trial records: {report}")
    return code


if __name__ == "__main__":
    sys.exit(main())
