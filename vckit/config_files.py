"""Config files: YAML or JSON, a ``base:`` chain, and ``key.sub=value`` overrides, read into the dataclasses of :mod:`vckit.config`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vckit.config import Config, from_dict
from vckit.errors import ConfigError


def load_config(path: str | Path, overrides: list[str] | None = None, cls: Any = Config) -> Any:
    """Read a YAML or JSON config file, apply ``key.sub=value`` overrides, build ``cls`` (default :class:`Config`).

    A file may start from another: ``base: other.yaml`` (relative to its own
    folder) is read first and this file's values override it, key by key, so a
    recipe variant is a few lines over one base configuration.
    """
    d = _read_config_dict(Path(path), ())
    for ov in overrides or []:
        apply_override(d, ov)
    own = getattr(cls, "from_dict", None)  # a config class that reads older layouts has its own
    return own(d) if own is not None else from_dict(cls, d)


def _read_config_dict(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """The nested dict of one config file, its ``base:`` chain merged under it."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not a UTF-8 text file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            d = yaml.load(text, Loader=_yaml_loader()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config {path} is not valid YAML: {_one_line(e)}") from None
    else:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config {path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    base = d.pop("base", None)
    if base is None:
        return d
    if not isinstance(base, str):
        raise ConfigError(f"config {path}: base must be the path of another config file, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in seen or base_path == path.resolve():
        raise ConfigError(f"config {path}: its base chain comes back to {base_path}")
    return _merged(_read_config_dict(base_path, (*seen, path.resolve())), d)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s values put in, section by section (lists and scalars are replaced whole)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_override(d: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in nested dict ``d``; the value is parsed as YAML.

    An empty value (``key=``, or ``key=''`` after the shell has eaten the quotes)
    is the empty string, which text settings read as "none"."""
    import yaml

    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    cur = d
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"override {override!r}: {p} is not a section")
    try:
        cur[parts[-1]] = yaml.load(raw, Loader=_yaml_loader()) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({_one_line(e)})") from None


def _one_line(e: Exception) -> str:
    """A YAML error (which spans lines, with a caret under the spot) as one line."""
    return " ".join(str(e).split())


def _yaml_loader() -> Any:
    """PyYAML's safe loader, reading ``1e-4`` as a number (YAML 1.2) rather than a string (YAML 1.1)."""
    import re

    import yaml

    global _LOADER
    if _LOADER is None:

        class Loader(yaml.SafeLoader):
            pass

        number = r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+"
        Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(f"^{number}$"), list("-+0123456789."))
        _LOADER = Loader
    return _LOADER


_LOADER: Any = None
