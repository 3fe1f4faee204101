"""Fuzzed inputs: the audio loader and the convert path either give usable
audio or raise a :class:`VckitError` with one sentence; nothing hangs; no
output file is ever left half-written or left behind by a failure.

Cases are drawn by hypothesis: empty, one sample, all zeros, NaN/Inf, clipped
and over-range square waves, DC, huge and tiny floats, real speech; 1 to 8
channels; 8 to 192 kHz and odd rates in between; 8/16/24/32-bit PCM, 32/64-bit
float, u-law, FLAC, AIFF, OGG; truncated files, flipped bytes and rewritten
header fields. Each run draws a few dozen new cases per property from a
random seed, which the run's header prints and a failure names
(``VCKIT_FUZZ_SEED=N`` draws the same cases again); ``VCKIT_FUZZ_EXAMPLES=N``
draws N (``benchmarks/fuzz_inputs.py`` runs thousands and prints the
outcomes), ``VCKIT_FUZZ_REPORT=file.jsonl`` records each case's outcome.

The convert properties separate the cases: each drawn source has one outcome
the documented contract allows (an error class for empty, non-finite, silent
and too-short sources; a conversion for everything else), so a convert that
always raised, or raised the wrong error, fails them.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from datetime import timedelta
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vckit.audio import PEAK_LIMIT, SILENCE_PEAK, load_audio, resample, resample_ratio, write_wav
from vckit.errors import AudioError, NonFiniteAudioError, VckitError

from conftest import DATA_DIR, FUZZ_SEED, REPO_ROOT

pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (pip install -e '.[dev]')")
from hypothesis import HealthCheck, example, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = int(os.environ.get("VCKIT_FUZZ_EXAMPLES", "0"))
REPORT = os.environ.get("VCKIT_FUZZ_REPORT")
MODEL_SR = 22050


def fuzz_settings(default_examples: int):
    """``default_examples`` new cases on each run (``VCKIT_FUZZ_EXAMPLES`` when set), drawn
    from :data:`FUZZ_SEED`, with a deadline of a minute a case: a hang detector, generous
    enough for two busy cores (the suite asserts behaviour, not speed)."""
    config = settings(
        max_examples=EXAMPLES or default_examples,
        derandomize=False,
        deadline=timedelta(seconds=60),
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )

    def apply(test):
        return pytest.mark.fuzz(seed(FUZZ_SEED)(config(test)))

    return apply


def record(test: str, case: object, outcome: str) -> None:
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps({"test": test, "outcome": outcome, "case": asdict(case) if hasattr(case, "__dataclass_fields__") else str(case)}) + "\n")


# -- the cases ------------------------------------------------------------------------
RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000)
KINDS = ("empty", "one_sample", "zeros", "tiny", "dc", "sine", "noise", "speech", "square", "clipped_square", "over_range_square", "huge", "impulse")
# (container, subtype) pairs soundfile writes; FLAC and OGG take at most 8 channels and 655 kHz
CONTAINERS = (
    ("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "FLOAT"), ("WAV", "DOUBLE"), ("WAV", "ULAW"),
    ("FLAC", "PCM_16"), ("FLAC", "PCM_24"), ("AIFF", "PCM_16"), ("AIFF", "FLOAT"), ("OGG", "VORBIS"), ("W64", "PCM_24"),
)
WAV_HEADER_FIELDS = ((22, "<H"), (24, "<I"), (28, "<I"), (32, "<H"), (34, "<H"), (40, "<I"))  # channels, rate, byte rate, align, bits, data size


@dataclass(frozen=True)
class Signal:
    kind: str
    sr: int
    channels: int
    seconds: float
    seed: int
    bad: str | None = None  # "nan", "inf" or "-inf" put at one sample


@dataclass(frozen=True)
class FileCase:
    signal: Signal
    container: str
    subtype: str
    damage: str = "none"  # none | truncate | flip | header
    where: float = 0.0  # how far into the file the damage starts, 0..1 (header: which field)
    value: int = 0  # the flipped byte mask or the header field's new value


def signals(max_seconds: float = 1.0) -> st.SearchStrategy[Signal]:
    return st.builds(
        Signal,
        kind=st.sampled_from(KINDS),
        sr=st.one_of(st.sampled_from(RATES), st.integers(8000, 192000)),
        channels=st.sampled_from((1, 1, 2, 3, 6, 8)),
        seconds=st.floats(0.02, max_seconds),  # "empty" and "one_sample" are kinds of their own
        seed=st.integers(0, 2**32 - 1),
        bad=st.sampled_from((None,) * 6 + ("nan", "inf", "-inf")),
    )


def file_cases(max_seconds: float = 1.0) -> st.SearchStrategy[FileCase]:
    return st.builds(
        lambda sig, cont, damage, where, value: FileCase(sig, cont[0], cont[1], damage, where, value),
        signals(max_seconds),
        st.sampled_from(CONTAINERS),
        st.sampled_from(("none", "none", "truncate", "flip", "header")),
        st.floats(0.0, 1.0),
        st.integers(0, 2**32 - 1),
    )


_SPEECH: np.ndarray | None = None


def speech() -> np.ndarray:
    global _SPEECH
    if _SPEECH is None:
        _SPEECH = sf.read(str(DATA_DIR / "vcc2016" / "SF1" / "100001.wav"), dtype="float64")[0]
    return _SPEECH


def make_signal(s: Signal) -> np.ndarray:
    """``(samples, channels)`` float64; each channel a little quieter than the one before."""
    rng = np.random.default_rng(s.seed)
    n = {"empty": 0, "one_sample": 1}.get(s.kind, int(s.seconds * s.sr))
    t = np.arange(n) / s.sr
    f0 = rng.uniform(80, 400)
    sine = np.sin(2 * np.pi * f0 * t)
    x = {
        "zeros": np.zeros(n),
        "tiny": 1e-6 * sine,
        "dc": np.full(n, rng.uniform(-1, 1)),
        "sine": 0.5 * sine,
        "noise": 0.3 * rng.standard_normal(n),
        "speech": np.resize(speech(), n),
        "square": np.sign(sine),
        "clipped_square": np.clip(4 * sine, -1, 1),
        "over_range_square": 8 * np.sign(sine),  # float files keep it; PCM cases are clipped before writing
        "huge": 1e30 * sine,
        "impulse": np.eye(1, n, n // 2)[0] if n else np.zeros(0),
    }.get(s.kind, 0.5 * np.ones(n))
    x = x[:, None] * (1 - 0.1 * np.arange(s.channels))[None]
    if s.bad and n:
        x[rng.integers(n), rng.integers(s.channels)] = float(s.bad)
    return x


def write_case(c: FileCase, folder: Path) -> Path | None:
    """The case as a file, damaged as it says; None where soundfile cannot write it."""
    s = c.signal
    if not sf.check_format(c.container, c.subtype) or (c.container in ("FLAC", "OGG") and s.sr > 655350):
        return None
    path = folder / f"case.{c.container.lower()}"
    x = make_signal(s)
    if c.subtype not in ("FLOAT", "DOUBLE"):
        x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0).clip(-1, 1)  # integer PCM has no NaN
    try:
        sf.write(str(path), x, s.sr, format=c.container, subtype=c.subtype)
    except (sf.LibsndfileError, RuntimeError, ValueError):  # e.g. vorbis refuses some rates or no frames
        path.unlink(missing_ok=True)
        return None
    data = bytearray(path.read_bytes())
    at = int(c.where * len(data))
    if c.damage == "truncate":
        data = data[:at]
    elif c.damage == "flip" and data:
        for i in range(at, min(len(data), at + 8)):  # eight bytes from `at`
            data[i] ^= (c.value >> (8 * (i % 4))) & 0xFF or 0x5A
    elif c.damage == "header":
        off, fmt = WAV_HEADER_FIELDS[int(c.where * len(WAV_HEADER_FIELDS)) % len(WAV_HEADER_FIELDS)]
        if off + struct.calcsize(fmt) <= len(data):
            struct.pack_into(fmt, data, off, c.value % (1 << (8 * struct.calcsize(fmt))))
    path.write_bytes(bytes(data))
    return path


def error_outcome(e: VckitError) -> str:
    """The documented error contract: one readable sentence."""
    msg = str(e)
    assert msg.strip(), f"{type(e).__name__} without a message"
    assert "\n" not in msg and "Traceback" not in msg, msg
    return type(e).__name__


# -- the loader -----------------------------------------------------------------------
def check_loaded(wav: np.ndarray, *, normalize: bool) -> None:
    assert wav.dtype == np.float32 and wav.ndim == 1 and len(wav) > 0
    assert np.isfinite(wav).all()
    if normalize:
        assert np.abs(wav).max() <= PEAK_LIMIT + 1e-5


@fuzz_settings(60)
@given(case=file_cases(), target_sr=st.sampled_from((16000, MODEL_SR)), trim=st.booleans(), normalize=st.booleans())
def test_fuzzed_files_load_or_raise_a_clear_error(tmp_path_factory, case, target_sr, trim, normalize):
    folder = tmp_path_factory.mktemp("load")
    path = write_case(case, folder)
    if path is None:
        return record("load", case, "unwritable")
    try:
        wav = load_audio(path, target_sr, trim=trim, normalize=normalize)
    except VckitError as e:
        outcome = error_outcome(e)
    else:
        check_loaded(wav, normalize=normalize)
        outcome = "ok"
        if case.damage == "none" and not trim:  # an intact file keeps its length
            info = sf.info(str(path))
            assert abs(len(wav) - info.frames * target_sr / info.samplerate) <= 2 + 5e-4 * len(wav)
    if case.damage == "none":  # only damage excuses an error: an intact file loads unless what it holds is bad
        assert outcome == intact_outcome(path, outcome), (case, outcome)
    record("load", case, outcome)


def intact_outcome(path: Path, outcome: str) -> str:
    """What loading an undamaged file must give, judged by another reader (soundfile, all
    channels mixed as the loader mixes them): the error its samples call for, else "ok"."""
    try:
        x = sf.read(str(path), dtype="float64", always_2d=True)[0].mean(axis=1)
    except (sf.LibsndfileError, RuntimeError):  # written, but not readable by soundfile either: no claim
        return outcome
    if x.size == 0:
        return "EmptyAudioError"
    if not np.isfinite(x).all():
        return "NonFiniteAudioError"
    return "SilentAudioError" if np.abs(x).max() < SILENCE_PEAK else "ok"


@fuzz_settings(60)
@given(sig=signals(), target_sr=st.sampled_from((16000, MODEL_SR)), layout=st.sampled_from(("mono", "channels_first", "int16")))
def test_fuzzed_arrays_load_or_raise_a_clear_error(sig, target_sr, layout):
    x = make_signal(sig)
    if layout == "mono":
        x = x[:, 0].astype(np.float32)
    elif layout == "channels_first":
        x = np.ascontiguousarray(x.T, dtype=np.float32)
    else:
        x = (np.nan_to_num(x).clip(-1, 1) * 32767).astype(np.int16)
    try:
        wav = load_audio(x, target_sr, sig.sr)
    except VckitError as e:
        outcome = error_outcome(e)
    else:
        check_loaded(wav, normalize=True)
        outcome = "ok"
    record("array", sig, outcome)


# -- regressions the fuzzing found ----------------------------------------------------------
@pytest.mark.parametrize("rate", [44101, 96001, 192001, 8001, 22039])
def test_odd_sample_rates_resample_with_a_small_kernel(rate):
    """A file at 44101 Hz took 91 s and 16 GB to resample (torchaudio's kernel is
    about orig x new taps for rates in lowest terms); 96001 Hz was killed for memory.
    The structural check: the ratio used keeps the kernel small (no wall-clock bound)."""
    x = np.sin(np.arange(rate) * 0.05).astype(np.float32)  # one second
    y = resample(x, rate, MODEL_SR)
    assert abs(len(y) - MODEL_SR) <= 0.0005 * MODEL_SR + 1
    orig, new = resample_ratio(rate, MODEL_SR)
    assert orig * new <= 1_000_000 and abs(orig / new - rate / MODEL_SR) <= 5e-4 * rate / MODEL_SR
    assert resample_ratio(48000, MODEL_SR) == (320, 147)  # common rates stay exact


@pytest.mark.parametrize("n", [3, 10, 50])
def test_a_short_float_file_of_huge_samples_normalises(n):
    """1e30-scale samples in a clip shorter than one loudness frame normalised to all-NaN
    (their squares overflowed float32)."""
    x = (1e30 * np.sin(np.arange(n) * 0.3)).astype(np.float32)
    wav = load_audio(x, 16000, 8000, trim=False)
    assert np.isfinite(wav).all() and 0 < np.abs(wav).max() <= PEAK_LIMIT + 1e-6


@pytest.mark.parametrize("rate", [1, 3999, 768001])
def test_sample_rates_outside_the_range_are_refused(tmp_path, rate):
    with pytest.raises(AudioError, match=f"sample rate {rate} Hz is outside"):
        load_audio(np.ones(100, np.float32) * 0.1, MODEL_SR, rate)
    if rate <= 655350:  # a file with such a header, from a corrupt or odd source
        p = tmp_path / "odd.wav"
        sf.write(str(p), np.ones(100) * 0.1, rate)
        with pytest.raises(AudioError, match="odd.wav: sample rate"):
            load_audio(p, MODEL_SR)


def only_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_failures_are_clear_and_leave_nothing(tmp_path):
    """A full disk gave a bare AssertionError from soundfile (and a cffi traceback);
    a file where a folder should be gave 'File exists'."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(VckitError, match="blocker is not a folder"):
        write_wav(blocker / "out.wav", np.zeros(10), 16000)
    with pytest.raises(NonFiniteAudioError, match="NaN or infinite"):
        write_wav(tmp_path / "nan.wav", np.array([0.1, np.nan]), 16000)
    script = (
        "import resource, sys, numpy as np\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"  # a disk with 20 kB free, as far as this process knows
        "from vckit.audio import write_wav\nfrom vckit.errors import VckitError\n"
        "try:\n    write_wav(sys.argv[1], np.full(100000, 0.1, np.float32), 16000)\n"
        "except VckitError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "big.wav")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.strip() == f"cannot write {tmp_path / 'big.wav'}: File too large"
    assert only_names(tmp_path) == ["blocker"]


def test_written_wavs_are_readable_by_others_and_never_overwritten(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    out = write_wav(tmp_path / "a.wav", np.full(100, 0.1), 16000)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    with pytest.raises(VckitError, match="already exists"):
        write_wav(out, np.full(50, 0.1), 16000)
    assert sf.info(str(out)).frames == 100
    write_wav(out, np.full(50, 0.1), 16000, overwrite=True)
    assert sf.info(str(out)).frames == 50 and only_names(tmp_path) == ["a.wav"]


# -- the convert path -------------------------------------------------------------------
@pytest.fixture(scope="module")
def vc():
    import vckit

    return vckit.load(REPO_ROOT / "checkpoints" / "default", vocoder="griffinlim", device="cpu")


@pytest.fixture(scope="module")
def target(vc):
    return vc.voice(DATA_DIR / "vcc2016" / "TM1" / "100001.wav")


def check_converted(vc, wav: np.ndarray, seconds: float, folder: Path) -> None:
    """A finite waveform as long as the source; saved whole, with nothing else left in ``folder``."""
    assert wav.dtype == np.float32 and wav.ndim == 1 and np.isfinite(wav).all()
    assert abs(len(wav) / vc.sample_rate - seconds) <= 2 * 256 / MODEL_SR + 5e-4 * seconds
    out = vc.save(folder / "out.wav", wav)
    assert sf.info(str(out)).frames == len(wav)
    with pytest.raises(VckitError, match="already exists"):
        vc.save(out, wav[: len(wav) // 2])
    assert only_names(folder) == ["out.wav"]


def allowed_outcomes(mono: np.ndarray, sr: int) -> set[str]:
    """What converting the mono source ``mono`` at ``sr`` may give, by the documented contract
    (the checks of :func:`vckit.audio.check_signal`, then ``MIN_SOURCE_S``), judged here
    without vckit's code: one error class, or "ok". Only a length within a few samples of
    the minimum (where resampling may round either way) allows both."""
    from vckit.api import MIN_SOURCE_S

    if mono.size == 0:
        return {"EmptyAudioError"}
    with np.errstate(all="ignore"):
        if not np.isfinite(mono).all():
            return {"NonFiniteAudioError"}
        if float(np.abs(mono).max()) < SILENCE_PEAK:
            return {"SilentAudioError"}
    seconds, slack = len(mono) / sr, 3 / sr + 2 / MODEL_SR
    if seconds < MIN_SOURCE_S - slack:
        return {"TooShortAudioError"}
    return {"ok"} if seconds > MIN_SOURCE_S + slack else {"ok", "TooShortAudioError"}


def mixed(x: np.ndarray) -> np.ndarray:
    """``(channels, samples)`` (or the other way round, where samples are fewer) averaged to mono, in float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.reshape(0)
    return x.mean(axis=0) if x.shape[1] >= x.shape[0] else x.mean(axis=1)


def convert_outcome(vc, target, source, folder: Path, seconds: float, **kw) -> str:
    """Convert ``source``: "ok" (a finite waveform as long as the source, saved whole) or the error's class."""
    try:
        wav = vc.convert(source, target, **kw)
    except VckitError as e:
        return error_outcome(e)
    check_converted(vc, wav, seconds, folder)
    return "ok"


SPEECH_CASE = Signal("speech", 16000, 1, 1.2, 0)  # always drawn: real speech must convert


@fuzz_settings(25)
@given(sig=signals(max_seconds=1.5))
@example(sig=SPEECH_CASE)
def test_fuzzed_arrays_convert_or_raise_their_documented_error(vc, target, tmp_path_factory, sig):
    x = make_signal(sig).T.astype(np.float32)  # (channels, samples)
    folder = tmp_path_factory.mktemp("convert")
    outcome = convert_outcome(vc, target, x, folder, x.shape[1] / sig.sr, sr=sig.sr)
    record("convert_array", sig, outcome)
    assert outcome in allowed_outcomes(mixed(x), sig.sr), (sig, outcome)
    assert only_names(folder) in ([], ["out.wav"])


@fuzz_settings(10)
@given(sr=st.one_of(st.sampled_from(RATES), st.integers(8000, 192000)), channels=st.sampled_from((1, 2, 6)),
       seconds=st.floats(1.0, 3.0), gain_db=st.floats(-40.0, 0.0), start=st.floats(0.0, 1.0))
def test_any_second_of_real_speech_converts(vc, target, tmp_path_factory, sr, channels, seconds, gain_db, start):
    """At least a second of finite speech at a supported rate, any channels and level, converts."""
    x = speech()
    x = resample(x.astype(np.float32), 16000, sr) if sr != 16000 else x
    n = int(seconds * sr)
    begin = int(start * max(0, len(x) - n))
    mono = np.resize(x[begin:], n) * 10 ** (gain_db / 20)
    src = np.stack([mono * (1 - 0.1 * c) for c in range(channels)]).astype(np.float32)
    folder = tmp_path_factory.mktemp("speech")
    assert convert_outcome(vc, target, src, folder, n / sr, sr=sr) == "ok"


def test_the_convert_property_fails_a_convert_that_always_raises(vc, target, tmp_path):
    """The properties above can fail: a convert that refuses clean speech breaks them."""
    from vckit.errors import NoSpeechError

    class Refusing:
        sample_rate = vc.sample_rate

        def convert(self, *a, **k):
            raise NoSpeechError("planted: every source refused")

    x = make_signal(SPEECH_CASE).T.astype(np.float32)
    outcome = convert_outcome(Refusing(), target, x, tmp_path, x.shape[1] / SPEECH_CASE.sr, sr=SPEECH_CASE.sr)
    assert outcome == "NoSpeechError" and outcome not in allowed_outcomes(mixed(x), SPEECH_CASE.sr)
    silent = np.zeros((1, 16000), np.float32)
    assert allowed_outcomes(mixed(silent), 16000) == {"SilentAudioError"}  # a convert that converted silence would fail too


@fuzz_settings(25)
@given(case=file_cases(max_seconds=1.5), pitch=st.sampled_from((0.0, 0.0, 3.0, -5.5)))
def test_fuzzed_files_convert_or_raise_their_documented_error(vc, target, tmp_path_factory, case, pitch):
    folder = tmp_path_factory.mktemp("convert_file")
    src = write_case(case, folder)
    if src is None:
        return record("convert_file", case, "unwritable")
    out_dir = folder / "out"
    out_dir.mkdir()
    try:
        seconds = sf.info(str(src)).duration
    except (sf.LibsndfileError, RuntimeError):
        seconds = 0.0
    outcome = convert_outcome(vc, target, src, out_dir, seconds, pitch_shift=pitch)
    record("convert_file", case, outcome)
    if case.damage == "none":  # only damage excuses an error; an intact file has the outcome its samples call for
        try:
            x, sr = sf.read(str(src), dtype="float64", always_2d=True)
        except (sf.LibsndfileError, RuntimeError):  # written, but soundfile cannot read it back either: no claim
            return
        assert outcome in allowed_outcomes(x.mean(axis=1), sr), (case, outcome)


# -- the command line: an error is one line and leaves no file ----------------------------------
@pytest.fixture
def cli(vc, monkeypatch, capsys):
    """``cli(*args)`` runs ``vckit.cli.main`` in this process on the loaded model: (exit code, stdout, stderr)."""
    import vckit.api
    from vckit.cli import main

    monkeypatch.setattr(vckit.api, "load", lambda *a, **k: vc)

    def run(*args) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


BAD_SOURCES = {
    "nan": lambda p: sf.write(str(p), np.array([0.1, np.nan] * 8000), 16000, subtype="FLOAT"),
    "silent": lambda p: sf.write(str(p), np.zeros(16000), 16000),
    "one_sample": lambda p: sf.write(str(p), np.array([0.5]), 16000),
    "truncated": lambda p: p.write_bytes((DATA_DIR / "vcc2016" / "SF1" / "100002.wav").read_bytes()[:30]),
    "text": lambda p: p.write_text("not audio\n" * 100),
    "odd_rate": lambda p: sf.write(str(p), np.full(3000, 0.1), 3000),
}


@pytest.mark.parametrize("bad", sorted(BAD_SOURCES))
def test_cli_refuses_bad_sources_in_one_line_and_writes_nothing(cli, tmp_path, bad):
    src = tmp_path / "in" / f"{bad}.wav"
    src.parent.mkdir()
    BAD_SOURCES[bad](src)
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, stderr = cli("convert", src, "--ref", DATA_DIR / "vcc2016" / "TM1" / "100001.wav", "-o", out / "x.wav")
    assert code == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert only_names(out) == []


def test_cli_converts_an_8_channel_192k_24_bit_file(cli, tmp_path):
    x = np.resize(speech(), 192000)[:, None] * np.linspace(1, 0.3, 8)[None]  # one second
    src = tmp_path / "eight.wav"
    sf.write(str(src), x, 192000, subtype="PCM_24")
    code, stdout, stderr = cli("convert", src, "--ref", DATA_DIR / "vcc2016" / "TM1" / "100001.wav", "-o", tmp_path / "o.wav", "--sample-rate", "44101")
    assert code == 0, stderr
    info = sf.info(str(tmp_path / "o.wav"))
    assert info.samplerate == 44101 and abs(info.duration - 1.0) < 0.02


def test_many_channels_are_mixed_while_reading(tmp_path):
    """An 8-channel file is averaged block by block: reading it takes the memory of one channel."""
    import tracemalloc

    x = np.resize(speech(), 60 * 16000)[:, None] * np.linspace(1, 0.2, 8)[None]
    p = tmp_path / "eight.wav"
    sf.write(str(p), x, 16000, subtype="PCM_16")
    tracemalloc.start()
    try:
        wav = load_audio(p, 16000, trim=False, normalize=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(wav, x.mean(axis=1), atol=1e-4)
    assert peak < 4 * wav.nbytes, f"{peak / 1e6:.1f} MB to read {wav.nbytes / 1e6:.1f} MB of mono ({8 * wav.nbytes / 1e6:.0f} MB for all channels)"


@pytest.mark.slow
def test_an_hour_long_file_converts(vc, target, tmp_path):
    """An hour of 16 kHz speech converts whole: the right length, written in one piece (minutes on CPU)."""
    import resource

    src = tmp_path / "hour.wav"
    sf.write(str(src), np.resize(speech().astype(np.float32), 3600 * 16000), 16000, subtype="PCM_16")
    t0 = time.perf_counter()
    wav = vc.convert(src, target)
    out = vc.save(tmp_path / "out.wav", wav)
    seconds = time.perf_counter() - t0
    assert abs(sf.info(str(out)).duration - 3600) < 0.05 and np.isfinite(wav).all()
    print(f"\nan hour converted in {seconds:.0f} s (griffinlim, CPU); peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def test_mixing_channels_of_huge_samples_does_not_overflow(tmp_path):
    """Two channels near float32's largest value mixed to +inf (a finite file called non-finite)."""
    p = tmp_path / "loud.wav"
    sf.write(str(p), np.full((800, 2), 3e38) * np.sin(np.arange(800) * 0.3)[:, None], 8000, subtype="FLOAT")
    wav = load_audio(p, 16000)
    assert np.isfinite(wav).all() and np.abs(wav).max() <= PEAK_LIMIT + 1e-6
