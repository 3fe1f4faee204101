"""Keep the background run's progress in git before a session ends (issue 29: training that never stops).

    python recipes/shared_dev/resume_point.py [--run runs/forever] [--out recipes/shared_dev/resume_point]

A fresh machine has no ``runs/``, so without this a session's training would
be lost whenever it did not ship. This writes the run's latest moving average
of the weights (``train.ema``; its last weights when it kept none) as an fp16
inference checkpoint with its step and lineage CPU hours, which
``background.sh`` warm-starts the next session from. The adversary, the
discriminator and Adam's moments are not kept: they restart (the
discriminator is given ``train.gan_start_step`` steps first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from vckit.checkpoint import latest_checkpoint, load_checkpoint, load_train_state  # noqa: E402
from vckit.models.vc import export_for_inference  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=str(REPO / "runs/forever"))
    ap.add_argument("--out", default=str(REPO / "recipes/shared_dev/resume_point"))
    ap.add_argument("--last", action="store_true", help="the run's last weights, not its moving average (a cooled-down branch)")
    args = ap.parse_args()
    ck = latest_checkpoint(args.run)
    if ck is None:
        print(f"no checkpoint in {args.run}", file=sys.stderr)
        return 1
    _, _, meta = load_checkpoint(ck)
    ema = "ema" in load_train_state(ck) and not args.last
    out = export_for_inference(ck, args.out, ema=ema, extra={"resume_point_of": str(Path(args.run).name)})
    print(f"{ck} (step {meta['step']}, {meta.get('training_cpu_hours', 0):.2f} CPU h, {'moving average' if ema else 'last weights'}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
