"""Average the weights of several runs of the default model into one inference checkpoint (issue 29).

    python recipes/shared_dev/soup.py --out runs/soup runs/cycle1/step-000001000 runs/cycle2/step-000001000 ...

The ends of successive re-cools of the shipped model (``conf/recool.yaml``, each warm from the one before)
are points of one basin; their mean is a stochastic-weight average. Branches under other losses from one
start may be averaged too (a "model soup"). Measure the result with ``benchmarks/intelligibility.py`` before
shipping it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from vckit.errors import VckitError  # noqa: E402
from vckit.models.vc import average_for_inference  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoint folders of one model config (training steps or inference exports)")
    ap.add_argument("--out", required=True, help="the folder to write (must not exist)")
    args = ap.parse_args()
    if Path(args.out).exists():
        print(f"{args.out} exists: give a new folder", file=sys.stderr)
        return 1
    try:
        out = average_for_inference(args.checkpoints, args.out)
    except VckitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"average of {len(args.checkpoints)} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
