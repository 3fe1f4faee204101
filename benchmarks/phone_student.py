"""Frame agreement of phone students with the phonetic teacher, on the validation speakers.

For each student folder (a run folder's latest checkpoint, or an exported
student), on every utterance of the validation manifest its run was trained
with (whole utterances, read from the feature cache): the share of frames
where the student's most likely symbol is the teacher's top-1, over all
frames and over the frames whose teacher top-1 is not the CTC blank.

With ``--decoded CHECKPOINT`` the same shares are also measured on what that
VC model decodes, against the teacher's view of the source: its
reconstruction of each utterance in its own voice, and its conversion to the
voice of a validation utterance of another speaker (F0 moved to that
speaker's register), which is what a phonetic loss on decoded mels will see.

    python benchmarks/phone_student.py runs/student/whole runs/student/la3
    python benchmarks/phone_student.py checkpoints/phone_student --decoded checkpoints/default

One CPU thread by default (``--threads``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from vckit.checkpoint import latest_checkpoint
from vckit.data.features import FeatureStore
from vckit.data.frame_features import load_projection, same_projection
from vckit.data.manifest import read_manifest
from vckit.models.phone_student import count_parameters, load_student
from vckit.models.teacher import BLANK
from vckit.training.phone_student import agreement, run_config

FRAME_MS = 256 / 22050 * 1000


def student_folder(path: str) -> Path:
    p = Path(path)
    if (p / "config.json").is_file():
        return p
    ck = latest_checkpoint(p)
    if ck is None:
        sys.exit(f"{p} is neither a phone student nor a run folder holding one")
    return ck


def decoded_mels(checkpoint: str, features: str, store: FeatureStore, utts: list[dict]) -> dict[str, dict[str, torch.Tensor]]:
    """For each utterance path: the VC model's reconstruction (``recon``) and conversion (``conv``) log-mels (n_mels, frames)."""
    from vckit.checkpoint import load_checkpoint
    from vckit.models.vc import build_model, register_shift

    cfg, sd, _ = load_checkpoint(checkpoint)
    model = build_model(cfg, sd).eval()
    if model.needs_phonetic:
        enc = model.content_encoder
        own = {"mean": enc.teacher_mean.numpy(), "proj": enc.teacher_proj.numpy()}
        if not same_projection(own, load_projection(features)):
            sys.exit(f"{checkpoint} projects the teacher differently from the cache {features}: its decoded mels would mean nothing")
    index = {u["path"]: i for i, u in enumerate(store.utterances)}
    speakers = sorted({u["speaker"] for u in utts})
    by_spk = {s: [u for u in utts if u["speaker"] == s] for s in speakers}
    out = {}
    with torch.no_grad():
        for u in utts:
            x = store.frames(index[u["path"]])
            own_spk = model.embed_speaker(x.mel)
            other = by_spk[speakers[(speakers.index(u["speaker"]) + len(speakers) // 2) % len(speakers)]][0]
            y = store.frames(index[other["path"]])
            shift = 0.0
            if model.needs_f0:
                voiced = y.f0[0][y.f0[0] > 0]
                shift = register_shift(x.f0[0], float(voiced.median()) if len(voiced) else None)
            out[u["path"]] = {
                "recon": model.convert(x, own_spk)[0],
                "conv": model.convert(x, model.embed_speaker(y.mel), f0_shift=shift)[0],
            }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("students", nargs="+", help="student folders or run folders")
    ap.add_argument("--decoded", default=None, metavar="CHECKPOINT", help="also score on this VC model's reconstructions and conversions")
    ap.add_argument("--features", default=None, help="feature cache (default: the first student's training cache)")
    ap.add_argument("--manifest", default=None, help="utterances to score (default: the first student's validation manifest)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    folders = [student_folder(s) for s in args.students]
    run = run_config(folders[0])
    features = args.features or run.data.features
    store = FeatureStore.load(features, run.mel)
    paths = {r["path"] for r in read_manifest(args.manifest or run.data.valid_manifest)}
    utts = [u for u in store.utterances if u["path"] in paths]
    top1 = store.extra["posteriors_idx"][:, 0]
    n_frames = sum(u["frames"] for u in utts)
    blank = sum(int((top1[u["offset"] : u["offset"] + u["frames"]] == BLANK).sum()) for u in utts) / n_frames
    print(f"{len(utts)} utterances of {len({u['speaker'] for u in utts})} speakers, {n_frames} frames; the teacher's top-1 is the blank on {blank:.1%}")
    decoded = None
    if args.decoded:
        t0 = time.time()
        decoded = decoded_mels(args.decoded, features, store, utts)
        print(f"decoded with {args.decoded} in {time.time() - t0:.0f} s")
    head = "| student | look-ahead | parameters | all frames | non-blank frames | non-blank, +-2 frames |"
    rule = "|---|---|---|---|---|---|"
    if decoded:
        head += " reconstructed: all / non-blank / +-2 | converted: all / non-blank / +-2 |"
        rule += "---|---|"
    print(head)
    print(rule)
    for folder in folders:
        student, _ = load_student(folder)
        n = student.lookahead
        la = "whole utterance" if student.cfg.lookahead_frames < 0 else f"{n} frames"
        a = agreement(student, store, utts)
        row = f"| {folder} | {la} ({n * FRAME_MS:.0f} ms) | {count_parameters(student):,} | {a.all:.1%} | {a.non_blank:.1%} | {a.non_blank_near:.1%} |"
        if decoded:
            for kind in ("recon", "conv"):
                d = agreement(student, store, utts, mel_of=lambda u, k=kind: decoded[u["path"]][k])
                row += f" {d.all:.1%} / {d.non_blank:.1%} / {d.non_blank_near:.1%} |"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
