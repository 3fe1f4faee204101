"""The README's code runs as written: every ```python block is executed (from
the repository's root, as the README says, but writing into a temporary
folder), and every ``vckit ...`` command of the ```bash blocks parses with the
real argument parser (running them all would take hours: training, eval).
``python script.py --flag`` commands have their flags checked against the
script's ``--help``. The README's first command is run for real in
``test_default_path.py``.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys

import pytest

from vckit.cli import build_parser

from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)
BASH_LINES = [line for block in re.findall(r"^```bash\n(.*?)^```", README, re.S | re.M) for line in block.splitlines() if line.strip()]


def commands(line: str) -> list[list[str]]:
    """The commands of one shell line: its comment dropped, split at ``&&``, each as argv."""
    line = re.sub(r"\s+#\s.*$", "", line)
    return [shlex.split(part) for part in line.split("&&") if part.strip()]


def vckit_args(argv: list[str]) -> list[str] | None:
    """The arguments after ``vckit`` (or ``.venv/bin/vckit``, or ``-m vckit.cli``), else None."""
    for i, word in enumerate(argv):
        if word == "vckit" or word.endswith("/vckit") or word == "vckit.cli":
            return argv[i + 1 :]
    return None


VCKIT = [(line, args) for line in BASH_LINES for argv in commands(line) if (args := vckit_args(argv)) is not None]
SCRIPTS = [(line, argv) for line in BASH_LINES for argv in commands(line) if argv[0] in ("python", "python3") and argv[1].endswith(".py")]


def test_the_readme_has_the_blocks_this_file_checks():
    assert len(PYTHON_BLOCKS) >= 1 and len(VCKIT) >= 15 and len(SCRIPTS) >= 3
    subcommands = {args[0] for _, args in VCKIT}
    assert {"convert", "enroll", "speakers", "eval", "finetune", "train"} <= subcommands


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"python{i}" for i in range(len(PYTHON_BLOCKS))])
def test_python_blocks_run_as_written(block, tmp_path, monkeypatch):
    """Run in a folder that looks like the repository's root (its shipped files linked in),
    so that relative paths resolve as they do for a reader, and outputs land in ``tmp_path``."""
    (tmp_path / "checkpoints").symlink_to(REPO_ROOT / "checkpoints")
    (tmp_path / "examples").symlink_to(REPO_ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    written = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("checkpoints", "examples"))
    assert all((tmp_path / name).stat().st_size > 44 for name in written), written  # more than a WAV header


@pytest.mark.parametrize("line,args", VCKIT, ids=[" ".join(a[:1]) for _, a in VCKIT])
def test_vckit_commands_parse(line, args, capsys):
    """Placeholders like ``[target2.wav ...]`` are optional extras and are left out."""
    args = shlex.split(re.sub(r"\[[^\]]*\]", "", shlex.join(args)))
    try:
        ns = build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"README: {line.strip()}\nargparse: {capsys.readouterr().err.strip()}")
    assert ns.command == args[0] and callable(ns.func)


@functools.lru_cache
def script_help(script: str) -> str:
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("line,argv", SCRIPTS, ids=[a[1] for _, a in SCRIPTS])
def test_script_flags_exist(line, argv):
    script = REPO_ROOT / argv[1]
    assert script.is_file(), line
    flags = [a.split("=")[0] for a in argv[2:] if a.startswith("--")]
    if not flags:
        return
    missing = [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", script_help(argv[1]))]
    assert not missing, f"README: {line.strip()}\n{argv[1]} --help has no {missing}"
