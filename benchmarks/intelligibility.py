"""Intelligibility and speaker similarity of model variants, on a fixed set.

The sets (``word_sets.py``) are drawn once from the validation speakers of
``recipes/shared_dev`` (never trained on): each source is converted to a
speaker of the other gender and to another of the same gender (reference: up
to three other utterances of that speaker, never the source sentence), and
reconstructed (reference: another utterance of the source speaker; in the
broad set, the source itself). ``--set wide`` (the default, the one shipping
decisions were made on) holds every source with a corpus transcript, five
speakers; ``--set broad`` holds up to six sources of each of 19 speakers, and
where the corpus has no text the reference is Moonshine's reading of the
source itself; ``--set fast`` is the old 378-word set.

Conversions run through the public API (``convert_set``), or on the feature
cache (``convert_set_cached``: cached mels, F0 and phonetic features), so the
GPU training machine, which has no audio reader, can make them and send back
only mels; scoring (``score``) vocodes
them with the shipped HiFi-GAN, transcribes them with Moonshine base
(``moonshine_asr.py``) and embeds them with the independent judge:

* WER against the reference text, per condition (cross, same, recon), and of
  the vocoded source itself (the ceiling: the vocoder plus the ASR);
* judge cosine of each conversion to a held-out utterance of the target and
  to the source; share closer to the target.

    python benchmarks/intelligibility.py --checkpoint checkpoints/default
    python benchmarks/intelligibility.py --set broad --checkpoint checkpoints/default --out broad.json
    python benchmarks/intelligibility.py --mels a=runs/a.npz --mels b=runs/b.npz
    python benchmarks/intelligibility.py --mels default=runs/d.npz --vocoder runs/vocoder_distill/step-000010000
    python benchmarks/intelligibility.py --checkpoint checkpoints/default --bypass-vq --only-bypass
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from word_sets import CONDITIONS, SHORT_S, build_broad_set, build_set, build_wide_set, pseudo_texts


def bootstrap(errors: list[tuple[int, int]], groups: list[str], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the pooled WER (sum of errors over sum of words), resampling groups (sources) with replacement."""
    ids = sorted(set(groups))
    by = {g: [0, 0] for g in ids}
    for (e, w), g in zip(errors, groups):
        by[g][0] += e
        by[g][1] += w
    arr = np.array([by[g] for g in ids], dtype=np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ids), size=(n, len(ids)))
    sums = arr[pick].sum(axis=1)
    wer = sums[:, 0] / np.maximum(sums[:, 1], 1)
    return float(np.percentile(wer, 2.5)), float(np.percentile(wer, 97.5))


def paired_bootstrap(a: list[tuple[int, int]], b: list[tuple[int, int]], groups: list[str], n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """WER(b) - WER(a) on the same conversions, and its 95 % interval (resampling groups)."""
    ids = sorted(set(groups))
    idx = {g: i for i, g in enumerate(ids)}
    arr = np.zeros((len(ids), 3))
    for (ea, w), (eb, _), g in zip(a, b, groups):
        arr[idx[g]] += (ea, eb, w)
    rng = np.random.default_rng(seed)
    sums = arr[rng.integers(0, len(ids), size=(n, len(ids)))].sum(axis=1)
    diff = (sums[:, 1] - sums[:, 0]) / np.maximum(sums[:, 2], 1)
    point = (arr[:, 1].sum() - arr[:, 0].sum()) / max(arr[:, 2].sum(), 1)
    return float(point), float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))


def _store_mel(store: Any, index: dict[str, int], path: str) -> torch.Tensor:
    from vckit.data.features import from_uint8

    u = store.utterances[index[path]]
    return from_uint8(store.mels[u["offset"] : u["offset"] + u["frames"]]).T.float()


@torch.no_grad()
def convert_set(vc: Any, items: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """``{"<i>_<cond>": converted log-mel (n_mels, T) float16}`` for every item,
    through the API (``vc.voice`` of the references, ``vc._convert_mel``, the mel
    half of ``vc.convert``, of the source file), so models with an F0 path or a
    phonetic teacher run exactly as ``vckit convert`` runs them."""
    from vckit.audio import load_audio

    rate, out = vc.config.mel.sample_rate, {}
    for i, it in enumerate(items):
        for cond in CONDITIONS:
            # the references back to back, as one clip: some (FSDD digits) are under the 1 s a single reference needs
            refs = np.concatenate([load_audio(p, rate, trim=True) for p in it[cond]["refs"]])
            conv = vc._convert_mel(it["src"], vc.voice(refs, sr=rate))
            out[f"{i}_{cond}"] = conv.float().cpu().numpy().astype(np.float16)
    return out


@torch.no_grad()
def convert_set_cached(model: Any, store: Any, items: list[dict[str, Any]], device: Any = "cpu") -> dict[str, np.ndarray]:
    """:func:`convert_set` on the feature cache: the source's cached frames, the
    references' cached mels (embedding) and F0 (the target's register)."""
    from vckit.models.vc import register_shift

    model.eval()
    index = {u["path"]: i for i, u in enumerate(store.utterances)}
    out = {}
    for i, it in enumerate(items):
        src = store.frames(index[it["src"]]).to(device)
        for cond in CONDITIONS:
            refs = [store.frames(index[p]) for p in it[cond]["refs"]]
            spk = model.embed_speaker(torch.cat([r.mel for r in refs], dim=-1).to(device))
            shift = 0.0
            if model.needs_f0:
                f0 = torch.cat([r.f0[0] for r in refs])
                voiced = f0[f0 > 0]
                shift = register_shift(src.f0[0], float(voiced.median()) if len(voiced) >= 10 else None)
            conv = model.convert(src, spk, f0_shift=shift)
            out[f"{i}_{cond}"] = conv[0].float().cpu().numpy().astype(np.float16)
    return out


def score(mels: dict[str, np.ndarray], items: list[dict[str, Any]], store: Any, asr: Any, judge: Any, vocoder: Any, sr: int, with_source: bool = False) -> dict[str, Any]:
    """WER per condition (with its 95 % bootstrap interval over sources) and
    judge similarity of cross/same conversions; ``per_item`` keeps each
    conversion's (errors, words) for paired comparisons later."""
    import torchaudio.functional as AF

    from moonshine_asr import normalize_text, word_errors

    index = {u["path"]: i for i, u in enumerate(store.utterances)}

    def words(mel: torch.Tensor) -> list[str]:
        wav = vocoder.vocode(mel.float(), chunk_frames=256).detach().float().cpu()
        return normalize_text(asr.transcribe(AF.resample(wav, sr, 16000).numpy()))

    def emb(mel: torch.Tensor) -> torch.Tensor:
        return judge(mel.float()[None])

    res: dict[str, Any] = {}
    per_item: dict[str, list[tuple[int, int]]] = {c: [] for c in CONDITIONS + ("source",)}
    sims = {c: [] for c in ("cross", "same")}
    source_done: dict[str, tuple[int, int]] = {}
    for i, it in enumerate(items):
        ref = normalize_text(it["text"])
        src = _store_mel(store, index, it["src"])
        conds = list(CONDITIONS) + (["source"] if with_source else [])
        for cond in conds:
            if cond == "source" and it["src"] in source_done:  # the wide set has each source more than once
                per_item[cond].append(source_done[it["src"]])
                continue
            mel = src if cond == "source" else torch.from_numpy(mels[f"{i}_{cond}"].astype(np.float32))
            ew = (word_errors(ref, words(mel)), len(ref))
            per_item[cond].append(ew)
            if cond == "source":
                source_done[it["src"]] = ew
            if cond in sims:
                e = emb(mel)
                ct = float(F.cosine_similarity(e, emb(_store_mel(store, index, it[cond]["heldout"]))))
                cs = float(F.cosine_similarity(e, emb(src)))
                sims[cond].append((ct, cs))
    groups = [it.get("group", it["src"]) for it in items]
    for c, ews in per_item.items():
        if ews:
            n_words = sum(w for _, w in ews)
            res[f"wer_{c}"] = sum(e for e, _ in ews) / n_words
            res[f"wer_{c}_ci95"] = bootstrap(ews, groups)
            res[f"words_{c}"] = n_words
    for c, v in sims.items():
        res[f"cos_target_{c}"] = float(np.mean([a for a, _ in v]))
        res[f"cos_source_{c}"] = float(np.mean([b for _, b in v]))
        res[f"closer_{c}"] = float(np.mean([a > b for a, b in v]))
    res["items"] = len(items)
    res["per_item"] = {c: v for c, v in per_item.items() if v}
    res["per_item_cos"] = sims  # (to target, to source) of each cross / same conversion: the voice, paired later
    return res



def _ci(r: dict[str, Any], cond: str) -> str:
    lo, hi = r[f"wer_{cond}_ci95"]
    return f"{r[f'wer_{cond}']:.1%} ({lo:.1%}-{hi:.1%})"


def by_source(items: list[dict[str, Any]], r: dict[str, Any], key: str = "gender") -> dict[str, dict[str, float]]:
    """Each condition's WER over the sources of each value of ``key`` (``gender``: ``M``, ``F``; ``speaker``) of a
    scored run ``r``. The wide set has five source speakers (three male), so a gap between the genders may be one
    speaker's: on the shipped 13,104, libri:296 loses about 20 % of its words in every condition."""
    out: dict[str, dict[str, float]] = {}
    for cond in (c for c in (*CONDITIONS, "source") if c in r["per_item"]):
        errs: dict[str, list[int]] = {}
        for it, (e, n) in zip(items, r["per_item"][cond]):
            tally = errs.setdefault(str(it.get(key) or "?"), [0, 0])
            tally[0], tally[1] = tally[0] + e, tally[1] + n
        out[cond] = {g: e / n for g, (e, n) in sorted(errs.items()) if n}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", default=str(REPO / "cache/shared_dev/valid.jsonl"))
    ap.add_argument("--features", default=str(REPO / "cache/shared_dev/features"))
    ap.add_argument("--checkpoint", action="append", default=[], help="NAME=FOLDER or FOLDER; repeatable")
    ap.add_argument("--mels", action="append", default=[], help="NAME=NPZ made by convert_set (--save-mels); repeatable")
    ap.add_argument("--save-mels", default=None, metavar="NPZ", help="keep the first checkpoint's converted mels here, to score them again with another vocoder (--mels)")
    ap.add_argument("--set", dest="which", choices=["wide", "broad", "fast"], default="wide", help="wide: every validation source with text, twice (the set decisions are made on); broad: up to 6 sources of each of 19 validation speakers, with or without text; fast: the old 25-source, 378-word set")
    ap.add_argument("--against", default=None, help="a JSON written by --out on the same set: its run --baseline (default its last) is the baseline of the paired intervals (no need to score it again)")
    ap.add_argument("--baseline", default=None, help="with --against: the name of the run in that file to pair against (default: its last run, the latest model)")
    ap.add_argument("--scored", action="append", default=[], metavar="FILE=NAME", help="also pair a run already scored in another JSON on the same set (repeatable): compares two results without converting again")
    ap.add_argument("--bypass-vq", action="store_true", help="also score each checkpoint with its VQ skipped (a diagnostic: how many words the codebook costs)")
    ap.add_argument("--only-bypass", action="store_true", help="with --bypass-vq: score only the bypassed runs")
    ap.add_argument("--judge", default=str(REPO / "checkpoints/speaker_verification"))
    ap.add_argument("-n", type=int, default=30, help="source utterances (fast set)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="the scoring HiFi-GAN's arithmetic (default fp32, as every stored result; bf16 is what vckit.load gives on CPUs with native bfloat16)")
    ap.add_argument("--vocoder", default="hifigan", help="the scoring vocoder: hifigan (the universal HiFi-GAN, every stored result), or a fast vocoder's folder (vckit train-vocoder)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from moonshine_asr import MoonshineASR

    import vckit
    from vckit.config import MelConfig
    from vckit.data.features import FeatureStore
    from vckit.data.manifest import read_manifest
    from vckit.models.vocoder import load_vocoder
    from vckit.models.verifier import load_verifier

    rows = read_manifest(args.manifest)
    builders = {"wide": lambda: build_wide_set(rows, seed=args.seed), "broad": lambda: build_broad_set(rows, seed=args.seed), "fast": lambda: build_set(rows, args.n, args.seed)}
    items = builders[args.which]()
    asr = MoonshineASR(threads=args.threads)
    if any(not it.get("text") for it in items):  # the broad set: what the judge hears in the source is its text
        from moonshine_asr import normalize_text

        from vckit.audio import load_audio

        heard = pseudo_texts(items, lambda path: asr.transcribe(load_audio(path, 16000)))
        silent = [it for it in items if not normalize_text(it["text"])]
        items = [it for it in items if normalize_text(it["text"])]
        print(f"{heard} sources without a transcript: Moonshine's reading of each is its text"
              + (f" ({len(silent)} where it heard no word left out)" if silent else ""), flush=True)

    def same_set(path: str) -> dict:
        prev = json.loads(Path(path).read_text())
        if [(it["src"], it["cross"]["speaker"], it["same"]["speaker"]) for it in prev["items"]] != [(it["src"], it["cross"]["speaker"], it["same"]["speaker"]) for it in items]:
            ap.error(f"{path} was made on another set (give the same --set, --seed and manifest)")
        return prev["results"]

    def run_in(results: dict, name: str | None, path: str) -> tuple[str, dict]:
        if name is None:
            return list(results.items())[-1]
        if name not in results:
            ap.error(f"{path} has no run {name!r} (it has: {', '.join(results)})")
        return name, results[name]

    baseline = run_in(same_set(args.against), args.baseline, args.against) if args.against else None
    scored = [run_in(same_set(f), n, f) for f, _, n in (spec.partition("=") for spec in args.scored)]
    store = FeatureStore.load(args.features)
    mel_cfg = MelConfig()
    vocoder = load_vocoder(args.vocoder, mel_cfg)
    if args.precision == "bf16":
        vocoder = vocoder.to(torch.bfloat16)
    judge, jmeta = load_verifier(args.judge, "cpu")
    judge.eval()
    runs: list[tuple[str, dict[str, np.ndarray]]] = []
    for spec in args.checkpoint:
        name, _, path = spec.rpartition("=")
        vc = vckit.load(path, device="cpu", vocoder="griffinlim")  # the vocoder is not used: scoring vocodes with HiFi-GAN
        name = name or Path(path).name
        if not args.only_bypass:
            runs.append((name, convert_set(vc, items)))
            if args.save_mels and len(runs) == 1:
                np.savez(args.save_mels, **runs[0][1])
        if args.bypass_vq and vc.model.vq is not None:
            vc.model.vq = None  # the decoder reads the continuous codes it was trained to stay near
            runs.append((f"{name} (VQ skipped)", convert_set(vc, items)))
    for spec in args.mels:
        name, _, path = spec.partition("=")
        with np.load(path) as z:
            runs.append((name, dict(z)))
    table = dict([baseline, *scored]) if baseline else dict(scored)
    for k, (name, mels) in enumerate(runs):
        t0 = time.time()
        with torch.no_grad():
            table[name] = score(mels, items, store, asr, judge, vocoder, mel_cfg.sample_rate, with_source=k == 0 and baseline is None)
        table[name]["seconds"] = time.time() - t0
        print(name, json.dumps({k: v for k, v in table[name].items() if not k.startswith("per_item")}), flush=True)
    src = next((v for v in table.values() if "wer_source" in v), None)
    words = {c: next(iter(table.values()))[f"words_{c}"] for c in CONDITIONS} if table else {}
    print(f"\n{args.which} set: {len(items)} conversions per condition from {len({it['src'] for it in items})} sources; words per condition: {words}")
    if src is not None:
        print(f"vocoded sources (the vocoder + ASR: the ceiling): WER {_ci(src, 'source')}")
    print("| variant | WER cross (95 % CI) | WER same | WER recon | cos tgt (cross) | cos src (cross) | closer (cross) | closer (same) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in table.items():
        print(f"| {name} | {_ci(r, 'cross')} | {_ci(r, 'same')} | {_ci(r, 'recon')} | {r['cos_target_cross']:.3f} | {r['cos_source_cross']:.3f} | {r['closer_cross']:.0%} | {r['closer_same']:.0%} |")
    for key, (a, b), what in (("gender", ("M", "F"), "male / female sources"),
                              ("length", ("short", "long"), f"short (up to {SHORT_S:.0f} s) / long sources; the short read sentences lose the most")):
        print(f"\nby the source's {key} (WER of the conversions of {what}):")
        for name, r in table.items():
            g = by_source(items, r, key)
            print(f"  {name}: " + "; ".join(f"{c} {v.get(a, float('nan')):.1%} / {v.get(b, float('nan')):.1%}" for c, v in g.items()))
    print("\nby the source speaker (WER of each speaker's conversions, per condition; the genders rest on these few):")
    for name, r in table.items():
        g = by_source(items, r, "speaker")
        print(f"  {name}: " + "; ".join(f"{c} " + ", ".join(f"{s} {v:.0%}" for s, v in per.items()) for c, per in g.items()))
    if len(table) > 1:
        (base_name, base), groups = next(iter(table.items())), [it.get("group", it["src"]) for it in items]
        short = [k for k, it in enumerate(items) if it.get("length") == "short"]
        short_pick = [(c, k) for c in ("cross", "same") for k in short] if 0 < len(short) < len(items) else []
        print(f"\npaired against {base_name} (WER difference, 95 % CI over sources; an interval wholly below 0 is a gain):")
        for name, r in list(table.items())[1:]:
            parts = []
            for c in CONDITIONS:
                d, lo, hi = paired_bootstrap(base["per_item"][c], r["per_item"][c], groups)
                parts.append(f"{c} {d:+.1%} ({lo:+.1%} to {hi:+.1%})")
            # the shipping rule: conversions (cross and same together) better beyond the interval
            d, lo, hi = paired_bootstrap(base["per_item"]["cross"] + base["per_item"]["same"], r["per_item"]["cross"] + r["per_item"]["same"], groups + groups)
            r["paired_conversions"] = [d, lo, hi]
            parts.append(f"conversions {d:+.1%} ({lo:+.1%} to {hi:+.1%}){' GAIN' if hi < 0 else ''}")
            if short_pick:  # the same on the short sources alone (not the shipping rule: a reading of where)
                d, lo, hi = paired_bootstrap([base["per_item"][c][k] for c, k in short_pick], [r["per_item"][c][k] for c, k in short_pick], [groups[k] for _, k in short_pick])
                r["paired_conversions_short"] = [d, lo, hi]
                parts.append(f"conversions of short sources {d:+.1%} ({lo:+.1%} to {hi:+.1%})")
            if "per_item_cos" in base and "per_item_cos" in r:  # the voice on the same conversions: judge cosine to the target
                for c in ("cross", "same"):
                    # a mean difference is paired_bootstrap's with each conversion weighing one
                    d, lo, hi = paired_bootstrap([(t, 1) for t, _ in base["per_item_cos"][c]], [(t, 1) for t, _ in r["per_item_cos"][c]], groups)
                    r[f"paired_cos_target_{c}"] = [d, lo, hi]
                    parts.append(f"cos to target {c} {d:+.3f} ({lo:+.3f} to {hi:+.3f})")
            print(f"  {name}: " + "; ".join(parts))
    if args.out:
        Path(args.out).write_text(json.dumps({"set": args.which, "items": items, "judge_eer": jmeta.get("eer"), "vocoder": args.vocoder, "precision": args.precision, "results": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
