"""Files written whole or not at all.

Every file vckit writes (audio, speaker profiles, manifests, feature caches,
their indexes) goes through one of these two, so that an interrupted write
never leaves a half-written file where a good one was or is expected:

- :func:`write_file_atomically` for bytes already in memory (audio, JSON);
- :func:`atomic_path` for writers that want a path or stream their data (a
  memory-mapped ``.npy``, ``safetensors``, a JSON-lines manifest).

Checkpoint folders have their own writer (:func:`vckit.checkpoint.write_folder`).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def temp_name(path: Path) -> Path:
    """A hidden, unique sibling of ``path`` for a write in progress (``.NAME.PID.RAND.tmp``)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to.

    When the ``with`` block ends without an exception, the file is fsynced and
    renamed onto ``path`` (replacing what was there); otherwise it is removed
    and ``path`` is untouched::

        with atomic_path(out / "mels.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, mels)  # a file object: given the path, np.save would add .npy to the .tmp name
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Put ``text`` (UTF-8) at ``path`` whole, replacing what was there."""
    write_file_atomically(Path(path), text.encode("utf-8"), overwrite=True)


def write_file_atomically(path: Path, data: bytes | memoryview, *, overwrite: bool) -> None:
    """Put ``data`` at ``path`` whole, or not at all, fsynced; raises ``OSError``.

    On Linux the bytes go into an unnamed file (``O_TMPFILE``) that is linked
    into the folder only when complete, so even ``kill -9`` mid-write leaves
    no file behind; elsewhere a hidden temp file is renamed into place.
    Without ``overwrite`` an existing ``path`` gives ``FileExistsError``.
    """
    try:
        fd = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, 0o666)
    except (AttributeError, OSError):  # not Linux, or a file system without it
        fd = -1
    if fd >= 0:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            try:
                _link_into_place(f"/proc/self/fd/{f.fileno()}", path, overwrite)
                return
            except FileExistsError:
                raise
            except OSError:  # no /proc: write it again the portable way
                log.debug("O_TMPFILE link failed for %s; using a temp file", path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        if not overwrite and path.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(path))


def _link_into_place(src: str, path: Path, overwrite: bool) -> None:
    """Hard-link ``src`` (a complete file) to ``path``: exclusively, or replacing it."""
    if not overwrite:
        os.link(src, path)  # atomic, and FileExistsError if something is there
        return
    tmp = temp_name(path)
    os.link(src, tmp)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
