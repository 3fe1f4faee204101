"""Training throughput: steps/s, frames/s and peak memory for the smoke and base configs.

    python benchmarks/train_throughput.py [--device auto] [--seconds 20] [--batch 32]

Uses the real feature cache when it exists (cache/shared_dev), else a
synthetic one of the same layout, so it runs anywhere. The timed steps are
the trainer's own ``train_step`` (batch drawn on the device, augmentation,
forward, backward, optimiser), after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vckit.config import load_config  # noqa: E402
from vckit.data.manifest import write_manifest  # noqa: E402
from vckit.models import count_parameters  # noqa: E402
from vckit.training.vc import Trainer  # noqa: E402

CONFS = {"smoke": "recipes/shared_dev/conf/smoke.yaml", "base": "recipes/shared_dev/conf/base.yaml"}


def synthetic_cache(folder: Path, n_spk: int = 40, utts: int = 4, frames: int = 600) -> list[str]:
    """A random feature cache and manifests; returns the config overrides pointing at it."""
    from vckit.config import MelConfig, to_dict

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows, index, off = [], [], 0
    for s in range(n_spk):
        for u in range(utts):
            p = f"spk{s}/u{u}.wav"
            rows.append({"path": p, "speaker": f"spk{s}", "duration": frames / 86})
            index.append({"path": p, "speaker": f"spk{s}", "offset": off, "frames": frames})
            off += frames
    (folder / "features").mkdir(exist_ok=True)
    np.save(folder / "features" / "mels.npy", rng.integers(0, 200, size=(off, 80), dtype=np.uint8))
    (folder / "features" / "index.json").write_text(json.dumps({"mel": to_dict(MelConfig()), "frames": off, "utterances": index}))
    write_manifest(rows, folder / "train.jsonl")
    write_manifest(rows[:8], folder / "valid.jsonl")
    return [f"data.features={folder}/features", f"data.train_manifest={folder}/train.jsonl", f"data.valid_manifest={folder}/valid.jsonl"]


def measure(name: str, device: str, seconds: float, batch: int | None, extra: list[str], compile_: bool) -> dict:
    tmp = tempfile.mkdtemp()
    sets = [f"train.out_dir={tmp}/run", *extra]
    if batch:
        sets.append(f"train.batch_size={batch}")
    if compile_:
        sets.append("train.compile=true")
    cfg = load_config(CONFS[name], sets)
    tr = Trainer(cfg, device=device)
    dev = tr.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(10):  # warm-up (cudnn autotune, compile)
        tr.train_step()
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tr.train_step()
        n += 1
        if dev.type == "cuda" and n % 20 == 0:
            sync()
    sync()
    dt = time.perf_counter() - t0
    params = count_parameters(tr.model)
    b, seg = tr.cfg.train.batch_size, tr.cfg.data.segment_frames
    mem = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "config": name + (" +compile" if compile_ else ""),
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "params_M": round(params["total"] / 1e6, 2),
        "batch": f"{b}x{seg}",
        "steps_s": round(n / dt, 2),
        "frames_s": round(n * b * seg / dt),
        "peak_MiB": round(mem),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--batch", type=int, default=None, help="override the configs' batch size (AdaIN-VC's reference: 32)")
    ap.add_argument("--configs", nargs="+", default=["smoke", "base"])
    ap.add_argument("--compile", action="store_true", help="also measure with torch.compile")
    args = ap.parse_args()
    extra = [] if Path("cache/shared_dev/features/mels.npy").is_file() else synthetic_cache(Path(tempfile.mkdtemp()) / "cache")
    rows = []
    for name in args.configs:
        for comp in ([False, True] if args.compile else [False]):
            r = measure(name, args.device, args.seconds, args.batch, extra, comp)
            rows.append(r)
            print(json.dumps(r), flush=True)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
