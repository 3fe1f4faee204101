"""Conversion as users do it: enrolled speakers, batches, long inputs, pitch handling."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from vckit.errors import VckitError
from vckit.pitch import f0_track, median_f0, semitones_between, shift_pitch
from vckit.speakers import list_profiles, load_profile, new_profile, save_profile

CKPT = "checkpoints/default"
COMMON = ["--checkpoint", CKPT, "--vocoder", "griffinlim", "--device", "cpu"]


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def vc():
    import vckit

    return vckit.load(CKPT, device="cpu", vocoder="griffinlim")


@pytest.fixture
def files(data_dir):
    d = data_dir / "vcc2016"
    return {"src": d / "SM1" / "200001.wav", "ref1": d / "SF1" / "200002.wav", "ref2": d / "SF1" / "200003.wav", "src2": d / "SM1" / "200002.wav"}


# -- pitch -------------------------------------------------------------------
@pytest.mark.parametrize("f0", [90.0, 180.0, 320.0])
def test_f0_of_a_pulse_train(f0):
    sr = 22050
    t = np.arange(2 * sr) / sr
    wav = (np.sign(np.sin(2 * np.pi * f0 * t)) * 0.3).astype(np.float32)
    assert median_f0(wav, sr) == pytest.approx(f0, rel=0.01)


def test_f0_of_silence_and_noise_is_unknown():
    sr = 22050
    assert median_f0(np.zeros(sr, np.float32), sr) is None
    assert len(f0_track(np.zeros(100, np.float32), sr)) == 0


def test_real_voices_fall_in_their_ranges(data_dir):
    from vckit.audio import load_audio

    male = median_f0(load_audio(data_dir / "vcc2016" / "SM1" / "100001.wav", 22050), 22050)
    female = median_f0(load_audio(data_dir / "vcc2016" / "SF1" / "100001.wav", 22050), 22050)
    assert 70 < male < 160 < female < 300


def test_pitch_shift_moves_f0_and_keeps_length():
    sr = 22050
    t = np.arange(sr) / sr
    wav = (((t * 150) % 1 - 0.5) * 0.5).astype(np.float32)  # sawtooth: every harmonic
    for semitones in (-5.0, 7.0, 12.0):
        out = shift_pitch(wav, sr, semitones)
        assert len(out) == len(wav)
        assert median_f0(out, sr) == pytest.approx(150 * 2 ** (semitones / 12), rel=0.02)
    assert semitones_between(150, 300) == pytest.approx(12.0)


def test_match_pitch_shifts_a_male_source_up_to_a_female_reference(vc, files):
    from vckit.audio import load_audio

    src = load_audio(files["src"], 22050, trim=False)
    shift = vc.pitch_offset(src, vc.voice([files["ref1"]]))
    assert 6 < shift < 18  # about an octave up
    wav = vc.convert(files["src"], target=[files["ref1"]], match_pitch=True)
    assert abs(len(wav) - len(src)) <= 256


# -- long inputs ---------------------------------------------------------------
def test_long_input_is_chunked_and_keeps_its_length(vc, files, monkeypatch):
    import vckit.models.vc as vcmod

    monkeypatch.setattr(vcmod, "CHUNK_FRAMES", 200)
    monkeypatch.setattr(vcmod, "CHUNK_OVERLAP", 32)
    x, sr = sf.read(str(files["src"]), dtype="float32")
    long = np.tile(x, 4)  # ~20 s at 16 kHz -> ~1700 frames -> 9 chunks
    calls = []
    real = vc.model.convert
    monkeypatch.setattr(vc.model, "convert", lambda m, s, **kw: calls.append(m.frames) or real(m, s, **kw))
    wav = vc.convert(long, target=vc.voice(files["ref1"]), sr=sr)
    assert len(calls) > 1 and max(calls) <= 200 + 32
    expected = len(long) / sr * vc.sample_rate
    assert abs(len(wav) - expected) <= 256
    assert np.isfinite(wav).all() and np.abs(wav).max() > 0.01


def test_chunk_boundaries_are_cross_faded(vc, monkeypatch):
    """With a model that returns its input, chunked conversion must give the input back exactly."""
    import vckit.models.vc as vcmod

    monkeypatch.setattr(vcmod, "CHUNK_FRAMES", 100)
    monkeypatch.setattr(vcmod, "CHUNK_OVERLAP", 16)
    monkeypatch.setattr(vc.model, "convert", lambda m, s, **kw: m.mel.clone())
    from vckit.models.vc import Frames

    mel = torch.randn(80, 537)
    out = vc.model.convert_utterance(Frames(mel[None]), torch.zeros(vc.config.model.speaker.dim))
    assert torch.allclose(out, mel, atol=1e-5)


# -- speaker bank --------------------------------------------------------------
def test_profile_round_trip_and_listing(tmp_path):
    p = new_profile("alice", torch.randn(128), "abc", ["a.wav"], 3.5, 210.0)
    save_profile(tmp_path, p)
    back = load_profile(tmp_path, "alice")
    assert torch.allclose(back.embedding, p.embedding) and back.model_id == "abc" and back.f0_median == 210.0
    assert [q.name for q in list_profiles(tmp_path)] == ["alice"]
    with pytest.raises(VckitError, match="already enrolled"):
        save_profile(tmp_path, p)
    with pytest.raises(VckitError, match="invalid speaker name"):
        new_profile("../evil", torch.randn(128), "abc", [], 1.0, None)
    with pytest.raises(VckitError, match="no enrolled speaker 'bob'"):
        load_profile(tmp_path, "bob")


def test_enroll_list_and_convert_with_a_speaker(vckit_cli, files, tmp_path):
    bank = tmp_path / "bank"
    proc = vckit_cli("enroll", "sf1", files["ref1"], files["ref2"], "--bank", bank, "--checkpoint", CKPT, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert (bank / "sf1.safetensors").is_file()
    again = vckit_cli("enroll", "sf1", files["ref1"], "--bank", bank, "--checkpoint", CKPT, "--device", "cpu")
    assert "already enrolled" in one_line_error(again)
    listing = vckit_cli("speakers", "--bank", bank, timeout=60)
    assert listing.returncode == 0 and "sf1" in listing.stdout and "Hz" in listing.stdout
    speech = float(re.search(r"([\d.]+) s of speech", proc.stdout).group(1))
    row = next(line for line in listing.stdout.splitlines() if line.startswith("sf1 "))
    assert f"{speech:.1f} s" in row and "default" in row  # the speech enrol reported, and the model it was made with
    out = tmp_path / "o.wav"
    conv = vckit_cli("convert", files["src"], "--speaker", "sf1", "--bank", bank, "-o", out, "--match-pitch", *COMMON)
    assert conv.returncode == 0, conv.stderr
    assert abs(sf.info(str(out)).duration - sf.info(str(files["src"])).duration) < 0.02
    missing = vckit_cli("convert", files["src"], "--speaker", "nobody", "--bank", bank, "-o", tmp_path / "x.wav", *COMMON)
    assert "no enrolled speaker 'nobody'" in one_line_error(missing)


def test_a_profile_from_another_model_is_refused_naming_both(vckit_cli, files, tmp_path):
    bank = tmp_path / "bank"
    save_profile(bank, new_profile("ghost", torch.randn(128), "0123456789abcdef", [], 2.0, None, checkpoint="runs/old-model"))
    proc = vckit_cli("convert", files["src"], "--speaker", "ghost", "--bank", bank, "-o", tmp_path / "o.wav", *COMMON)
    err = one_line_error(proc)
    assert "'ghost' was enrolled with runs/old-model (weights 0123456789ab)" in err
    assert f"the loaded model is {CKPT} (weights " in err and f"vckit enroll ghost REF.wav ... --checkpoint {CKPT}" in err
    assert not (tmp_path / "o.wav").exists()


def test_an_enrolled_voice_comes_back_through_the_api(files, tmp_path):
    import vckit
    from vckit.errors import VckitError

    vc = vckit.load(CKPT, vocoder="griffinlim", device="cpu")
    voice = vc.voice(files["ref1"])
    bank = tmp_path / "bank"
    save_profile(bank, new_profile("sf1", voice.embedding, vc.model_id, [str(files["ref1"])], voice.seconds, voice.f0_median))
    back = vc.enrolled("sf1", bank)
    torch.testing.assert_close(back.embedding, voice.embedding)
    assert back.f0_median == pytest.approx(voice.f0_median) and back.model_id == vc.model_id
    assert len(vc.convert(files["src"], target=back)) > 0
    save_profile(bank, new_profile("ghost", torch.randn(128), "0123456789abcdef", [], 2.0, None))
    with pytest.raises(VckitError, match="'ghost' was enrolled with the model with weights 0123456789ab"):
        vc.enrolled("ghost", bank)


def test_a_voice_enrolled_with_the_default_model_works_live(files, tmp_path):
    """The profile keeps its reference files: the live model makes the voice anew from them."""
    import vckit

    default, live = vckit.load(CKPT, vocoder="griffinlim", device="cpu"), vckit.load("stream", vocoder="griffinlim", device="cpu")
    voice = default.voice([files["ref1"], files["ref2"]])
    bank = tmp_path / "bank"
    save_profile(bank, new_profile("sf1", voice.embedding, default.model_id, [str(files["ref1"]), str(files["ref2"])], voice.seconds, voice.f0_median))
    back = live.enrolled("sf1", bank)
    assert back.model_id == live.model_id != default.model_id
    torch.testing.assert_close(back.embedding, live.voice([files["ref1"], files["ref2"]]).embedding)
    assert default.enrolled("sf1", bank).model_id == default.model_id  # and it still serves the default model


def test_models_that_share_a_speaker_encoder_share_voices_and_speakers(files, tmp_path):
    """A model trained with train.speaker_from (the live one takes the default's speaker encoder) takes the
    other's voices and enrolled speakers as they are; a model with another speaker encoder still refuses them."""
    import vckit
    from vckit.checkpoint import load_checkpoint, save_checkpoint
    from vckit.speakers import enroll

    cfg, sd, _ = load_checkpoint(CKPT)
    sibling = {k: v + 0.01 if k.startswith("decoder.") and v.is_floating_point() else v for k, v in sd.items()}
    stranger = {k: v + 0.01 if k.startswith("speaker_encoder.") and v.is_floating_point() else v for k, v in sibling.items()}
    default = vckit.load(CKPT, vocoder="griffinlim", device="cpu")
    a = vckit.load(save_checkpoint(tmp_path / "sibling", cfg, sibling, step=1), vocoder="griffinlim", device="cpu")
    b = vckit.load(save_checkpoint(tmp_path / "stranger", cfg, stranger, step=1), vocoder="griffinlim", device="cpu")
    assert a.model_id != default.model_id and a.speaker_id == default.speaker_id != b.speaker_id
    voice = default.voice(files["ref1"])
    assert voice.speaker_id == default.speaker_id and len(a.convert(files["src"], target=voice)) > 0
    with pytest.raises(VckitError, match="made by another model"):
        b.convert(files["src"], target=voice)
    ref = tmp_path / "ref.wav"
    ref.write_bytes(files["ref1"].read_bytes())
    enroll(default, "sf1", [ref], bank=tmp_path / "bank")
    ref.unlink()  # no reference left to remake the voice from: a sibling takes the stored one as it is
    back = a.enrolled("sf1", tmp_path / "bank")
    torch.testing.assert_close(back.embedding, voice.embedding)
    with pytest.raises(VckitError, match="'sf1' was enrolled with"):
        b.enrolled("sf1", tmp_path / "bank")


def test_ref_and_speaker_together_or_neither(vckit_cli, files, tmp_path):
    neither = vckit_cli("convert", files["src"], "-o", tmp_path / "o.wav", *COMMON)
    assert "either --ref" in one_line_error(neither)


# -- batches -------------------------------------------------------------------
def test_batch_keeps_going_past_a_bad_file_and_fails_at_the_end(vckit_cli, files, tmp_path):
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    for k in ("src", "src2"):
        (src_dir / files[k].name).write_bytes(files[k].read_bytes())
    (src_dir / "broken.wav").write_text("not audio")
    out = tmp_path / "out"
    proc = vckit_cli("convert", src_dir, "--ref", files["ref1"], "-o", out, "--sample-rate", "16000", *COMMON)
    assert proc.returncode == 1
    assert sorted(p.name for p in out.iterdir()) == ["200001.wav", "200002.wav"]
    assert all(sf.info(str(p)).samplerate == 16000 for p in out.iterdir())
    assert proc.stdout.strip().endswith(f"converted 2 files into {out}; 1 failed (listed above)")
    assert "failed:" in proc.stderr and "broken.wav" in proc.stderr and "Traceback" not in proc.stderr


def test_an_interrupted_batch_resumes_and_never_overwrites_unasked(vckit_cli, files, tmp_path):
    """Outputs already there (an interrupted run's, or the user's) are skipped, said so, exit 0."""
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("".join(json.dumps({"path": str(files[k])}) + "\n" for k in ("src", "src2")))
    out = tmp_path / "out"
    out.mkdir()
    (out / "200001.wav").write_bytes(b"mine")
    proc = vckit_cli("convert", manifest, "--ref", files["ref1"], "-o", out, *COMMON)
    assert proc.returncode == 0, proc.stderr
    assert (out / "200001.wav").read_bytes() == b"mine"  # never overwritten silently
    assert sf.info(str(out / "200002.wav")).frames > 0
    assert f"converted 1 file into {out}; 1 already in {out} left as they were (--overwrite converts them again)" in proc.stdout
    done = (out / "200002.wav").read_bytes()
    again = vckit_cli("convert", manifest, "--ref", files["ref1"], "-o", out, *COMMON)
    assert again.returncode == 0 and f"nothing to convert: all 2 outputs are already in {out}" in again.stdout
    assert (out / "200002.wav").read_bytes() == done and (out / "200001.wav").read_bytes() == b"mine"
    forced = vckit_cli("convert", manifest, "--ref", files["ref1"], "-o", out, "--overwrite", *COMMON)
    assert forced.returncode == 0 and f"converted 2 files into {out}" in forced.stdout
    assert sf.info(str(out / "200001.wav")).frames > 0  # asked for: replaced


def test_a_folder_batch_mirrors_subfolders_in_the_format_asked(vckit_cli, data_dir, files, tmp_path):
    src = tmp_path / "in"
    for spk in ("TM1", "SF1"):
        (src / spk).mkdir(parents=True)
        (src / spk / "100002.wav").write_bytes((data_dir / "vcc2016" / spk / "100002.wav").read_bytes())
    out = src / "converted"  # inside the source folder: its files are never taken as sources
    for _ in range(2):
        proc = vckit_cli("convert", src, "--ref", files["ref1"], "-o", out, "--format", "flac", *COMMON)
        assert proc.returncode == 0, proc.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.flac")) == ["SF1/100002.flac", "TM1/100002.flac"]
    assert {sf.info(str(p)).format for p in out.rglob("*.flac")} == {"FLAC"}
    assert f"nothing to convert: all 2 outputs are already in {out}" in proc.stdout


def test_progress_rises_to_one_through_chunks_and_vocoder(vc, files, monkeypatch):
    import vckit.models.vc as vcmod

    monkeypatch.setattr(vcmod, "CHUNK_FRAMES", 200)
    monkeypatch.setattr(vcmod, "CHUNK_OVERLAP", 32)
    x, sr = sf.read(str(files["src"]), dtype="float32")
    shares = []
    wav = vc.convert(np.tile(x, 3), target=vc.voice(files["ref1"]), sr=sr, progress=shares.append)
    assert len(shares) > 10 and shares[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(shares, shares[1:])) and 0 < shares[0] < 1
    assert len(wav) > 0


def test_a_long_single_file_shows_a_progress_bar(vc, files, tmp_path, monkeypatch, capsys):
    import vckit.api
    import vckit.cli_convert
    from vckit.cli import main

    monkeypatch.setattr(vckit.api, "load", lambda *a, **k: vc)
    monkeypatch.setattr(vckit.cli_convert, "LONG_SOURCE_S", 1.0)
    out = tmp_path / "o.ogg"
    assert main(["convert", str(files["src"]), "--ref", str(files["ref1"]), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "converting" in err and "100%" in err
    assert sf.info(str(out)).format == "OGG" and sf.info(str(out)).subtype == "VORBIS"
    assert main(["convert", str(files["src"]), "--ref", str(files["ref1"]), "-o", str(tmp_path / "q.wav"), "--quiet"]) == 0
    assert "converting" not in capsys.readouterr().err


def test_the_cli_names_the_input_at_fault_before_loading_the_model(files, tmp_path, monkeypatch, capsys):
    import soundfile

    import vckit.api
    from vckit.cli import main

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the bad input was found")

    monkeypatch.setattr(vckit.api, "load", no_load)
    out = str(tmp_path / "o.wav")
    assert main(["convert", str(files["src"]), "--ref", str(tmp_path / "missing.wav"), "-o", out]) == 2
    assert capsys.readouterr().err.strip() == f"error: reference not found: {tmp_path / 'missing.wav'}"
    assert main(["convert", str(files["src"]), "--speaker", "nobody", "--bank", str(tmp_path / "bank"), "-o", out]) == 2
    assert "no enrolled speaker 'nobody'" in capsys.readouterr().err
    monkeypatch.undo()

    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), 22050)
    assert main(["convert", str(empty), "--ref", str(files["ref1"]), "-o", out, *COMMON]) == 2
    as_source = capsys.readouterr().err.strip()
    assert main(["convert", str(files["src"]), "--ref", str(empty), "-o", out, *COMMON]) == 2
    as_reference = capsys.readouterr().err.strip()
    assert as_source == "error: source empty.wav is empty (0 samples)" and as_reference == "error: reference empty.wav is empty (0 samples)"

    short = tmp_path / "short.wav"
    x, sr = soundfile.read(str(files["src"]), dtype="float32")
    soundfile.write(short, x[int(0.5 * sr) : int(0.7 * sr)], sr)
    assert main(["convert", str(short), "--ref", str(files["ref1"]), "-o", out, *COMMON]) == 0
    assert "warning: source short.wav is only 0.2 s long, too short to hold a word: converted anyway" in capsys.readouterr().err


def test_ctrl_c_in_a_batch_says_what_is_done_and_how_to_go_on(files, tmp_path, monkeypatch, capsys):
    import vckit.api
    from vckit.cli import main

    real, calls = vckit.api.Converter.convert, []

    def interrupted_on_the_second(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(vckit.api.Converter, "convert", interrupted_on_the_second)
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("".join(json.dumps({"path": str(files[k])}) + "\n" for k in ("src", "src2", "ref2")))
    out = tmp_path / "out"
    assert main(["convert", str(manifest), "--ref", str(files["ref1"]), "-o", str(out), "--quiet", *COMMON]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"interrupted: converted 1 of 3 files into {out}; the same command again converts the other 2 and keeps what is done"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.wav")) == ["SM1/200001.wav"]


# -- a batch across processes ---------------------------------------------------------------
def _four(files, tmp_path):
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("".join(json.dumps({"path": str(files[k])}) + "\n" for k in ("src", "src2", "ref1", "ref2")))
    return manifest


def _written(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.wav"))


def test_array_job_shards_split_a_batch_exactly(vckit_cli, files, tmp_path):
    manifest = _four(files, tmp_path)
    got = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        proc = vckit_cli("convert", manifest, "--ref", files["ref1"], "-o", out, "--shard", f"{i}/2", *COMMON)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"shard {i}/2: converted 2 files into {out}"
        got.append(set(_written(out)))
    assert not got[0] & got[1] and sorted(got[0] | got[1]) == ["SF1/200002.wav", "SF1/200003.wav", "SM1/200001.wav", "SM1/200002.wav"]
    bad = vckit_cli("convert", manifest, "--ref", files["ref1"], "-o", tmp_path / "x", "--shard", "2/2", *COMMON)
    assert bad.returncode == 2 and "between 0 and N-1" in bad.stderr
    empty = vckit_cli("convert", manifest, "--ref", files["ref1"], "-o", tmp_path / "y", "--shard", "5/6", *COMMON)  # 4 files, 6 tasks
    assert empty.returncode == 0 and empty.stdout.strip() == "shard 5/6: no files fall to this shard: nothing to convert"


def test_torchrun_shares_a_batch_among_its_ranks_once_and_resumes(files, tmp_path):
    """Two CPU processes (gloo): each file converted once, one summary for both; after a loss, the rest only."""
    import sys

    manifest, out = _four(files, tmp_path), tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "vckit",
           "convert", str(manifest), "--ref", str(files["ref1"]), "-o", str(out), "--quiet", *COMMON]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("converted") == 1 and f"converted 4 files into {out} by 2 processes" in proc.stdout, proc.stdout
    assert len(_written(out)) == 4
    for name in ("SM1/200001.wav", "SF1/200003.wav"):  # as if a kill had lost them
        (out / name).unlink()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"converted 2 files into {out} by 2 processes; 2 already in {out} left as they were" in again.stdout, again.stdout
    assert len(_written(out)) == 4
