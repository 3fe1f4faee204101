"""``vckit eval``: objective evaluation of a checkpoint and a disentanglement probe.

    vckit eval --checkpoint checkpoints/default --data cache/shared_dev/valid.jsonl -o docs/eval

One run measures, on the speakers of ``--data`` (use speakers the model never
trained on):

* **conversion pairs** (source utterance, target speaker) of every gender
  combination. The target's voice comes from a few of its utterances (joined,
  at least 3 s where there are); a *different* utterance of the target is the
  one scored against. Where the data are parallel (the same transcript, or the
  same utterance id when there is none: VCC 2016, FSDD digits, VCTK 001-024),
  that held-out utterance has the source's content, and MCD with DTW, F0 RMSE
  and correlation (after mean/variance normalisation of log-F0) and the
  log-F0 mean distance to the target are measured (:mod:`vckit.evaluation.metrics`), with
  the unconverted source as the reference point. F0 correlations are given
  plain and robust (frames whose median-normalised log-F0s differ by more
  than half an octave, octave errors, trimmed; the trimmed share reported).
* **what the conversion keeps of its source** (every pair, on the source's
  own time axis, no alignment): the robust log-F0 correlation with the
  source and the voiced/unvoiced agreement over the source's loud frames
  (``kept_from_source``), overall, across genders and per direction.
* **speaker similarity** by the independent speaker-verification judge
  (:mod:`vckit.models.verifier`): its EER on the data, the cosine of each
  conversion to the held-out target utterance and to the source, and the share
  accepted as the target at the judge's EER threshold.
* **disentanglement probe**: linear and MLP speaker classifiers trained on
  frozen content codes (before and after VQ), on the model's speaker
  embeddings and, for reference, on the input log-mel frames; balanced
  accuracy on held-out utterances against chance. VQ codebook usage and
  perplexity when the model has VQ.
* **reconstruction**: mel L1 of the model's self-reconstruction.

Results go to ``report.json`` and ``report.md`` (and PNG plots when matplotlib
is installed) in the output folder. Everything is deterministic for a seed.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vckit.errors import AudioError, VckitError
from vckit.evaluation.pairs import Pair, load_data, make_pairs, read_pairs
from vckit.evaluation.report import write_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """What one ``vckit eval`` run measures; every field is in the report."""

    seed: int = 0
    parallel_pairs: int = 20  # pairs with a same-content target utterance (MCD, F0)
    pairs_per_kind: int = 3  # further non-parallel pairs per M->F, F->M, F->F, M->M
    probe_utterances: int = 20  # per speaker, at most; split half for training, half held out
    probe_min_utterances: int = 4  # speakers with fewer are left out of the probe
    probe_max_frames: int = 100  # frames per utterance the frame probes see (evenly spaced)
    recon_per_speaker: int = 4
    vocoder_floor_pairs: int = 8  # sources also resynthesised by the vocoder alone, for reference
    min_source_s: float = 0.3
    max_source_s: float = 10.0
    plots: bool = True


# -- the run --------------------------------------------------------------------
class _Timer:
    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.times: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[f"{name}_s"] = round(now - self.t, 2)
        log.info("%s: %.1f s", name, now - self.t)
        self.t = now


def _shown(path: str | Path) -> str:
    """A path as the report shows it: relative to the working folder when inside it."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _nanmean(xs: list[float]) -> float:
    xs = [float(x) for x in xs if x is not None and not math.isnan(float(x))]
    return float(np.mean(xs)) if xs else math.nan


def evaluate(
    checkpoint: str | Path | None,
    data: str | Path,
    out_dir: str | Path,
    *,
    pairs: str | Path | None = None,
    judge: str | Path | None = None,
    vocoder: str = "hifigan",
    device: str = "cpu",
    cfg: EvalConfig = EvalConfig(),
    command: str = "",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the evaluation and write ``report.json``, ``report.md`` (and plots) into ``out_dir``.

    The stages, each timed in the report: ``load`` (data, judge, model),
    ``audio`` (decode the utterances, pick the pairs), ``judge_embeddings``
    (and the judge's EER on the data), ``model_features`` and
    ``probe_vq_recon`` (probe, codebook, reconstruction), ``convert_and_score``.

    Returns the report (the contents of ``report.json``). Raises
    :class:`VckitError` for a missing or bad checkpoint, judge, data or pairs
    file, data without usable utterances, or no pair to convert.
    """
    import vckit
    from vckit.api import default_checkpoint, load
    from vckit.shipped import shipped_dir
    from vckit.evaluation.metrics import check_eval_packages
    from vckit.models.verifier import load_verifier

    check_eval_packages(plots=cfg.plots)
    say = progress or (lambda msg: log.info(msg))
    timer, t_start = _Timer(), time.perf_counter()
    torch.manual_seed(cfg.seed)
    utts = load_data(data)  # data errors before the slow model load
    judge_dir = Path(judge) if judge else shipped_dir("speaker_verification")
    if not judge_dir.exists():
        raise VckitError(f"speaker-verification judge not found at {judge_dir}: train one with vckit train-sv, or pass --judge")
    sv, sv_meta = load_verifier(judge_dir, device)
    vc = load(checkpoint, device=device, vocoder=vocoder)
    timer.lap("load")

    say(f"analysing {len(utts)} utterances")
    utts, wavs, skipped = _read_audio(utts, vc, data)
    dur = np.array([len(w) / vc.sample_rate for w in wavs])
    pair_list = (read_pairs(pairs, utts, dur, cfg.seed) if pairs else
                 make_pairs(utts, dur, parallel=cfg.parallel_pairs, per_kind=cfg.pairs_per_kind, seed=cfg.seed, source_seconds=(cfg.min_source_s, cfg.max_source_s)))
    if not pair_list:
        raise VckitError(f"no conversion pairs in {data}: it needs two speakers, the target with at least two utterances")
    timer.lap("audio")

    judge_emb, judge_info = _judge_stage(sv, sv_meta, judge_dir, utts, wavs, vc.sample_rate)
    timer.lap("judge_embeddings")

    say("disentanglement probe")
    probe, vq, recon = _probe_stage(vc, utts, wavs, cfg, timer)
    timer.lap("probe_vq_recon")

    say(f"converting {len(pair_list)} pairs ({sum(p.parallel for p in pair_list)} parallel)")
    conv_seconds, out_seconds = _convert_stage(vc, sv, utts, wavs, pair_list, judge_emb, judge_info["threshold"], cfg, say)
    timer.lap("convert_and_score")

    timing = dict(timer.times)
    timing["total_s"] = round(time.perf_counter() - t_start, 2)
    timing["convert_rtf"] = round(conv_seconds / max(out_seconds, 1e-9), 3)
    report = {
        "command": command,
        "vckit": vckit.__version__,
        "torch": torch.__version__,
        "settings": {"checkpoint": _shown(checkpoint or default_checkpoint()), "model_sha256": vc.model_id, "data": _shown(data),
                     "pairs": _shown(pairs) if pairs else None, "vocoder": vocoder, "device": device, "threads": torch.get_num_threads(), **asdict(cfg)},
        "data": {"utterances": len(utts), "speakers": len({u["speaker"] for u in utts}), "seconds": round(float(dur.sum()), 1),
                 "speakers_by_gender": {g: len({u["speaker"] for u in utts if u["gender"] == g}) for g in ("f", "m", "?")},
                 "skipped": skipped},
        "judge": judge_info,
        "conversion": _summarise(pair_list),
        "probe": probe,
        "vq": vq,
        "reconstruction": recon,
        "timing": timing,
        "pairs": [_pair_row(p, utts) for p in pair_list],
    }
    write_report(report, out_dir, plots=cfg.plots)
    return report


# -- the stages -------------------------------------------------------------------
def _read_audio(utts: list[dict[str, Any]], vc: Any, data: str | Path) -> tuple[list[dict[str, Any]], list[np.ndarray], list[str]]:
    """Decode every utterance at the model's rate; unreadable, silent and too short ones are left out (and listed)."""
    from vckit.audio import load_audio

    wavs: list[np.ndarray | None] = []
    skipped = []
    for u in utts:
        try:
            wavs.append(load_audio(u["file"], vc.sample_rate))
        except AudioError as e:
            wavs.append(None)
            skipped.append(f"{u['path']}: {e}")
    keep = [i for i, w in enumerate(wavs) if w is not None and len(w) > vc.config.mel.n_fft]
    if not keep:
        raise VckitError(f"no usable audio in {data} ({len(skipped)} unreadable or silent files)")
    return [utts[i] for i in keep], [wavs[i] for i in keep], skipped


def _judge_stage(sv: Any, sv_meta: dict[str, Any], judge_dir: Path, utts: list[dict[str, Any]], wavs: list[np.ndarray], sr: int) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """The judge's embedding of every utterance, and its EER on these utterances."""
    from vckit.audio import load_audio
    from vckit.models.verifier import equal_error_rate

    judge_sr = sv.cfg.mel.sample_rate
    judge_emb = [_judge_embed(sv, w if judge_sr == sr else load_audio(w, judge_sr, sr)) for w in wavs]
    spk = np.array([u["speaker"] for u in utts])
    emb = torch.stack(judge_emb)
    iu = np.triu_indices(len(utts), 1)
    same = (spk[:, None] == spk[None])[iu]
    info = {"path": _shown(judge_dir), "eer_recorded": sv_meta.get("eer"), "threshold": float(sv_meta.get("threshold") or math.nan)}
    if same.any() and (~same).any():
        eer, thr = equal_error_rate((emb @ emb.T).numpy()[iu], same)
        info.update({"eer_on_data": eer, "threshold_on_data": thr, "trials": int(len(same))})
    return judge_emb, info


def _probe_stage(vc: Any, utts: list[dict[str, Any]], wavs: list[np.ndarray], cfg: EvalConfig, timer: _Timer) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, float]]:
    """The disentanglement probe, VQ codebook statistics and self-reconstruction L1."""
    from vckit.evaluation.probe import codebook_stats
    from vckit.evaluation.scores import reconstruction_l1

    model = vc.model
    split = _probe_split(utts, cfg)
    by_spk: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        by_spk.setdefault(u["speaker"], []).append(i)
    recon_idx = {s: ix[: cfg.recon_per_speaker] for s, ix in sorted(by_spk.items())}
    needed = sorted({i for i, _ in split[1] + split[2]} | {i for ix in recon_idx.values() for i in ix})
    feats = _model_features(vc, {i: wavs[i] for i in needed})
    timer.lap("model_features")
    probe = _probe(split, feats, cfg)
    vq = codebook_stats(torch.cat([f["indices"] for f in feats.values()]), model.cfg.vq.codebook_size) if model.vq is not None else None
    with torch.inference_mode():
        recon = reconstruction_l1(model, {s: [feats[i]["frames"] for i in ix] for s, ix in recon_idx.items()}, cfg.recon_per_speaker)
    return probe, vq, recon


def _convert_stage(vc: Any, sv: Any, utts: list[dict[str, Any]], wavs: list[np.ndarray], pair_list: list[Pair], judge_emb: list[torch.Tensor],
                   thr: float, cfg: EvalConfig, say: Callable[[str], None]) -> tuple[float, float]:
    """Convert every pair and fill its ``scores``; returns (seconds converting, seconds of audio made)."""
    from vckit.audio import load_audio, log_mel
    from vckit.evaluation.metrics import MCEP_SR, parallel_scores, source_scores

    sr = vc.sample_rate
    wav16: dict[int, np.ndarray] = {}

    def at16(i: int) -> np.ndarray:
        if i not in wav16:
            wav16[i] = load_audio(wavs[i], MCEP_SR, sr)
        return wav16[i]

    conv_seconds = out_seconds = 0.0
    for n, p in enumerate(pair_list, 1):
        ref = np.concatenate([wavs[i] for i in p.refs])
        t = time.perf_counter()
        with torch.inference_mode():
            target = vc.voice(ref, sr=sr)  # the embedding and, for models with an F0 path, the register
        out = vc.convert(utts[p.source]["file"], target=target)
        conv_seconds += time.perf_counter() - t
        out_seconds += len(out) / vc.sample_rate
        e_c = _judge_embed(sv, load_audio(out, sv.cfg.mel.sample_rate, vc.sample_rate))
        e_t, e_s = judge_emb[p.heldout], judge_emb[p.source]
        e_r = _judge_embed(sv, load_audio(ref, sv.cfg.mel.sample_rate, sr))
        ct, cs, c0 = float(e_c @ e_t), float(e_c @ e_s), float(e_s @ e_t)
        p.scores = {"cos_target": ct, "cos_source": cs, "closer_to_target": ct > cs, "accepted": ct >= thr,
                    "source_cos_target": c0, "source_accepted": c0 >= thr, "refs_cos_target": float(e_r @ e_t)}
        conv16 = load_audio(out, MCEP_SR, vc.sample_rate)
        p.scores["converted_vs_source"] = parallel_scores(conv16, at16(p.source))  # what of the source is kept
        # the same, frame by frame: the conversion of the untrimmed source keeps its time axis
        src16_axis = load_audio(utts[p.source]["file"], MCEP_SR, trim=False)
        p.scores["kept_from_source"] = source_scores(load_audio(out, MCEP_SR, vc.sample_rate, trim=False), src16_axis)
        if p.parallel:
            p.scores["converted"] = parallel_scores(conv16, at16(p.heldout))
            p.scores["source"] = parallel_scores(at16(p.source), at16(p.heldout))
        if n <= cfg.vocoder_floor_pairs:  # the vocoder alone on the same input: the floor of MCD, the ceiling of F0 correlation
            with torch.inference_mode():
                x = load_audio(utts[p.source]["file"], sr, trim=False)
                copy = vc.vocoder.vocode(log_mel(x, vc.config.mel, vc.device)).float().cpu().numpy()
            p.scores["vocoder_only_vs_source"] = parallel_scores(load_audio(copy, MCEP_SR, vc.sample_rate), at16(p.source))
            p.scores["vocoder_only_kept_from_source"] = source_scores(load_audio(copy, MCEP_SR, vc.sample_rate, trim=False), src16_axis)
            judge_copy = _judge_embed(sv, load_audio(copy, sv.cfg.mel.sample_rate, vc.sample_rate))
            p.scores["vocoder_only_vs_source"]["cos_source"] = float(judge_copy @ e_s)
        if n % 10 == 0:
            say(f"  {n}/{len(pair_list)} pairs")
    return conv_seconds, out_seconds


@torch.inference_mode()
def _judge_embed(sv: Any, wav: np.ndarray) -> torch.Tensor:
    from vckit.audio import log_mel

    return sv(log_mel(wav, sv.cfg.mel, next(sv.parameters()).device)[None])[0].float().cpu()


@torch.inference_mode()
def _model_features(vc: Any, wavs: dict[int, np.ndarray]) -> dict[int, dict[str, Any]]:
    """Per utterance: what the model reads (``frames``: :class:`vckit.frontend.Frames`
    with a batch of one, F0 and phonetic features included where the model reads
    them), its log-mel ``(n_mels, T)``, content codes before and after VQ
    ``(T', dim)``, VQ indices ``(T',)`` and the speaker embedding ``(dim,)``."""
    model, out = vc.model, {}
    for i, w in wavs.items():
        x = vc.frontend.frames(w)  # the features conversion computes from audio
        mel = x.mel[0]
        z = model.encode_content(x).continuous  # in eval mode: the encoder's output, before any VQ
        codes, f = z, {}
        if model.vq is not None:
            codes, _, stats = model.vq(z)
            f["indices"] = stats["indices"][0].cpu()
        f.update(frames=x, mel=mel, content=z[0].T.float().cpu(), codes=codes[0].T.float().cpu(), speaker=model.embed_speaker(mel[None])[0].float().cpu())
        out[i] = f
    return out


def _probe_split(utts: list[dict[str, Any]], cfg: EvalConfig) -> tuple[list[str], list[tuple[int, int]], list[tuple[int, int]]]:
    """Speakers with enough utterances, and (utterance, speaker index) for training and held out."""
    rng = random.Random(cfg.seed)
    by_spk: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        by_spk.setdefault(u["speaker"], []).append(i)
    speakers = sorted(s for s, ix in by_spk.items() if len(ix) >= cfg.probe_min_utterances)
    if len(speakers) < 2:
        return [], [], []
    train, test = [], []
    for k, s in enumerate(speakers):
        ix = rng.sample(by_spk[s], min(len(by_spk[s]), cfg.probe_utterances))
        half = (len(ix) + 1) // 2
        train += [(i, k) for i in ix[:half]]
        test += [(i, k) for i in ix[half:]]
    return speakers, train, test


def _probe(split: tuple[list[str], list[tuple[int, int]], list[tuple[int, int]]], feats: dict[int, dict[str, torch.Tensor]], cfg: EvalConfig) -> dict[str, Any]:
    """Linear and MLP speaker probes on each representation."""
    from vckit.evaluation.probe import probe_scores

    speakers, train, test = split
    if not speakers:
        return {"skipped": f"fewer than two speakers with {cfg.probe_min_utterances} or more utterances"}

    def frames(x: torch.Tensor) -> torch.Tensor:
        return x[:: max(1, math.ceil(len(x) / cfg.probe_max_frames))]

    idx = [i for i, _ in train + test]
    reps = {"log-mel frames (input)": {i: frames(feats[i]["mel"].T.cpu()) for i in idx}}
    if "indices" in feats[idx[0]]:
        reps["content, before VQ"] = {i: frames(feats[i]["content"]) for i in idx}
    reps["content codes"] = {i: frames(feats[i]["codes"]) for i in idx}
    reps["speaker embedding"] = {i: feats[i]["speaker"] for i in idx}
    out: dict[str, Any] = {"speakers": speakers, "chance": 1.0 / len(speakers), "results": {}}
    for name, xs in reps.items():
        out["results"][name] = {
            kind: probe_scores([(xs[i], k) for i, k in train], [(xs[i], k) for i, k in test], kind, cfg.seed) for kind in ("linear", "mlp")
        }
    return out


def _summarise(pairs: list[Pair]) -> dict[str, Any]:
    """Means over pairs: cross-gender, each cross-gender direction, same-gender and all (groups without pairs left out)."""
    groups = {"cross-gender": [p for p in pairs if "?" not in p.kind and p.kind[0] != p.kind[-1]],
              "f->m": [p for p in pairs if p.kind == "f->m"],
              "m->f": [p for p in pairs if p.kind == "m->f"],
              "same-gender": [p for p in pairs if "?" not in p.kind and p.kind[0] == p.kind[-1]],
              "all": pairs}
    out: dict[str, Any] = {}
    for g, ps in groups.items():
        if not ps:
            continue
        d: dict[str, Any] = {"pairs": len(ps)}
        for k in ("cos_target", "cos_source", "closer_to_target", "accepted", "source_cos_target", "source_accepted", "refs_cos_target"):
            d[k] = _nanmean([p.scores[k] for p in ps])
        for key in ("converted_vs_source", "kept_from_source"):
            d[key] = {k: _nanmean([p.scores[key][k] for p in ps]) for k in ps[0].scores[key]}
        for key in ("vocoder_only_vs_source", "vocoder_only_kept_from_source"):
            voc = [p.scores[key] for p in ps if key in p.scores]
            if voc:
                d[key] = {k: _nanmean([v[k] for v in voc]) for k in voc[0]} | {"pairs": len(voc)}
        par = [p for p in ps if p.parallel]
        d["parallel_pairs"] = len(par)
        for who in ("converted", "source"):
            if par:
                keys = par[0].scores[who].keys()
                d[who] = {k: _nanmean([p.scores[who][k] for p in par]) for k in keys}
                d[who]["logf0_abs_diff_st"] = _nanmean([abs(p.scores[who]["logf0_mean_diff_st"]) for p in par])
        out[g] = d
    return out


def _pair_row(p: Pair, utts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": p.kind, "parallel": p.parallel, "source": utts[p.source]["path"], "source_speaker": utts[p.source]["speaker"],
            "target_speaker": p.target_speaker, "heldout": utts[p.heldout]["path"], "refs": [utts[i]["path"] for i in p.refs], "scores": p.scores}
