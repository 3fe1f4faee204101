"""The one exception hierarchy of vckit.

Library code raises these with one clear sentence; the CLI prints the sentence
and exits non-zero, never a traceback.
"""

from __future__ import annotations


class VckitError(Exception):
    """Base class of every error vckit raises on purpose."""


class AudioError(VckitError):
    """Audio that cannot be used: unreadable, empty, silent, non-finite, too short."""


class UnreadableAudioError(AudioError):
    """The file does not exist or no backend can decode it."""


class EmptyAudioError(AudioError):
    """The audio has no samples."""


class SilentAudioError(AudioError):
    """The audio holds no signal above the silence threshold."""


class NonFiniteAudioError(AudioError):
    """The audio contains NaN or infinite samples."""


class NoSpeechError(AudioError):
    """The audio holds sound but no speech (music, noise, room tone)."""


class TooShortAudioError(AudioError):
    """The audio is shorter than an operation needs."""


class ConfigError(VckitError):
    """A configuration is malformed: unknown key, wrong type, bad value."""


class CheckpointError(VckitError):
    """A checkpoint is missing, corrupt or does not match the model or config."""


def reason(e: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name.

    Third-party errors (soundfile, safetensors, pickle) sometimes carry an
    empty or multi-line message; this is the part a one-line error can use.
    """
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else type(e).__name__
