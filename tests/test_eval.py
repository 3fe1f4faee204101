"""``vckit eval``: the metrics behave (MCD, F0, probe, codebook, judge) and the
whole evaluation runs on a tiny random model and tiny real data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vckit.audio import load_audio
from vckit.errors import VckitError
from vckit.evaluation.metrics import MCEP_ALPHA, MCEP_FFT, MCEP_ORDER, MCEP_SR, f0_scores, mcd_dtw, mel_cepstrum, parallel_scores, power_to_mcep, robust_f0_corr, source_scores, voicing_agreement
from vckit.evaluation.probe import codebook_stats, probe_scores
from vckit.evaluation.scores import conversion_scores, convert_like, reconstruction_l1

from conftest import TINY_MODEL

SPEAKERS = (("vcc2016", "SF1"), ("vcc2016", "SM1"), ("vcc2016", "TF1"), ("vcc2016", "TM1"))
UTTS = ("100001", "100003", "100004", "100005", "100006")  # parallel across the four, 1.7-4.6 s


def harmonic(f0: np.ndarray, sr: int = MCEP_SR, hop: int = 80) -> np.ndarray:
    """A voiced-like tone with a per-frame F0 contour (10 harmonics)."""
    f = np.repeat(f0, hop)
    phase = 2 * np.pi * np.cumsum(f) / sr
    return (sum(np.sin(k * phase) / k for k in range(1, 11)) * 0.1).astype(np.float32)


# -- MCD ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parallel16(data_dir):
    return {spk: load_audio(data_dir / "vcc2016" / spk / "100001.wav", MCEP_SR) for spk in ("SF1", "SM1", "TF1")}


def test_mcd_of_a_signal_with_itself_is_zero(parallel16):
    mc = mel_cepstrum(parallel16["SF1"])
    assert mc.shape[1] == 25 and np.isfinite(mc).all()
    mcd, path = mcd_dtw(mc, mc)
    assert mcd == pytest.approx(0.0, abs=1e-9)
    assert (path[:, 0] == path[:, 1]).all() and len(path) == len(mc)  # the diagonal


def test_mcd_grows_with_distortion_and_speaker_change(parallel16):
    x = parallel16["SF1"]
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(len(x)).astype(np.float32) * np.sqrt(np.mean(x**2))
    mc = mel_cepstrum(x)
    light = mcd_dtw(mel_cepstrum(x + 0.03 * noise), mc)[0]
    heavy = mcd_dtw(mel_cepstrum(x + 0.3 * noise), mc)[0]
    other = mcd_dtw(mel_cepstrum(parallel16["SM1"]), mc)[0]  # same sentence, another (male) speaker
    assert 0 < light < heavy
    assert other > 3.0 and light < other
    # a copy with 50 ms said twice (a local time warp) aligns by DTW
    h = len(x) // 2
    warped = np.concatenate([x[:h], x[h - 800 : h], x[h:]])
    assert mcd_dtw(mel_cepstrum(warped), mc)[0] < min(1.0, other / 4)


@pytest.mark.parametrize("alpha", [0.0, MCEP_ALPHA])
def test_mel_cepstrum_recovers_known_coefficients(alpha):
    """The definition SPTK's ``sp2mc`` (and pysptk) follow, computed by hand: a spectrum with
    ``log|X(w)| = sum_m c[m] cos(m b(w))``, ``b`` the phase of the all-pass ``(z^-1 - a) / (1 - a z^-1)``,
    has the mel-cepstrum ``c`` (with ``a = 0``, the plain cepstrum). Checks the warping's direction,
    the 0th coefficient's halving and the order, without pysptk."""
    c = np.zeros(MCEP_ORDER + 1)
    c[:6] = [0.8, 0.5, -0.3, 0.2, -0.1, 0.05]
    c[MCEP_ORDER] = 0.01
    w = 2 * np.pi * np.arange(MCEP_FFT // 2 + 1) / MCEP_FFT
    b = np.arctan2((1 - alpha**2) * np.sin(w), (1 + alpha**2) * np.cos(w) - 2 * alpha)
    log_mag = np.cos(np.outer(b, np.arange(MCEP_ORDER + 1))) @ c
    got = power_to_mcep(np.exp(2 * log_mag)[None], MCEP_ORDER, alpha)
    np.testing.assert_allclose(got[0], c, atol=1e-10)
    # and a waveform goes through the same map: its frames' periodograms, Hamming-windowed
    x = harmonic(np.linspace(120, 220, 40))
    frame = x[80 * 5 : 80 * 5 + MCEP_FFT].astype(np.float64) * np.hamming(MCEP_FFT)
    ref = power_to_mcep(np.abs(np.fft.rfft(frame))[None] ** 2 + 1e-10)
    np.testing.assert_allclose(mel_cepstrum(x)[5], ref[0], atol=1e-10)


# -- F0 -------------------------------------------------------------------------
def test_f0_scores_normalise_register_but_not_shape():
    t = np.linspace(0, 1, 200)
    contour = 140 + 30 * np.sin(2 * np.pi * 1.5 * t)
    a = harmonic(contour)
    same = parallel_scores(a, a)
    assert same["mcd_db"] == pytest.approx(0, abs=1e-9)
    assert same["f0_rmse_hz"] == pytest.approx(0, abs=1e-6) and same["f0_corr"] == pytest.approx(1.0)
    assert same["logf0_mean_diff_st"] == pytest.approx(0, abs=1e-9) and same["vuv_error"] == 0
    # one octave up, same melody: far in Hz and register, identical after normalisation
    up = f0_scores(2 * contour, contour, np.stack([np.arange(200)] * 2, 1))
    assert up["logf0_mean_diff_st"] == pytest.approx(12.0, abs=1e-6)
    assert up["f0_rmse_hz"] > 100 and up["f0_corr"] == pytest.approx(1.0) and up["f0_rmse_norm"] < 1e-6
    # a rising melody against a falling one: correlation about -1
    rise = 120 + 60 * t
    rev = f0_scores(rise[::-1].copy(), rise, np.stack([np.arange(200)] * 2, 1))
    assert rev["f0_corr"] < -0.99 and rev["logf0_mean_diff_st"] == pytest.approx(0, abs=1e-9)
    # nothing voiced: NaN, not an error
    none = f0_scores(np.zeros(50), contour[:50], np.stack([np.arange(50)] * 2, 1))
    assert math.isnan(none["f0_corr"]) and none["vuv_error"] == 1.0


def test_robust_f0_corr_ignores_octave_errors():
    t = np.linspace(0, 1, 300)
    contour = 140 * 2 ** (0.3 * np.sin(2 * np.pi * 1.5 * t))  # +-0.3 octave of intonation
    halved = contour.copy()
    halved[::7] /= 2  # a tracker's octave errors on one frame in seven
    diag = np.stack([np.arange(300)] * 2, 1)
    s = f0_scores(halved, contour, diag)
    assert s["f0_corr"] < 0.8  # the plain correlation is dragged down ...
    assert s["f0_corr_robust"] == pytest.approx(1.0, abs=1e-9)  # ... the trimmed one is not
    assert s["f0_gross_error_share"] == pytest.approx(43 / 300)
    r = robust_f0_corr(halved, contour)
    assert r["f0_corr_robust"] == pytest.approx(1.0, abs=1e-9) and r["voiced_both"] == 300
    # a register change is no error, and a deviation under half an octave is kept (and counts)
    assert robust_f0_corr(1.7 * contour, contour)["f0_gross_error_share"] == 0
    bent = contour.copy()
    bent[100:130] *= 2**0.4
    b = robust_f0_corr(bent, contour)
    assert b["f0_gross_error_share"] == 0 and b["f0_corr_robust"] < 0.95
    # unvoiced frames in either are left out; too few voiced frames: NaN
    gaps = contour.copy()
    gaps[50:80] = 0
    assert robust_f0_corr(gaps, contour)["voiced_both"] == 270
    assert math.isnan(robust_f0_corr(contour[:9], contour[:9])["f0_corr_robust"])


def test_voicing_agreement_counts_loud_frames_only():
    src = np.zeros(100)
    src[:60] = 120.0  # voiced 0-59
    conv = np.zeros(100)
    conv[:50] = 200.0
    conv[60:70] = 200.0  # misses 50-59, adds 60-69
    loud = np.arange(100) < 90  # 90-99: silence, not counted
    v = voicing_agreement(conv, src, loud)
    assert v["vuv_agreement"] == pytest.approx(70 / 90) and v["voiced_recall"] == pytest.approx(50 / 60) and v["loud_frames"] == 90
    assert voicing_agreement(src, src, loud)["vuv_agreement"] == 1.0
    assert math.isnan(voicing_agreement(conv, src, np.zeros(100, bool))["vuv_agreement"])


def test_source_scores_track_a_conversion_on_the_source_time_axis():
    t = np.linspace(0, 1, 300)
    voiced = harmonic(150 * 2 ** (0.3 * np.sin(2 * np.pi * t)))  # 1.5 s at 16 kHz
    pause = np.zeros(MCEP_SR // 4, dtype=np.float32)
    source = np.concatenate([pause, voiced, pause])
    same = source_scores(source, source)
    assert same["f0_corr_robust"] == pytest.approx(1.0) and same["vuv_agreement"] == 1.0 and same["f0_gross_error_share"] == 0
    # an octave lower (a male voice for a female source): same intonation, same voicing
    low = np.concatenate([pause, harmonic(75 * 2 ** (0.3 * np.sin(2 * np.pi * t))), pause])
    lo = source_scores(low, source)
    assert lo["f0_corr_robust"] > 0.95 and lo["vuv_agreement"] > 0.95
    # the conversion loses voicing in the middle third of the speech
    broken = source.copy()
    mid = len(pause) + len(voiced) // 3
    broken[mid : mid + len(voiced) // 3] = 0.05 * np.random.default_rng(0).standard_normal(len(voiced) // 3)
    b = source_scores(broken, source)
    assert 0.55 < b["vuv_agreement"] < 0.8 and 0.55 < b["voiced_recall"] < 0.8
    assert abs(b["loud_frames"] - 150) <= 10  # the 1.5 s of sound (10 ms frames), not the pauses


# -- conversion scores on cached frames -----------------------------------------
def _tiny_model(**changes):
    import dataclasses

    from vckit.config import Config, MelConfig
    from vckit.models.vc import VoiceConversionModel

    base = Config.from_dict({"model": {k: v for k, v in TINY_MODEL.items() if k != "classifier"}}).model
    torch.manual_seed(0)
    return VoiceConversionModel(MelConfig(), dataclasses.replace(base, **changes)).eval()


def _store(extras: bool = True, dims: int = 6):
    """4 speakers x 2 utterances of 40-70 frames of random mels, with F0 (voiced
    runs at a per-speaker register) and phonetic features."""
    from vckit.config import MelConfig
    from vckit.data.features import FeatureStore

    g = torch.Generator().manual_seed(0)
    utts, off, f0 = [], 0, []
    for k, spk in enumerate(("a", "b", "c", "d")):
        for j in range(2):
            n = 40 + 10 * (k + j)
            utts.append({"path": f"{spk}/{j}.wav", "speaker": spk, "gender": "fm"[k % 2], "offset": off, "frames": n})
            off += n
            contour = (100 + 60 * k) * (1 + 0.1 * torch.sin(torch.arange(n) / 5.0))
            f0.append(torch.where(torch.arange(n) % 20 < 15, contour, torch.zeros(n)))
    mels = torch.randint(60, 200, (off, MelConfig().n_mels), dtype=torch.uint8, generator=g)
    extra = {"f0": torch.cat(f0).half(), "phonetic": torch.randint(0, 256, (off, dims), dtype=torch.uint8, generator=g)} if extras else {}
    return FeatureStore(mels, utts, MelConfig(), extra), utts


class _MeanJudge(torch.nn.Module):
    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # (B, n_mels, T) -> (B, n_mels)
        return mel.mean(-1)


PAIRS = [(0, 2, 3), (2, 5, 4), (7, 0, 1)]


@pytest.mark.parametrize("variant", ["f0", "phonetic", "both"])
def test_conversion_scores_run_on_models_with_f0_or_phonetic_input(variant):
    import dataclasses

    from vckit.config import ContentConfig, F0Config

    changes = {}
    if variant in ("f0", "both"):
        changes["f0"] = F0Config(enabled=True)
    if variant in ("phonetic", "both"):
        changes["content"] = dataclasses.replace(ContentConfig(**TINY_MODEL["content"]), input="phonetic", input_dim=6)
    model = _tiny_model(**changes)
    store, utts = _store()
    for max_frames in (1000, 32):  # 32: mel, F0 and phonetic cut alike
        r = conversion_scores(model, _MeanJudge(), store, utts, PAIRS, max_frames=max_frames)
        assert r["pairs"] == 3 and all(math.isfinite(r[k]) for k in ("sim_to_target", "sim_to_source", "closer_to_target", "recon_mel_l1"))
    rec = reconstruction_l1(model, {"a": [store.frames(0), store.frames(1)], "b": [store.frames(2)]}, max_frames=32)
    assert rec["utterances"] == 3 and math.isfinite(rec["other_reference"]) and math.isfinite(rec["same_utterance"])
    with pytest.raises(VckitError, match="feature cache has no"):
        conversion_scores(model, _MeanJudge(), _store(extras=False)[0], utts, PAIRS)


def test_conversion_moves_the_source_f0_to_the_reference_register():
    from vckit.config import F0Config

    model = _tiny_model(f0=F0Config(enabled=True))
    store, _ = _store()
    src, ref = store.frames(0), store.frames(4)
    src.f0 = torch.where(src.f0 > 0, 110.0, 0.0)  # flat contours: the source at 110 Hz, the reference at 220 Hz
    ref.f0 = torch.where(ref.f0 > 0, 220.0, 0.0)
    with torch.no_grad():
        out = convert_like(model, src, ref)
        spk = model.embed_speaker(ref.mel)
        up = model.convert(src, spk, f0_shift=12.0)  # an octave up: twice the source's median
        same = model.convert(src, spk, f0_shift=0.0)
    torch.testing.assert_close(out, up, atol=1e-3, rtol=1e-3)
    assert (out - same).abs().mean() > 1e-3


def test_mel_only_models_ignore_cached_extras():
    model = _tiny_model()
    with_extras, utts = _store()
    bare, _ = _store(extras=False)
    a = conversion_scores(model, _MeanJudge(), with_extras, utts, PAIRS)
    b = conversion_scores(model, _MeanJudge(), bare, utts, PAIRS)
    assert a == b
    # and they score what the model makes of the cached mels
    with torch.no_grad():
        m = bare.utterance(0)[None]
        rec = model.convert(m, model.embed_speaker(bare.utterance(1)[None]))
    own = reconstruction_l1(model, {"a": [bare.utterance(0), bare.utterance(1)]}, per_speaker=1)
    assert own["other_reference"] == pytest.approx(float((rec - m).abs().mean()))


# -- probe and codebook ---------------------------------------------------------
def _utts(features: torch.Tensor, labels: list[int]) -> list[tuple[torch.Tensor, int]]:
    return [(f, k) for f, k in zip(features, labels)]


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_probe_on_random_codes_is_near_chance(kind):
    g = torch.Generator().manual_seed(0)
    k, per = 6, 10
    labels = [i % k for i in range(k * per)]
    train = _utts(torch.randn(k * per, 40, 8, generator=g), labels)
    test = _utts(torch.randn(k * per, 40, 8, generator=g), labels)
    r = probe_scores(train, test, kind, seed=0)
    assert r["chance"] == pytest.approx(1 / 6) and r["speakers"] == 6 and 1 / 6 < r["chance_95"] < 0.5
    assert abs(r["frame_accuracy"] - 1 / 6) < 0.05  # 2400 held-out frames
    assert r["utterance_accuracy"] < 0.4


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_probe_finds_a_speaker_signal(kind):
    g = torch.Generator().manual_seed(1)
    k, per = 6, 6
    means = 1.5 * torch.randn(k, 8, generator=g)
    labels = [i % k for i in range(k * per)]
    make = lambda: _utts(torch.randn(k * per, 30, 8, generator=g) + means[labels][:, None], labels)  # noqa: E731
    r = probe_scores(make(), make(), kind, seed=0)
    assert r["utterance_accuracy"] == 1.0 and r["frame_accuracy"] > 0.8
    again = probe_scores(make(), make(), kind, seed=0)  # other data: still perfect; same seed, same data: same numbers
    assert again["utterance_accuracy"] == 1.0


def test_probe_is_deterministic_and_handles_utterance_vectors():
    g = torch.Generator().manual_seed(2)
    train = _utts(torch.randn(12, 16, generator=g), [0, 1, 2] * 4)
    test = _utts(torch.randn(9, 16, generator=g), [0, 1, 2] * 3)
    a, b = probe_scores(train, test, "mlp", seed=3), probe_scores(train, test, "mlp", seed=3)
    assert a == b and "frame_accuracy" not in a
    with pytest.raises(VckitError):
        probe_scores(train, [], "linear")
    with pytest.raises(VckitError, match="unknown probe"):
        probe_scores(train, test, "svm")


def test_codebook_stats():
    uniform = codebook_stats(torch.arange(64).repeat(10), 64)
    assert uniform["perplexity"] == pytest.approx(64.0) and uniform["usage"] == 1.0 and uniform["codes_used"] == 64
    one = codebook_stats(torch.full((100,), 3), 64)
    assert one["perplexity"] == pytest.approx(1.0) and one["codes_used"] == 1 and one["usage"] == pytest.approx(1 / 64)
    half = codebook_stats(torch.arange(32).repeat(5), 64)
    assert half["perplexity"] == pytest.approx(32.0) and half["usage"] == 0.5 and sum(half["counts"]) == 160


# -- the judge's similarity -----------------------------------------------------
def test_one_speakers_embeddings_are_near_one(data_dir):
    """The same recording through different loudness and sample-rate paths embeds
    almost identically; the judge separates speakers."""
    from vckit.api import REPO_ROOT
    from vckit.evaluation.run import _judge_embed
    from vckit.models.verifier import load_verifier

    sv, meta = load_verifier(REPO_ROOT / "checkpoints" / "speaker_verification")
    sr = sv.cfg.mel.sample_rate
    path = data_dir / "vcc2016" / "TM1" / "100001.wav"
    a = _judge_embed(sv, load_audio(path, sr))
    b = _judge_embed(sv, load_audio(0.3 * load_audio(path, 16000, normalize=False), sr, 16000))
    assert float(a @ b) > 0.98
    same = [_judge_embed(sv, load_audio(data_dir / "vcc2016" / "TM1" / f"{u}.wav", sr)) for u in ("100003", "100004")]
    other = [_judge_embed(sv, load_audio(data_dir / "vcc2016" / s / "100003.wav", sr)) for s in ("SF1", "TF1")]
    assert min(float(a @ e) for e in same) > max(float(a @ e) for e in other)


# -- the whole evaluation -------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory, data_dir):
    """A tiny random VQ model checkpoint and a manifest of 4 parallel speakers x 5 + 6 FSDD digits."""
    from vckit.checkpoint import save_checkpoint
    from vckit.models.vc import build_model
    from vckit.config import Config
    from vckit.data.manifest import manifest_from_csv, write_manifest

    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    model = {k: v for k, v in TINY_MODEL.items() if k != "classifier"}
    cfg = Config.from_dict({"model": {**model, "vq": {"enabled": True, "codebook_size": 16}}})
    save_checkpoint(root / "ck", cfg, build_model(cfg).state_dict())
    rows = []
    for corpus, spk in SPEAKERS:
        rows += [r for r in manifest_from_csv(data_dir / corpus / "metadata.csv") if r["speaker"] == spk and r["utt_id"] in UTTS]
    rows += [r for r in manifest_from_csv(data_dir / "fsdd" / "metadata.csv") if r["speaker"] == "george"][:6]
    for r in rows:
        r["speaker"] = f"{'fsdd' if 'fsdd' in r['path'] else 'vcc2016'}:{r['speaker']}"
    assert len(rows) == 26
    write_manifest(rows, root / "data.jsonl")
    return root


def run_eval(root, *args):
    from vckit.cli import main

    return main(["eval", "--checkpoint", str(root / "ck"), "--data", str(root / "data.jsonl"), "--vocoder", "griffinlim",
                 "--device", "cpu", "--no-plots", "--quiet", *map(str, args)])


def test_eval_end_to_end(tiny_eval, capsys):
    out = tiny_eval / "report"
    assert run_eval(tiny_eval, "-o", out, "--parallel-pairs", 4, "--pairs-per-kind", 1) == 0
    printed = capsys.readouterr().out
    r = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert "MCD with DTW" in printed and "timing:" in printed
    assert r["command"].startswith("vckit eval --checkpoint") and r["command"] in md and "--parallel-pairs 4" in r["command"]
    assert r["data"]["utterances"] == 26 and r["data"]["speakers"] == 5
    # pairs: 4 parallel (vcc2016), one more of each gender combination
    pairs = r["pairs"]
    assert sum(p["parallel"] for p in pairs) == 4 and len(pairs) == 8
    assert sorted({p["kind"] for p in pairs if not p["parallel"]}) == ["f->f", "f->m", "m->f", "m->m"]
    for p in pairs:
        assert p["source_speaker"] != p["target_speaker"] and p["heldout"] not in p["refs"]
        if p["parallel"]:  # the scored utterance says the source's sentence; no reference does
            assert p["heldout"].endswith(p["source"].rsplit("/", 1)[1])
            assert not any(ref.endswith(p["source"].rsplit("/", 1)[1]) for ref in p["refs"])
            assert p["scores"]["source"]["mcd_db"] > 2.0 and p["scores"]["converted"]["mcd_db"] > 0
    a = r["conversion"]["all"]
    assert a["pairs"] == 8 and a["parallel_pairs"] == 4 and math.isfinite(a["converted"]["mcd_db"])
    assert all(math.isfinite(p["scores"]["converted_vs_source"]["mcd_db"]) for p in pairs)
    # the vocoder alone (Griffin-Lim here) keeps the source far better than a random model does
    voc = a["vocoder_only_vs_source"]
    assert voc["pairs"] == 8 and voc["mcd_db"] < a["converted_vs_source"]["mcd_db"] and voc["f0_corr"] > 0.5 and voc["cos_source"] > 0.5
    # what the conversion keeps of its source, on the source's time axis: per pair, overall and per direction
    for p in pairs:
        k = p["scores"]["kept_from_source"]
        assert set(k) == {"f0_corr_robust", "f0_gross_error_share", "voiced_both", "vuv_agreement", "voiced_recall", "loud_frames"}
        assert 0 <= k["vuv_agreement"] <= 1 and k["loud_frames"] > 50
    for group in ("all", "cross-gender", "f->m", "m->f"):
        assert math.isfinite(r["conversion"][group]["kept_from_source"]["vuv_agreement"])
    assert r["conversion"]["f->m"]["pairs"] == 1 + sum(p["kind"] == "f->m" for p in pairs if p["parallel"])
    kv = a["vocoder_only_kept_from_source"]  # the vocoder alone keeps the source's voicing and intonation
    assert kv["pairs"] == 8 and kv["vuv_agreement"] > 0.8 and kv["f0_corr_robust"] > 0.8
    assert a["converted"]["f0_gross_error_share"] >= 0 and "kept of its own source, f->m" in md
    # the judge: a target's own references are closer to the held-out utterance than the source is
    assert a["refs_cos_target"] > a["source_cos_target"]
    assert 0 <= r["judge"]["eer_on_data"] < 0.5
    # probe: 5 speakers with >= 4 utterances; chance 1/5; input mels identify speakers
    p = r["probe"]
    assert p["chance"] == pytest.approx(0.2) and len(p["speakers"]) == 5
    assert set(p["results"]) == {"log-mel frames (input)", "content, before VQ", "content codes", "speaker embedding"}
    assert p["results"]["log-mel frames (input)"]["linear"]["utterance_accuracy"] >= 0.6
    v = r["vq"]
    assert v["codebook_size"] == 16 and 1 <= v["perplexity"] <= 16 and v["codes_used"] >= 1
    assert math.isfinite(r["reconstruction"]["other_reference"]) and r["reconstruction"]["utterances"] > 0
    assert r["timing"]["total_s"] > 0 and "## Disentanglement probe" in md and "plots not asked for" in md
    # the plots of this report (matplotlib is in the dev extra): the probe, the judge's cosines, the codebook
    from vckit.evaluation.report import plot

    made = plot(r, out)
    assert made == {"files": ["probe.png", "similarity.png", "codebook.png"]}, made
    assert all((out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in made["files"])


def test_pairs_are_deterministic_for_a_seed(tiny_eval):
    from vckit.evaluation.pairs import load_data, make_pairs

    utts = load_data(tiny_eval / "data.jsonl")
    dur = np.array([float(u["duration"]) for u in utts])
    key = lambda ps: [(p.source, p.target_speaker, p.refs, p.heldout, p.parallel) for p in ps]  # noqa: E731
    a, b = make_pairs(utts, dur, seed=3), make_pairs(utts, dur, seed=3)
    assert key(a) == key(b) and len(a) == 20 + 4 * 3 and sum(p.parallel for p in a) == 20
    assert key(make_pairs(utts, dur, seed=4)) != key(a)
    assert len(make_pairs(utts, dur, parallel=0, per_kind=0)) == 0


def test_pairs_file(tiny_eval, data_dir, capsys):
    src = data_dir / "vcc2016" / "SF1" / "100004.wav"
    tgt = data_dir / "vcc2016" / "TM1" / "100004.wav"
    (tiny_eval / "pairs.csv").write_text(f"source,target_speaker,target\n{src},vcc2016:TM1,{tgt}\n{src},vcc2016:TF1,\n")
    assert run_eval(tiny_eval, "-o", tiny_eval / "r2", "--pairs", tiny_eval / "pairs.csv") == 0
    r = json.loads((tiny_eval / "r2" / "report.json").read_text())
    assert [(p["target_speaker"], p["parallel"], p["kind"]) for p in r["pairs"]] == [("vcc2016:TM1", True, "f->m"), ("vcc2016:TF1", False, "f->f")]
    assert r["pairs"][0]["heldout"] == str(tgt)


@pytest.mark.parametrize(
    "case, message",
    [
        ("checkpoint", "not a vckit checkpoint"),
        ("data", "data not found"),
        ("empty", "is empty"),
        ("one_speaker", "no conversion pairs"),
        ("pairs_columns", "lacks column"),
        ("pairs_speaker", "is not in the data"),
    ],
)
def test_clear_errors(tiny_eval, tmp_path, capsys, case, message):
    args = ["-o", tmp_path / "out"]
    if case == "checkpoint":
        args += ["--checkpoint", tmp_path]
    elif case == "data":
        args += ["--data", tmp_path / "missing.jsonl"]
    elif case == "empty":
        (tmp_path / "e.jsonl").write_text("\n")
        args += ["--data", tmp_path / "e.jsonl"]
    elif case == "one_speaker":
        rows = [json.loads(x) for x in (tiny_eval / "data.jsonl").read_text().splitlines()][:5]
        (tmp_path / "one.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        args += ["--data", tmp_path / "one.jsonl"]
    elif case == "pairs_columns":
        (tmp_path / "p.csv").write_text("src,tgt\na,b\n")
        args += ["--pairs", tmp_path / "p.csv"]
    else:
        (tmp_path / "p.csv").write_text(f"source,target_speaker\n{json.loads((tiny_eval / 'data.jsonl').read_text().splitlines()[0])['path']},nobody\n")
        args += ["--pairs", tmp_path / "p.csv"]
    assert run_eval(tiny_eval, *args) == 2  # later flags override the defaults given by run_eval
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_data_layouts(data_dir, tmp_path):
    """Corpus folders with metadata.csv, folders of corpora, speaker folders, manifests with relative paths."""
    import shutil

    from vckit.evaluation.pairs import load_data

    fsdd = load_data(data_dir / "fsdd")
    assert len(fsdd) == 300 and {u["gender"] for u in fsdd} == {"m"}
    assert fsdd[0]["key"] == "text:zero" and fsdd[0]["file"].endswith("0_george_0.wav")
    for spk in ("alice", "bob"):
        (tmp_path / "spk" / spk).mkdir(parents=True)
        shutil.copy(data_dir / "vcc2016" / "SF1" / "100001.wav", tmp_path / "spk" / spk / "100001.wav")
    folders = load_data(tmp_path / "spk")
    assert [(u["speaker"], u["gender"], u["key"]) for u in folders] == [("alice", "?", "id:100001"), ("bob", "?", "id:100001")]
    (tmp_path / "spk" / "m.jsonl").write_text('{"path": "alice/100001.wav", "speaker": "a", "gender": "F", "text": "Hello, World!"}\n')
    (row,) = load_data(tmp_path / "spk" / "m.jsonl")  # relative to the manifest's folder
    assert row["file"] == str((tmp_path / "spk" / "alice" / "100001.wav").resolve()) and row["key"] == "text:hello world" and row["gender"] == "f"

