"""The wheel: built from the source tree, installed alone, it converts, streams and reads its models from an empty folder.

The wheel is built offline (``python -m build --no-isolation``, with the dev extra's
``build`` and ``wheel``) from a copy of what a clone holds, then installed with
``pip install --no-deps --target`` into a folder that goes first on ``PYTHONPATH``,
so the commands below import the installed package, not this checkout, and find
the shipped models inside it (``vckit/_shipped``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from conftest import REPO_ROOT
from vckit import __version__
from vckit.shipped import FOLDERS, clone_dir

README = (REPO_ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The folder the wheel was installed into (``--target``)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("vckit", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        copy = shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy
        copy(REPO_ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    for name in FOLDERS:
        shutil.copytree(clone_dir(name), src / clone_dir(name).relative_to(REPO_ROOT))
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(root / "dist"), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = (root / "dist").glob("vckit-*.whl")
    assert wheel.name == f"vckit-{__version__}-py3-none-any.whl"
    site = root / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    return site


def run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("VCKIT_CHECKPOINT", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def test_the_wheel_carries_the_models_and_imports_from_its_own_folder(installed, tmp_path):
    for name in FOLDERS:
        assert (installed / "vckit" / "_shipped" / name).is_dir(), name
    where = run(installed, tmp_path, "-c", "import vckit, vckit.shipped as s; print(vckit.__file__); print(s.shipped_dir('default'))")
    assert where.returncode == 0, where.stderr
    assert where.stdout.split() == [str(installed / "vckit" / "__init__.py"), str(installed / "vckit" / "_shipped" / "default")]
    version = run(installed, tmp_path, "-m", "vckit", "--version")
    assert version.stdout.strip() == f"vckit {__version__}"


def test_from_an_empty_folder_info_convert_and_stream_work(installed, tmp_path):
    examples = installed / "vckit" / "_shipped" / "examples"
    info = run(installed, tmp_path, "-m", "vckit", "info", "default")
    assert info.returncode == 0 and info.stdout.startswith(f"checkpoint: {installed / 'vckit' / '_shipped' / 'default'}\n"), info.stderr
    src, ref = examples / "01_m2f_source.wav", examples / "01_m2f_reference.wav"
    conv = run(installed, tmp_path, "-m", "vckit", "convert", str(src), "--ref", str(ref), "-o", "out.wav")
    assert conv.returncode == 0, conv.stderr
    live = run(installed, tmp_path, "-m", "vckit", "stream", "--input", str(src), "--ref", str(ref), "--output", "live.wav")
    assert live.returncode == 0 and "delay 145 ms" in live.stdout, live.stderr
    for name in ("out.wav", "live.wav"):
        assert abs(sf.info(str(tmp_path / name)).duration - sf.info(str(src)).duration) < 0.02


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"python{i}" for i in range(len(PYTHON_BLOCKS))])
def test_the_readme_python_blocks_run_on_the_wheel(installed, block, tmp_path):
    """As the README says, from a folder whose examples/ are the shipped examples: here the wheel's."""
    (tmp_path / "examples").symlink_to(installed / "vckit" / "_shipped" / "examples")
    (tmp_path / "block.py").write_text(block)
    out = run(installed, tmp_path, "block.py")
    assert out.returncode == 0, out.stderr[-2000:]
