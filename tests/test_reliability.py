"""Crash safety: ``kill -9`` of ``vckit train`` at random moments never leaves
a corrupt checkpoint, and resuming reaches the parameters of a run never
stopped; a full disk is one clear line; loading never unpickles code.

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
import time
from pathlib import Path

import pytest
import torch

from vckit.checkpoint import (
    STATE_FILE,
    STEP_DIR,
    WEIGHTS_FILE,
    build_model,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_train_state,
    prune_checkpoints,
    save_checkpoint,
    step_folder,
)
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


def kill_at_random(args: list[str], run: Path, rng: random.Random, log: Path) -> tuple[int, float]:
    """Start ``vckit train``, SIGKILL it a random delay (often mid-save) after a random
    step's checkpoint appeared; returns (that step, the delay)."""
    wait_for = rng.randint(0, STEPS - 2)
    delay = rng.uniform(0, 0.08)
    with open(log, "w") as f:
        proc = subprocess.Popen([*vckit_command(), *args], stdout=f, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        end = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < end:
            if wait_for == 0 or max((int(p.name[5:]) for p in run.glob("step-?????????")), default=0) >= wait_for:
                break
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"training ended by itself ({proc.returncode}) before the kill:\n{log.read_text()[-2000:]}"
    return wait_for, delay


def test_kill_9_at_random_moments_then_resume_matches_the_uninterrupted_run(tiny_cache, reference, tmp_path):
    seed = int(os.environ.get("VCKIT_KILL_SEED", "0")) or (random.randrange(1 << 30) if TRIALS > 2 else 12345)
    rng = random.Random(seed)
    for trial in range(TRIALS):
        run = tmp_path / f"trial{trial}"
        args = train_args(tiny_cache, run)
        waited, delay = kill_at_random(args, run, rng, tmp_path / f"trial{trial}.log")
        survived = check_folder(run)
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
                f.write(json.dumps({"seed": seed, "trial": trial, "waited_for": waited, "delay": round(delay, 4), "survived": survived, "resumed_from": max(survived, default=0), "ok": True}) + "\n")


def test_pruning_never_leaves_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    """A kill during pruning used to leave an old step folder with some files gone
    (rmtree deletes file by file); now it is renamed out of the way first."""
    from vckit.checkpoint import build_model as build
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


# -- a full disk -------------------------------------------------------------------------------
FULL_DISK = "import resource, sys\nresource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\nfrom vckit.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def test_full_disk_while_training_is_one_clear_line(tiny_cache, tmp_path):
    """Files over 50 kB fail to write (RLIMIT_FSIZE: EFBIG, as ENOSPC would on a full disk)."""
    out = tmp_path / "run"
    args = train_args(tiny_cache, out, "train.steps=3", "train.ckpt_every=100")
    proc = subprocess.run([sys.executable, "-c", FULL_DISK.format(limit=50_000), *args], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 1, proc.stderr
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
    from vckit.train import Trainer

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
    import vckit.api

    ship = tmp_path / "default"
    shutil.copytree(vckit.api.DEFAULT_CHECKPOINT, ship)
    monkeypatch.setattr(vckit.api, "DEFAULT_CHECKPOINT", ship)
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
