"""Intelligibility and speaker similarity of model variants, on a fixed set.

The set (``build_set``) is drawn once from the validation speakers of
``recipes/shared_dev`` (never trained on): up to ``n`` sources that have a
corpus transcript (2-8 s; fsdd digits left out), each converted to a speaker
of the other gender and to another of the same gender (reference: up to three
other utterances of that speaker, never the source sentence), and
reconstructed (reference: another utterance of the source speaker).

Conversions run through the public API (``convert_set``), or on the feature
cache (``convert_set_cached``: cached mels, F0 and phonetic features), so the
GPU training machine, which has no audio reader, can make them and send back
only mels; scoring (``score``) vocodes
them with the shipped HiFi-GAN, transcribes them with Moonshine base
(``moonshine_asr.py``) and embeds them with the independent judge:

* WER against the corpus text, per condition (cross, same, recon), and of
  the vocoded source itself (the ceiling: the vocoder plus the ASR);
* judge cosine of each conversion to a held-out utterance of the target and
  to the source; share closer to the target.

    python benchmarks/intelligibility.py --checkpoint checkpoints/default
    python benchmarks/intelligibility.py --mels a=runs/a.npz --mels b=runs/b.npz
    python benchmarks/intelligibility.py --checkpoint checkpoints/default --bypass-vq --only-bypass
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONDITIONS = ("cross", "same", "recon")


def build_set(rows: list[dict[str, Any]], n: int = 30, seed: int = 0) -> list[dict[str, Any]]:
    """Items ``{src, text, speaker, gender, cross: {...}, same: {...}, recon: {...}}``.

    Each condition names the reference paths and one held-out path of the
    target speaker to score against.
    """
    rng = random.Random(seed)
    by_spk: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_spk.setdefault(r["speaker"], []).append(r)
    many = {s: us for s, us in by_spk.items() if len(us) >= 4}  # 3 references + 1 held out
    gender = {s: us[0].get("gender") for s, us in by_spk.items()}
    srcs = [r for r in rows if r.get("text") and not r["corpus"].startswith("fsdd") and 2.0 <= r["duration"] <= 8.0]
    rng.shuffle(srcs)
    # at most a third of the set from one speaker, so no voice dominates
    cap, count, items = max(1, n // 3), {}, []
    for s in srcs:
        if len(items) >= n or count.get(s["speaker"], 0) >= cap:
            continue
        item = {"src": s["path"], "text": s["text"], "speaker": s["speaker"], "gender": s.get("gender")}
        for cond in CONDITIONS:
            if cond == "recon":  # another utterance or more of the source speaker
                pool = [s["speaker"]] if len(by_spk[s["speaker"]]) >= 2 else []
            else:
                pool = sorted(t for t in many if t != s["speaker"] and (gender[t] == s.get("gender")) == (cond == "same"))
            if not pool:
                break
            t = rng.choice(pool)
            cands = [u for u in by_spk[t] if u["path"] != s["path"] and u.get("utt_id") != s.get("utt_id")]
            rng.shuffle(cands)
            if len(cands) < (1 if cond == "recon" else 4):
                break
            item[cond] = {"speaker": t, "refs": [u["path"] for u in cands[:3]], "heldout": cands[-1]["path"]}
        else:
            items.append(item)
            count[s["speaker"]] = count.get(s["speaker"], 0) + 1
    return items


def _store_mel(store: Any, index: dict[str, int], path: str) -> torch.Tensor:
    from vckit.data.features import from_uint8

    u = store.utterances[index[path]]
    return from_uint8(store.mels[u["offset"] : u["offset"] + u["frames"]]).T.float()


@torch.no_grad()
def convert_set(vc: Any, items: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """``{"<i>_<cond>": converted log-mel (n_mels, T) float16}`` for every item,
    through the public API (``vc.voice`` of the references, ``vc.convert_mel``
    of the source file), so models with an F0 path or a phonetic teacher run
    exactly as ``vckit convert`` runs them."""
    from vckit.audio import load_audio

    rate, out = vc.config.mel.sample_rate, {}
    for i, it in enumerate(items):
        for cond in CONDITIONS:
            # the references back to back, as one clip: some (FSDD digits) are under the 1 s a single reference needs
            refs = np.concatenate([load_audio(p, rate, trim=True) for p in it[cond]["refs"]])
            conv = vc.convert_mel(it["src"], vc.voice(refs, sr=rate))
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
    """WER per condition and judge similarity of cross/same conversions."""
    import torchaudio.functional as AF

    from moonshine_asr import normalize_text, word_errors

    index = {u["path"]: i for i, u in enumerate(store.utterances)}

    def words(mel: torch.Tensor) -> list[str]:
        wav = vocoder.vocode(mel.float(), chunk_frames=256).detach().float().cpu()
        return normalize_text(asr.transcribe(AF.resample(wav, sr, 16000).numpy()))

    def emb(mel: torch.Tensor) -> torch.Tensor:
        return judge(mel.float()[None])

    res: dict[str, Any] = {}
    errs = {c: [0, 0] for c in CONDITIONS + ("source",)}
    sims = {c: [] for c in ("cross", "same")}
    for i, it in enumerate(items):
        ref = normalize_text(it["text"])
        src = _store_mel(store, index, it["src"])
        conds = list(CONDITIONS) + (["source"] if with_source else [])
        for cond in conds:
            mel = src if cond == "source" else torch.from_numpy(mels[f"{i}_{cond}"].astype(np.float32))
            errs[cond][0] += word_errors(ref, words(mel))
            errs[cond][1] += len(ref)
            if cond in sims:
                e = emb(mel)
                ct = float(F.cosine_similarity(e, emb(_store_mel(store, index, it[cond]["heldout"]))))
                cs = float(F.cosine_similarity(e, emb(src)))
                sims[cond].append((ct, cs))
    for c, (e, n) in errs.items():
        if n:
            res[f"wer_{c}"] = e / n
    for c, v in sims.items():
        res[f"cos_target_{c}"] = float(np.mean([a for a, _ in v]))
        res[f"cos_source_{c}"] = float(np.mean([b for _, b in v]))
        res[f"closer_{c}"] = float(np.mean([a > b for a, b in v]))
    res["items"] = len(items)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", default=str(REPO / "cache/shared_dev/valid.jsonl"))
    ap.add_argument("--features", default=str(REPO / "cache/shared_dev/features"))
    ap.add_argument("--checkpoint", action="append", default=[], help="NAME=FOLDER or FOLDER; repeatable")
    ap.add_argument("--mels", action="append", default=[], help="NAME=NPZ made by convert_set; repeatable")
    ap.add_argument("--bypass-vq", action="store_true", help="also score each checkpoint with its VQ skipped (a diagnostic: how many words the codebook costs)")
    ap.add_argument("--only-bypass", action="store_true", help="with --bypass-vq: score only the bypassed runs")
    ap.add_argument("--judge", default=str(REPO / "checkpoints/speaker_verification"))
    ap.add_argument("-n", type=int, default=30, help="source utterances")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from moonshine_asr import MoonshineASR

    import vckit
    from vckit.config import MelConfig
    from vckit.data.features import FeatureStore
    from vckit.data.manifest import read_manifest
    from vckit.models.vocoder import load_vocoder
    from vckit.models.verifier import load_verifier

    rows = read_manifest(args.manifest)
    items = build_set(rows, args.n, args.seed)
    store = FeatureStore.load(args.features)
    mel_cfg = MelConfig()
    vocoder = load_vocoder("hifigan", mel_cfg)
    judge, jmeta = load_verifier(args.judge, "cpu")
    judge.eval()
    asr = MoonshineASR(threads=args.threads)
    runs: list[tuple[str, dict[str, np.ndarray]]] = []
    for spec in args.checkpoint:
        name, _, path = spec.rpartition("=")
        vc = vckit.load(path, device="cpu", vocoder="griffinlim")  # the vocoder is not used: scoring vocodes with HiFi-GAN
        name = name or Path(path).name
        if not args.only_bypass:
            runs.append((name, convert_set(vc, items)))
        if args.bypass_vq and vc.model.vq is not None:
            vc.model.vq = None  # the decoder reads the continuous codes it was trained to stay near
            runs.append((f"{name} (VQ skipped)", convert_set(vc, items)))
    for spec in args.mels:
        name, _, path = spec.partition("=")
        with np.load(path) as z:
            runs.append((name, dict(z)))
    table = {}
    for k, (name, mels) in enumerate(runs):
        t0 = time.time()
        with torch.no_grad():
            table[name] = score(mels, items, store, asr, judge, vocoder, mel_cfg.sample_rate, with_source=k == 0)
        table[name]["seconds"] = time.time() - t0
        print(name, json.dumps(table[name]), flush=True)
    src_wer = next((v["wer_source"] for v in table.values() if "wer_source" in v), None)
    print(f"\n{len(items)} sources with text; vocoded sources (HiFi-GAN + ASR ceiling): WER {src_wer:.1%}" if src_wer is not None else "")
    print("| variant | WER cross | WER same | WER recon | cos tgt (cross) | cos src (cross) | closer (cross) | closer (same) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in table.items():
        print(f"| {name} | {r['wer_cross']:.1%} | {r['wer_same']:.1%} | {r['wer_recon']:.1%} | {r['cos_target_cross']:.3f} | {r['cos_source_cross']:.3f} | {r['closer_cross']:.0%} | {r['closer_same']:.0%} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"items": items, "judge_eer": jmeta.get("eer"), "results": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
