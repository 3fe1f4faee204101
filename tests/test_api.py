"""The Python API on the shipped model: load, voice, convert."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import vckit
from vckit.audio import load_audio, resample
from vckit.errors import CheckpointError, TooShortAudioError, VckitError

HOP = 256


@pytest.fixture(scope="module")
def vc():
    """The shipped model, loaded the way the README does it (from the repository root)."""
    from vckit.api import REPO_ROOT

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO_ROOT)
        return vckit.load(checkpoint="checkpoints/default", vocoder="griffinlim", device="cpu")


@pytest.fixture(scope="module")
def files(data_dir):
    return {
        "source": data_dir / "vcc2016" / "SF1" / "100002.wav",  # 1.08 s, 16 kHz
        "ref_a": data_dir / "vcc2016" / "TM1" / "100001.wav",
        "ref_b": data_dir / "vcc2016" / "TM1" / "100003.wav",
        "other": data_dir / "vcc2016" / "TF1" / "100001.wav",
    }


def expected_samples(path) -> int:
    info = sf.info(str(path))
    return round(info.frames * 22050 / info.samplerate)


def test_loaded_model(vc):
    assert vc.sample_rate == 22050 and vc.device == torch.device("cpu")
    assert vc.model.classifier is None and not vc.model.training


def test_voice_embedding(vc, files):
    emb = vc.voice([files["ref_a"], files["ref_b"]]).embedding
    assert emb.shape == (128,) and emb.dtype == torch.float32 and torch.isfinite(emb).all()
    a, b = vc.voice(files["ref_a"]).embedding, vc.voice(files["ref_b"]).embedding
    assert torch.allclose(emb, (a + b) / 2, atol=1e-5)  # several clips: the mean embedding
    other = vc.voice(files["other"]).embedding
    cos = torch.nn.functional.cosine_similarity
    assert cos(a, b, dim=0) > cos(a, other, dim=0)  # same man closer than another speaker


def test_convert_a_file(vc, files):
    voice = vc.voice([files["ref_a"], files["ref_b"]])
    wav = vc.convert(files["source"], voice)
    assert isinstance(wav, np.ndarray) and wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - expected_samples(files["source"])) <= HOP
    assert np.isfinite(wav).all() and 0.001 < np.abs(wav).max() <= 1.0
    # the target may also be given as reference audio, made into the same Voice
    assert np.array_equal(vc.convert(files["source"], target=[files["ref_a"], files["ref_b"]]), wav)


def test_a_voice_built_by_hand_converts_as_the_one_voice_made(vc, files):
    from vckit.api import Voice

    made = vc.voice([files["ref_a"], files["ref_b"]])
    by_hand = Voice(made.embedding.clone(), made.f0_median)  # numbers kept elsewhere: no model id, no speech figures
    assert np.array_equal(vc.convert(files["source"], by_hand), vc.convert(files["source"], target=made))
    src = load_audio(files["source"], vc.config.mel.sample_rate, trim=False)
    assert vc.pitch_offset(src, by_hand) == vc.pitch_offset(src, made) != 0.0  # a woman's source, a man's voice
    with pytest.raises(VckitError, match=r"shape \(64,\), but this model's speaker embeddings are \(128,\)"):
        vc.convert(files["source"], Voice(torch.zeros(64), 200.0))


def test_a_bare_embedding_is_refused_with_what_to_pass_instead(vc, files):
    emb = vc.voice(files["ref_a"]).embedding
    said = r"^a speaker embedding alone is not a target voice: pass a Voice, from vc\.voice\(refs\), vc\.enrolled\(name\) or vckit\.Voice\(embedding, f0_median\)$"
    for bare in (emb, emb[None], emb.numpy()):
        with pytest.raises(VckitError, match=said):
            vc.convert(files["source"], bare)
    with pytest.raises(VckitError, match=said):
        vc.pitch_offset(np.zeros(22050, np.float32), emb)
    with pytest.raises(TypeError):
        vc.convert(files["source"], emb, target_f0=200.0)  # the F0 median travels in the Voice
    for gone in ("embed_speaker", "reference_f0", "convert_mel", "reconstruct"):
        assert not hasattr(vc, gone), gone  # the public surface: load, voice, convert (and enrolled, stream, save)


def test_arrays_in_with_their_sample_rate(vc, files):
    x, sr = sf.read(str(files["source"]), dtype="float32")
    assert sr == 16000
    ref, _ = sf.read(str(files["ref_a"]), dtype="float32")
    voice = vc.voice(ref, sr=16000)
    assert torch.allclose(voice.embedding, vc.voice(files["ref_a"]).embedding, atol=1e-4)
    wav = vc.convert(x, target=voice, sr=16000)
    assert abs(len(wav) - round(len(x) * 22050 / 16000)) <= HOP
    # the same audio as a tensor at another rate gives the same length
    x22 = torch.from_numpy(resample(x, 16000, 22050))
    assert abs(len(vc.convert(x22, target=voice, sr=22050)) - len(wav)) <= HOP
    with pytest.raises(VckitError, match="sr="):
        vc.convert(x, target=voice)


def test_converted_mels_change_with_the_target(vc, files):
    a = vc._convert_mel(files["source"], vc.voice(files["ref_a"]))
    b = vc._convert_mel(files["source"], vc.voice(files["other"]))
    assert a.shape == b.shape and a.shape[0] == 80
    assert (a - b).abs().mean() > 0.05


def test_quantize_switch_picks_codebook_or_continuous_codes(vq_checkpoint, files):
    def load(q):
        return vckit.load(checkpoint=vq_checkpoint, vocoder="griffinlim", device="cpu", quantize=q)

    cont, quant, half, auto = load(False), load(True), load(0.5), load(None)
    assert not cont.config.model.vq.at_inference and quant.config.model.vq.at_inference
    assert half.config.model.vq.at_inference and half.config.model.vq.inference_mix == 0.5
    src, ref = files["source"], cont.voice(files["ref_a"])  # one model's weights: one voice serves all four
    a, b, c = cont._convert_mel(src, ref), quant._convert_mel(src, ref), half._convert_mel(src, ref)
    assert a.shape == b.shape == c.shape and not torch.allclose(a, b) and not torch.allclose(a, c) and not torch.allclose(b, c)
    torch.testing.assert_close(auto._convert_mel(src, ref), a)  # the checkpoint says: continuous codes
    with pytest.raises(VckitError, match="between 0 and 1"):
        load(1.5)


def test_quantize_is_refused_for_a_model_without_a_codebook(vc):
    if vc.config.model.vq.enabled:
        pytest.skip("the shipped model has a VQ bottleneck")
    with pytest.raises(VckitError, match="no VQ bottleneck"):
        vckit.load(checkpoint="checkpoints/default", vocoder="griffinlim", device="cpu", quantize=True)


def test_copy_synthesis(vc, files):
    wav = vc.convert(files["ref_b"], files["ref_b"])  # the source in its own voice
    assert abs(len(wav) - expected_samples(files["ref_b"])) <= HOP
    assert np.isfinite(wav).all() and np.abs(wav).max() > 0.001
    # the source is its own reference, so it needs a reference's second of speech
    with pytest.raises(TooShortAudioError, match=r"too short: 0\.9\d s \(need at least 1 s\)"):
        vc.convert(files["source"], files["source"])  # 1.08 s with its silences, 0.9x s of speech


def test_too_short_reference(vc, files, tmp_path):
    sr = 16000
    t = np.arange(int(0.4 * sr)) / sr
    buzz = (0.2 * np.sign(np.sin(2 * np.pi * 140 * t)) * np.hanning(len(t)) ** 0.1).astype(np.float32)
    with pytest.raises(TooShortAudioError, match=r"^reference too short: 0\.4 s \(need at least 1 s\)$"):
        vc.voice(buzz, sr=sr)
    sf.write(tmp_path / "short.wav", buzz, sr)
    with pytest.raises(TooShortAudioError, match=r"^reference short\.wav too short: 0\.4 s \(need at least 1 s\)$"):
        vc.convert(files["source"], target=[files["ref_a"], tmp_path / "short.wav"])
    x, sr = sf.read(str(files["ref_a"]), dtype="float32")
    with pytest.raises(TooShortAudioError, match=r"too short: 0\.\d+ s \(need at least 1 s\)"):
        vc.voice(x[: int(0.9 * sr)], sr=sr)  # real speech: silence trimmed first
    with pytest.raises(VckitError, match="no reference"):
        vc.voice([])


def test_save_writes_and_refuses_to_overwrite(vc, files, tmp_path):
    wav = vc.convert(files["ref_a"], files["ref_a"])
    p = vc.save(tmp_path / "o.wav", wav)
    assert sf.info(str(p)).frames == len(wav) and sf.info(str(p)).samplerate == vc.sample_rate
    with pytest.raises(VckitError, match="already exists"):
        vc.save(tmp_path / "o.wav", wav)


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        vckit.load(checkpoint=tmp_path / "nope", vocoder="griffinlim", device="cpu")
    with pytest.raises(VckitError, match="unknown vocoder"):
        vckit.load(vocoder="wavenet", device="cpu")
    with pytest.raises(VckitError, match="unknown device"):
        vckit.load(vocoder="griffinlim", device="tpu")


def test_import_stays_light():
    import subprocess
    import sys

    code = "import sys, vckit; print(sorted(m for m in ('torch', 'gradio', 'tensorboard') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


# -- reference checks and the silence gate ------------------------------------------------
def synthetic(kind: str, seconds: float = 4.0, sr: int = 16000) -> np.ndarray:
    """White noise, a steady tone, a sine sweep, a vibrato tone, or a sequence of major chords (a crude piece of music)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    if kind == "noise":
        return (0.1 * rng.standard_normal(len(t))).astype(np.float32)
    if kind == "tone":
        return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    if kind in ("sweep", "vibrato"):  # 100 -> 600 Hz, logarithmic, over the clip; 200 Hz +- 50 Hz at 0.5 Hz
        f = 100 * 6 ** (t / seconds) if kind == "sweep" else 200 + 50 * np.sin(np.pi * t)
        return (0.3 * np.sin(2 * np.pi * np.cumsum(f) / sr)).astype(np.float32)
    beat = t % 0.5  # a new chord every half second, each note decaying
    roots = np.where((t // 0.5) % 2 == 0, 261.6, 220.0)
    x = sum(np.sin(2 * np.pi * roots * ratio * k * t) / k for ratio in (1, 1.26, 1.5) for k in range(1, 6))
    return (0.05 * x * np.exp(-2 * beat)).astype(np.float32)


def test_measure_speech_tells_speech_from_noise_and_music(files):
    from vckit.activity import measure_speech

    sr = 22050
    speech = load_audio(files["ref_a"], sr)
    m = measure_speech(speech, sr)
    assert 0.6 * m.seconds < m.speech_seconds <= m.seconds and m.snr_db > 20
    for kind in ("noise", "tone", "sweep", "vibrato", "chords"):
        assert measure_speech(load_audio(synthetic(kind), sr, 16000), sr).speech_seconds < 0.2, kind
    noise = np.random.default_rng(1).standard_normal(len(speech)).astype(np.float32)
    noisy = speech + noise * np.sqrt(np.mean(speech**2) / np.mean(noise**2)) * 10 ** (-3 / 20)  # 3 dB SNR
    n = measure_speech(load_audio(noisy, sr, sr), sr)
    assert n.snr_db < 12 < m.snr_db


@pytest.mark.parametrize("kind", ["noise", "tone", "sweep", "chords"])
def test_a_reference_without_speech_is_refused(vc, kind):
    from vckit.errors import NoSpeechError

    with pytest.raises(NoSpeechError, match=r"^reference holds no speech that vckit can hear \(0\.\d s of 4\.0 s\)"):
        vc.voice(synthetic(kind), sr=16000)


def test_voice_reports_speech_and_warnings(vc, files, caplog):
    caplog.set_level("WARNING", logger="vckit.api.references")  # the CLI raises it: it prints them itself
    one = vc.voice(files["ref_a"])
    assert 0 < one.speech_seconds <= one.seconds < 4
    assert any("only" in w and "s of speech in the reference:" in w for w in one.warnings)  # under 3 s in all
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == list(one.warnings)
    two = vc.voice([files["ref_a"], files["ref_b"]])
    assert two.speech_seconds > 3 and two.warnings == ()
    x, sr = sf.read(str(files["ref_a"]), dtype="float32")
    tail = np.concatenate([x, synthetic("chords", 12.0, sr)])  # 12 s of music after the speech
    mixed = vc.voice(tail, sr=sr)
    assert mixed.speech_seconds < 0.3 * mixed.seconds and any("sound like speech" in w for w in mixed.warnings)
    rng = np.random.default_rng(0)
    noisy = vc.voice(np.concatenate([x, x]) + 0.05 * rng.standard_normal(2 * len(x)).astype(np.float32), sr=sr)
    assert any("is noisy" in w for w in noisy.warnings)


def test_silence_in_the_source_stays_silent(vc, files):
    x, sr = sf.read(str(files["source"]), dtype="float32")
    src = np.concatenate([np.zeros(sr, np.float32), x])  # 1 s of digital silence, then speech
    out = vc.convert(src, target=vc.voice([files["ref_a"], files["ref_b"]]), sr=sr)

    def dbfs(a):
        return 20 * np.log10(np.sqrt(np.mean(np.square(a, dtype=np.float64))) + 1e-12)

    rate = vc.sample_rate
    assert dbfs(out[: int(0.8 * rate)]) < -60
    assert dbfs(out[int(1.2 * rate) :]) > -35  # the speech is untouched


def test_a_voice_prints_what_a_reader_needs_not_its_128_numbers():
    import torch

    from vckit.api import Voice

    text = repr(Voice(torch.randn(128), 201.3, "abcdef0123456789", 4.2, 3.1, ("short",)))
    assert text == "Voice(128-dim embedding, F0 median 201 Hz, 3.1 s of speech in 4.2 s, model abcdef012345, 1 warning(s))"


def test_speech_span_cuts_the_room_tone_around_a_clip(files):
    from vckit.activity import speech_span

    sr = 22050
    speech = load_audio(files["ref_a"], sr)
    tone = (0.01 * np.random.default_rng(0).standard_normal(2 * sr)).astype(np.float32)  # 2 s of room noise either side
    clip = np.concatenate([tone, speech, tone])
    lo, hi = speech_span(clip, sr)
    assert abs(lo - 2 * sr) < 0.3 * sr and abs((len(clip) - hi) - 2 * sr) < 0.3 * sr
    assert speech_span(tone, sr) == (0, len(tone))  # no speech: nothing to cut to


def test_precision_picks_the_vocoders_arithmetic(monkeypatch):
    from vckit import devices

    cpu = torch.device("cpu")
    assert devices.vocoder_dtype("fp32", cpu) == torch.float32 and devices.vocoder_dtype("bf16", cpu) == torch.bfloat16
    monkeypatch.setattr(devices, "native_bf16", lambda d: True)
    assert devices.vocoder_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(devices, "native_bf16", lambda d: False)
    assert devices.vocoder_dtype("auto", cpu) == torch.float32  # emulated bf16 could be slower
    with pytest.raises(VckitError, match="unknown precision 'fp16'"):
        devices.vocoder_dtype("fp16", cpu)


def test_a_bf16_vocoder_says_what_the_fp32_one_says(files):
    """``precision="bf16"`` (what ``auto`` picks on CPUs with native bfloat16) runs HiFi-GAN in
    bfloat16 and hands back float32 audio that follows the float32 vocoder's closely; Griffin-Lim
    and the model itself stay in float32, and a stream can still ask for float32."""
    fp32 = vckit.load(device="cpu", precision="fp32")
    bf16 = vckit.load(device="cpu", precision="bf16")
    assert fp32.vocoder.dtype == torch.float32 and bf16.vocoder.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    voice = fp32.voice(str(files["ref_a"]))
    a = fp32.convert(str(files["source"]), voice)
    b = bf16.convert(str(files["source"]), voice)
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape and bool(np.isfinite(b).all())
    snr = 10 * np.log10(np.sum(a.astype(np.float64) ** 2) / np.sum((a.astype(np.float64) - b) ** 2))
    assert snr > 10, f"bf16 output strays from fp32: {snr:.1f} dB"
    assert vckit.load(device="cpu", vocoder="griffinlim", precision="bf16").vocoder.dtype == torch.float32
    with pytest.raises(VckitError, match="unknown precision"):
        vckit.load(device="cpu", precision="half")
