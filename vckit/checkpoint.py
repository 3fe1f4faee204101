"""The one checkpoint format of every model: the VC model, the fast vocoders and the judge.

A checkpoint is a folder::

    config.json          {"format": <kind's format>, "format_version", "step", ..., "sha256": {file: hex}}
    model.safetensors    the weights (more *.safetensors files for training checkpoints)
    train_state.pt       optimisers, RNG states (training checkpoints only; weights_only=True)

:func:`write_folder` is the one writer: atomic (into ``NAME.tmp-*``, every
file fsynced, then renamed, so a crash never leaves a half-written
checkpoint under its name), versioned, sha256 recorded for shipped weights.
:func:`read_folder` and :func:`read_weights` are the one reader: the format
and version are checked, a recorded sha256 must match, and
:func:`check_state_dict` names the first wrong key or shape. Folders written
before the format was shared (the judge's had no version) still load.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from vckit.config import Config, to_dict
from vckit.errors import CheckpointError, ConfigError, reason

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# kind -> (the "format" in config.json, what an error calls such a folder)
KINDS = {
    "vc": ("vckit-checkpoint", "vckit checkpoint"),
    "vocoder": ("vckit-fast-vocoder", "fast vocoder"),
    "verifier": ("vckit-speaker-verification", "speaker-verification model"),
    "phone_student": ("vckit-phone-student", "phone student"),
}
FORMAT = KINDS["vc"][0]
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
STEP_DIR = re.compile(r"^step-(\d{9})$")

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file: the one hash function of the toolkit (cached per path, size and mtime within the process)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a private temp folder beside ``folder``; on success, fsync its files and rename it to ``folder``.

    An existing ``folder`` is replaced; on any error the temp folder is removed
    and ``folder`` is left as it was. Raises :class:`CheckpointError` on an
    OS error.
    """
    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint in {folder.parent}: {e.strerror or e}") from None
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
        for p in tmp.iterdir():
            os.chmod(p, 0o666 & ~umask)
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        if folder.exists():
            old = folder.with_name(folder.name + ".tmp-old")  # a kill here leaves it for prune_checkpoints
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
        _fsync_dir(folder.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {folder}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_folder(
    folder: str | os.PathLike,
    kind: str,
    meta: dict[str, Any],
    weights: dict[str, dict[str, torch.Tensor]],
    *,
    step: int = 0,
    train_state: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    record_sha256: bool = False,
) -> Path:
    """Write a checkpoint folder of ``kind`` (a key of :data:`KINDS`) atomically; return its path.

    ``meta`` goes into ``config.json`` after the format keys; ``weights`` maps
    file names (``model.safetensors`` first) to state dicts. ``dtype`` (e.g.
    ``torch.float16``) casts the floating tensors of ``model.safetensors`` for
    shipping; ``record_sha256`` records its hash, which the reader then checks.
    Raises :class:`CheckpointError` if the folder cannot be written (a full
    disk says so: the files are serialised in memory and written by Python,
    whose ``OSError`` carries the reason, not by the serialisers' own writers).
    """
    from safetensors.torch import save

    fmt = KINDS[kind][0]
    with atomic_folder(folder) as tmp:
        for fname, sd in weights.items():
            cast = dtype if fname == WEIGHTS_FILE else None
            tensors = {}
            for k, v in sd.items():
                v = v.detach().cpu()
                tensors[k] = (v.to(cast) if cast is not None and v.is_floating_point() else v).contiguous()
            (tmp / fname).write_bytes(save(tensors, metadata={"format": fmt, "step": str(step)}))
        head = {"format": fmt, "format_version": FORMAT_VERSION, "step": step}
        full = {**head, **{k: v for k, v in meta.items() if k not in head and k != "sha256"}}
        if record_sha256:
            full["sha256"] = {WEIGHTS_FILE: sha256_file(tmp / WEIGHTS_FILE)}
        (tmp / CONFIG_FILE).write_text(json.dumps(full, indent=2))
        if train_state is not None:
            buf = io.BytesIO()
            torch.save(train_state, buf)
            (tmp / STATE_FILE).write_bytes(buf.getbuffer())
    return Path(folder)


def read_folder(folder: str | os.PathLike, kind: str = "vc") -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint folder of ``kind``, its format and version checked."""
    fmt, what = KINDS[kind]
    folder = Path(folder)
    if folder.is_file() and folder.name in (CONFIG_FILE, WEIGHTS_FILE):
        folder = folder.parent
    if not folder.exists():
        raise CheckpointError(f"checkpoint not found: {folder}")
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} is not a {what} (no {CONFIG_FILE})")
    try:
        meta = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{cfg_path} is corrupt (not valid JSON)") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CheckpointError(f"{folder} is not a {what} (config.json has no format '{fmt}')")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{cfg_path} is corrupt (format_version {version!r} is not a whole number)")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{folder} was written by a newer vckit (format {version})")
    return meta


def folder_kind(folder: str | os.PathLike) -> str:
    """Which of :data:`KINDS` the checkpoint folder ``folder`` holds, from its ``config.json``'s format."""
    folder = Path(folder)
    fmt = None
    if (folder / CONFIG_FILE).is_file():
        try:
            fmt = json.loads((folder / CONFIG_FILE).read_text()).get("format")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            pass
    for kind, (f, _) in KINDS.items():
        if f == fmt:
            return kind
    read_folder(folder, "vc")  # raises the reason: not found, no config.json, corrupt, no vckit format
    return "vc"


def recorded_sha256(meta: dict[str, Any], name: str = WEIGHTS_FILE) -> str | None:
    """The sha256 that ``config.json`` records for file ``name``, or None; :class:`CheckpointError` if the record is malformed."""
    table = meta.get("sha256") or {}
    if not isinstance(table, dict) or not isinstance(table.get(name, ""), str):
        raise CheckpointError("config.json is corrupt: its sha256 record is not a table of hex digests")
    return table.get(name) or None


def read_weights(folder: str | os.PathLike, meta: dict[str, Any], name: str = WEIGHTS_FILE, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file of a checkpoint folder as a float32 state dict; the sha256 recorded in ``meta`` must match."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {name}")
    expected = recorded_sha256(meta, name)
    if expected and sha256_file(path) != expected:
        raise CheckpointError(f"{path} does not match its recorded sha256 (corrupt or modified)")
    try:
        sd = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated: {reason(e)}") from None
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


# -- the VC model's folders -------------------------------------------------
def save_checkpoint(
    folder: str | os.PathLike,
    config: Config,
    state_dict: dict[str, torch.Tensor],
    *,
    step: int = 0,
    extra: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    record_sha256: bool = False,
) -> Path:
    """Write a VC checkpoint folder (:func:`write_folder`) and return its path."""
    meta = {"config": to_dict(config), **(extra or {})}
    return write_folder(folder, "vc", meta, {WEIGHTS_FILE: state_dict}, step=step, train_state=train_state, dtype=dtype, record_sha256=record_sha256)


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a VC checkpoint folder."""
    return read_folder(folder, "vc")


def read_config(folder: str | os.PathLike, meta: dict[str, Any] | None = None) -> Config:
    """The config of a VC checkpoint folder (from ``meta``, its parsed ``config.json``, when given), weights unread."""
    meta = read_folder(folder, "vc") if meta is None else meta
    folder = Path(folder)
    try:
        return Config.from_dict(meta["config"])
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{folder.parent if folder.is_file() else folder}/{CONFIG_FILE} holds an invalid config: {e}") from None


def load_checkpoint(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Config, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a VC checkpoint folder: (config, float32 state dict, metadata)."""
    meta = read_folder(folder, "vc")
    folder = Path(folder)
    folder = folder.parent if folder.is_file() else folder
    return read_config(folder, meta), read_weights(folder, meta, device=device), meta


def check_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointError` naming the first key or shape mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing:
        raise CheckpointError(f"checkpoint does not match the model: missing {missing[0]} ({len(missing)} missing in all)")
    if unexpected:
        raise CheckpointError(f"checkpoint does not match the model: unexpected {unexpected[0]} ({len(unexpected)} unexpected in all)")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(f"checkpoint does not match the model: {k} has shape {tuple(sd[k].shape)}, the config needs {tuple(v.shape)}")


def load_train_state(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {STATE_FILE} to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is corrupt or unsafe: {reason(e)}") from None


def step_folder(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / f"step-{step:09d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete step checkpoints of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    out = [p for p in run_dir.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()]
    return sorted(out)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    cks = list_checkpoints(run_dir)
    return cks[-1] if cks else None


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Keep the newest ``keep`` step checkpoints; remove stale temp folders.

    A checkpoint is renamed out of the way before it is deleted, so a kill
    mid-way never leaves a half-deleted folder under a checkpoint's name.
    """
    run_dir = Path(run_dir)
    for p in run_dir.glob("step-*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    cks = list_checkpoints(run_dir)
    for p in cks[: max(0, len(cks) - keep)]:
        doomed = p.with_name(p.name + ".tmp-pruned")
        try:
            os.replace(p, doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
