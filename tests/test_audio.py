"""Audio front-end: bad input raises the documented error, odd formats load,
and the log-mel matches an independent librosa computation."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from vckit.audio import MelSpectrogram, load_audio, log_mel, mel_filterbank, read_audio, write_wav
from vckit.config import MelConfig
from vckit.errors import (
    AudioError,
    EmptyAudioError,
    NonFiniteAudioError,
    SilentAudioError,
    TooShortAudioError,
    UnreadableAudioError,
    VckitError,
)

SR = 22050


def tone(seconds: float, sr: int, freq: float = 220.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    x = x.astype(np.float32)
    if channels > 1:  # (samples, channels), slightly different per channel
        x = np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1)
    return x


# -- bad input -----------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(UnreadableAudioError, match="not found"):
        load_audio(tmp_path / "nope.wav", SR)


def test_folder_is_not_audio(tmp_path):
    with pytest.raises(UnreadableAudioError, match="folder"):
        load_audio(tmp_path, SR)


def test_zero_byte_file_is_empty(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(EmptyAudioError, match="empty.wav is empty"):
        load_audio(p, SR)


def test_wav_with_no_samples_is_empty(tmp_path):
    p = tmp_path / "nothing.wav"
    sf.write(p, np.zeros(0, dtype=np.float32), 16000)
    assert p.stat().st_size > 0  # a valid header, zero frames
    with pytest.raises(EmptyAudioError, match="0 samples"):
        load_audio(p, SR)


@pytest.mark.parametrize("arr", [np.zeros(0, np.float32), np.zeros((2, 0), np.float32), torch.zeros(0)])
def test_zero_length_array_is_empty(arr):
    with pytest.raises(EmptyAudioError):
        load_audio(arr, SR, sr=16000)


def test_all_zeros_is_silent(tmp_path):
    with pytest.raises(SilentAudioError, match="silent"):
        load_audio(np.zeros(16000, np.float32), SR, sr=16000)
    p = tmp_path / "zeros.wav"
    sf.write(p, np.zeros(16000, np.float32), 16000)
    with pytest.raises(SilentAudioError, match="zeros.wav"):
        load_audio(p, SR)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(bad):
    x = tone(1.0, 16000)
    x[100] = bad
    with pytest.raises(NonFiniteAudioError):
        load_audio(x, SR, sr=16000)


def test_nan_in_a_float_wav_file(tmp_path):
    x = tone(1.0, 16000)
    x[5000] = np.nan
    p = tmp_path / "nan.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    with pytest.raises(NonFiniteAudioError, match="nan.wav"):
        load_audio(p, SR)


def test_text_file_renamed_wav(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("this is not audio at all\n" * 20)
    with pytest.raises(UnreadableAudioError, match="notes.wav"):
        load_audio(p, SR)


def test_corrupt_header(tmp_path, speech):
    data = bytearray(speech.read_bytes())
    data[0:4] = b"RIFX"  # wrong magic
    data[8:16] = b"XXXXXXXX"
    p = tmp_path / "corrupt.wav"
    p.write_bytes(bytes(data))
    with pytest.raises(UnreadableAudioError):
        load_audio(p, SR)


def test_truncated_header(tmp_path, speech):
    p = tmp_path / "truncated.wav"
    p.write_bytes(speech.read_bytes()[:20])
    with pytest.raises(UnreadableAudioError, match="truncated.wav"):
        load_audio(p, SR)


def test_too_short_message():
    x = tone(0.4, 16000)
    with pytest.raises(TooShortAudioError, match=r"^reference too short: 0\.4 s \(need at least 1 s\)$"):
        load_audio(x, SR, sr=16000, min_seconds=1.0, what="reference")
    load_audio(tone(1.2, 16000), SR, sr=16000, min_seconds=1.0)  # long enough: fine


def test_array_needs_sample_rate():
    with pytest.raises(VckitError, match="sr="):
        load_audio(tone(1.0, 16000), SR)


def test_errors_form_one_hierarchy():
    for e in (EmptyAudioError, SilentAudioError, NonFiniteAudioError, UnreadableAudioError, TooShortAudioError):
        assert issubclass(e, AudioError) and issubclass(e, VckitError)


# -- formats that must load --------------------------------------------------------
@pytest.mark.parametrize(
    "sr,channels,subtype",
    [(16000, 2, "PCM_16"), (16000, 1, "PCM_24"), (8000, 1, "PCM_16"), (48000, 1, "PCM_16"), (44100, 2, "PCM_24"), (22050, 1, "FLOAT")],
)
def test_formats_load(tmp_path, sr, channels, subtype):
    p = tmp_path / f"x_{sr}_{channels}_{subtype}.wav"
    sf.write(p, tone(1.5, sr, channels=channels), sr, subtype=subtype)
    raw, file_sr = read_audio(p)
    assert raw.shape == (channels, int(1.5 * sr)) and file_sr == sr
    wav = load_audio(p, SR, trim=False)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - 1.5 * SR) <= 2
    assert np.isfinite(wav).all()
    assert 0.05 < np.sqrt(np.mean(wav**2)) < 0.2  # normalised to about -20 dBFS


def test_a_file_that_decodes_shorter_than_it_declares_is_refused_not_cut(tmp_path):
    """An Ogg file with bytes damaged three quarters in declares 1 s but decodes about half: converting that half
    would lose the rest unnoticed (the fuzz run of 2026-12-06 found it), so both reading paths refuse it."""
    p = tmp_path / "damaged.ogg"
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (44100, 2)).astype(np.float32)
    sf.write(p, x, 44100, format="OGG", subtype="VORBIS")
    intact, _ = read_audio(p)
    mono, _ = read_audio(p, mono=True)  # block by block
    assert intact.shape == (2, 44100) and np.allclose(mono, intact.mean(axis=0), atol=1e-6)
    data = bytearray(p.read_bytes())
    at = int(0.75 * len(data))
    data[at : at + 8] = bytes(b ^ 0x5A for b in data[at : at + 8])
    p.write_bytes(bytes(data))
    assert sf.info(str(p)).frames == 44100
    for as_mono in (False, True):
        with pytest.raises(UnreadableAudioError, match=r"damaged.ogg is damaged: it declares 1.00 s but only 0\.\d\d s"):
            read_audio(p, mono=as_mono)


def test_stereo_24bit_44k_real_file(data_dir):
    p = data_dir / "misc_public_domain" / "jfk" / "jfk_inaugural_1961_excerpt.flac"
    info = sf.info(str(p))
    assert (info.samplerate, info.channels, info.subtype) == (44100, 2, "PCM_24")
    wav = load_audio(p, SR, trim=False)
    assert abs(len(wav) - info.frames * SR / info.samplerate) <= 2
    assert np.isfinite(wav).all() and np.abs(wav).max() <= 0.95 + 1e-6


def test_array_inputs_int16_and_channels_first():
    x = tone(1.0, 16000)
    a = load_audio((x * 32767).astype(np.int16), SR, sr=16000, trim=False)
    b = load_audio(x, SR, sr=16000, trim=False)
    assert np.allclose(a, b, atol=1e-3)
    st = load_audio(np.stack([x, x]), SR, sr=16000, trim=False)  # (channels, samples)
    assert np.allclose(st, b, atol=1e-6)


def test_trim_removes_leading_and_trailing_silence():
    sr = 16000
    x = np.concatenate([np.zeros(sr), tone(1.0, sr), np.zeros(sr)]).astype(np.float32)
    out = load_audio(x, sr, sr=sr)
    assert 1.0 <= len(out) / sr <= 1.2


def test_write_wav_refuses_to_overwrite(tmp_path):
    p = tmp_path / "out.wav"
    write_wav(p, tone(0.5, SR), SR)
    with pytest.raises(VckitError, match="already exists"):
        write_wav(p, tone(0.5, SR), SR)
    write_wav(p, tone(0.25, SR), SR, overwrite=True)
    assert sf.info(str(p)).frames == int(0.25 * SR)
    assert [q.name for q in tmp_path.iterdir()] == ["out.wav"]  # no temp files left


# -- mel front-end -------------------------------------------------------------------
def test_filterbank_matches_librosa_slaney():
    librosa = pytest.importorskip("librosa")
    fb = mel_filterbank(MelConfig()).numpy()
    ref = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000)
    assert fb.shape == ref.shape == (80, 513)
    np.testing.assert_allclose(fb, ref, rtol=1e-5, atol=1e-7)  # float32 rounding


def test_filterbank_htk_matches_librosa():
    librosa = pytest.importorskip("librosa")
    cfg = MelConfig(sample_rate=16000, n_fft=512, hop_length=128, win_length=512, n_mels=40, fmax=7600.0, mel_scale="htk")
    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, fmin=0, fmax=7600, htk=True)
    np.testing.assert_allclose(mel_filterbank(cfg).numpy(), ref, rtol=1e-5, atol=1e-7)


def reference_log_mel(wav: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """Independent float64 log-mel: reflect pad by (n_fft - hop) / 2, uncentred
    hann STFT, magnitude, Slaney mel, log clamped at the floor."""
    import librosa

    pad = (cfg.n_fft - cfg.hop_length) // 2
    x = np.pad(wav.astype(np.float64), (pad, pad), mode="reflect")
    mag = np.abs(librosa.stft(x, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, window="hann", center=False))
    fb = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax).astype(np.float64)
    return np.log(np.maximum(fb @ mag, cfg.log_floor))


@pytest.mark.parametrize("trim", [0, 1, 255, 1000])
def test_log_mel_matches_librosa(speech, trim):
    pytest.importorskip("librosa")
    cfg = MelConfig()
    wav = load_audio(speech, cfg.sample_rate)
    wav = wav[: len(wav) - trim]
    mine = log_mel(wav, cfg).numpy()
    ref = reference_log_mel(wav, cfg)
    assert mine.shape == ref.shape == (80, len(wav) // cfg.hop_length)
    err = np.abs(mine - ref)
    # float32 vs float64: 1e-4 nats wherever there is energy; near the 1e-5 floor
    # the float32 STFT's absolute error is a larger share of the value
    loud = ref > np.log(1e-3)
    assert loud.mean() > 0.5
    assert err[loud].max() < 1e-4, err[loud].max()
    assert err.max() < 1e-3, err.max()


@pytest.mark.parametrize("n", [385, 1000, 22050, 22050 + 255, 22050 + 256])
def test_frames_equal_length_over_hop(n):
    cfg = MelConfig()
    x = torch.from_numpy(tone(n / SR + 1e-9, SR)[:n])
    assert log_mel(x, cfg).shape == (80, n // cfg.hop_length)
    batch = MelSpectrogram(cfg)(torch.stack([x, x * 0.5]))
    assert batch.shape == (2, 80, n // cfg.hop_length)


def test_log_mel_floor_and_silence():
    cfg = MelConfig()
    out = log_mel(torch.zeros(4096), cfg)
    assert torch.allclose(out, torch.full_like(out, np.log(cfg.log_floor)))


def test_mel_config_is_validated():
    from vckit.errors import ConfigError

    with pytest.raises(ConfigError, match="fmax"):
        MelConfig(fmax=20000.0)
    with pytest.raises(ConfigError, match="win_length"):
        MelConfig(win_length=2048)
    with pytest.raises(ConfigError, match="even"):
        MelConfig(hop_length=255)


def test_wav_file_and_array_give_the_same_features(tmp_path):
    sr = 16000
    x = tone(1.0, sr)
    p = tmp_path / "t.wav"
    sf.write(p, x, sr, subtype="FLOAT")
    assert np.allclose(load_audio(p, SR), load_audio(x, SR, sr=sr), atol=1e-6)
