"""The ``vckit`` command, run as a user would: train, kill and resume, info,
convert, and a two-process torchrun (DDP on CPU with gloo)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch

from vckit import __version__
from vckit.errors import VckitError
from vckit.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, load_train_state, read_meta
from vckit.models.vc import build_model
from vckit.models import count_parameters

from conftest import REPO_ROOT, vckit_command

SOURCE = ("vcc2016", "SF1", "100002.wav")  # 1.08 s
REFERENCE = ("vcc2016", "TM1", "100001.wav")


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The CLI's error contract: exit 2, one line on stderr, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_version(vckit_cli):
    proc = vckit_cli("--version", timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"vckit {__version__}"


def test_no_command_is_a_usage_error(vckit_cli):
    proc = vckit_cli(timeout=60)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def train_args(tiny_cache, out_dir: Path, *sets: str) -> list[str]:
    args = ["train", "--config", str(tiny_cache["yaml"]), "--device", "cpu", "--quiet", "--set", f"train.out_dir={out_dir}"]
    for s in sets:
        args += ["--set", s]
    return args


def test_train_writes_checkpoints_and_info_reads_them(vckit_cli, tiny_cache, tmp_path):
    out = tmp_path / "run"
    proc = vckit_cli(*train_args(tiny_cache, out, "train.steps=12", "train.ckpt_every=5", "train.lr=1e-3"))
    assert proc.returncode == 0, proc.stderr
    assert "loss/recon_l1=" in proc.stdout
    assert [p.name for p in list_checkpoints(out)] == ["step-000000005", "step-000000010", "step-000000012"]
    ck = latest_checkpoint(out)
    cfg, sd, meta = load_checkpoint(ck)
    assert meta["step"] == 12 and cfg.train.lr == 1e-3 and len(meta["speakers"]) == 5
    assert load_train_state(ck)["step"] == 12

    info = vckit_cli("info", ck, timeout=60)
    assert info.returncode == 0, info.stderr
    assert "step: 12" in info.stdout and "training speakers: 5" in info.stdout
    counts = count_parameters(build_model(cfg, sd, for_training=True))
    for name in ("content_encoder", "speaker_encoder", "decoder", "classifier", "total"):
        m = re.search(rf"^\s+{name}\s+([\d,]+)$", info.stdout, re.M)
        assert m, (name, info.stdout)
        assert int(m.group(1).replace(",", "")) == counts[name] > 0


def test_info_on_a_missing_checkpoint(vckit_cli, tmp_path):
    assert "checkpoint not found" in one_line_error(vckit_cli("info", tmp_path / "nope", timeout=60))


def test_info_knows_the_shipped_models_by_name_and_a_closed_pipe_is_no_error(capsys):
    from vckit.cli import main

    assert main(["info", "stream"]) == 0
    out = capsys.readouterr().out
    assert "checkpoints/stream" in out.splitlines()[0] and "causal" in out
    # `vckit info default | head -n 1`, with the reader gone before the first line (as head after its line)
    proc = subprocess.Popen([*vckit_command(), "info", "default"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and err == "", err  # no BrokenPipeError traceback


def test_info_reads_every_shipped_checkpoint_and_the_phone_student(capsys):
    """The judge and the phone student are checkpoints of other kinds: info names the kind and its figures."""
    from vckit.cli import main
    from vckit.shipped import FOLDERS

    for name in [f for f in FOLDERS if f != "examples"]:
        assert main(["info", name]) == 0, name
        out = capsys.readouterr().out
        assert f"checkpoints/{name}" in out.splitlines()[0] and "parameters" in out
    assert main(["info", "speaker_verification"]) == 0
    out = capsys.readouterr().out
    assert "kind: speaker-verification model" in out and "eer: 0.11" in out and "parameters: 4,136,640" in out
    assert main(["info", str(REPO_ROOT / "recipes/shared_dev/phone_student")]) == 0
    out = capsys.readouterr().out
    assert "kind: phone student" in out and out.count("parameters") == 1 and "parameters: 669,119" in out


def test_train_with_a_bad_config_is_one_line(vckit_cli, tiny_cache, tmp_path):
    err = one_line_error(vckit_cli(*train_args(tiny_cache, tmp_path / "r", "train.stpes=3"), timeout=60))
    assert "train.stpes" in err


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}) while waiting for {what}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_killed_run_resumes_from_its_last_checkpoint(vckit_cli, tiny_cache, tmp_path):
    out = tmp_path / "run"
    log = open(tmp_path / "first.log", "w")
    args = train_args(tiny_cache, out, "train.steps=100000", "train.ckpt_every=5", "train.keep_last=3")
    proc = subprocess.Popen([*vckit_command(), *args], stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        wait_for(lambda: len(list_checkpoints(out)) >= 2, 90, proc, "two checkpoints")
        proc.send_signal(signal.SIGKILL)  # no chance to save anything
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = read_meta(latest_checkpoint(out))["step"]
    assert killed_at >= 10 and killed_at % 5 == 0

    target = killed_at + 7
    resumed = vckit_cli(*args, "--resume", "--max-steps", str(target))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {out / f'step-{killed_at:09d}'} at step {killed_at}" in resumed.stderr
    last = latest_checkpoint(out)
    assert read_meta(last)["step"] == target > killed_at
    assert load_train_state(last)["step"] == target
    assert not list(out.glob("*.tmp-*"))  # a save cut by the kill was cleaned up


def test_sigterm_stops_cleanly_with_a_checkpoint(tiny_cache, tmp_path):
    out = tmp_path / "run"
    args = train_args(tiny_cache, out, "train.steps=100000", "train.ckpt_every=10", "train.keep_last=100", "train.valid_every=100000")
    proc = subprocess.Popen([*vckit_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        wait_for(lambda: len(list_checkpoints(out)) >= 1, 90, proc, "training to start")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    m = re.search(r"stopping at step (\d+) \(signal\)", stderr)
    assert m, stderr
    stopped = int(m.group(1))
    assert stopped >= 10
    assert read_meta(latest_checkpoint(out))["step"] == stopped  # saved where it stopped, not at the last multiple of 10
    assert load_train_state(latest_checkpoint(out))["step"] == stopped


@pytest.fixture
def speech_pair(data_dir):
    src, ref = data_dir.joinpath(*SOURCE), data_dir.joinpath(*REFERENCE)
    assert src.is_file() and ref.is_file()
    return src, ref


def test_convert_writes_a_wav_and_refuses_to_overwrite(vckit_cli, speech_pair, tmp_path):
    src, ref = speech_pair
    out = tmp_path / "out.wav"
    common = ["convert", src, "--ref", ref, "-o", out, "--checkpoint", "checkpoints/default", "--vocoder", "griffinlim", "--device", "cpu"]
    proc = vckit_cli(*common)
    assert proc.returncode == 0, proc.stderr
    info, src_info = sf.info(str(out)), sf.info(str(src))
    assert info.samplerate == 22050 and info.channels == 1
    assert abs(info.frames / info.samplerate - src_info.duration) <= 256 / 22050 + 1e-3
    assert "wrote" in proc.stdout
    first = out.read_bytes()

    again = vckit_cli(*common)
    err = one_line_error(again)
    assert "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == first  # untouched

    forced = vckit_cli(*common, "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert sf.info(str(out)).frames == info.frames

    bad = vckit_cli(*common, "--overwrite", "--vq", "2")
    assert bad.returncode == 2 and "between 0 and 1" in bad.stderr and "Traceback" not in bad.stderr


def test_convert_vq_choice_on_a_model_with_a_codebook(vckit_cli, speech_pair, vq_checkpoint, tmp_path):
    """--vq on/off/0.5: codebook entries, the encoder's own codes, or halfway: three conversions."""
    ck = vq_checkpoint
    src, ref = speech_pair
    out = tmp_path / "out.wav"
    common = ["convert", src, "--ref", ref, "-o", out, "--checkpoint", ck, "--vocoder", "griffinlim", "--device", "cpu", "--overwrite"]
    outs = []
    for vq in ("on", "off", "0.5"):
        proc = vckit_cli(*common, "--vq", vq)
        assert proc.returncode == 0, proc.stderr
        outs.append(out.read_bytes())
    assert len(set(outs)) == 3


def test_convert_missing_source(vckit_cli, speech_pair, tmp_path):
    _, ref = speech_pair
    missing = tmp_path / "missing.wav"
    err = one_line_error(
        vckit_cli("convert", missing, "--ref", ref, "-o", tmp_path / "o.wav", "--checkpoint", "checkpoints/default", "--vocoder", "griffinlim", "--device", "cpu")
    )
    assert "missing.wav" in err
    assert not (tmp_path / "o.wav").exists()


def test_convert_too_short_reference(vckit_cli, speech_pair, tmp_path):
    src, _ = speech_pair
    short = tmp_path / "short.wav"
    t = torch.arange(int(0.4 * 16000)) / 16000
    sf.write(short, (0.3 * torch.sin(2 * torch.pi * 200 * t)).numpy(), 16000)
    err = one_line_error(
        vckit_cli("convert", src, "--ref", short, "-o", tmp_path / "o.wav", "--checkpoint", "checkpoints/default", "--vocoder", "griffinlim", "--device", "cpu")
    )
    assert "too short: 0.4 s (need at least 1 s)" in err


def test_torchrun_two_processes_on_cpu(tiny_cache, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vckit.cli"]
    cmd += train_args(tiny_cache, out, "train.steps=6", "train.ckpt_every=1000", "model.vq.enabled=true")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("step-"))
    assert names == ["step-000000006"]  # exactly one final checkpoint, written by rank 0 only
    state = load_train_state(out / names[0])
    assert state["world"] == 2 and len(state["sampler"]) == 2
    assert not torch.equal(state["sampler"][0], state["sampler"][1])  # each rank draws its own batches
    cfg, sd, meta = load_checkpoint(out / names[0])
    assert meta["step"] == 6
    build_model(cfg, sd, for_training=True)  # the DDP run saved plain (unwrapped) weights


def test_convert_refuses_an_absurd_pitch_shift(vckit_cli, speech_pair, tmp_path):
    src, ref = speech_pair
    proc = vckit_cli("convert", src, "--ref", ref, "-o", tmp_path / "o.wav", "--pitch-shift", "48")
    assert proc.returncode == 2 and "between -24 and 24" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.wav").exists()


def test_convert_refuses_what_it_cannot_write_or_read(vckit_cli, speech_pair, tmp_path):
    src, ref = speech_pair
    odd = vckit_cli("convert", src, "--ref", ref, "-o", tmp_path / "o.aac")
    assert "cannot write .aac; name the output .wav, .flac, .ogg" in one_line_error(odd)
    assert not (tmp_path / "o.aac").exists()
    rate = vckit_cli("convert", src, "--ref", ref, "-o", tmp_path / "o.wav", "--sample-rate", "0")
    assert rate.returncode == 2 and "between 4000 and 192000" in rate.stderr
    for name, text, says in (("bad.jsonl", '{"path": "a.wav"\n', "bad.jsonl:1 is not valid JSON"), ("nopath.jsonl", '{"x": 1}\n', "nopath.jsonl:1 needs 'path'"),
                             ("list.jsonl", '[1, 2]\n', "list.jsonl:1 is not a JSON object")):
        (tmp_path / name).write_text(text)
        assert says in one_line_error(vckit_cli("convert", tmp_path / name, "--ref", ref, "-o", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_convert_writes_flac_and_mp3_by_the_suffix(vckit_cli, speech_pair, tmp_path):
    src, ref = speech_pair
    common = ["--ref", ref, "--checkpoint", "checkpoints/default", "--vocoder", "griffinlim", "--device", "cpu"]
    for name, fmt in (("o.flac", "FLAC"), ("o.mp3", "MP3")):
        if fmt not in sf.available_formats():
            continue
        proc = vckit_cli("convert", src, *common, "-o", tmp_path / name)
        assert proc.returncode == 0, proc.stderr
        assert sf.info(str(tmp_path / name)).format == fmt
    if "MP3" in sf.available_formats():
        bad = vckit_cli("convert", src, *common, "-o", tmp_path / "r.mp3", "--sample-rate", "44101")
        assert "MP3 takes 8000, 11025" in one_line_error(bad) and not (tmp_path / "r.mp3").exists()
        batch = vckit_cli("convert", src.parent, *common, "-o", tmp_path / "b", "--format", "mp3", "--sample-rate", "44101")
        assert one_line_error(batch).startswith("error: --format mp3: MP3 takes") and not (tmp_path / "b").exists()


def test_output_formats_follow_this_libsndfile(monkeypatch):
    from vckit.audio import output_format

    assert output_format("a.FLAC") == ("FLAC", "PCM_16") and output_format("a.ogg") == ("OGG", "VORBIS")
    monkeypatch.setattr(sf, "available_formats", lambda: {"WAV": "", "FLAC": "", "OGG": ""})
    with pytest.raises(VckitError, match=r"cannot write MP3; name the output \.wav, \.flac, \.ogg$"):
        output_format("a.mp3")


def test_the_shipped_fast_vocoder_converts_and_is_offered(vckit_cli, speech_pair, tmp_path):
    src, ref = speech_pair
    out = tmp_path / "o.wav"
    proc = vckit_cli("convert", src, "--ref", ref, "-o", out, "--checkpoint", "checkpoints/default", "--vocoder", "fast", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    wav, rate = sf.read(out)
    assert rate == 22050 and abs(len(wav) - sf.info(src).duration * rate) < 0.05 * rate
    assert "fast" in vckit_cli("convert", "--help", timeout=60).stdout


def test_eval_without_its_extra_fails_at_once(monkeypatch, capsys, tmp_path):
    import vckit.evaluation.metrics as metrics
    import vckit.evaluation.run as run
    from vckit.cli import main

    monkeypatch.setattr(metrics, "_installed", lambda m: m not in ("librosa", "matplotlib"))
    monkeypatch.setattr(run, "load_data", lambda *a, **k: pytest.fail("eval started work"))
    assert main(["eval", "--data", str(tmp_path), "-o", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: vckit eval needs librosa and matplotlib, which are not installed: pip install -e '.[eval]'"
    assert main(["eval", "--data", str(tmp_path), "-o", str(tmp_path / "report"), "--no-plots"]) == 2
    assert "needs librosa, which is not installed" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
