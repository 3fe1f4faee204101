"""The F0 path, the phonetic teacher and the model variants that read them."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from vckit.audio import load_audio
from vckit.config import ContentConfig, DecoderConfig, F0Config, MelConfig, ModelConfig, PhoneticHeadConfig, SpeakerConfig
from vckit.models.vc import Frames, VoiceConversionModel, register_shift
from vckit.pitch import clean_octaves, f0_track

SR = 22050
HOP = 256


def harmonic_tone(f0: np.ndarray, sr: int = SR, weak_fundamental: bool = False) -> np.ndarray:
    """A voiced-like signal with harmonics following ``f0`` (Hz per sample)."""
    phase = 2 * np.pi * np.cumsum(f0) / sr
    amps = [0.1 if weak_fundamental else 1.0, 0.8, 0.6, 0.4, 0.3]
    return (0.1 * sum(a * np.sin((k + 1) * phase) for k, a in enumerate(amps))).astype(np.float32)


@pytest.mark.parametrize("hz", [90.0, 140.0, 220.0, 330.0])
def test_f0_track_finds_a_steady_pitch_on_mel_frames(hz):
    wav = harmonic_tone(np.full(SR, hz))
    n = len(wav) // HOP
    f0 = f0_track(wav, SR, hop=HOP, n_frames=n)
    assert f0.shape == (n,)
    voiced = f0[5:-5]
    assert (voiced > 0).mean() > 0.95
    assert np.median(voiced) == pytest.approx(hz, rel=0.01)


def test_f0_track_follows_a_glide_and_survives_a_weak_fundamental():
    glide = np.linspace(200.0, 120.0, SR)  # a falling glide, as at the end of a sentence
    wav = harmonic_tone(glide, weak_fundamental=True)
    n = len(wav) // HOP
    f0 = f0_track(wav, SR, hop=HOP, n_frames=n)
    centres = (np.arange(n) * HOP + HOP // 2).clip(max=SR - 1)
    ok = f0[5:-5] > 0
    err = np.abs(np.log2(f0[5:-5][ok] / glide[centres][5:-5][ok]))
    assert ok.mean() > 0.9
    assert np.mean(err > 0.5) < 0.02  # no octave errors
    assert np.median(err) < 0.02


def test_silence_is_unvoiced_and_short_runs_are_dropped():
    wav = np.concatenate([np.zeros(SR // 2, np.float32), harmonic_tone(np.full(SR // 2, 150.0))])
    f0 = f0_track(wav, SR, hop=HOP, n_frames=len(wav) // HOP)
    half = len(f0) // 2
    assert (f0[: half - 4] == 0).all() and (f0[half + 4 :] > 0).mean() > 0.9
    spiky = np.zeros(100, np.float32)
    spiky[10:12] = 150.0  # a two-frame voiced run
    spiky[40:80] = 150.0
    spiky[50] = 300.0  # an octave jump
    out = clean_octaves(spiky)
    assert (out[10:12] == 0).all() and out[50] == pytest.approx(150.0)


def test_f0_track_of_real_speech_separates_a_male_and_a_female_voice(data_dir):
    male = load_audio(data_dir / "vcc2016" / "SM1" / "100001.wav", SR)
    female = load_audio(data_dir / "vcc2016" / "SF1" / "100001.wav", SR)
    fm, ff = (f0_track(w, SR, hop=HOP, n_frames=len(w) // HOP) for w in (male, female))
    assert 80 < np.median(fm[fm > 0]) < 140 < 170 < np.median(ff[ff > 0]) < 260
    assert (fm > 0).mean() > 0.15 and (ff > 0).mean() > 0.3  # SM1 100001 is short on voicing (pyin calls hum at 55 Hz voiced)


def test_register_shift_moves_the_median_onto_the_target():
    f0 = torch.tensor([0.0] * 5 + [100.0] * 20 + [0.0] * 5)
    assert register_shift(f0, 200.0) == pytest.approx(12.0)
    assert register_shift(f0, 200.0, semitones=-2) == pytest.approx(10.0)
    assert register_shift(f0, None, semitones=3) == 3.0
    assert register_shift(torch.zeros(30), 200.0) == 0.0  # nothing voiced: no shift


# -- the phonetic teacher --------------------------------------------------------
@pytest.fixture(scope="module")
def teacher():
    from vckit.models.teacher import PhoneticTeacher

    return PhoneticTeacher(threads=1)


def test_teacher_frames_line_up_with_mel_frames(teacher, data_dir):
    from vckit.models.teacher import N_CLASSES

    wav = load_audio(data_dir / "vctk" / "p225" / "p225_001.wav", SR)
    n = len(wav) // HOP
    fr = teacher.frames(wav, SR, n, HOP)
    assert fr.hidden.shape == (n, 256) and fr.log_probs.shape == (n, N_CLASSES)
    assert np.isfinite(fr.hidden).all()
    mass = np.exp(fr.log_probs).sum(1)  # interpolated log-posteriors: at most one, one on the teacher's own frames
    assert mass.max() < 1.01 and np.median(mass) > 0.95
    # speech is mostly not blank where it is loud; silence mostly is
    from vckit.models.teacher import BLANK

    best = fr.log_probs.argmax(1)
    assert 0.03 < (best != BLANK).mean() < 0.6


def test_long_audio_goes_through_the_teacher_in_windows(teacher, data_dir):
    from vckit.models.teacher import SAMPLE_RATE, WINDOW_S

    wav = load_audio(data_dir / "vctk" / "p225" / "p225_001.wav", SAMPLE_RATE)
    long = np.tile(wav, int(WINDOW_S * 2.5 * SAMPLE_RATE / len(wav)) + 1)
    out = teacher.run16k(long)
    assert out.hidden.shape[0] == len(long) // 320 + 1
    assert np.isfinite(out.hidden).all()
    # the windowed result agrees with a whole run where both exist (inside the first window)
    short = teacher.run16k(long[: int(WINDOW_S * SAMPLE_RATE)])
    k = len(short.hidden) - 200
    assert np.corrcoef(out.hidden[100:k].ravel(), short.hidden[100:k].ravel())[0, 1] > 0.95


# -- model variants ----------------------------------------------------------------
def tiny(**kw) -> ModelConfig:
    base = ModelConfig(
        content=ContentConfig(channels=32, blocks=2, kernel_size=3, downsample=(1, 2), dim=4),
        speaker=SpeakerConfig(channels=32, blocks=2, kernel_size=3, dim=16),
        decoder=DecoderConfig(channels=32, blocks=2, kernel_size=3),
    )
    return dataclasses.replace(base, **kw)


def test_the_decoder_follows_the_f0_it_is_given():
    torch.manual_seed(0)
    model = VoiceConversionModel(MelConfig(), tiny(f0=F0Config(enabled=True))).eval()
    torch.nn.init.normal_(model.decoder.f0_late.weight, std=0.5)  # zero at init: give the late path a say
    mel = torch.randn(1, 80, 40) - 5
    spk = model.embed_speaker(mel)
    f0 = torch.full((1, 40), 120.0)
    with pytest.raises(ValueError, match="F0"):
        model.convert(mel, spk)
    a = model.convert(Frames(mel, f0), spk)
    b = model.convert(Frames(mel, f0), spk, f0_shift=12.0)
    c = model.convert(Frames(mel, f0 * 2), spk)
    assert a.shape == mel.shape
    assert (a - b).abs().mean() > 1e-3  # the F0 reaches the output
    torch.testing.assert_close(b, c)  # a shift of 12 semitones is an F0 twice as high
    feats = model.f0_features(torch.tensor([[0.0, math.exp(5.0)]]))
    torch.testing.assert_close(feats, torch.tensor([[[0.0, 0.0], [0.0, 1.0]]]))


def test_a_phonetic_encoder_reads_projected_teacher_features():
    cfg = tiny(content=ContentConfig(channels=32, blocks=2, kernel_size=3, downsample=(1, 2), dim=4, input="phonetic", input_dim=6))
    model = VoiceConversionModel(MelConfig(), cfg).eval()
    assert model.needs_phonetic and model.content_encoder.teacher_proj.shape == (6, 256)
    with torch.no_grad():
        model.content_encoder.teacher_proj.normal_()
    x = model.content_encoder.project_teacher(torch.randn(1, 30, 256))
    assert x.shape == (1, 6, 30) and x.abs().max() <= 4.0
    mel = torch.randn(1, 80, 30) - 5
    with pytest.raises(ValueError, match="phonetic"):
        model.convert(mel, model.embed_speaker(mel))
    out = model.convert(Frames(mel, phonetic=x), model.embed_speaker(mel))
    assert out.shape == mel.shape
    # the projection is part of the weights, so conversion projects as the cache did
    assert {"content_encoder.teacher_mean", "content_encoder.teacher_proj"} <= set(model.state_dict())


def test_the_phonetic_head_is_trained_only():
    cfg = tiny(phonetic_head=PhoneticHeadConfig(enabled=True, classes=7, channels=8), n_speakers=3)
    model = VoiceConversionModel(MelConfig(), cfg)
    mel = torch.randn(2, 80, 33) - 5
    out = model(mel, mel, speaker_ids=torch.tensor([0, 1]))
    assert out.phonetic_logits.shape == (2, 7, 33)
    inference = VoiceConversionModel(MelConfig(), dataclasses.replace(cfg, n_speakers=0))
    assert inference.phonetic_head is None


def test_soft_cross_entropy_prefers_the_teacher():
    from vckit.data.frame_features import dense_posteriors
    from vckit.models.phonetic_head import soft_cross_entropy

    idx = torch.tensor([[[2, 0, 1]] * 5])
    p = torch.tensor([[[230, 20, 5]] * 5], dtype=torch.uint8)
    target = dense_posteriors(idx, p, 4)
    torch.testing.assert_close(target.sum(-1), torch.ones(1, 5))
    good = torch.zeros(1, 4, 5)
    good[:, 2] = 5.0
    bad = torch.zeros(1, 4, 5)
    bad[:, 3] = 5.0
    assert soft_cross_entropy(good, target) < soft_cross_entropy(bad, target)


# -- virtual speakers ---------------------------------------------------------------
def test_a_scaled_mel_is_the_mel_of_the_scaled_voice():
    from vckit.audio import log_mel
    from vckit.data.virtual_speakers import scaled_mel

    cfg = MelConfig()
    tone = harmonic_tone(np.full(SR, 200.0))
    n = len(tone) // HOP
    lower = scaled_mel(tone, SR, 0.75, n, cfg)
    assert lower.shape == (n, 80)  # the timing is kept
    expected = log_mel(harmonic_tone(np.full(SR, 150.0)), cfg).numpy().T
    mid = slice(10, n - 10)
    assert np.abs(lower[mid].mean(0) - expected[mid].mean(0)).mean() < 0.35
    assert np.abs(lower[mid].mean(0) - log_mel(tone, cfg).numpy().T[mid].mean(0)).mean() > 0.7


def test_virtual_speakers_copy_the_content_and_scale_the_f0(tiny_cache, tmp_path, capsys):
    """``vckit prepare virtual-speakers CACHE``, as a user runs it."""
    import shutil

    from vckit.cli import main
    from vckit.data.features import FeatureStore
    from vckit.data.frame_features import cache_frame_features
    from vckit.data.manifest import read_manifest

    feats = tmp_path / "features"
    shutil.copytree(tiny_cache["features"], feats)
    shutil.copy(tiny_cache["train"], tmp_path / "train.jsonl")
    cache_frame_features(feats, dims=8, top_k=2, progress=False)
    assert main(["prepare", "virtual-speakers", str(tmp_path), "--ratios", "1.0"]) == 2
    assert "--ratios must lie between 0.5 and 2" in capsys.readouterr().err
    assert main(["prepare", "virtual-speakers", str(tmp_path), "--ratios", "0.8", "--quiet"]) == 0
    rows = read_manifest(tmp_path / "virtual" / "train.jsonl")
    train = read_manifest(tiny_cache["train"])
    assert f"virtual speakers: {len(rows)} rows" in capsys.readouterr().out and len(rows) == 2 * len(train)
    store = FeatureStore.load(tmp_path / "virtual" / "features")
    index = {u["path"]: i for i, u in enumerate(store.utterances)}
    r = train[0]
    a, b = store.frames(index[r["path"]]), store.frames(index[r["path"] + "#x0.8"])
    assert store.utterances[index[r["path"] + "#x0.8"]]["speaker"] == r["speaker"] + "@0.8"
    assert a.mel.shape == b.mel.shape and not torch.equal(a.mel, b.mel)
    torch.testing.assert_close(b.f0, a.f0 * 0.8, rtol=2e-3, atol=0.1)
    torch.testing.assert_close(b.phonetic, a.phonetic)


def test_harmonic_prior_puts_peaks_at_the_harmonics_and_nothing_where_unvoiced():
    from vckit.audio import mel_filterbank
    from vckit.config import MelConfig
    from vckit.pitch import harmonic_prior

    cfg = MelConfig()
    fb = mel_filterbank(cfg)
    prior = harmonic_prior(torch.tensor([[200.0, 0.0, 120.0]]), fb, cfg.sample_rate, cfg.n_fft)
    assert prior.shape == (1, cfg.n_mels, 3)
    assert prior[0, :, 1].abs().max() == 0  # unvoiced: no comb
    assert prior.max() <= 0 and prior.min() >= -1
    # at 200 Hz, the band centred on a harmonic is far above the band between two
    centres = (fb * torch.arange(fb.shape[1]) * cfg.sample_rate / cfg.n_fft).sum(1) / fb.sum(1)
    on = int(torch.argmin((centres - 400.0).abs()))
    off = int(torch.argmin((centres - 500.0).abs()))
    assert prior[0, on, 0] > prior[0, off, 0] + 0.3
    # the comb moves with F0: 120 Hz has a harmonic at 480 Hz, where 200 Hz has a gap
    assert prior[0, off, 2] > prior[0, off, 0] + 0.3


def test_a_decoder_warm_started_with_the_harmonic_prior_starts_where_it_was():
    import dataclasses

    from vckit.config import Config, ContentConfig, DecoderConfig, F0Config, ModelConfig, SpeakerConfig
    from vckit.models.vc import Frames, build_model

    small = ModelConfig(
        content=ContentConfig(channels=16, blocks=2, dim=8, downsample=(1, 2)), speaker=SpeakerConfig(channels=16, blocks=1, dim=16),
        decoder=DecoderConfig(channels=16, blocks=2), f0=F0Config(enabled=True),
    )
    torch.manual_seed(0)
    plain = build_model(Config(model=small)).eval()
    prior_cfg = Config(model=dataclasses.replace(small, f0=F0Config(enabled=True, harmonic_prior=True)))
    with_prior = build_model(prior_cfg).eval()
    missing, unexpected = with_prior.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["decoder.harm_in.bias", "decoder.harm_in.weight", "decoder.harm_late.bias", "decoder.harm_late.weight"] and not unexpected
    mel, f0 = torch.randn(1, 80, 40), torch.full((1, 40), 150.0)
    spk = plain.embed_speaker(mel)
    x = Frames(mel, f0)
    torch.testing.assert_close(with_prior.convert(x, spk, f0_shift=-5.0), plain.convert(x, spk, f0_shift=-5.0))
    assert "filterbank" not in with_prior.state_dict()  # made from the mel config, not saved
    # and the prior reaches the output once its layers are trained away from zero
    torch.nn.init.normal_(with_prior.decoder.harm_late.weight)
    assert not torch.allclose(with_prior.convert(x, spk, f0_shift=-5.0), plain.convert(x, spk, f0_shift=-5.0))
