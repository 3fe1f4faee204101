"""The demo's live tab: the browser's microphone through the streaming converter and back.

Gradio sends the microphone in chunks of :data:`STREAM_EVERY` seconds at the
browser's rate (16-bit, maybe stereo). :class:`StreamTab` turns each chunk
into mono float at the model's rate with a :class:`ChunkResampler` (exactly
what resampling the whole recording would give, so chunk edges do not
click), pushes it through one :class:`vckit.streaming.Stream` per browser
session and recording, and hands as many converted samples as went in to
that recording's player: one long-running generator per recording, so the
browser gets one continuous audio stream rather than a new file per chunk.
Gradio is imported inside :func:`build_stream_tab` only.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vckit.demo.app import ENROLLED_PREFIX, EXAMPLE_PREFIX, REFERENCE_CHOICE, DemoError, DemoService, hide_paths
from vckit.errors import VckitError

log = logging.getLogger(__name__)

STREAM_EVERY = 0.5  # seconds of microphone audio per chunk that the browser sends (Gradio's stream_every)
TIME_LIMIT_S = 600  # longest recording, in seconds
NO_FFMPEG = "this server has no ffmpeg, which Gradio needs to play the converted voice back: the conversion runs and is counted, but is not heard (apt-get install ffmpeg)"
VOICE_CACHE = 16  # target voices of the streaming model kept between recordings
PLAYER_QUEUE = 120  # chunks (a minute) held for a player that lags or never came
PLAYER_IDLE_S = 30.0  # a player that gets no audio for this long ends (the browser went away mid-recording)
LIVE_INTRO = """Speak into the microphone: what you say comes back in the target voice while you speak (use headphones,
or the converted voice feeds back into the microphone). Press **Record** to start and **Stop** to end."""


def to_mono_float(data: np.ndarray) -> np.ndarray:
    """Browser audio ``(n,)`` or ``(n, channels)``, integer or float -> ``(n,)`` float32 in [-1, 1]."""
    x = np.asarray(data)
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        x = (x.astype(np.float32) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
    x = x.astype(np.float32, copy=False)
    return x.mean(axis=1) if x.ndim == 2 else x.reshape(-1)


class ChunkResampler:
    """Resample consecutive chunks of one signal as :func:`vckit.audio.resample` resamples the whole.

    torchaudio's sinc resampler makes output ``j`` from the input around
    ``(j // q) * p`` (``p/q`` the rates in lowest terms): each call emits the
    outputs whose input window is complete and keeps the input the next ones
    read, so the joined outputs equal the whole signal resampled, with no
    seams. The last few outputs wait for the next chunk (:attr:`delay_ms`).
    """

    def __init__(self, orig_sr: int, target_sr: int):
        from vckit.audio import resample_ratio

        self.orig_sr, self.target_sr = int(orig_sr), int(target_sr)
        self.p, self.q = resample_ratio(self.orig_sr, self.target_sr)
        # the half-width of torchaudio's kernel (lowpass_filter_width 6, rolloff 0.99), in input samples
        self.width = math.ceil(6 * self.p / (min(self.p, self.q) * 0.99))
        self._buf = np.zeros(0, np.float32)  # input [self._start, self._n)
        self._start = 0  # a multiple of p
        self._n = 0
        self._done = 0  # outputs emitted

    @property
    def delay_ms(self) -> float:
        """The most input that waits for the next chunk, in milliseconds."""
        return 0.0 if self.p == self.q else 1000.0 * (self.width + 2 * self.p) / self.orig_sr

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """``chunk`` ``(n,)`` float at ``orig_sr`` -> the next outputs ``(m,)`` at ``target_sr``."""
        from vckit.audio import resample

        x = np.asarray(chunk, np.float32).reshape(-1)
        if self.p == self.q:
            return x
        self._buf = np.concatenate([self._buf, x])
        self._n += len(x)
        frames = (self._n - self.width - self.p) // self.p + 1  # frames m whose input [m p - width, m p + width + p) is all here
        upto = max(self._done, frames * self.q)
        if upto == self._done:
            return np.zeros(0, np.float32)
        base = self._start // self.p * self.q
        out = resample(self._buf, self.p, self.q)[self._done - base : upto - base]
        self._done = upto
        keep = max(self._start, (self._done // self.q - math.ceil(self.width / self.p)) * self.p)
        self._buf, self._start = self._buf[keep - self._start :], keep
        return out.astype(np.float32, copy=False)


@dataclass
class LiveSession:
    """One recording in one browser session: its stream, its counts and the converted audio for its player."""

    target: str = ""
    rate: int = 22050  # the stream's sample rate, set when it opens
    stream: Any = None  # vckit.streaming.Stream; None before the first chunk and after the stop
    resampler: ChunkResampler | None = None
    error: str | None = None  # why this recording cannot stream (shown for each chunk, not retried)
    stopped: bool = False
    seconds_in: float = 0.0
    samples_out: int = 0
    compute_s: float = 0.0
    chunks: int = 0
    delay: str = ""  # the delay line, kept after the stream is dropped

    def __post_init__(self) -> None:
        self.out: queue.Queue = queue.Queue(PLAYER_QUEUE)  # (rate, int16 samples) for the player, None at the end
        self.lock = threading.Lock()  # one chunk at a time; the stop waits for a chunk in progress


class StreamTab:
    """The live tab's handlers over a :class:`~vckit.demo.app.DemoService`; they never raise.

    Sessions are kept by key (Gradio's session hash: one per browser tab), a
    new one for each recording: no two browsers share a stream.
    """

    def __init__(self, service: DemoService, stream_every: float = STREAM_EVERY):
        self.service = service
        self.stream_every = stream_every
        self._voices: dict[tuple[str, str | None], tuple[Any, str]] = {}  # (choice, reference) -> (Voice, name)
        self._sessions: dict[str, LiveSession] = {}
        self._lock = threading.Lock()

    def available(self) -> str | None:
        """None when there is a streaming model, else the sentence that says what is missing."""
        try:
            self.service.stream_path()
        except DemoError as e:
            return str(e)
        return None

    def intro(self) -> str:
        missing = self.available()
        if missing:
            return f"**{missing}**"
        if shutil.which("ffmpeg") is None:  # Gradio encodes the streamed playback with it
            return LIVE_INTRO + "\n\n**" + NO_FFMPEG + "**"
        return LIVE_INTRO

    def voice(self, choice: str | None, reference: str | None) -> tuple[Any, str]:
        """The target as a Voice of the streaming model (its own speaker encoder), and its name."""
        choice = choice or REFERENCE_CHOICE
        key = (choice, reference if choice == REFERENCE_CHOICE else None)
        with self._lock:
            if key in self._voices:
                return self._voices[key]
        vc = self.service.stream_converter()
        rate = vc.config.mel.sample_rate
        svc = self.service
        if choice.startswith(EXAMPLE_PREFIX):
            refs, name = svc.example_voice(choice)
        elif choice.startswith(ENROLLED_PREFIX):
            from vckit.speakers import load_profile

            name = choice[len(ENROLLED_PREFIX) :]
            refs = [r for r in load_profile(svc.bank_dir(), name).meta.get("references", []) if os.path.isfile(r)]
            if not refs:
                raise DemoError(f"the enrolled voice {name!r} keeps no readable reference clips, which the streaming model needs to make its own voice: pick another voice or upload a reference")
        elif choice == REFERENCE_CHOICE:
            if not reference:
                raise DemoError("no reference voice: upload a reference clip of the target voice, or pick a voice from the menu")
            refs, name = [reference], Path(reference).stem or "reference"
        else:
            raise DemoError(f"unknown target voice {choice!r}")
        clips = [svc._load(r, "reference", rate, trim=True) for r in refs]
        voice = vc.voice(clips, sr=rate)
        with self._lock:
            self._voices[key] = (voice, name)
            while len(self._voices) > VOICE_CACHE:  # uploads make new keys: the oldest go
                self._voices.pop(next(iter(self._voices)))
        return voice, name

    # -- one recording ---------------------------------------------------------------
    def begin(self, key: str) -> str:
        """A recording starts in browser session ``key``: a fresh session (the previous one ends)."""
        with self._lock:
            old, self._sessions[key] = self._sessions.get(key), LiveSession()
        if old is not None:
            self._end(old)
        return "Starting..."

    def session(self, key: str) -> LiveSession:
        with self._lock:
            return self._sessions.setdefault(key, LiveSession())  # a chunk before its begin: start here

    def chunk(self, key: str, audio: tuple[int, np.ndarray] | None, choice: str | None, reference: str | None = None) -> tuple[tuple[int, np.ndarray] | None, str]:
        """One microphone chunk ``(rate, samples)`` -> ``((22050, int16 samples) or None, Markdown)``.

        The converted samples also go to the recording's player (:meth:`play`).
        """
        s = self.session(key)
        with s.lock:
            if s.stopped:
                return None, self.status(s)
            if s.stream is None and s.error is None:
                self._open(s, choice, reference)
            if s.error is not None or audio is None:
                return None, self.status(s)
            try:
                rate, data = audio
                t0 = time.perf_counter()
                x = to_mono_float(data)
                if s.resampler is None or s.resampler.orig_sr != int(rate):
                    s.resampler = ChunkResampler(int(rate), s.stream.sample_rate)
                out = s.stream.push(s.resampler(x))
                s.compute_s += time.perf_counter() - t0
            except VckitError as e:
                s.error = str(e)
                return None, self.status(s)
            except Exception:
                log.exception("live conversion failed")
                s.error = "internal error while converting (the server log has the details)"
                return None, self.status(s)
            s.chunks += 1
            s.seconds_in += len(x) / int(rate)
            pcm = self._send(s, out)
            return (s.rate, pcm), self.status(s)

    def stop(self, key: str) -> str:
        """The recording ended: the stream's last ``delay`` samples go to the player, then the stream is dropped."""
        with self._lock:
            s = self._sessions.get(key)
        if s is None:
            return "Stopped before any audio arrived."
        self._end(s)
        return self.status(s)

    def play(self, key: str, idle_s: float = PLAYER_IDLE_S) -> Iterator[tuple[int, np.ndarray]]:
        """The converted audio of ``key``'s current recording, chunk by chunk, until it stops."""
        s = self.session(key)
        while True:
            try:
                item = s.out.get(timeout=idle_s)
            except queue.Empty:
                return
            if item is None:
                return
            yield item

    def forget(self, key: str) -> None:
        """The browser tab closed: end and drop its session."""
        with self._lock:
            s = self._sessions.pop(key, None)
        if s is not None:
            self._end(s)

    def _open(self, s: LiveSession, choice: str | None, reference: str | None) -> None:
        try:
            voice, s.target = self.voice(choice, reference)
            s.stream = self.service.stream_converter().stream(voice)
            s.rate = s.stream.sample_rate
        except VckitError as e:
            s.error = hide_paths(str(e), (reference,))
        except Exception:
            log.exception("live conversion failed to start")
            s.error = "internal error while starting (the server log has the details)"

    def _send(self, s: LiveSession, out: np.ndarray) -> np.ndarray:
        pcm = (np.clip(out, -1.0, 1.0) * 32767.0).astype(np.int16)
        s.samples_out += len(pcm)
        if len(pcm):
            self._offer(s, (s.rate, pcm))
        return pcm

    @staticmethod
    def _offer(s: LiveSession, item: tuple[int, np.ndarray] | None) -> None:
        """Queue ``item`` for the player; when it does not keep up (or never came), the oldest audio goes."""
        while True:
            try:
                return s.out.put_nowait(item)
            except queue.Full:
                try:
                    s.out.get_nowait()
                except queue.Empty:
                    pass

    def _end(self, s: LiveSession) -> None:
        with s.lock:
            if s.stopped:
                return
            s.stopped = True
            if s.stream is not None and s.error is None:
                s.delay = self._delay_line(s)
                try:
                    self._send(s, s.stream.flush())
                except VckitError as e:
                    log.info("live stream flush failed: %s", e)
            s.stream, s.resampler = None, None  # free the model state now: the session may live on until the tab closes
            self._offer(s, None)

    # -- what the page shows ------------------------------------------------------------
    def _delay_line(self, s: LiveSession) -> str:
        """Microphone to speaker on the server's side: the stream's delay, one chunk, and the resampler's wait."""
        if s.stream is None or s.resampler is None:
            return s.delay
        st, resample, chunk = s.stream, s.resampler.delay_ms, 1000.0 * self.stream_every
        return (
            f"- delay: **about {st.delay_ms + chunk + resample:.0f} ms** = the model's {st.delay_ms:.0f} ms "
            f"(blocks of {st.block_ms:.1f} ms plus look-ahead) + {chunk:.0f} ms chunks from the browser"
            + (f" + {resample:.1f} ms resampling" if resample else "")
        )

    def status(self, s: LiveSession) -> str:
        """Markdown: what was streamed, the delay, how fast the server keeps up."""
        if s.error is not None:
            return f"**Live conversion stopped:** {s.error}"
        state = "Stopped" if s.stopped else "Streaming"
        lines = [f"**{state}: {s.seconds_in:.1f} s streamed** to the voice of *{s.target}* ({s.samples_out / s.rate:.1f} s sent back)."]
        delay = self._delay_line(s)
        if delay:
            lines += ["", delay, "- the browser adds its own microphone and playback buffering on top (often 50 to 300 ms)"]
        if s.chunks:
            per = 1000.0 * s.compute_s / s.chunks
            slow = " (slower than real time: the delay grows)" if per > 1000 * self.stream_every else ""
            lines.append(f"- the server converts a {1000 * self.stream_every:.0f} ms chunk in {per:.0f} ms{slow}")
        return "\n".join(lines)


def build_stream_tab(gr: Any, app: Any, service: DemoService, stream_every: float = STREAM_EVERY) -> StreamTab:
    """The live tab's components and events, inside the caller's ``gr.Tab``."""
    live = StreamTab(service, stream_every)
    choices = service.target_choices()
    first = next((c for c in choices if c.startswith(EXAMPLE_PREFIX)), REFERENCE_CHOICE)
    gr.Markdown(live.intro(), elem_id="live-intro")
    with gr.Row():
        with gr.Column():
            target = gr.Dropdown(choices, value=first, label="Target voice", elem_id="live-target")
            reference = gr.Audio(sources=["upload"], type="filepath", label="Reference clip of the target voice", visible=first == REFERENCE_CHOICE, elem_id="live-reference")
            mic = gr.Audio(sources=["microphone"], type="numpy", streaming=True, label="Microphone", elem_id="live-mic")
        with gr.Column():
            out = gr.Audio(streaming=True, autoplay=True, interactive=False, label="Converted (live)", elem_id="live-out")
            status = gr.Markdown("Press Record to start.", elem_id="live-status")

    def on_chunk(audio, choice, ref, request: gr.Request):
        return live.chunk(request.session_hash, audio, choice, ref)[1]

    def on_play(request: gr.Request):
        yield from live.play(request.session_hash)

    def on_begin(request: gr.Request):
        return live.begin(request.session_hash)

    def on_stop(request: gr.Request):
        return live.stop(request.session_hash)

    def on_leave(request: gr.Request):
        live.forget(request.session_hash)

    for fn in (on_chunk, on_play, on_begin, on_stop, on_leave):  # Gradio finds the request by its type, which these
        fn.__annotations__["request"] = gr.Request  # string annotations (gr is a local name here) would not give it

    # the player runs for the whole recording, beside the chunks: its own unlimited group, so it never blocks them
    started = mic.start_recording(on_begin, None, status, queue=False)
    if shutil.which("ffmpeg") is not None:  # Gradio encodes the playback with it: without, each chunk would be a traceback and an
        # error toast; the conversion still runs and is counted, and the intro says why nothing plays
        started.then(on_play, None, out, concurrency_limit=None, concurrency_id="live-player", show_progress="hidden")
    mic.stream(on_chunk, [mic, target, reference], status, stream_every=stream_every, time_limit=TIME_LIMIT_S, concurrency_id="live", show_progress="hidden")
    mic.stop_recording(on_stop, None, status, queue=False)
    target.change(lambda c: gr.update(visible=c == REFERENCE_CHOICE), target, reference, queue=False)
    app.load(lambda: gr.update(choices=service.target_choices()), None, target, queue=False)  # voices enrolled since start
    app.unload(on_leave)
    return live
