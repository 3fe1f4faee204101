"""Weights across the lent GPU's file limit (8 files of 16 MiB each): split an export in two, and join them again.

On the GPU machine, after a run of conf/gpu_chunk.yaml:
    python recipes/shared_dev/gpu_weights.py split runs/gpu $OUT        # the moving average and the last weights, fp16, 2 parts each
Back here:
    python recipes/shared_dev/gpu_weights.py join FILES_AT/ema runs/gpu_ema   # a checkpoint folder vckit loads
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from vckit.checkpoint import latest_checkpoint, load_checkpoint  # noqa: E402
from vckit.config import Config  # noqa: E402
from vckit.models.vc import export_for_inference  # noqa: E402


def split(run: str, out: str) -> None:
    ck = latest_checkpoint(run)
    for name, ema in (("ema", True), ("last", False)):
        with tempfile.TemporaryDirectory() as tmp:
            folder = export_for_inference(ck, Path(tmp) / name, ema=ema, extra={"trained_on": "lent GPU"})
            sd = load_file(str(folder / "model.safetensors"))
            dst = Path(out) / name
            dst.mkdir(parents=True, exist_ok=True)
            keys = sorted(sd)
            half = len(keys) // 2
            save_file({k: sd[k] for k in keys[:half]}, str(dst / "part_a.safetensors"))
            save_file({k: sd[k] for k in keys[half:]}, str(dst / "part_b.safetensors"))
            (dst / "config.json").write_text((folder / "config.json").read_text())
    print(f"split {ck} into {out}/ema and {out}/last")


def join(parts: str, out: str) -> None:
    from vckit.checkpoint import save_checkpoint

    p = Path(parts)
    sd = {**load_file(str(p / "part_a.safetensors")), **load_file(str(p / "part_b.safetensors"))}
    meta = json.loads((p / "config.json").read_text())
    extra = {k: v for k, v in meta.items() if k not in ("format", "format_version", "step", "config", "sha256")}
    folder = save_checkpoint(out, Config.from_dict(meta["config"]), sd, step=meta.get("step", 0), extra=extra, record_sha256=True)
    load_checkpoint(folder)  # strict: it loads as a model
    print(f"joined {parts} into {folder}")


if __name__ == "__main__":
    verb, a, b = sys.argv[1:4]
    {"split": split, "join": join}[verb](a, b)
