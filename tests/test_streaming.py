"""Live conversion: the causal layers, and a stream that is exact whatever the block sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import causal_config
from vckit.errors import VckitError
from vckit.models.layers import CausalConv1d, CausalNorm
from vckit.models.vc import Frames, build_model

SR = 22050


@pytest.fixture(scope="module")
def live(causal_checkpoint):
    import vckit

    return vckit.load(causal_checkpoint, vocoder="griffinlim", device="cpu")


def test_causal_layers_ignore_the_future_and_go_block_by_block():
    torch.manual_seed(0)
    conv, norm = CausalConv1d(8, 8, 5, stride=2), CausalNorm(8, prior_frames=4).eval()
    x = torch.randn(1, 8, 40)
    whole = norm(conv(x))
    changed = x.clone()
    changed[..., 20:] += 5.0
    assert torch.equal(norm(conv(changed))[..., :10], whole[..., :10])  # output i reads inputs < 2 (i + 1)
    state: dict = {}
    blocks = torch.cat([norm(conv(x[..., a : a + 6], state), state) for a in range(0, 40, 6)], dim=-1)
    torch.testing.assert_close(blocks, whole, atol=1e-5, rtol=1e-5)


def test_running_norm_removes_a_per_channel_offset_and_scale_once_warmed_up():
    norm = CausalNorm(4, prior_frames=2).eval()
    x = torch.randn(1, 4, 2000)
    y = norm(x * 3.0 + 7.0)
    torch.testing.assert_close(y[..., 1000:], norm(x)[..., 1000:], atol=0.02, rtol=0.02)


def test_a_causal_model_converts_block_by_block_as_in_one_go():
    model = build_model(causal_config()).eval()
    n = 36
    x = Frames(None, torch.rand(1, n) * 100 + 100, torch.randn(1, 6, n))
    spk = torch.randn(1, 16)
    with torch.no_grad():
        whole = model.convert(x, spk, f0_shift=2.0)
        state: dict = {}
        parts = [model.convert(x.slice(a, a + 6), spk, f0_shift=2.0, state=state) for a in range(0, n, 6)]
    torch.testing.assert_close(torch.cat(parts, -1), whole, atol=1e-4, rtol=1e-4)


def test_only_a_causal_model_streams(vq_checkpoint, live, speech):
    import vckit

    offline = vckit.load(vq_checkpoint, vocoder="griffinlim", device="cpu")
    with pytest.raises(VckitError, match="cannot stream"):
        offline.stream(offline.voice(speech))
    with pytest.raises(VckitError, match="chunk_ms"):
        live.stream(live.voice(speech), chunk_ms=-5)


def test_a_stream_in_random_blocks_equals_one_push_and_keeps_the_length(live, speech):
    from vckit.audio import load_audio

    voice = live.voice(speech)
    wav = load_audio(speech, SR)[: SR * 2]
    one = live.stream(voice)
    whole = np.concatenate([one.push(wav), one.flush()])
    assert one.delay_ms < 150 and len(whole) == len(wav) + one.delay
    rng = np.random.default_rng(0)
    two, out, i = live.stream(voice), [], 0
    while i < len(wav):
        n = int(rng.integers(1, 3000))
        piece = two.push(wav[i : i + n])
        assert len(piece) == len(wav[i : i + n])  # as much out as in, every call
        out.append(piece)
        i += n
    out.append(two.flush())
    blocks = np.concatenate(out)
    assert len(blocks) == len(whole)
    np.testing.assert_allclose(blocks, whole, atol=1e-4)
    assert np.abs(whole[: one.delay]).max() == 0.0 and np.abs(whole[one.delay :]).max() > 0.0
    with pytest.raises(VckitError, match="flushed"):
        one.push(wav[:100])
    stereo = live.stream(voice)
    assert len(stereo.push(np.stack([wav[:3000], wav[:3000]], axis=1))) == 3000  # (n, channels) mixed to mono
    with pytest.raises(VckitError, match="shape"):
        stereo.push(np.zeros((2, 2, 2), np.float32))


def test_two_streams_share_no_state(live, speech):
    from vckit.audio import load_audio

    voice = live.voice(speech)
    wav = load_audio(speech, SR)[: SR]
    first = live.stream(voice)
    a = np.concatenate([first.push(wav), first.flush()])
    noisy = live.stream(voice)
    noisy.push(np.random.default_rng(1).uniform(-1, 1, SR).astype(np.float32))  # a loud stream left unfinished
    again = live.stream(voice)
    b = np.concatenate([again.push(wav), again.flush()])
    np.testing.assert_array_equal(a, b)


def test_vckit_stream_runs_a_file_through_the_live_path(causal_checkpoint, speech, tmp_path, vckit_cli):
    import soundfile as sf

    from vckit.audio import load_audio

    out = tmp_path / "live.wav"
    r = vckit_cli("stream", "--checkpoint", str(causal_checkpoint), "--ref", str(speech), "--input", str(speech), "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert "delay" in r.stdout and "99th percentile" in r.stdout
    wav, sr = sf.read(out)
    assert sr == 22050 and len(wav) == len(load_audio(speech, 22050, trim=False))
    again = vckit_cli("stream", "--checkpoint", str(causal_checkpoint), "--ref", str(speech), "--input", str(speech), "--output", str(out))
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr


class _FakeSoundDevice:
    """Stands in for sounddevice: PortAudio is there, but the device is busy."""

    class PortAudioError(Exception):
        pass

    def query_devices(self):
        return "  0 fake mic, ALSA (2 in, 0 out)"

    def check_input_settings(self, **kw):
        pass

    check_output_settings = check_input_settings

    def Stream(self, **kw):
        raise self.PortAudioError("Error opening Stream: Device unavailable [PaErrorCode -9985]\nmore detail")


def test_a_missing_or_busy_audio_device_is_one_line(monkeypatch, capsys, causal_checkpoint, speech):
    import builtins
    import sys

    from vckit import cli

    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as without the package
    assert cli.main(["stream", "--checkpoint", str(causal_checkpoint), "--ref", str(speech)]) == 2
    assert "pip install sounddevice" in capsys.readouterr().err
    monkeypatch.delitem(sys.modules, "sounddevice")
    real_import = builtins.__import__

    def no_portaudio(name, *a, **k):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")  # what sounddevice raises without libportaudio
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    assert cli.main(["stream", "--checkpoint", str(causal_checkpoint), "--ref", str(speech)]) == 2
    err = capsys.readouterr().err
    assert "PortAudio" in err and err.count("\n") == 1
    monkeypatch.setattr(builtins, "__import__", real_import)
    import vckit.stream_io as stream_io

    fake = _FakeSoundDevice()
    monkeypatch.setattr(stream_io, "sounddevice", lambda: fake)
    assert cli.main(["stream", "--list-devices"]) == 0 and "fake mic" in capsys.readouterr().out
    assert cli.main(["stream", "--checkpoint", str(causal_checkpoint), "--ref", str(speech)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reference: ") and err.splitlines()[-1].startswith("error: audio device: Error opening Stream: Device unavailable")
    fake.check_output_settings = lambda **kw: (_ for _ in ()).throw(fake.PortAudioError("Invalid sample rate [PaErrorCode -9997]"))
    assert cli.main(["stream", "--checkpoint", str(causal_checkpoint), "--ref", str(speech)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: audio device: Invalid sample rate") and "22050 Hz" in err and err.count("\n") == 1  # before any voice is made


def test_a_causal_model_converts_offline_from_the_features_it_streams(live, speech):
    from vckit.audio import load_audio

    wav = load_audio(speech, SR)[: SR * 2]
    voice = live.voice(speech)
    out = live.convert(wav, target=voice, sr=SR)  # whole-file conversion of a causal model: block-by-block teacher
    assert len(out) == pytest.approx(len(wav), abs=256) and np.isfinite(out).all()


def test_a_model_reading_teacher_and_mel_streams_as_in_one_go(tmp_path, speech):
    """The streaming model reads its block's own log-mel too: the same frames whatever the push sizes."""
    import vckit
    from vckit.audio import load_audio
    from vckit.checkpoint import save_checkpoint

    cfg = causal_config("phonetic+mel")
    torch.manual_seed(1)
    model = build_model(cfg)
    with torch.no_grad():
        model.content_encoder.teacher_proj.normal_(0, 0.1)
    vc = vckit.load(save_checkpoint(tmp_path / "ck", cfg, model.state_dict(), step=1), vocoder="griffinlim", device="cpu")
    assert vc.model.content_encoder.inp.in_channels == 6 + 80
    voice = vc.voice(speech)
    wav = load_audio(speech, SR)[: SR + 777]
    one = vc.stream(voice)
    whole = np.concatenate([one.push(wav), one.flush()])
    two = vc.stream(voice)
    parts = [two.push(wav[i : i + 1000]) for i in range(0, len(wav), 1000)] + [two.flush()]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-4)
    assert np.abs(whole[one.delay :]).max() > 0


def test_a_model_carrying_its_phone_student_streams_without_hama(tmp_path, speech, monkeypatch):
    """stream.phonetic: student: the model's own causal student makes its phonetic input, live and offline,
    the same whatever the push sizes; hama is never loaded."""
    import vckit
    from vckit.audio import load_audio
    from vckit.checkpoint import save_checkpoint
    from vckit.config import PhoneStudentConfig
    from vckit.models import teacher
    from vckit.models.phone_student import StudentTeacher

    monkeypatch.setattr(teacher.PhoneticTeacher, "__init__", lambda *a, **k: pytest.fail("hama was loaded"))
    student = PhoneStudentConfig(channels=8, blocks=2, kernel=3, dilations=(1, 2), lookahead_frames=3)
    cfg = causal_config("phonetic+mel", phonetic="student", student=student, teacher_lookahead_ms=58.0, teacher_context_s=0.5)
    torch.manual_seed(2)
    model = build_model(cfg)
    assert model.content_encoder.teacher_proj.shape == (6, 8) and not any(p.requires_grad for p in model.content_encoder.student.parameters())
    with torch.no_grad():
        model.content_encoder.teacher_proj.normal_(0, 0.3)
    vc = vckit.load(save_checkpoint(tmp_path / "ck", cfg, model.state_dict(), step=1), vocoder="griffinlim", device="cpu")
    assert isinstance(vc.teacher, StudentTeacher)
    for k, v in model.content_encoder.student.state_dict().items():
        torch.testing.assert_close(vc.model.content_encoder.student.state_dict()[k], v)
    voice = vc.voice(speech)
    wav = load_audio(speech, SR)[: SR + 555]
    one = vc.stream(voice)
    assert one.delay_ms == pytest.approx(1000 * ((6 - 1 + 2) * 256 + 128 + round(0.058 * SR)) / SR)
    whole = np.concatenate([one.push(wav), one.flush()])
    two = vc.stream(voice)
    parts = [two.push(wav[i : i + 777]) for i in range(0, len(wav), 777)] + [two.flush()]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-4)
    assert np.abs(whole[one.delay :]).max() > 0
    out = vc.convert(wav, target=voice, sr=SR)
    assert len(out) == pytest.approx(len(wav), abs=256) and np.isfinite(out).all()


def test_the_live_report_says_when_the_machine_cannot_keep_up():
    from vckit.stream_io import StreamReport

    def report(ms):
        return StreamReport(seconds=10.0, block_ms=69.7, delay_ms=127.0, compute_ms=list(ms))

    assert report([30.0] * 200).verdict() == "" and "\n" not in report([30.0] * 200).summary()
    assert report([30.0] * 190 + [60.0] * 10).verdict().startswith("keeps up with little margin: the 99th percentile uses 86% of each block")
    late = report([30.0] * 190 + [4219.0] * 10)
    assert late.verdict().startswith("not reliable for live use on this machine: 1 block in 100 takes longer")
    assert late.summary().splitlines()[1] == late.verdict()
    assert report([90.0] * 200).verdict().startswith("too slow for live use on this machine: a block takes 1.3x its own duration")
