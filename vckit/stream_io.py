"""Sound in and out for ``vckit stream``: a microphone to the speakers, or a file
through the very same block-by-block path.

The device side uses ``sounddevice`` (PortAudio). Each audio callback pushes
one block of the microphone into a :class:`vckit.streaming.Stream` and
plays what comes out, so the sound card sees a fixed delay of
:attr:`~vckit.streaming.Stream.delay_ms` plus its own buffers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from vckit.errors import VckitError

if TYPE_CHECKING:
    from vckit.streaming import Stream

log = logging.getLogger(__name__)

FILE_CALLBACK = 512  # samples per push when a file plays the microphone (a typical sound-card buffer)
MARGIN = 0.7  # the share of each block's duration that compute may take with a safe margin (issue 29's bar)


@dataclasses.dataclass
class StreamReport:
    """How a stream kept up: per step (one block converted), compute time against the block's duration."""

    seconds: float  # input streamed
    block_ms: float
    delay_ms: float
    compute_ms: list[float]  # per push that converted at least one block
    late: int = 0  # callbacks the sound card reported as over- or underflowing

    def summary(self) -> str:
        """One line of figures, and a second with the verdict when the machine did not keep up with margin."""
        c = np.asarray(self.compute_ms) if self.compute_ms else np.zeros(1)
        line = (
            f"{self.seconds:.1f} s streamed: delay {self.delay_ms:.0f} ms, block {self.block_ms:.1f} ms, "
            f"compute per block median {np.median(c):.1f} ms, 99th percentile {np.percentile(c, 99):.1f} ms"
        )
        line += f", {self.late} late callbacks" if self.late else ""
        verdict = self.verdict()
        return f"{line}\n{verdict}" if verdict else line

    def verdict(self) -> str:
        """Empty when the 99th percentile of compute stays within ``MARGIN`` of the block; else what it means for live use."""
        if not self.compute_ms:
            return ""
        median, p99 = float(np.median(self.compute_ms)), float(np.percentile(self.compute_ms, 99))
        hint = ("another program may be using the cores; a longer block (--block-ms) costs delay but gives each block more time")
        if median > self.block_ms:
            return f"too slow for live use on this machine: a block takes {median / self.block_ms:.1f}x its own duration to convert, so the output would fall ever further behind ({hint})"
        if p99 > self.block_ms:
            return f"not reliable for live use on this machine: 1 block in 100 takes longer to convert than it lasts, so a sound card would drop audio ({hint})"
        if p99 > MARGIN * self.block_ms:
            return f"keeps up with little margin: the 99th percentile uses {p99 / self.block_ms:.0%} of each block"
        return ""


def sounddevice():
    """The ``sounddevice`` module, or one clear error saying what is missing."""
    try:
        import sounddevice as sd
    except ImportError:
        raise VckitError("live audio needs the sounddevice package: pip install sounddevice") from None
    except OSError:
        raise VckitError(
            "live audio needs the PortAudio library, which this machine lacks: apt-get install libportaudio2 "
            "(Debian/Ubuntu; macOS and Windows get it with pip install sounddevice), or stream a file with --input/--output"
        ) from None
    return sd


def list_devices() -> str:
    """The audio devices PortAudio sees, as ``sounddevice`` prints them."""
    sd = sounddevice()
    try:
        return str(sd.query_devices())
    except sd.PortAudioError as e:
        raise VckitError(f"cannot list audio devices: {e}") from None


def check_devices(input_device: str | int | None, output_device: str | int | None, sample_rate: int) -> None:
    """One clear error, before any work, if the devices are missing or cannot take ``sample_rate`` mono."""
    sd = sounddevice()
    try:
        sd.check_input_settings(device=_device(input_device), channels=1, dtype="float32", samplerate=sample_rate)
        sd.check_output_settings(device=_device(output_device), channels=1, dtype="float32", samplerate=sample_rate)
    except sd.PortAudioError as e:
        raise _device_error(e, f"; the devices must take {sample_rate} Hz mono") from None
    except ValueError as e:
        raise _device_error(e) from None


def stream_file(stream: "Stream", wav: np.ndarray, *, callback: int = FILE_CALLBACK) -> tuple[np.ndarray, StreamReport]:
    """Push ``wav`` (float32 at the stream's rate) in ``callback``-sample pieces, as a sound card would.

    Returns the converted signal with the delay removed (exactly as long as
    ``wav``) and how long each block took to convert.
    """
    out, times = [], []
    for i in range(0, len(wav), callback):
        t0 = time.perf_counter()
        before = stream._frames_done
        out.append(stream.push(wav[i : i + callback]))
        if stream._frames_done > before:
            times.append(1000.0 * (time.perf_counter() - t0))
    out.append(stream.flush())
    converted = np.concatenate(out)[stream.delay : stream.delay + len(wav)]
    return converted, StreamReport(len(wav) / stream.sample_rate, stream.block_ms, stream.delay_ms, times)


def run_devices(
    stream: "Stream",
    *,
    input_device: str | int | None = None,
    output_device: str | int | None = None,
    on_start: Callable[[str], None] | None = None,
) -> StreamReport:
    """Microphone -> ``stream`` -> speakers until Ctrl-C; returns how it kept up."""
    sd = sounddevice()
    times: list[float] = []
    late = [0]
    frames = stream.block * stream.hop

    def callback(indata, outdata, n, _time, status) -> None:
        if status:
            late[0] += 1
        t0 = time.perf_counter()
        outdata[:, 0] = stream.push(indata[:, 0])
        times.append(1000.0 * (time.perf_counter() - t0))

    t_start = time.time()
    try:
        with sd.Stream(samplerate=stream.sample_rate, blocksize=frames, channels=1, dtype="float32", latency="low", device=(_device(input_device), _device(output_device)), callback=callback):
            if on_start:
                on_start(f"streaming at {stream.sample_rate} Hz, delay {stream.delay_ms:.0f} ms (plus the sound card's): Ctrl-C stops")
            while True:
                sd.sleep(250)
    except KeyboardInterrupt:
        pass
    except sd.PortAudioError as e:
        raise _device_error(e, f"; a busy device or one that cannot take {stream.sample_rate} Hz gives this") from None
    except ValueError as e:  # sounddevice: no such device, or an ambiguous name
        raise _device_error(e) from None
    return StreamReport(time.time() - t_start, stream.block_ms, stream.delay_ms, times, late[0])


def _device(spec: str | int | None) -> str | int | None:
    if spec is None:
        return None
    return int(spec) if isinstance(spec, str) and spec.isdigit() else spec


def _device_error(e: Exception, hint: str = "") -> VckitError:
    """One line for a device PortAudio or sounddevice refused, pointing at --list-devices."""
    return VckitError(f"audio device: {_first_line(e)} (see vckit stream --list-devices{hint})")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
