"""The Markdown and the plots of a ``vckit eval`` report (see :mod:`vckit.evaluation.run`).

Plots need matplotlib (``pip install 'vckit[eval]'``); without it the report
says so and is otherwise complete.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vckit.errors import VckitError
from vckit.files import write_text_atomically


def _f(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{nd}f}"


def _pct(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f} %"


def _kept(k: dict[str, Any] | None) -> str:
    """Robust F0 correlation / V/UV agreement of ``kept_from_source`` means."""
    if not k:
        return "–"
    return f"{_f(k.get('f0_corr_robust'))} / {_pct(k.get('vuv_agreement'))}"


def summary_table(r: dict[str, Any]) -> str:
    """The headline table: one row per figure, the conversion against the unconverted source."""
    conv, lines = r["conversion"], []
    a, cross = conv["all"], conv.get("cross-gender")
    lines += ["| figure | model | reference point |", "|---|---|---|"]
    if a.get("parallel_pairs"):
        c, s = a["converted"], a["source"]
        n = a["parallel_pairs"]
        lines += [
            f"| MCD with DTW, dB ({n} parallel pairs) ↓ | {_f(c['mcd_db'], 2)} | {_f(s['mcd_db'], 2)} (source as is) |",
            f"| F0 RMSE, Hz ↓ | {_f(c['f0_rmse_hz'], 1)} | {_f(s['f0_rmse_hz'], 1)} (source as is) |",
            f"| F0 correlation, gross errors (> 0.5 octave) trimmed ↑ | {_f(c.get('f0_corr_robust'))} ({_pct(c.get('f0_gross_error_share'))} trimmed) "
            f"| {_f(s.get('f0_corr_robust'))} ({_pct(s.get('f0_gross_error_share'))} trimmed) (source as is) |",
            f"| F0 correlation after mean/variance normalisation, untrimmed ↑ | {_f(c['f0_corr'])} | {_f(s['f0_corr'])} (source as is) |",
            f"| normalised log-F0 RMSE (std units) ↓ | {_f(c['f0_rmse_norm'])} | {_f(s['f0_rmse_norm'])} (source as is) |",
            f"| log-F0 mean distance to the target, semitones ↓ | {_f(c['logf0_abs_diff_st'], 2)} | {_f(s['logf0_abs_diff_st'], 2)} (source as is) |",
        ]
    v = a.get("vocoder_only_vs_source")
    for name in ("all", "cross-gender", "f->m", "m->f"):
        g = conv.get(name)
        if not g or "kept_from_source" not in g:
            continue
        kv = g.get("vocoder_only_kept_from_source")
        voc = f"{_kept(kv)} (the vocoder alone, {kv['pairs']} sources)" if kv else "–"
        lines.append(f"| kept of its own source, {name} ({g['pairs']} pairs): robust F0 correlation / voiced-unvoiced agreement ↑ "
                     f"| {_kept(g['kept_from_source'])} ({_pct(g['kept_from_source'].get('f0_gross_error_share'))} trimmed) | {voc} |")
    if v:
        lines.append(f"| MCD of the vocoder alone against its input (the floor of any MCD here), dB | – | {_f(v['mcd_db'], 2)} ({v['pairs']} sources) |")
    j = r["judge"]
    eer = f"EER {_pct(j.get('eer_on_data'))} on these data" if "eer_on_data" in j else "EER not measurable on these data"
    lines += [
        f"| judge cosine to the target ({a['pairs']} pairs) ↑ | {_f(a['cos_target'])} | {_f(a['source_cos_target'])} (source as is); {_f(a['refs_cos_target'])} (target's own references) |",
        f"| judge cosine to the source ↓ | {_f(a['cos_source'])} | 1 (source as is) |",
        f"| accepted as the target at the judge's EER threshold {_f(j['threshold'])} ↑ | {_pct(a['accepted'])} | {_pct(a['source_accepted'])} (source as is); judge {eer} |",
        f"| closer to the target than to the source ↑ | {_pct(a['closer_to_target'])} | – |",
    ]
    if cross:
        lines.append(f"| accepted as the target, cross-gender pairs ({cross['pairs']}) ↑ | {_pct(cross['accepted'])} | {_pct(cross['source_accepted'])} (source as is) |")
    p = r["probe"]
    if "results" in p:
        for name in ("content codes", "content, before VQ", "speaker embedding", "log-mel frames (input)"):
            if name in p["results"]:
                lin, mlp = p["results"][name]["linear"], p["results"][name]["mlp"]
                arrow = "↑" if name == "speaker embedding" else ("↓" if name.startswith("content") else "")
                frames = f"; frames {_pct(lin['frame_accuracy'])} / {_pct(mlp['frame_accuracy'])}" if "frame_accuracy" in lin else ""
                lines.append(f"| speaker probe on {name}, linear / MLP: held-out utterances{'; frames' if frames else ''} {arrow} "
                             f"| {_pct(lin['utterance_accuracy'])} / {_pct(mlp['utterance_accuracy'])}{frames} "
                             f"| chance {_pct(p['chance'])} ({len(p['speakers'])} speakers; 5 % of random guesses reach {_pct(lin['chance_95'])}) |")
    if r.get("vq"):
        v = r["vq"]
        lines.append(f"| VQ codebook: perplexity / codes used | {_f(v['perplexity'], 1)} / {v['codes_used']} of {v['codebook_size']} ({_pct(v['usage'])}) | – |")
    rc = r["reconstruction"]
    lines.append(f"| reconstruction mel L1 (nats), another utterance as reference ↓ | {_f(rc['other_reference'])} | {_f(rc['same_utterance'])} (the utterance itself as reference) |")
    return "\n".join(lines)


def markdown(r: dict[str, Any]) -> str:
    s, d, t = r["settings"], r["data"], r["timing"]
    g = d["speakers_by_gender"]
    out = [
        "# vckit eval report",
        "",
        f"Made with `{r['command']}`" if r.get("command") else "Made with `vckit.evaluation.run.evaluate`",
        f"(vckit {r['vckit']}, torch {r['torch']}, device {s['device']}, seed {s['seed']}).",
        "",
        f"* model: `{s['checkpoint']}` (sha256 `{(s.get('model_sha256') or '')[:12]}`), vocoder {s['vocoder']}",
        f"* data: `{s['data']}`: {d['utterances']} utterances, {d['speakers']} speakers ({g['f']} F, {g['m']} M, {g['?']} unknown), {d['seconds'] / 60:.1f} min after trimming"
        + (f"; {len(d['skipped'])} files skipped" if d["skipped"] else ""),
        f"* judge: `{r['judge']['path']}` (recorded EER {_pct(r['judge'].get('eer_recorded'))}, threshold {_f(r['judge']['threshold'])})",
        f"* time: {t['total_s']:.0f} s in all (" + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in t.items() if k.endswith("_s") and k != "total_s")
        + f"); conversion real-time factor {t['convert_rtf']:.2f}",
        "",
        "## Summary",
        "",
        summary_table(r),
        "",
        "Reference points: *source as is* scores the unconverted source against the same held-out target utterance, so it is what "
        "conversion must improve on. Probe accuracies are balanced (mean per-speaker recall) over held-out utterances (an utterance "
        "is classified by all its frames) and over their single frames; content codes that hold no speaker information sit near "
        "chance, a good speaker embedding near 100 %. With few held-out utterances per speaker the utterance figure is noisy: "
        "random guessing alone exceeds the quoted band 5 % of the time.",
        "",
        "*Kept of its own source* compares each conversion with its source frame by frame (conversion keeps the timing; both "
        "tracked by YIN at 10 ms): the log-F0 correlation over frames voiced in both, after each contour's median is removed and "
        "frames whose two values differ by more than half an octave (gross, mostly octave, errors) are left out (the share left "
        "out is given), and the share of the source's loud frames (within 30 dB of its loudest) where both agree on voiced or "
        "unvoiced. The project's acceptance asks at least 0.7 and 85 %, female-to-male pairs included.",
        "",
        "## Conversion by group",
        "",
        "MCD, F0 RMSE, F0 correlation and log-F0 distance compare with the parallel target utterance (conversion / source as is); "
        "F0 correlations here have gross errors trimmed; *kept of source* compares the conversion with its own source frame by "
        "frame (all pairs): robust F0 correlation / voiced-unvoiced agreement.",
        "",
        "| group | pairs (parallel) | MCD dB conv / source | F0 RMSE Hz conv / source | F0 corr (robust) conv / source | log-F0 distance st conv / source | kept of source | cos to target | cos to source | accepted | source accepted | closer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in r["conversion"].items():
        cv, sc = c.get("converted", {}), c.get("source", {})
        out.append(
            f"| {name} | {c['pairs']} ({c['parallel_pairs']}) | {_f(cv.get('mcd_db'), 2)} / {_f(sc.get('mcd_db'), 2)} | {_f(cv.get('f0_rmse_hz'), 1)} / {_f(sc.get('f0_rmse_hz'), 1)} "
            f"| {_f(cv.get('f0_corr_robust'))} / {_f(sc.get('f0_corr_robust'))} | {_f(cv.get('logf0_abs_diff_st'), 2)} / {_f(sc.get('logf0_abs_diff_st'), 2)} "
            f"| {_kept(c.get('kept_from_source'))} | {_f(c['cos_target'])} | {_f(c['cos_source'])} | {_pct(c['accepted'])} | {_pct(c['source_accepted'])} | {_pct(c['closer_to_target'])} |"
        )
    out += ["", "## Disentanglement probe", ""]
    p = r["probe"]
    if "results" in p:
        out += [f"Speakers: {', '.join(p['speakers'])} (chance {_pct(p['chance'])}).", "",
                "| features | probe | held-out utterances | held-out frames | train / test utterances |", "|---|---|---|---|---|"]
        for name, res in p["results"].items():
            for kind, v in res.items():
                out.append(f"| {name} | {kind} | {_pct(v['utterance_accuracy'])} | {_pct(v.get('frame_accuracy'))} | {v['train_utterances']} / {v['test_utterances']} |")
    else:
        out.append(f"Skipped: {p['skipped']}.")
    if r.get("vq"):
        v = r["vq"]
        out += ["", f"VQ: {v['codes_used']} of {v['codebook_size']} codes used over {v['frames']} frames, perplexity {v['perplexity']:.1f}."]
    rc = r["reconstruction"]
    out += ["", "## Reconstruction", "",
            f"Model-only mel L1 (natural-log units) over {rc['utterances']} utterances: {_f(rc['other_reference'])} with another utterance "
            f"of the speaker as reference, {_f(rc['same_utterance'])} with the utterance itself."]
    out += ["", "## Plots", ""]
    pl = r.get("plots", {})
    if pl.get("files"):
        out += [f"![{Path(f).stem}]({f})" for f in pl["files"]]
    else:
        out.append(pl.get("note", "none"))
    out += ["", "## Pairs", "", "| kind | source | target speaker (scored against) | cos target | cos source | MCD dB | F0 corr (robust) | kept of source |", "|---|---|---|---|---|---|---|---|"]
    for q in r["pairs"]:
        sc = q["scores"]
        cv = sc.get("converted", {})
        out.append(f"| {q['kind']}{' (parallel)' if q['parallel'] else ''} | {q['source_speaker']} {Path(q['source']).name} | {q['target_speaker']} ({Path(q['heldout']).name}) "
                   f"| {_f(sc['cos_target'])} | {_f(sc['cos_source'])} | {_f(cv.get('mcd_db'), 2)} | {_f(cv.get('f0_corr_robust'))} | {_kept(sc.get('kept_from_source'))} |")
    return "\n".join(out) + "\n"


def plot(r: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write the PNGs; returns ``{"files": [...]}`` or ``{"note": why not}``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"note": "plots skipped: matplotlib is not installed (pip install 'vckit[eval]')"}
    files = []
    p = r["probe"]
    if "results" in p:
        names = list(p["results"])
        fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=80)
        for k, kind in enumerate(("linear", "mlp")):
            xs = [i + 0.38 * k for i in range(len(names))]
            ax.bar(xs, [p["results"][n][kind]["utterance_accuracy"] for n in names], 0.38, label=f"{kind}: utterances")
            fr = [(x, p["results"][n][kind]["frame_accuracy"]) for x, n in zip(xs, names) if "frame_accuracy" in p["results"][n][kind]]
            ax.scatter([x for x, _ in fr], [v for _, v in fr], color="k", marker="_" if k else "x", s=60, zorder=3, label=f"{kind}: frames")
        ax.axhline(p["chance"], color="k", ls="--", lw=1, label="chance")
        ax.set_xticks([i + 0.19 for i in range(len(names))], [n.replace(" (", "\n(").replace(", ", ",\n") for n in names], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("held-out speaker accuracy")
        ax.legend(fontsize=7, ncol=2)
        ax.set_title("Speaker probe on frozen features", fontsize=10)
        files.append(_save(fig, out / "probe.png"))
    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=80)
    for par, mk in ((True, "o"), (False, "s")):
        qs = [q for q in r["pairs"] if q["parallel"] == par]
        if qs:
            ax.scatter([q["scores"]["cos_source"] for q in qs], [q["scores"]["cos_target"] for q in qs], marker=mk, s=18, label="parallel" if par else "non-parallel")
    ax.plot([-0.2, 1], [-0.2, 1], color="gray", lw=0.8)
    ax.axhline(r["judge"]["threshold"], color="k", ls="--", lw=1, label="EER threshold")
    ax.set_xlabel("judge cosine to the source")
    ax.set_ylabel("judge cosine to the target")
    ax.legend(fontsize=8)
    ax.set_title("Conversions (above the diagonal: closer to target)", fontsize=9)
    files.append(_save(fig, out / "similarity.png"))
    if r.get("vq") and r["vq"].get("counts"):
        counts = sorted(r["vq"]["counts"], reverse=True)
        total = max(1, sum(counts))
        fig, ax = plt.subplots(figsize=(4.8, 3.0), dpi=80)
        ax.bar(range(len(counts)), [c / total for c in counts], width=1.0)
        ax.set_yscale("log")
        ax.set_xlabel("code (sorted by use)")
        ax.set_ylabel("share of frames")
        ax.set_title(f"VQ codebook: perplexity {r['vq']['perplexity']:.1f}, {r['vq']['codes_used']} of {r['vq']['codebook_size']} used", fontsize=9)
        files.append(_save(fig, out / "codebook.png"))
    return {"files": [f.name for f in files]}


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# -- the report -----------------------------------------------------------------
def write_report(report: dict[str, Any], out_dir: str | Path, plots: bool = True) -> Path:
    """``report.json``, ``report.md`` and, with matplotlib, PNG plots in ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise VckitError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = plot(report, out) if plots else {"note": "plots not asked for (--no-plots)"}
    write_text_atomically(out / "report.json", json.dumps(report, indent=1, default=float) + "\n")
    write_text_atomically(out / "report.md", markdown(report))
    return out
