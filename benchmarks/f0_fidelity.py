"""How well conversions keep the source's voicing and intonation, by direction (issue 29's F->M bar).

On the wide set of ``benchmarks/intelligibility.py`` (validation speakers, never trained on), each source is
converted with ``vckit.load(...).convert`` (HiFi-GAN, as a user gets it) to its cross-gender and its same-gender
target, and scored against its source frame by frame with :func:`vckit.evaluation.metrics.source_scores`, what
``vckit eval`` reports as ``kept_from_source`` (10 ms YIN frames, over the source's frames within 30 dB of its
loudest):

* **V/UV agreement**: the share of those frames both call voiced or both unvoiced (mean over conversions);
* **voicing kept**: the share of the source's voiced frames voiced in the conversion (mean);
* **F0 correlation**: the log-F0 correlation over the frames voiced in both, each contour about its own median
  (so the register change cancels) and gross errors over half an octave left out (median over conversions).

Issue 29's bar for female-to-male: agreement at least 85 %, correlation at least 0.7.

``--floors`` adds, for each source, where its voicing goes without a conversion, by the source's gender: the
vocoder alone (HiFi-GAN on the source's own log-mel: ``vocoded F``, ``vocoded M``) and the model's
reconstruction (the source in its own voice: ``recon F``, ``recon M``). A direction that loses voicing the
reconstruction of that gender keeps is lost by the conversion; what the reconstruction loses, the vocoded
source keeps, is lost by the model; and the vocoded source's own loss is the vocoder's.

    python benchmarks/f0_fidelity.py --checkpoint checkpoints/default
    python benchmarks/f0_fidelity.py --checkpoint new=runs/cand --checkpoint shipped=checkpoints/default --out runs/f0.json
    python benchmarks/f0_fidelity.py --limit 45 --cross-only    # each source once, across gender: a quarter of the time
    python benchmarks/f0_fidelity.py --limit 45 --cross-only --floors   # and each source vocoded and reconstructed
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

def measure(vc: Any, items: list[dict[str, Any]], conditions: tuple[str, ...] = ("cross", "same"), progress: bool = True) -> dict[str, dict[str, Any]]:
    """Per direction (``F->M``, ``M->F``, ``same``): the mean agreement and voicing kept, the median correlation,
    and each conversion's figures."""
    from vckit.audio import load_audio, log_mel, resample
    from vckit.evaluation.metrics import MCEP_SR, source_scores

    rate = vc.sample_rate
    per: dict[str, list[dict[str, float]]] = {}
    for i, it in enumerate(items):
        source = load_audio(it["src"], rate, trim=False)
        g = str(it.get("gender") or "?").upper()[:1]
        for cond in conditions:
            if cond == "vocoded":  # the vocoder alone, on the source's own mel
                with torch.inference_mode():
                    wav = vc.vocoder.vocode(log_mel(torch.from_numpy(source), vc.config.mel)).float().cpu().numpy()
            else:
                refs = source if cond == "recon" else np.concatenate([load_audio(p, rate, trim=True) for p in it[cond]["refs"]])
                wav = vc.convert(source, vc.voice(refs, sr=rate), sr=rate)
            if cond in ("vocoded", "recon"):
                key = f"{cond} {g}"
            else:
                key = "same" if cond == "same" else f"{g}->{'M' if g == 'F' else 'F' if g == 'M' else '?'}"
            per.setdefault(key, []).append(source_scores(resample(wav, rate, MCEP_SR), resample(source, rate, MCEP_SR)))
        if progress and (i + 1) % 10 == 0:
            print(f"  {i + 1}/{len(items)} sources", file=sys.stderr, flush=True)
    res = {}
    for key, rows in sorted(per.items()):
        col = {k: np.array([r[k] for r in rows]) for k in rows[0]}
        res[key] = {"conversions": len(rows), "agreement": float(np.nanmean(col["vuv_agreement"])), "voicing_kept": float(np.nanmean(col["voiced_recall"])),
                    "correlation": float(np.nanmedian(col["f0_corr_robust"])), "correlated": int(np.isfinite(col["f0_corr_robust"]).sum()), "per_item": rows}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", action="append", default=[], help="NAME=FOLDER or FOLDER; repeatable (default: the shipped model)")
    ap.add_argument("--manifest", default=str(REPO / "cache/shared_dev/valid.jsonl"))
    ap.add_argument("--limit", type=int, default=0, help="only the first N items of the wide set (0: all 90; the first 45 hold each source once)")
    ap.add_argument("--cross-only", action="store_true", help="only the cross-gender conversions (half the time)")
    ap.add_argument("--floors", action="store_true", help="also each source vocoded alone and reconstructed, by gender (where voicing is lost)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"], help="the HiFi-GAN's arithmetic (default fp32)")
    ap.add_argument("--vocoder", default="hifigan", help="the vocoder (hifigan, or a folder: e.g. a HiFi-GAN fine-tuned with vckit train-vocoder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import vckit
    from word_sets import build_wide_set
    from vckit.data.manifest import read_manifest

    items = build_wide_set(read_manifest(args.manifest))
    items = items[: args.limit] if args.limit else items
    results = {}
    for spec in args.checkpoint or [str(REPO / "checkpoints/default")]:
        name, _, path = spec.rpartition("=")
        name = name or Path(path).name
        vc = vckit.load(path, device="cpu", precision=args.precision, vocoder=args.vocoder)
        print(f"{name}: {len(items)} sources, {'cross-gender' if args.cross_only else 'cross- and same-gender'} conversions", file=sys.stderr, flush=True)
        conditions = (("cross",) if args.cross_only else ("cross", "same")) + (("recon", "vocoded") if args.floors else ())
        results[name] = measure(vc, items, conditions)
    print(f"{'model':<28} {'direction':<9} {'n':>4} {'V/UV agree':>10} {'voicing kept':>12} {'F0 corr':>8}")
    for name, res in results.items():
        for key, r in res.items():
            print(f"{name[:28]:<28} {key:<9} {r['conversions']:>4} {100 * r['agreement']:>9.1f}% {100 * r['voicing_kept']:>11.1f}% {r['correlation']:>8.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"items": len(items), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
