"""recipes/shared_dev/background.sh, the never-stopping training of issue 29, run against a stand-in trainer.

The stand-in `vckit` records where each cycle started from and finishes a cycle (writes its last step) while a
budget lasts, then stops short as an interrupted cycle does; the stand-in `python` records the resume-point calls.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
END = "step-000001000"

FAKE_VCKIT = """#!/usr/bin/env bash
out=""; init=""
while [ $# -gt 0 ]; do
  case "$1" in
    --set) case "$2" in train.out_dir=*) out="${2#train.out_dir=}";; esac; shift;;
    --init-from) init="$2"; shift;;
  esac
  shift
done
echo "$init" >> "$out/inits"
n=$(cat budget); echo $((n - 1)) > budget
[ "$n" -gt 0 ] && mkdir -p "$out/step-000001000"
exit 0
"""

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$@" >> resume_point_calls
"""


def _house(tmp_path: Path, budget: int) -> Path:
    root = tmp_path / "repo"
    (root / "recipes/shared_dev/resume_point").mkdir(parents=True)
    shutil.copy(REPO / "recipes/shared_dev/background.sh", root / "recipes/shared_dev/background.sh")
    (root / "recipes/shared_dev/resume_point/config.json").write_text("{}")
    (root / ".venv/bin").mkdir(parents=True)
    for name, text in (("vckit", FAKE_VCKIT), ("python", FAKE_PYTHON)):
        (root / ".venv/bin" / name).write_text(text)
        (root / ".venv/bin" / name).chmod(0o755)
    (root / "budget").write_text(str(budget))
    return root


def _run(root: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "recipes/shared_dev/background.sh"], cwd=root, capture_output=True, text=True, timeout=60)
    deadline = time.time() + 60
    while (root / "runs/cycles/pid").exists() and time.time() < deadline:  # the loop runs detached; it ends when a cycle stops short
        time.sleep(0.1)
    assert not (root / "runs/cycles/pid").exists(), "the loop did not end"
    return proc


def _inits(root: Path) -> dict[str, list[str]]:
    return {d.name: (d / "inits").read_text().split() for d in sorted((root / "runs/cycles").glob("[0-9][0-9][0-9]"))}


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_cycles_chain_from_the_resume_point_and_a_stopped_cycle_resumes_in_its_own_folder(tmp_path):
    root = _house(tmp_path, budget=2)
    proc = _run(root)
    assert proc.returncode == 0 and "background training started" in proc.stdout
    # two cycles finish, the third stops short: each starts from the last one's end, the first from the resume point
    assert _inits(root) == {"001": ["recipes/shared_dev/resume_point"], "002": [f"runs/cycles/001/{END}"], "003": [f"runs/cycles/002/{END}"]}
    assert (root / "runs/cycles/003/THREADS").resolve() == (root / "runs/cycles/THREADS").resolve()
    assert (root / "runs/cycles/THREADS").read_text().strip() == "1"
    # each finished cycle rewrites the resume point from its own end
    assert (root / "resume_point_calls").read_text().split("\n")[:2] == [
        "recipes/shared_dev/resume_point.py --run runs/cycles/001 --last", "recipes/shared_dev/resume_point.py --run runs/cycles/002 --last"]
    log = (root / "runs/cycles/cycles.log").read_text()
    assert "runs/cycles/003 stopped before its end" in log and log.count("finished") == 2

    # started again, the stopped cycle goes on in its own folder from the same start, then the chain goes on
    (root / "budget").write_text("1")
    _run(root)
    assert _inits(root)["003"] == [f"runs/cycles/002/{END}"] * 2
    assert _inits(root)["004"] == [f"runs/cycles/003/{END}"]
    assert not (root / "runs/cycles/005").exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_second_start_while_one_runs_is_refused(tmp_path):
    root = _house(tmp_path, budget=0)
    (root / "runs/cycles").mkdir(parents=True)
    (root / "runs/cycles/pid").write_text(str(os.getpid()))  # a live process
    proc = subprocess.run(["bash", "recipes/shared_dev/background.sh"], cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "already runs" in proc.stderr
    assert not list((root / "runs/cycles").glob("[0-9][0-9][0-9]"))
