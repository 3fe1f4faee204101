"""vckit: disentangling voice conversion (content encoder + speaker encoder + AdaIN decoder).

    >>> import vckit
    >>> vc = vckit.load()                       # the shipped model
    >>> voice = vc.voice(["reference.wav"])     # embedding + F0 statistics
    >>> wav = vc.convert("source.wav", target=voice)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vckit.errors import VckitError

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from vckit.api import Converter, Voice, load

__all__ = ["Converter", "Voice", "VckitError", "__version__", "load"]


def __getattr__(name: str) -> Any:  # keep `import vckit` light: torch loads on first use
    if name in ("load", "Converter", "Voice"):
        from vckit import api

        return getattr(api, name)
    raise AttributeError(f"module 'vckit' has no attribute {name!r}")
