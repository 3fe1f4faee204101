"""Files are written whole or not at all, through one module (vckit.files)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from vckit.files import atomic_path, write_file_atomically, write_text_atomically

PACKAGE = Path(__file__).resolve().parents[1] / "vckit"


def test_atomic_path_puts_the_file_in_place_and_leaves_no_temp(tmp_path):
    target = tmp_path / "mels.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(".tmp")
        assert not target.exists()  # nothing at the final name while the write is in progress
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(3, 2))
        mm[:] = 7
        mm.flush()
        del mm
    assert np.load(target).tolist() == [[7, 7]] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mels.npy"]


def test_a_failed_write_keeps_what_was_there(tmp_path):
    target = tmp_path / "train.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="cut"):
        with atomic_path(target) as tmp, open(tmp, "w") as f:
            f.write("half of the new")
            raise RuntimeError("cut short")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


def test_text_and_bytes_writers(tmp_path):
    write_text_atomically(tmp_path / "index.json", "{}")
    write_text_atomically(tmp_path / "index.json", '{"a": 1}')  # replaces
    assert (tmp_path / "index.json").read_text() == '{"a": 1}'
    write_file_atomically(tmp_path / "x.wav", b"abc", overwrite=False)
    with pytest.raises(FileExistsError):
        write_file_atomically(tmp_path / "x.wav", b"def", overwrite=False)
    assert (tmp_path / "x.wav").read_bytes() == b"abc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "x.wav"]


def test_writes_that_rename_go_through_the_one_module():
    """A hand-written temp-file-then-rename elsewhere in the package fails this test:
    only vckit.files (files) and vckit.checkpoint (checkpoint folders) rename into place."""
    allowed = {"files.py", "checkpoint.py"}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in allowed and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("replace", "rename"):
                base = node.func.value
                if isinstance(base, ast.Name) and base.id == "os" or node.func.attr == "rename":
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not found, found


def test_the_portable_path_without_o_tmpfile(tmp_path, monkeypatch):
    """Where the system has no O_TMPFILE, bytes go through a hidden temp file renamed into place:
    readable by others as a plain file would be, exclusive without ``overwrite``, and nothing left over."""
    import os

    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    umask = os.umask(0o022)
    os.umask(umask)
    write_file_atomically(tmp_path / "a.wav", b"abc", overwrite=False)
    assert (tmp_path / "a.wav").stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(FileExistsError):
        write_file_atomically(tmp_path / "a.wav", b"def", overwrite=False)
    write_file_atomically(tmp_path / "a.wav", b"xyz", overwrite=True)
    assert (tmp_path / "a.wav").read_bytes() == b"xyz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]
