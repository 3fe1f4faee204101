"""Give a phonetic model's content encoder the log-mel as well (``model.content.input: phonetic+mel``).

The input layer grows from ``input_dim`` to ``input_dim + n_mels`` channels;
the new channels start at zero, so the widened model converts exactly as
the old one until training teaches it to use the mel:

    python recipes/shared_dev/widen_input.py runs/stream/step-000001800 runs/stream_mel_init
    vckit train --config recipes/shared_dev/conf/stream_mel.yaml --init-from runs/stream_mel_init
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from vckit.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    args = ap.parse_args(argv)
    cfg, sd, meta = load_checkpoint(args.src, "cpu")
    if cfg.model.content.input != "phonetic":
        raise SystemExit(f"error: {args.src} reads {cfg.model.content.input!r}, not phonetic features")
    w = sd["content_encoder.inp.weight"]
    sd["content_encoder.inp.weight"] = torch.cat([w, torch.zeros(w.shape[0], cfg.mel.n_mels, *w.shape[2:], dtype=w.dtype)], dim=1)
    content = dataclasses.replace(cfg.model.content, input="phonetic+mel")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, content=content))
    out = save_checkpoint(args.dst, cfg, sd, step=0)
    print(f"{args.src} -> {out}: content input phonetic+mel, {w.shape[1]} + {cfg.mel.n_mels} channels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
