"""Give a trained model another content teacher, keeping what it learned (issue 29 item 6: Whisper's features).

    python recipes/shared_dev/swap_teacher.py --from checkpoints/default --out runs/whisper_init \\
        --old cache/shared_dev/features --new cache/shared_dev_whisper/features --teacher whisper
    vckit train --config recipes/shared_dev/conf/whisper.yaml --init-from runs/whisper_init

The content encoder reads the teacher's features projected on their first
principal components (``phonetic.npy`` in each cache). This fits, on the
training frames both caches hold, the linear map that best predicts the old
projected features from the new ones (least squares), and folds it into the
encoder's first 1x1 convolution, so the model starts by reading the new
teacher as it read the old one, as far as a linear map can carry it. It
prints the share of the old features' variance the map explains (on frames
it was not fitted on): how much of the old teacher the new one holds.
Every other weight is the source model's; the new projection is the new
cache's, so conversion projects exactly as training does.

``--beside`` keeps the old teacher and adds the new one after it
(``--new`` is then a cache with both, ``vckit prepare whisper-features
--beside``): the old inputs keep their weights and the new ones start at
zero, so the model starts by converting exactly as before.

    python recipes/shared_dev/swap_teacher.py --from checkpoints/default --out runs/beside_init --beside \
        --old cache/shared_dev/features --new cache/shared_dev_beside/features --teacher hama+whisper
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from vckit.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from vckit.data.frame_features import dequantize_phonetic, load_projection  # noqa: E402
from vckit.models.vc import build_model  # noqa: E402


def fit_map(old: np.ndarray, new: np.ndarray, held_out: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Least squares ``old (N, a) ~ new (N, b) @ A.T + c``: returns ``A (a, b)``, ``c (a,)`` and the variance of
    ``old`` explained on a held-out share of the rows."""
    rng = np.random.default_rng(seed)
    test = rng.random(len(old)) < held_out
    x = np.concatenate([new, np.ones((len(new), 1), np.float32)], 1).astype(np.float64)
    sol, *_ = np.linalg.lstsq(x[~test], old[~test].astype(np.float64), rcond=None)
    resid = old[test] - x[test] @ sol
    explained = 1.0 - float((resid**2).sum() / ((old[test] - old[test].mean(0)) ** 2).sum())
    return sol[:-1].T.astype(np.float32), sol[-1].astype(np.float32), explained


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from", dest="src", required=True, help="a model folder (checkpoints/default, or a training step)")
    ap.add_argument("--out", required=True, help="a new folder for the model")
    ap.add_argument("--old", required=True, help="the feature cache of the teacher the model reads now")
    ap.add_argument("--new", required=True, help="the same cache with the new teacher's phonetic.npy")
    ap.add_argument("--teacher", required=True, help="model.content.teacher of the new model")
    ap.add_argument("--frames", type=int, default=300_000, help="training frames the map is fitted on")
    ap.add_argument("--beside", action="store_true", help="keep the old teacher's inputs and add the new ones at zero weight")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        print(f"{out} exists; choose another --out", file=sys.stderr)
        return 1
    cfg, sd, meta = load_checkpoint(args.src)
    old_q = np.load(Path(args.old) / "phonetic.npy", mmap_mode="r")
    new_q = np.load(Path(args.new) / "phonetic.npy", mmap_mode="r")
    if len(old_q) != len(new_q):
        raise SystemExit(f"the caches hold {len(old_q)} and {len(new_q)} frames: not the same cache")
    content = replace(cfg.model.content, teacher=args.teacher, input_dim=int(new_q.shape[1]))
    cfg = replace(cfg, model=replace(cfg.model, content=content))
    index = json.loads((Path(args.new) / "index.json").read_text())
    train = {json.loads(line)["path"] for line in (Path(args.new).parent / "train.jsonl").read_text().splitlines() if line.strip()}
    rows = np.concatenate([np.arange(u["offset"], u["offset"] + u["frames"]) for u in index["utterances"] if u["path"] in train])
    rows = np.sort(np.random.default_rng(0).choice(rows, size=min(args.frames, len(rows)), replace=False))
    deq = lambda q: dequantize_phonetic(torch.from_numpy(np.asarray(q[rows]))).numpy()  # noqa: E731
    if args.beside:  # the old dims come first and keep their weights; the new ones start at zero
        a = np.eye(old_q.shape[1], new_q.shape[1], dtype=np.float32)
        c = np.zeros(old_q.shape[1], np.float32)
        how = f"the old {old_q.shape[1]} inputs kept, {new_q.shape[1] - old_q.shape[1]} new ones at zero weight"
        if not np.array_equal(np.asarray(new_q[rows[:1000], : old_q.shape[1]]), np.asarray(old_q[rows[:1000]])):
            raise SystemExit(f"{args.new} does not start with {args.old}'s features (vckit prepare whisper-features --beside)")
    else:
        a, c, explained = fit_map(deq(old_q), deq(new_q))
        how = f"the map explains {explained:.1%} of the old features' variance on held-out frames"
    model = build_model(cfg, for_training=False)
    own = model.state_dict()
    keep = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    w, b = sd["content_encoder.inp.weight"], sd["content_encoder.inp.bias"]  # (channels, old dims, 1), (channels,)
    keep["content_encoder.inp.weight"] = (w[..., 0].float() @ torch.from_numpy(a))[..., None].to(w.dtype)
    keep["content_encoder.inp.bias"] = (b.float() + w[..., 0].float() @ torch.from_numpy(c)).to(b.dtype)
    proj = load_projection(args.new)
    keep["content_encoder.teacher_mean"] = torch.from_numpy(proj["mean"])
    keep["content_encoder.teacher_proj"] = torch.from_numpy(proj["proj"])
    missing = [k for k in own if k not in keep]
    if missing:
        raise SystemExit(f"the new model has tensors the source lacks: {missing[:4]}")
    save_checkpoint(out, cfg, keep, step=int(meta.get("step", 0)), extra={k: v for k, v in meta.items() if k in ("speakers", "training_cpu_hours")})
    print(f"{args.src} -> {out}: teacher {args.teacher}; {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
