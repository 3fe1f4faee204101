"""The long fuzz run: many random cases through the audio loader and the convert path.

    python benchmarks/fuzz_inputs.py [--examples 2000] [--convert-examples 300] [--hour]

Runs the hypothesis properties of ``tests/test_fuzz.py`` with random (not
the CI's fixed) cases and prints how many cases each drew and what came of
them: converted, or which :class:`vckit.VckitError`. Any other exception, a
hang (a case over 60 s) or a partial output file fails the property; pytest's
report then shows the smallest case that does it. ``--hour`` also converts
an hour-long file (the slow test in ``tests/test_fuzz.py``, minutes).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=2000, help="cases per loader property (default: %(default)s)")
    ap.add_argument("--convert-examples", type=int, default=300, help="cases per convert property (default: %(default)s)")
    ap.add_argument("--hour", action="store_true", help="also convert an hour-long file")
    args = ap.parse_args()

    report = Path(tempfile.mkdtemp(prefix="vckit-fuzz-")) / "cases.jsonl"
    runs = [("load", args.examples, "fuzzed and load"), ("convert", args.convert_examples, "fuzzed and convert")]
    codes = {}
    t0 = time.time()
    for name, n, select in runs:
        env = {**os.environ, "VCKIT_FUZZ_EXAMPLES": str(n), "VCKIT_FUZZ_REPORT": str(report), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        cmd = [sys.executable, "-m", "pytest", "tests/test_fuzz.py", "-k", select, "-p", "no:cacheprovider", "-q", "--hypothesis-show-statistics"]
        print(f"== {name}: {n} cases per property", flush=True)
        codes[name] = subprocess.call(cmd, cwd=ROOT, env=env)
    if args.hour:
        print("== an hour-long file", flush=True)
        codes["hour"] = subprocess.call([sys.executable, "-m", "pytest", "tests/test_fuzz.py", "-m", "slow", "-p", "no:cacheprovider", "-q", "-s"], cwd=ROOT)

    outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in report.read_text().splitlines() if report.exists() else []:
        case = json.loads(line)
        outcomes[case["test"]][case["outcome"]] += 1
    print(f"\n{'property':<16} {'cases':>6}  outcomes")
    for test, counts in sorted(outcomes.items()):
        detail = ", ".join(f"{k} {v}" for k, v in counts.most_common())
        print(f"{test:<16} {sum(counts.values()):>6}  {detail}")
    total = sum(sum(c.values()) for c in outcomes.values())
    print(f"\n{total} cases in {time.time() - t0:.0f} s; " + ", ".join(f"{k}: {'passed' if c == 0 else 'FAILED'}" for k, c in codes.items()))
    print(f"per-case outcomes: {report}")
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
