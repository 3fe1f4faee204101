"""Crash safety: ``kill -9`` of ``vckit train`` at random moments never leaves
a corrupt checkpoint, and resuming reaches the parameters of a run never
stopped; a kill mid-write leaves no WAV; a full disk is one clear line;
loading never unpickles code and checks the shipped model's sha256; the demo
serves eight visitors at once, each their own result, and refuses over-large,
over-long and non-audio uploads without falling over.

The default run does two kill/resume trials; ``VCKIT_KILL_TRIALS=N`` does N
(``benchmarks/kill_resume.py`` runs many and prints the outcomes), and
``VCKIT_KILL_REPORT=file.jsonl`` records each trial.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vckit.checkpoint import (
    STATE_FILE,
    STEP_DIR,
    WEIGHTS_FILE,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_train_state,
    prune_checkpoints,
    save_checkpoint,
    step_folder,
)
from vckit.models.vc import build_model
from vckit.errors import CheckpointError, VckitError

from conftest import REPO_ROOT, vckit_command

TRIALS = int(os.environ.get("VCKIT_KILL_TRIALS", "2"))
REPORT = os.environ.get("VCKIT_KILL_REPORT")
STEPS = 14


def train_args(tiny_cache: dict, out: Path, *sets: str) -> list[str]:
    """``vckit train`` on the tiny cache, deterministic, a checkpoint every step (so kills often land in a save)."""
    args = ["train", "--config", str(tiny_cache["yaml"]), "--device", "cpu", "--quiet"]
    for s in (f"train.out_dir={out}", f"train.steps={STEPS}", "train.ckpt_every=1", "train.keep_last=3", "train.deterministic=true", "model.vq.enabled=true", "data.augment.prob=0.5", *sets):
        args += ["--set", s]
    return args


@pytest.fixture(scope="module")
def reference(tiny_cache: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run: a checkpoint of every step, all kept."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.run([*vckit_command(), *train_args(tiny_cache, out, f"train.keep_last={STEPS}")], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert len(list_checkpoints(out)) == STEPS
    return out


def check_folder(run: Path) -> list[int]:
    """Every folder named as a checkpoint is whole: config, weights, training state all load. Returns their steps."""
    steps = []
    for p in sorted(run.iterdir()) if run.is_dir() else []:
        if not STEP_DIR.match(p.name):
            assert ".tmp-" in p.name or p.name in ("tb",), f"unexpected {p.name} in the run folder"
            continue
        cfg, sd, meta = load_checkpoint(p)
        build_model(cfg, sd, for_training=True)
        state = load_train_state(p)
        assert state["step"] == meta["step"] == int(STEP_DIR.match(p.name).group(1))
        steps.append(meta["step"])
    return steps


def same_weights(a: Path, b: Path) -> bool:
    _, sa, _ = load_checkpoint(a)
    _, sb, _ = load_checkpoint(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def end_process(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` (if it still runs) and reap it; SIGKILL if it has not gone in 15 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ``vckit train`` in a Python that counts the checkpoint module's file-system steps (each fsync,
# rename and tree removal of a save or prune) and SIGKILLs itself just before step number
# argv[1] (0: never; it writes how many there were to argv[2] on exit). A kill lands on a given
# moment of a given save on any machine, however fast: nothing depends on a timer.
KILL_AT_OP = """
import os, shutil, signal, sys
import vckit.checkpoint as ck
at, count_file, n = int(sys.argv[1]), sys.argv[2], 0
class Counted:
    def __init__(self, mod, names):
        self.mod, self.names = mod, names
    def __getattr__(self, name):
        f = getattr(self.mod, name)
        if name not in self.names:
            return f
        def op(*a, **k):
            global n
            n += 1
            if n == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return f(*a, **k)
        return op
ck.os, ck.shutil = Counted(os, {"fsync", "replace"}), Counted(shutil, {"rmtree"})
from vckit.cli import main
code = main(sys.argv[3:])
open(count_file, "w").write(str(n))
sys.exit(code)
"""


def train_killed_at(args: list[str], op: int, log: Path) -> subprocess.Popen:
    """Run ``vckit train`` to its end, or to a SIGKILL before checkpoint step ``op`` (0: none)."""
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", KILL_AT_OP, str(op), str(log.with_suffix(".ops")), *args], stdout=f, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        proc.wait(timeout=300)
    finally:
        end_process(proc)
    return proc


@pytest.fixture(scope="module")
def checkpoint_ops(tiny_cache: dict, tmp_path_factory: pytest.TempPathFactory) -> int:
    """How many checkpoint file-system steps a whole trial run takes (the range the kills are drawn from)."""
    folder = tmp_path_factory.mktemp("count")
    proc = train_killed_at(train_args(tiny_cache, folder / "run"), 0, folder / "run.log")
    assert proc.returncode == 0, (folder / "run.log").read_text()[-2000:]
    return int((folder / "run.ops").read_text())


def test_kill_9_at_random_moments_then_resume_matches_the_uninterrupted_run(tiny_cache, reference, checkpoint_ops, tmp_path):
    seed = int(os.environ.get("VCKIT_KILL_SEED", "0")) or (random.randrange(1 << 30) if TRIALS > 2 else 12345)
    rng = random.Random(seed)
    assert checkpoint_ops >= 5 * STEPS  # each save syncs its files and folder and renames it into place
    for trial in range(TRIALS):
        run = tmp_path / f"trial{trial}"
        args = train_args(tiny_cache, run)
        op = rng.randint(1, checkpoint_ops)  # before any fsync, rename or removal of any save or prune
        log = tmp_path / f"trial{trial}.log"
        proc = train_killed_at(args, op, log)
        assert proc.returncode == -signal.SIGKILL, f"not killed at step {op} of {checkpoint_ops}:\n{log.read_text()[-2000:]}"
        survived = check_folder(run)
        cut_short = sorted(p.name.split(".", 1)[1] for p in run.glob("*.tmp-*"))  # a save or prune the kill interrupted
        for s in survived:  # each checkpoint the killed run left is the reference's of that step
            assert same_weights(step_folder(run, s), step_folder(reference, s)), (seed, trial, s)
        resumed = subprocess.run([*vckit_command(), *args, "--resume"], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
        assert resumed.returncode == 0, (seed, trial, resumed.stderr)
        last = latest_checkpoint(run)
        assert check_folder(run)[-1] == STEPS and last.name == f"step-{STEPS:09d}"
        assert same_weights(last, step_folder(reference, STEPS)), (seed, trial, survived)
        opt, ref_opt = load_train_state(last)["optimizer"]["state"], load_train_state(step_folder(reference, STEPS))["optimizer"]["state"]
        assert all(torch.equal(opt[i]["exp_avg_sq"], ref_opt[i]["exp_avg_sq"]) for i in ref_opt)
        assert not list(run.glob("*.tmp-*"))  # whatever the kill cut short was cleaned up
        if REPORT:
            with open(REPORT, "a") as f:
                f.write(json.dumps({"seed": seed, "trial": trial, "killed_before_op": op, "of_ops": checkpoint_ops, "survived": survived, "cut_short": cut_short, "ok": True}) + "\n")


def test_pruning_never_leaves_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    """A kill during pruning used to leave an old step folder with some files gone
    (rmtree deletes file by file); now it is renamed out of the way first."""
    from vckit.models.vc import build_model as build
    from vckit.config import Config

    cfg = Config()
    sd = build(cfg).state_dict()
    for s in (1, 2, 3):
        save_checkpoint(step_folder(tmp_path, s), cfg, sd, step=s, train_state={"step": s})
    import shutil

    removed: list[str] = []

    def dying_rmtree(path, *a, **k):
        removed.append(Path(path).name)
        raise KeyboardInterrupt  # the process dies before it finishes deleting

    monkeypatch.setattr(shutil, "rmtree", dying_rmtree)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoints(tmp_path, keep=1)
    assert removed and not any(STEP_DIR.match(n) for n in removed)  # only ever a renamed folder
    monkeypatch.undo()
    assert check_folder(tmp_path)  # what is still named as a checkpoint is whole
    prune_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000003"]


KILL_DURING_WRITE = """
import os, sys, time
def slow(fd):  # the data is written, not yet synced or linked: the moment a kill hurts most
    print("writing", flush=True)
    time.sleep(60)
os.fsync = slow
from vckit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_a_wav_write_leaves_no_file(data_dir, tmp_path):
    """``kill -9`` while the WAV is being written: neither the output nor a temp file is left."""
    out = tmp_path / "out"
    out.mkdir()
    args = ["convert", str(data_dir / "vcc2016" / "SF1" / "100002.wav"), "--ref", str(data_dir / "vcc2016" / "TM1" / "100001.wav")]
    args += ["-o", str(out / "x.wav"), "--checkpoint", "checkpoints/default", "--vocoder", "griffinlim", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_WRITE, *args], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        line = proc.stdout.readline()  # blocks until the write has begun
        assert line.strip() == "writing", line
    finally:
        end_process(proc)
    assert proc.returncode == -signal.SIGKILL
    assert list(out.iterdir()) == []


# -- a full disk -------------------------------------------------------------------------------
FULL_DISK = "import resource, sys\nresource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\nfrom vckit.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def test_full_disk_while_training_is_one_clear_line(tiny_cache, tmp_path):
    """Files over 50 kB fail to write (RLIMIT_FSIZE: EFBIG, as ENOSPC would on a full disk)."""
    out = tmp_path / "run"
    args = train_args(tiny_cache, out, "train.steps=3", "train.ckpt_every=100")
    proc = subprocess.run([sys.executable, "-c", FULL_DISK.format(limit=50_000), *args], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot write checkpoint") and "File too large" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not [p.name for p in out.iterdir() if p.name.startswith("step-")]  # no checkpoint, no temp folder


# -- loading is safe ------------------------------------------------------------------------------
def test_no_code_path_unpickles():
    """Every ``torch.load`` in the package passes ``weights_only=True``; nothing imports pickle."""
    calls = 0
    for path in (REPO_ROOT / "vckit").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(pickle|dill|joblib|cloudpickle)\b", text, re.M), path
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            calls += 1
            assert "weights_only=True" in m.group(1), f"{path.name}: torch.load({m.group(1)})"
    assert calls >= 2


def test_truncated_training_state_at_any_length_is_a_clear_error(tmp_path):
    from vckit.config import Config

    cfg = Config()
    path = save_checkpoint(tmp_path / "ck", cfg, build_model(cfg).state_dict(), step=5, train_state={"step": 5, "rng": torch.get_rng_state(), "x": torch.randn(100)})
    data = (path / STATE_FILE).read_bytes()
    for keep in sorted({0, 1, 10, 100, len(data) // 2, len(data) - 100, len(data) - 1}):
        (path / STATE_FILE).write_bytes(data[:keep])
        with pytest.raises(CheckpointError, match=r"train_state\.pt is corrupt or unsafe"):
            load_train_state(path)


def test_resume_from_a_damaged_latest_checkpoint_names_the_file(make_config, tmp_path):
    from vckit.training.vc import Trainer

    Trainer(make_config("train.steps=2", out_dir=tmp_path / "r"), device="cpu").run(progress=False)
    ck = latest_checkpoint(tmp_path / "r")
    data = (ck / WEIGHTS_FILE).read_bytes()
    (ck / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(VckitError, match=rf"{re.escape(str(ck / WEIGHTS_FILE))} is corrupt or truncated"):
        Trainer(make_config("train.steps=4", out_dir=tmp_path / "r"), device="cpu", resume=True)


def test_the_shipped_model_is_checked_by_its_sha256(tmp_path, monkeypatch):
    """A copy of the shipped model: a changed byte is refused, and so is a config.json with the hash taken out."""
    import shutil

    import vckit
    import vckit.shipped

    ship = tmp_path / "default"
    shutil.copytree(vckit.shipped.shipped_dir("default"), ship)
    monkeypatch.setattr(vckit.shipped, "ROOTS", (tmp_path,))
    meta = json.loads((ship / "config.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{64}", meta["sha256"][WEIGHTS_FILE])
    data = bytearray((ship / WEIGHTS_FILE).read_bytes())
    data[-3] ^= 0x01
    (ship / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its recorded sha256"):
        vckit.load(vocoder="griffinlim", device="cpu")
    del meta["sha256"]
    (ship / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="records no sha256 of its weights"):
        vckit.load(vocoder="griffinlim", device="cpu")
    with pytest.raises(CheckpointError, match="records no sha256"):  # named by its path: still the shipped model
        vckit.load(ship, vocoder="griffinlim", device="cpu")


# -- the demo under load and abuse ------------------------------------------------------------------
DEMO_MAX_SECONDS = 5  # so the upload cap is demo_app's floor, 10 MB


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory):
    """``python demo.py`` with 8 conversions at a time, clips up to 5 s; yields its URL."""
    from test_demo import start_demo

    pytest.importorskip("gradio_client", reason="the demo tests need gradio (pip install -e '.[demo]')")
    root = tmp_path_factory.mktemp("demo")
    args = ["--vocoder", "griffinlim", "--device", "cpu", "--concurrency", "8", "--max-seconds", str(DEMO_MAX_SECONDS), "--bank", str(root / "bank")]
    proc, url, _ = start_demo(args, root, timeout=120)
    try:
        yield url
    finally:
        end_process(proc, signal.SIGTERM)


def upload(url: str, name: str, data: bytes) -> tuple[int, str]:
    """POST one file to Gradio's upload route: (HTTP status, body)."""
    import urllib.error
    import urllib.request

    boundary = "vckit-test-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "gradio_api/upload", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_demo_refuses_an_over_large_upload_and_keeps_serving(demo_url):
    status, body = upload(demo_url, "huge.wav", os.urandom(11 * 1024 * 1024))
    assert status == 413 and "maximum allowed size" in body
    status, body = upload(demo_url, "small.wav", b"RIFF" + os.urandom(1000))
    assert status == 200 and "small.wav" in body


def test_demo_8_simultaneous_visitors_get_their_own_results(demo_url, data_dir, tmp_path):
    """Eight visitors at once: six with speech of different lengths to different voices, one
    with an over-long clip and one with a picture named .wav; each gets their own answer."""
    import threading

    import numpy as np
    import soundfile as sf
    from gradio_client import Client, handle_file

    from vckit.demo.app import REFERENCE_CHOICE

    speech, sr = sf.read(str(data_dir / "vcc2016" / "SF1" / "100001.wav"), dtype="float32")
    refs = [data_dir / "vcc2016" / spk / "100001.wav" for spk in ("TM1", "SM1", "TF1")]
    visitors = []
    for i in range(6):
        src = tmp_path / f"visitor{i}.wav"
        sf.write(str(src), np.resize(speech, int((1.0 + 0.3 * i) * sr)), sr)
        visitors.append((src, refs[i % 3], f"{1.0 + 0.3 * i:.1f} s"))
    long = tmp_path / "visitor6_long.wav"
    sf.write(str(long), np.resize(speech, int((DEMO_MAX_SECONDS + 1) * sr)), sr)
    visitors.append((long, refs[0], f"is {DEMO_MAX_SECONDS + 1:.1f} s long; this demo takes at most {DEMO_MAX_SECONDS} s"))
    picture = tmp_path / "visitor7_picture.wav"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(5000))
    visitors.append((picture, refs[1], "cannot read audio file"))
    barrier = threading.Barrier(len(visitors))

    def visit(i: int):
        src, ref, _ = visitors[i]
        client = Client(demo_url, verbose=False, download_files=str(tmp_path / f"downloads{i}"))
        barrier.wait()  # all eight press Convert together
        return client.predict(handle_file(str(src)), REFERENCE_CHOICE, handle_file(str(ref)), "griffinlim", "none", 0, api_name="/on_convert")

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(visitors)) as pool:
        answers = list(pool.map(visit, range(len(visitors))))
    for i, ((src, ref, expect), (audio, picture_path, report)) in enumerate(zip(visitors, answers)):
        if i < 6:
            assert audio and picture_path, report
            assert Path(audio).name == f"vckit_visitor{i}_to_{ref.stem}.wav"  # their own source, their own voice
            assert abs(sf.info(audio).duration - float(expect.split()[0])) < 0.02
            assert f"voice of *{ref.stem}*" in report
        else:
            assert audio in (None, {"__type__": "update"}) and picture_path in (None, {"__type__": "update"})  # nothing new (a previous result would stay)
            assert report.startswith("**Could not convert:**") and expect in report, report
    assert len({Path(a[0]).parent for a in answers[:6]}) == 6
