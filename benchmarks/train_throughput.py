"""Training throughput of the shipped configuration on this machine, variant by variant, side by side.

    python benchmarks/train_throughput.py                                  # fp32 against bf16, 2 threads, 32 x 128
    python benchmarks/train_throughput.py --variants fp32 bf16 bf16+compile --threads 1 2
    python benchmarks/train_throughput.py --loss-steps 100                 # + the loss after the same steps
    python benchmarks/train_throughput.py --config recipes/shared_dev/conf/smoke.yaml --init-from ''

Each variant builds the trainer the background run uses (``--config``,
warm-started from ``--init-from``), takes a few warm-up steps, then times its
own ``train_step`` (batch drawn from the cache, augmentation, forward with the
adversary, the discriminator and the conversion pass, backward, optimisers)
for ``--seconds``. The variants run one after another in one process, so the
figures are side by side; ``data_ms`` is the batch drawing alone.

``--loss-steps N`` also trains each precision N steps from the same weights
and seed, then measures the reconstruction L1 (fp32, nats) on fixed
validation segments: a faster variant is only worth having if this is no
worse. Uses the real cache (``cache/shared_dev``, made by the recipe's
``prepare.py --frame-features``) when there is one, else a synthetic cache of
the same layout (mel-input configs only).
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vckit.config_files import load_config  # noqa: E402
from vckit.data.manifest import write_manifest  # noqa: E402
from vckit.data.sampling import valid_batches  # noqa: E402
from vckit.models import count_parameters  # noqa: E402
from vckit.training.losses import masked_l1  # noqa: E402
from vckit.training.vc import Trainer, frames_of  # noqa: E402

PRECISIONS = {"fp32": "none", "bf16": "bf16"}


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


def trainer(args: argparse.Namespace, variant: str, extra: list[str]) -> Trainer:
    """The background run's trainer with this variant's precision and compile setting."""
    precision, _, comp = variant.partition("+")
    sets = [f"train.out_dir={tempfile.mkdtemp()}/run", f"train.amp={PRECISIONS[precision]}", f"train.batch_size={args.batch}", "train.gan_start_step=0", *extra]
    if comp == "compile":
        sets.append("train.compile=true")
    cfg = load_config(args.config, sets)
    torch.manual_seed(0)
    return Trainer(cfg, device=args.device, init_from=args.init_from or None)


def speed(tr: Trainer, seconds: float, warmup: int) -> dict:
    sync = torch.cuda.synchronize if tr.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):  # oneDNN's first calls, cudnn autotune, compile
        tr.train_step()
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tr.train_step()
        n += 1
    sync()
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(5):
        tr._batch()
    data_ms = (time.perf_counter() - t1) / 5 * 1000
    b, seg = tr.cfg.train.batch_size, tr.cfg.data.segment_frames
    return {"steps_s": round(n / dt, 3), "frames_s": round(n * b * seg / dt), "step_ms": round(dt / n * 1000), "data_ms": round(data_ms, 1)}


@torch.no_grad()
def valid_l1(tr: Trainer, n_utts: int = 48) -> float:
    """Reconstruction L1 in fp32 on the first segments of ``n_utts`` validation files (the same for every variant)."""
    model = tr.model.eval()
    total, count = 0.0, 0
    for b in valid_batches(tr.store, tr.valid_utts[:n_utts], tr.cfg.data.segment_frames, 16):
        out = model(frames_of(b), b["ref"])
        total += float(masked_l1(out.pred.float(), out.target, b["mask"])) * b["mel"].shape[0]
        count += b["mel"].shape[0]
    model.train()
    return total / count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "recipes/shared_dev/conf/forever.yaml"))
    ap.add_argument("--init-from", default=str(REPO / "checkpoints/default"), help="warm start ('' for random weights)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    ap.add_argument("--variants", nargs="+", default=["fp32", "bf16"], help="fp32, bf16, fp32+compile, bf16+compile")
    ap.add_argument("--threads", nargs="+", type=int, default=[2])
    ap.add_argument("--batch", type=int, default=32, help="segments per step (the issue's reference: 32 x 128)")
    ap.add_argument("--seconds", type=float, default=30.0, help="timed seconds per variant")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--loss-steps", type=int, default=0, help="also train this many steps per precision and compare the validation L1")
    args = ap.parse_args()
    for v in args.variants:
        if v.partition("+")[0] not in PRECISIONS or v.partition("+")[2] not in ("", "compile"):
            ap.error(f"unknown variant {v!r}")
    extra = [] if (REPO / "cache/shared_dev/features/mels.npy").is_file() else synthetic_cache(Path(tempfile.mkdtemp()) / "cache")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for v in args.variants:
            tr = trainer(args, v, extra)
            r = {"variant": v, "threads": threads, "batch": f"{args.batch}x{tr.cfg.data.segment_frames}", "params_M": round(count_parameters(tr.model)["total"] / 1e6, 2)}
            r.update(speed(tr, args.seconds, args.warmup))
            r["peak_rss_MiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            rows.append(r)
            print(json.dumps(r), flush=True)
    base = rows[0]["frames_s"]
    print(f"\n| variant | threads | batch | steps/s | frames/s | x {rows[0]['variant']} | data ms | peak RSS MiB |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['threads']} | {r['batch']} | {r['steps_s']} | {r['frames_s']} | {r['frames_s'] / base:.2f} | {r['data_ms']} | {r['peak_rss_MiB']} |")
    if args.loss_steps:
        torch.set_num_threads(max(args.threads))
        print(f"\nvalidation recon L1 (fp32) after {args.loss_steps} steps of batch {args.batch}, same weights and seed:")
        for precision in dict.fromkeys(v.partition("+")[0] for v in args.variants):
            tr = trainer(args, precision, extra)
            before = valid_l1(tr)
            for _ in range(args.loss_steps):
                tr.train_step()
            print(f"  {precision}: {before:.4f} -> {valid_l1(tr):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
