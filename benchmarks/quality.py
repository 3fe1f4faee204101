"""Conversion quality on held-out speakers: speaker similarity, reconstruction, DNSMOS, ASR.

Everything is measured on the validation speakers of ``recipes/shared_dev``
(never trained on), with the shipped model and real vocoders, on waveforms:

* pairs: 5 M->F, 5 F->M, 5 F->F, 5 M->M, picked with ``--seed``. Source: one
  2-8 s utterance (after silence trimming). Target: 1-3 reference utterances
  (each >= 1 s, together >= 3 s) plus a *different* held-out utterance of the
  same speaker to score against (no reference or held-out utterance has the
  source's utterance id, so parallel corpora never score a sentence against
  itself).
* each pair is converted with ``vckit.load()`` (HiFi-GAN) and with Griffin-Lim;
  the WAV is re-analysed (``load_audio`` + ``log_mel``) and embedded by the
  independent judge (``checkpoints/speaker_verification``): cosine to the
  held-out target utterance, cosine to the source utterance, share closer to
  the target, and share accepted as the target at the judge's EER threshold.
* reconstruction: ``vc.convert(x, target=x)`` of validation utterances (each
  in its own voice); mel L1 (natural log units) between the input log-mel and
  the log-mel of the output WAV (end to end) and of the model's mel
  (``vc._convert_mel``, no vocoder).
* DNSMOS P.835 / P.808 (``speechmos``) of sources and conversions.
* intelligibility: Moonshine base ASR (``moonshine-cpp`` weights run with
  onnxruntime, see ``moonshine_asr.py``); WER against the corpus text where
  there is one, else against the ASR transcript of the source (pairs whose
  source the ASR cannot read are left out of that figure and counted).

Optional dependencies: ``speechmos`` (DNSMOS), ``moonshine-cpp`` (ASR weights
only; its native library is not loaded), ``onnxruntime``; ``--no-dnsmos`` and
``--no-asr`` skip them.

    python benchmarks/quality.py                          # prints Markdown, writes docs/eval/quality.json
    python benchmarks/quality.py --no-asr --no-dnsmos     # speaker scores and reconstruction only
    python benchmarks/quality.py --report docs/eval/report.json   # re-run `vckit eval` as recorded there

``--report`` reproduces the summary table of a ``vckit eval`` report (MCD,
F0, judge similarity, disentanglement probe, VQ, reconstruction): it re-runs
:func:`vckit.evaluation.run.evaluate` with the settings recorded in the report,
prints the new table and says whether it matches the committed one (exit 1
if not). The new report goes to a temporary folder (or ``--report-out``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import vckit
from vckit.audio import load_audio, log_mel
from vckit.models.verifier import load_verifier

REPO = Path(__file__).resolve().parents[1]
KINDS = (("M", "F"), ("F", "M"), ("F", "F"), ("M", "M"))
SR16 = 16000


# -- data and pairs -------------------------------------------------------------
def read_rows(manifest: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    for r in rows:
        r["file"] = str((REPO / r["path"]).resolve())
    return rows


def speech_seconds(rows: list[dict[str, Any]], sr: int) -> dict[str, np.ndarray]:
    """Trimmed, loudness-normalised audio at ``sr`` of every row, by file."""
    return {r["file"]: load_audio(r["file"], sr) for r in rows}


def make_pairs(rows: list[dict[str, Any]], dur: dict[str, float], per_kind: int, seed: int) -> list[dict[str, Any]]:
    """``per_kind`` pairs for each of M->F, F->M, F->F, M->M; deterministic for a seed."""
    rng = random.Random(seed)
    by_spk: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: r["file"]):
        by_spk.setdefault(r["speaker"], []).append(r)
    gender = {s: us[0]["gender"] for s, us in by_spk.items()}

    def target_split(spk: str, src: dict[str, Any]) -> tuple[list[dict], dict] | None:
        utts = [u for u in by_spk[spk] if u["utt_id"] != src["utt_id"]]
        for held in rng.sample(utts, len(utts)):
            if dur[held["file"]] < 2.0:
                continue
            refs, total = [], 0.0
            for u in rng.sample(utts, len(utts)):
                if u is held or dur[u["file"]] < 1.0:
                    continue
                refs.append(u)
                total += dur[u["file"]]
                if total >= 3.0 or len(refs) == 3:
                    break
            if total >= 3.0:
                return refs, held
        return None

    pairs = []
    for sg, tg in KINDS:
        sources = {s: [u for u in us if 2.0 <= dur[u["file"]] <= 8.0] for s, us in by_spk.items() if gender[s] == sg}
        sources = {s: us for s, us in sources.items() if us}
        targets = sorted(s for s in by_spk if gender[s] == tg and len(by_spk[s]) >= 2)
        rng.shuffle(targets)
        src_order = sorted(sources)
        rng.shuffle(src_order)
        made, i = 0, 0
        while made < per_kind and i < 20 * per_kind:
            tgt = targets[i % len(targets)]
            src_spk = src_order[i % len(src_order)]
            i += 1
            if src_spk == tgt:
                continue
            src = rng.choice(sources[src_spk])
            split = target_split(tgt, src)
            if split is None:
                continue
            refs, held = split
            pairs.append({"kind": f"{sg}->{tg}".lower(), "source": src, "refs": refs, "heldout": held, "target": tgt})
            made += 1
    return pairs


# -- measurements ---------------------------------------------------------------
class Judge:
    """The speaker-verification judge on waveforms at the model's rate."""

    def __init__(self, folder: Path):
        self.model, meta = load_verifier(folder)
        self.cfg = self.model.cfg.mel
        self.threshold, self.eer = float(meta["threshold"]), float(meta["eer"])

    @torch.no_grad()
    def embed(self, wav: np.ndarray, sr: int) -> torch.Tensor:
        x = load_audio(wav, self.cfg.sample_rate, sr)  # re-analysed: trim + normalise like any input
        return self.model(log_mel(x, self.cfg)[None])[0]


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=0))


def mel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    n = min(a.shape[-1], b.shape[-1])
    return float((a[:, :n] - b[:, :n]).abs().mean())


def dnsmos(wav16: np.ndarray) -> dict[str, float]:
    from speechmos import dnsmos as dm

    r = dm.run(np.clip(wav16, -1, 1).astype(np.float32), SR16)
    return {k: float(r[k]) for k in ("ovrl_mos", "sig_mos", "bak_mos", "p808_mos")}


def mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else float("nan")


def wer(pairs: list[tuple[str, str]]) -> tuple[float, int]:
    """Corpus WER (total edits / total reference words) over (reference, hypothesis) pairs."""
    from moonshine_asr import normalize_text, word_errors

    errs = words = 0
    for ref, hyp in pairs:
        r, h = normalize_text(ref), normalize_text(hyp)
        errs += word_errors(r, h)
        words += len(r)
    return (errs / words if words else float("nan")), words


# -- vckit eval report ---------------------------------------------------------------
def reproduce_report(path: Path, out_dir: Path | None = None) -> int:
    """Re-run the evaluation a ``vckit eval`` report records; print its table and compare."""
    import tempfile
    from dataclasses import fields

    from vckit.evaluation.report import summary_table
    from vckit.evaluation.run import EvalConfig, evaluate

    old = json.loads(path.read_text())
    s = old["settings"]
    cfg = EvalConfig(**{f.name: s[f.name] for f in fields(EvalConfig) if f.name in s})
    out = out_dir or Path(tempfile.mkdtemp(prefix="vckit_eval_"))
    if s.get("threads"):
        torch.set_num_threads(s["threads"])  # float sums, hence the probes' training, depend on it
    t = time.perf_counter()
    new = evaluate(s["checkpoint"], s["data"], out, pairs=s["pairs"], judge=old["judge"]["path"], vocoder=s["vocoder"],
                   device=s["device"], cfg=cfg, command=old["command"])
    print(f"re-ran `{old['command']}` in {time.perf_counter() - t:.0f} s; report in {out}\n")
    table, committed = summary_table(new), summary_table(old)
    print(table)
    if table == committed:
        print(f"\nthe table matches {path}")
        return 0
    print(f"\nthe table differs from {path}:")
    for a, b in zip(committed.splitlines(), table.splitlines()):
        if a != b:
            print(f"  committed: {a}\n  now:       {b}")
    return 1


# -- main ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", default=str(REPO / "cache/shared_dev/valid.jsonl"))
    ap.add_argument("--checkpoint", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--judge", default=str(REPO / "checkpoints/speaker_verification"))
    ap.add_argument("--out", default=str(REPO / "docs/eval/quality.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-kind", type=int, default=5, help="pairs for each of M->F, F->M, F->F, M->M")
    ap.add_argument("--recon", type=int, default=8, help="utterances to reconstruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-asr", action="store_true")
    ap.add_argument("--no-dnsmos", action="store_true")
    ap.add_argument("--no-griffinlim", action="store_true")
    ap.add_argument("--vocoder", default="hifigan", help="hifigan (default), or a fast vocoder's folder (vckit train-vocoder)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="the HiFi-GAN's arithmetic (vckit.load's precision; auto: bf16 where native)")
    ap.add_argument("--match-pitch", action="store_true", help="shift each source to its target's median F0 first (vckit convert --match-pitch)")
    ap.add_argument("--report", default=None, help="a vckit eval report.json: re-run it and print its summary table (nothing else is measured)")
    ap.add_argument("--report-out", default=None, help="with --report: where the new report goes (default: a temporary folder)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.report:
        return reproduce_report(Path(args.report), Path(args.report_out) if args.report_out else None)
    t_start = time.perf_counter()
    timing: dict[str, float] = {}

    vc = vckit.load(args.checkpoint, device="cpu", precision=args.precision, vocoder=args.vocoder)
    vgl = None if args.no_griffinlim else vckit.load(args.checkpoint, device="cpu", vocoder="griffinlim")
    judge = Judge(Path(args.judge))
    sr = vc.sample_rate
    asr = None
    if not args.no_asr:
        from moonshine_asr import MoonshineASR

        asr = MoonshineASR(threads=args.threads)

    rows = read_rows(Path(args.manifest))
    audio = speech_seconds(rows, sr)
    dur = {f: len(w) / sr for f, w in audio.items()}
    pairs = make_pairs(rows, dur, args.per_kind, args.seed)
    emb_file = {}

    def file_emb(f: str) -> torch.Tensor:
        if f not in emb_file:
            emb_file[f] = judge.embed(audio[f], sr)
        return emb_file[f]

    # conversions and speaker scores
    t0 = time.perf_counter()
    secs = {"hifigan": 0.0, "griffinlim": 0.0}
    out_audio = 0.0
    convs: list[dict[str, np.ndarray]] = []
    for p in pairs:
        src, held = p["source"]["file"], p["heldout"]["file"]
        voice = vc.voice([r["file"] for r in p["refs"]])  # embedding and F0 median, each reference decoded once
        waves = {}
        for name, conv in (("hifigan", vc), ("griffinlim", vgl)):
            if conv is None:
                continue
            t = time.perf_counter()
            waves[name] = conv.convert(src, target=voice, match_pitch=args.match_pitch)
            secs[name] += time.perf_counter() - t
        out_audio += len(waves["hifigan"]) / sr
        convs.append(waves)
        e_t, e_s = file_emb(held), file_emb(src)
        p["scores"] = {}
        for name, w in waves.items():
            e_c = judge.embed(w, sr)
            ct, cs = cos(e_c, e_t), cos(e_c, e_s)
            p["scores"][name] = {"cos_target": ct, "cos_source": cs, "closer_to_target": ct > cs, "accepted": ct >= judge.threshold}
        p["baseline"] = {
            "cos_source_to_target": cos(e_s, e_t),  # before conversion
            "cos_refs_to_target": mean([cos(file_emb(r["file"]), e_t) for r in p["refs"]]),  # same-speaker ceiling
        }
    timing["convert_and_score_s"] = time.perf_counter() - t0
    timing["rtf_hifigan_convert"] = secs["hifigan"] / out_audio
    if vgl is not None:
        timing["rtf_griffinlim_convert"] = secs["griffinlim"] / out_audio

    # reconstruction
    t0 = time.perf_counter()
    rng = random.Random(args.seed + 1)
    cands: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["file"]):
        if 2.0 <= dur[r["file"]] <= 8.0:
            cands.setdefault(r["speaker"], []).append(r)
    recon = []
    for s in rng.sample(sorted(cands), min(args.recon, len(cands))):
        r = rng.choice(cands[s])
        x = load_audio(r["file"], sr, trim=False)  # what convert() feeds the model
        m_in = log_mel(x, vc.config.mel)
        m_model = vc._convert_mel(r["file"], target=r["file"])  # the model's mels, before the vocoder
        y = vc.convert(r["file"], target=r["file"])  # copy-synthesis: the file in its own voice
        with torch.inference_mode():
            v = vc.vocoder.vocode(m_in).float().numpy()  # vocoder alone, for comparison
        recon.append({
            "speaker": s, "path": r["path"],
            "mel_l1_model": mel_l1(m_model, m_in),
            "mel_l1_end_to_end": mel_l1(log_mel(y, vc.config.mel), m_in),
            "mel_l1_vocoder_only": mel_l1(log_mel(v, vc.config.mel), m_in),
            "judge_cos_to_input": cos(judge.embed(y, sr), file_emb(r["file"])),
            "judge_cos_vocoder_only": cos(judge.embed(v, sr), file_emb(r["file"])),
        })
    timing["reconstruct_s"] = time.perf_counter() - t0

    # DNSMOS and ASR on 16 kHz copies (trimmed, normalised: same treatment for all)
    t0 = time.perf_counter()
    src16 = {p["source"]["file"]: load_audio(p["source"]["file"], SR16) for p in pairs}
    conv16 = [{k: load_audio(w, SR16, sr) for k, w in c.items()} for c in convs]
    if not args.no_dnsmos:
        mos_src = {f: dnsmos(w) for f, w in src16.items()}
        for p, c in zip(pairs, conv16):
            p["dnsmos"] = {"source": mos_src[p["source"]["file"]], **{k: dnsmos(w) for k, w in c.items()}}
    timing["dnsmos_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if asr is not None:
        txt_src = {f: asr.transcribe(w) for f, w in src16.items()}
        for p, c in zip(pairs, conv16):
            p["asr"] = {"source": txt_src[p["source"]["file"]], **{k: asr.transcribe(w) for k, w in c.items()}}
    timing["asr_s"] = time.perf_counter() - t0
    timing["total_s"] = time.perf_counter() - t_start

    summary = summarise(pairs, recon, judge, vgl is not None)
    print_report(pairs, recon, summary, judge, timing, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "model": str(vckit.api.default_checkpoint() if args.checkpoint is None else args.checkpoint),
        "judge": {"path": args.judge, "eer": judge.eer, "threshold": judge.threshold},
        "seed": args.seed, "threads": args.threads, "vocoder": args.vocoder, "precision": str(vc.vocoder.dtype).replace("torch.", ""), "torch": torch.__version__,
        "summary": summary, "timing": timing, "reconstruction": recon,
        "pairs": [{
            "kind": p["kind"], "source": p["source"]["path"], "source_speaker": p["source"]["speaker"],
            "target_speaker": p["target"], "refs": [r["path"] for r in p["refs"]], "heldout": p["heldout"]["path"],
            "source_text": p["source"]["text"], "scores": p["scores"], "baseline": p["baseline"],
            "dnsmos": p.get("dnsmos"), "asr": p.get("asr"),
        } for p in pairs],
    }
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")
    return 0


def summarise(pairs: list[dict], recon: list[dict], judge: Judge, gl: bool) -> dict[str, Any]:
    groups = {"cross-gender": [p for p in pairs if p["kind"][0] != p["kind"][-1]],
              "same-gender": [p for p in pairs if p["kind"][0] == p["kind"][-1]], "all": pairs}
    vocs = ["hifigan", "griffinlim"] if gl else ["hifigan"]
    out: dict[str, Any] = {"speaker": {}, "dnsmos": {}, "wer": {}}
    for g, ps in groups.items():
        d = {"pairs": len(ps),
             "source_cos_to_target": mean([p["baseline"]["cos_source_to_target"] for p in ps]),
             "source_accepted": mean([p["baseline"]["cos_source_to_target"] >= judge.threshold for p in ps]),
             "refs_cos_to_target": mean([p["baseline"]["cos_refs_to_target"] for p in ps])}
        for v in vocs:
            s = [p["scores"][v] for p in ps]
            d[v] = {k: mean([x[k] for x in s]) for k in ("cos_target", "cos_source", "closer_to_target", "accepted")}
        out["speaker"][g] = d
        if "dnsmos" in pairs[0]:
            out["dnsmos"][g] = {w: {k: mean([p["dnsmos"][w][k] for p in ps]) for k in ("ovrl_mos", "sig_mos", "bak_mos", "p808_mos")}
                                for w in ["source"] + vocs}
        if "asr" in pairs[0]:
            txt = [p for p in ps if p["source"]["text"]]
            # without corpus text the source's own transcript is the reference; skip it where
            # the ASR could not read the source (no Latin letters: empty or hallucinated script)
            usable = [p for p in ps if re.search("[A-Za-z]", p["asr"]["source"])]
            notxt = [p for p in usable if not p["source"]["text"]]
            w = {"with_text_pairs": len(txt), "no_text_pairs": len(notxt), "source_asr_unusable": len(ps) - len(usable)}
            for hyp in ["source"] + vocs:
                w[f"{hyp}_vs_text"], w["text_words"] = wer([(p["source"]["text"], p["asr"][hyp]) for p in txt])
                if hyp != "source":
                    w[f"{hyp}_vs_source_asr_no_text"], _ = wer([(p["asr"]["source"], p["asr"][hyp]) for p in notxt])
                    w[f"{hyp}_vs_source_asr_all"], _ = wer([(p["asr"]["source"], p["asr"][hyp]) for p in usable])
            out["wer"][g] = w
    keys = ("mel_l1_model", "mel_l1_end_to_end", "mel_l1_vocoder_only", "judge_cos_to_input", "judge_cos_vocoder_only")
    out["reconstruction"] = {k: mean([r[k] for r in recon]) for k in keys}
    out["reconstruction"]["utterances"] = len(recon)
    return out


def print_report(pairs, recon, summary, judge, timing, args) -> None:
    f = lambda x: f"{x:.3f}"  # noqa: E731
    pct = lambda x: f"{100 * x:.0f}%"  # noqa: E731
    print(f"{len(pairs)} pairs of validation speakers (seed {args.seed}); judge EER {judge.eer:.3f}, threshold {judge.threshold:.3f}\n")
    print("### Speaker similarity (judge cosine on re-analysed WAVs)\n")
    print("| group | vocoder | cos to target | cos to source | closer to target | accepted as target | source as-is: cos to target / accepted | target refs: cos to held-out |")
    print("|---|---|---|---|---|---|---|---|")
    for g, d in summary["speaker"].items():
        for v in ("hifigan", "griffinlim"):
            if v in d:
                s = d[v]
                print(f"| {g} ({d['pairs']}) | {v} | {f(s['cos_target'])} | {f(s['cos_source'])} | {pct(s['closer_to_target'])} | {pct(s['accepted'])} "
                      f"| {f(d['source_cos_to_target'])} / {pct(d['source_accepted'])} | {f(d['refs_cos_to_target'])} |")
    print("\n### Per pair (HiFi-GAN)\n")
    print("| kind | source | target (refs; held-out) | cos target | cos source | closer | source as-is: cos to target |")
    print("|---|---|---|---|---|---|---|")
    for p in pairs:
        s = p["scores"]["hifigan"]
        refs = ", ".join(Path(r["path"]).name for r in p["refs"])
        print(f"| {p['kind']} | {p['source']['speaker']} {Path(p['source']['path']).name} | {p['target']} ({refs}; {Path(p['heldout']['path']).name}) "
              f"| {f(s['cos_target'])} | {f(s['cos_source'])} | {'yes' if s['closer_to_target'] else 'no'} | {f(p['baseline']['cos_source_to_target'])} |")
    r = summary["reconstruction"]
    print(f"\n### Reconstruction ({r['utterances']} utterances, vc.convert(x, target=x))\n")
    print("| path | mel L1 (nats) | judge cos of output to input |")
    print("|---|---|---|")
    print(f"| model only (vc._convert_mel, no vocoder) | {f(r['mel_l1_model'])} | - |")
    print(f"| vc.convert(x, target=x) (model + HiFi-GAN) | {f(r['mel_l1_end_to_end'])} | {f(r['judge_cos_to_input'])} |")
    print(f"| HiFi-GAN copy-synthesis of the input mel (no model) | {f(r['mel_l1_vocoder_only'])} | {f(r['judge_cos_vocoder_only'])} |")
    if summary["dnsmos"]:
        print("\n### DNSMOS (P.835 OVRL / SIG / BAK, P.808)\n")
        print("| group | audio | OVRL | SIG | BAK | P.808 |")
        print("|---|---|---|---|---|---|")
        for g, d in summary["dnsmos"].items():
            for w, m in d.items():
                print(f"| {g} | {w} | {m['ovrl_mos']:.2f} | {m['sig_mos']:.2f} | {m['bak_mos']:.2f} | {m['p808_mos']:.2f} |")
    if summary["wer"]:
        print("\n### Intelligibility (Moonshine base ASR, WER)\n")
        print("| group | pairs with text (words) | source vs text | HiFi-GAN vs text | Griffin-Lim vs text | HiFi-GAN vs source ASR, no-text pairs | Griffin-Lim vs source ASR, no-text pairs | HiFi-GAN vs source ASR, all | source unreadable by ASR |")
        print("|---|---|---|---|---|---|---|---|---|")
        for g, w in summary["wer"].items():
            gl = lambda k: pct(w[k]) if k in w else "-"  # noqa: E731
            print(f"| {g} | {w['with_text_pairs']} ({w['text_words']}) | {pct(w['source_vs_text'])} | {pct(w['hifigan_vs_text'])} | {gl('griffinlim_vs_text')} "
                  f"| {pct(w['hifigan_vs_source_asr_no_text'])} ({w['no_text_pairs']}) | {gl('griffinlim_vs_source_asr_no_text')} | {pct(w['hifigan_vs_source_asr_all'])} | {w['source_asr_unusable']} |")
    print("\n### Timing (indicative: shared 2-core CPU)\n")
    print(" | ".join(f"{k} {v:.2f}" for k, v in timing.items()))


if __name__ == "__main__":
    sys.exit(main())
