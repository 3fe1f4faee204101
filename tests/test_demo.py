"""The Gradio demo: its conversion handler and helpers, and the page in a real browser."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vckit.demo.app import DemoService, ENROLLED_PREFIX, EXAMPLE_PREFIX, REFERENCE_CHOICE
from vckit.demo.examples import EXAMPLES_DIR, example_voices, list_examples
from vckit.demo.page import handle_convert, hide_paths
from vckit.errors import VckitError
from vckit.demo.mel_image import render_mels, write_png

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> DemoService:
    """One demo service for the module: CPU, Griffin-Lim (fast), an empty speaker bank of its own."""
    root = tmp_path_factory.mktemp("demo")
    svc = DemoService(device="cpu", default_vocoder="griffinlim", max_seconds=60, bank=root / "bank", workdir=root / "work")
    svc.warm_up()
    return svc


@pytest.fixture(scope="module")
def male(data_dir: Path) -> Path:
    return data_dir / "vcc2016" / "SM1" / "200001.wav"  # 5.0 s


@pytest.fixture(scope="module")
def female(data_dir: Path) -> Path:
    return data_dir / "vcc2016" / "SF1" / "200002.wav"


@pytest.fixture(scope="module")
def male_short(male: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 1.5 s of ``male``: pitch matching shifts by fractional semitones, slow on long clips."""
    wav, sr = sf.read(str(male), dtype="float32")
    return write(tmp_path_factory.mktemp("short") / "male_short.wav", wav[: int(1.5 * sr)], sr)


def seconds_of(path: str | Path) -> float:
    return sf.info(str(path)).duration


def write(path: Path, wav: np.ndarray, sr: int = 16000) -> Path:
    sf.write(str(path), wav.astype(np.float32), sr)
    return path


# -- examples and the target menu -----------------------------------------------------
def test_list_examples_reads_the_folder_and_its_readme(tmp_path: Path) -> None:
    for name in ("01_m2f_source", "01_m2f_reference", "01_m2f_converted", "02_f2m_source"):  # 02 has no reference
        write(tmp_path / f"{name}.wav", np.zeros(160))
    (tmp_path / "README.md").write_text("| # | kind |\n|---|---|\n| 01 | male to female | x |\n")
    ex = list_examples(tmp_path, fallback_data=None)
    assert [(e.name, e.label) for e in ex] == [("01_m2f", "01 male to female")]
    assert ex[0].source.name == "01_m2f_source.wav" and ex[0].reference.name == "01_m2f_reference.wav"
    assert ex[0].converted is not None and ex[0].converted.name == "01_m2f_converted.wav"


def test_example_voices_are_named_by_speaker_with_all_their_clips(tmp_path: Path) -> None:
    for name in ("01_m2f", "02_f2m", "03_libri2vctk"):
        for part in ("source", "reference"):
            write(tmp_path / f"{name}_{part}.wav", np.zeros(160))
    (tmp_path / "README.md").write_text(
        "| # | kind | source | reference (speaker, file) |\n|---|---|---|---|\n"
        "| 01 | male to female | libri:1, `a.flac` | vctk:p228, `vctk/p228/p228_011.wav` |\n"
        "| 02 | female to male | vctk:p228, `b.flac` | libri:296, `c.flac` |\n"
        "| 03 | LibriSpeech reader to a VCTK voice | libri:1, `a.flac` | vctk:p228, `d.wav` |\n"
    )
    voices = example_voices(list_examples(tmp_path, fallback_data=None))
    assert [v.label for v in voices] == ["p228 (female, VCTK)", "296 (male, LibriSpeech)"]
    assert [p.name for p in voices[0].references] == ["01_m2f_reference.wav", "03_libri2vctk_reference.wav"]


def test_list_examples_falls_back_to_shared_speech(tmp_path: Path, data_dir: Path) -> None:
    ex = list_examples(tmp_path / "none", fallback_data=data_dir)
    assert len(ex) >= 1
    assert all(e.source.is_file() and e.reference.is_file() and e.source != e.reference for e in ex)
    assert list_examples(tmp_path / "none", fallback_data=None) == []


def test_shipped_examples_are_readable() -> None:
    ex = list_examples(EXAMPLES_DIR, fallback_data=None)
    if not ex:
        pytest.skip(f"no examples in {EXAMPLES_DIR}")
    for e in ex:
        assert seconds_of(e.source) > 1 and seconds_of(e.reference) > 1, e


def test_target_menu_offers_reference_examples_and_enrolled(service: DemoService) -> None:
    choices = service.target_choices()
    assert choices[0] == REFERENCE_CHOICE
    assert [c for c in choices if c.startswith(EXAMPLE_PREFIX)] == [f"{EXAMPLE_PREFIX}{v.label}" for v in service.voices]
    assert 1 <= len(service.voices) <= len(service.examples)  # one entry per speaker


# -- the conversion ---------------------------------------------------------------------
def test_convert_reference_clip(service: DemoService, male: Path, female: Path) -> None:
    steps = []
    res = service.convert(str(male), REFERENCE_CHOICE, str(female), progress=lambda f, desc=None: steps.append(f))
    info = sf.info(str(res.audio))
    assert info.samplerate == service.converter().sample_rate and info.subtype == "PCM_16"
    assert abs(info.duration - seconds_of(male)) < 0.05  # as long as the source
    assert res.audio.parent.parent == service.workdir
    assert res.mels.read_bytes()[:8] == PNG_MAGIC
    assert f"{res.similarity['to_reference']:.2f}" in res.summary and "speaker-verification" in res.summary
    # the shipped model moves this male voice to the female reference: the judge says so, and the page with it
    assert res.similarity["to_reference"] > res.similarity["to_source"] + 0.1, res.similarity
    assert res.summary.startswith("**Closer to the target than to the source: yes**")
    assert "same speaker by the judge" not in res.summary and "(1 clip, " in res.summary  # no verdict per number
    assert steps == sorted(steps) and steps[-1] == 1.0


def test_convert_to_example_voice(service: DemoService, male: Path) -> None:
    voice = max(service.voices, key=lambda v: len(v.references))  # the shipped examples use two clips of p228
    assert f"{EXAMPLE_PREFIX}{voice.label}" in service.target_choices()
    res = service.convert(str(male), f"{EXAMPLE_PREFIX}{voice.label}", None)
    assert res.similarity["to_reference"] is not None and res.audio.is_file()
    n = len(voice.references)
    assert f"voice of *{voice.label.split(' (')[0]}* ({n} clip{'s' if n > 1 else ''}, " in res.summary


def test_pitch_handling(service: DemoService, male: Path, male_short: Path, female: Path) -> None:
    # the shift shown: the register move of the F0 path (0 for models without one) plus the manual semitones
    none = service.convert(str(male), REFERENCE_CHOICE, str(female), pitch_mode="none")
    base = none.pitch_shift
    manual = service.convert(str(male), REFERENCE_CHOICE, str(female), pitch_mode="manual semitones", semitones=3)
    assert manual.pitch_shift == pytest.approx(base + 3.0)
    assert base > 2 and none.register_shift == base  # the shipped model's F0 path: a male source goes up toward the female register
    assert f"pitch: moved {base:+.1f} semitones to the target's register by the model itself" in none.summary
    assert "then +3.0 semitones as asked" in manual.summary
    matched = service.convert(str(male_short), REFERENCE_CHOICE, str(female), pitch_mode="match F0")
    assert matched.pitch_shift > 2  # a male source is shifted up towards a female voice
    assert "semitones" in matched.summary
    with pytest.raises(VckitError, match="between -24 and 24"):
        service.convert(str(male), REFERENCE_CHOICE, str(female), pitch_mode="manual semitones", semitones=40)


def test_enrolled_voice(service: DemoService, male: Path, male_short: Path, female: Path) -> None:
    from vckit.speakers import enroll, new_profile, save_profile

    vc = service.converter()
    done = enroll(vc, "alice", [female, female], bank=service.bank_dir())  # the one enrolment the CLI and finetune use
    assert done.path == service.bank_dir() / "alice.safetensors" and done.profile.meta["references"] == [str(female.resolve())] * 2
    with pytest.raises(VckitError, match="already enrolled"):
        enroll(vc, "alice", [female], bank=service.bank_dir())
    save_profile(service.bank_dir(), new_profile("stranger", done.voice.embedding, "another-model", [], 3.0, None))  # no clips left to remake it from
    assert f"{ENROLLED_PREFIX}alice" in service.target_choices()
    res = service.convert(str(male_short), f"{ENROLLED_PREFIX}alice", None, pitch_mode="match F0")  # the profile's F0
    assert res.similarity["to_reference"] is not None and res.pitch_shift > 2
    assert "voice of *alice* (2 clips)" in res.summary  # every enrolled clip, in the picture and for the judge
    with pytest.raises(VckitError, match="'stranger' was enrolled with the model with weights another-mod.*enroll it again"):
        service.convert(str(male), f"{ENROLLED_PREFIX}stranger", None)


# -- bad input: a sentence for the page, never a traceback ---------------------------------------
def test_too_long_input(service: DemoService, tmp_path: Path, female: Path) -> None:
    long = write(tmp_path / "long.wav", 0.01 * np.random.default_rng(0).standard_normal(61 * 8000), sr=8000)
    with pytest.raises(VckitError, match=r"source is 61.0 s long; this demo takes at most 60 s"):
        service.convert(str(long), REFERENCE_CHOICE, str(female))
    with pytest.raises(VckitError, match=r"reference is 61.0 s long"):
        service.convert(str(female), REFERENCE_CHOICE, str(long))


def test_silent_input(service: DemoService, tmp_path: Path, male: Path, female: Path) -> None:
    silent = write(tmp_path / "silent.wav", np.zeros(32000))
    with pytest.raises(VckitError, match="source is silent"):
        service.convert(str(silent), REFERENCE_CHOICE, str(female))
    with pytest.raises(VckitError, match="reference is silent"):
        service.convert(str(male), REFERENCE_CHOICE, str(silent))


def test_reference_without_speech(service: DemoService, tmp_path: Path, male: Path, data_dir: Path) -> None:
    noise = write(tmp_path / "noise.wav", 0.1 * np.random.default_rng(0).standard_normal(3 * 16000))
    with pytest.raises(VckitError, match=r"reference holds no speech that vckit can hear"):
        service.convert(str(male), REFERENCE_CHOICE, str(noise))
    short = data_dir / "vcc2016" / "TM1" / "100001.wav"  # 2.6 s of speech: under the 3 s asked for
    res = service.convert(str(male), REFERENCE_CHOICE, str(short))
    assert res.warnings and all(f"- warning: {w}" in res.summary for w in res.warnings)


def test_silent_result_gets_no_score(service: DemoService) -> None:
    speech = np.sin(np.arange(22050) * 0.05).astype(np.float32) * 0.3
    assert service.similarity(np.zeros(22050, np.float32), 22050, speech, speech, 22050) == {"to_reference": None, "to_source": None}


def test_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(VckitError, match="unknown vocoder"):
        DemoService(default_vocoder="wavenet", workdir=tmp_path / "w")
    with pytest.raises(VckitError, match="max-seconds must be positive"):
        DemoService(max_seconds=0, workdir=tmp_path / "w")
    svc = DemoService(workdir=tmp_path / "w")
    with pytest.raises(VckitError, match="unknown pitch handling"):
        svc.convert("x.wav", pitch_mode="auto")
    svc.close()
    assert not (tmp_path / "w").exists()


def test_unreadable_and_missing_input(service: DemoService, tmp_path: Path, male: Path, female: Path) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio\n")
    with pytest.raises(VckitError, match="cannot read audio file notes.wav"):
        service.convert(str(bad), REFERENCE_CHOICE, str(female))
    with pytest.raises(VckitError, match="no source"):
        service.convert(None, REFERENCE_CHOICE, str(female))
    with pytest.raises(VckitError, match="no reference voice"):
        service.convert(str(male), REFERENCE_CHOICE, None)
    with pytest.raises(VckitError, match="unknown target voice"):
        service.convert(str(male), "someone", None)
    with pytest.raises(VckitError, match="unknown example voice"):
        service.convert(str(male), f"{EXAMPLE_PREFIX}nobody", None)
    short = write(tmp_path / "short.wav", 0.1 * np.sin(np.arange(8000) * 0.2))
    with pytest.raises(VckitError, match="reference too short"):
        service.convert(str(male), REFERENCE_CHOICE, str(short))


def test_handler_puts_errors_on_the_page(service: DemoService, tmp_path: Path, female: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    silent = write(tmp_path / "silent.wav", np.zeros(32000))
    warned: list[str] = []
    audio, image, text = handle_convert(service, str(silent), REFERENCE_CHOICE, str(female), "griffinlim", "none", 0, warn=warned.append)
    assert audio is None and image is None
    assert text.startswith("**Could not convert:**") and "silent" in text and warned == [text.split("** ", 1)[1]]

    def boom(*a, **k):
        raise RuntimeError("bug")

    # a failure after a good result: the page keeps that result, and the text says so
    audio, image, text = handle_convert(service, str(silent), REFERENCE_CHOICE, str(female), previous="**Closer to the target than to the source: yes**")
    assert audio is None and text.startswith("**Could not convert:**") and text.endswith("**Closer to the target than to the source: yes**")
    assert "still the previous one" in text

    monkeypatch.setattr(service, "convert", boom)
    audio, image, text = handle_convert(service, str(silent), REFERENCE_CHOICE, str(female), warn=warned.append)
    assert audio is None and "internal error" in text and "bug" not in text


def test_errors_never_show_the_servers_folders(service: DemoService, tmp_path: Path, female: Path) -> None:
    upload = tmp_path / "gradio" / "3f2a9c" / "notes.wav"  # where Gradio keeps an upload
    upload.parent.mkdir(parents=True)
    upload.write_text("this is not audio\n")
    _, _, text = handle_convert(service, str(upload), REFERENCE_CHOICE, str(female))
    assert "cannot read audio file notes.wav" in text and str(tmp_path) not in text and "/tmp" not in text
    assert hide_paths("Error opening '/tmp/gradio/ab12/x y.wav': bad", ("/tmp/gradio/ab12/x y.wav",)) == "Error opening 'x y.wav': bad"
    assert hide_paths("at /srv/a/b.wav, line 3") == "at b.wav, line 3"


def test_concurrent_requests_get_their_own_results(service: DemoService, data_dir: Path, male: Path, female: Path) -> None:
    other = data_dir / "vcc2016" / "SF1" / "100001.wav"  # 3.5 s: a different length from `male`
    jobs = [(str(male), str(female)), (str(other), str(male))]
    barrier = threading.Barrier(2)

    def run(job):
        barrier.wait()
        return service.convert(job[0], REFERENCE_CHOICE, job[1])

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, jobs))
    for (src, _), res in zip(jobs, results):
        assert abs(sf.info(str(res.audio)).duration - seconds_of(src)) < 0.05
    assert results[0].audio.parent != results[1].audio.parent
    assert results[0].mels != results[1].mels


# -- the picture ------------------------------------------------------------------------
def test_render_mels_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails: the numpy rendering
    mel = np.random.default_rng(0).standard_normal((80, 50)).astype(np.float32)
    path = render_mels([("source", mel, 0.6), ("reference", mel * 2, 1.0), ("result", mel[:, :10], 0.1)], tmp_path / "m.png")
    img = np.asarray(Image.open(path))
    assert img.shape == (182, 3 * 360 + 2 * 10, 3)
    assert img[100, 365].tolist() == [255, 255, 255]  # the gap between pictures


def test_render_mels_without_matplotlib_or_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    mel = np.random.default_rng(0).standard_normal((80, 50)).astype(np.float32)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "matplotlib.figure", None)
        m.setitem(sys.modules, "PIL", None)
        path = render_mels([("source", mel, 0.6), ("result", mel, 0.6)], tmp_path / "m.png")
    img = np.asarray(Image.open(path))
    assert img.shape == (182, 2 * 360 + 10, 3) and (img[:22] == 255).all()  # no titles drawn


def test_render_mels_with_matplotlib(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is optional")
    mel = np.random.default_rng(0).standard_normal((80, 50)).astype(np.float32)
    path = render_mels([("source", mel, 0.6), ("result", mel, 0.6)], tmp_path / "m.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_png_writer_without_pillow(tmp_path: Path) -> None:
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 255, (7, 5, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(write_png(tmp_path / "x.png", rgb))), rgb)


# -- the app ----------------------------------------------------------------------------
def test_import_vckit_does_not_import_gradio() -> None:
    code = "import sys, vckit, vckit.demo.app; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_build_app(service: DemoService) -> None:
    import gradio as gr

    from vckit.demo.page import build_app, launch_kwargs

    app = build_app(service)
    assert isinstance(app, gr.Blocks)
    kw = launch_kwargs(service)
    assert str(EXAMPLES_DIR) in kw["allowed_paths"] or not service.examples or service.examples[0].source.parent != EXAMPLES_DIR
    assert kw["max_file_size"] == "96mb"


def test_demo_help() -> None:
    out = subprocess.run([sys.executable, "demo.py", "--help"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    for opt in ("--host", "--port", "--share", "--max-seconds", "--concurrency", "--vocoder", "--stream-checkpoint"):
        assert opt in out.stdout
    assert "share=True" not in out.stdout and "launch()" not in out.stdout


# -- the page in a real browser -----------------------------------------------------------------
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT_TAKEN = re.compile(r"error: cannot listen on .*choose another port", re.I)


def start_demo(args: list[str], workdir: Path, *, timeout: float = 90, tries: int = 3) -> tuple[subprocess.Popen, str, Path]:
    """``python demo.py --port P *args`` as a subprocess, answering on a free localhost port: (process, URL, log).

    A port found free can be taken by another process before the demo binds it; then the demo exits saying
    so, and it is started again on another port (up to ``tries`` times), so the race costs a retry, not a
    failure. Any other early exit fails the test with the log's end."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(workdir / "gradio")}
    for attempt in range(1, tries + 1):
        port, log = free_port(), workdir / f"demo.{attempt}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "demo.py", "--port", str(port), *args], cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_for_server(url, proc, log, timeout, retry_if=PORT_TAKEN if attempt < tries else None)
            return proc, url, log
        except PortTaken:
            continue
        except BaseException:
            stop_server(proc)
            raise
    pytest.fail(f"demo.py found its port taken {tries} times")


class PortTaken(Exception):
    """The demo exited because its port was taken before it could bind it."""


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90, retry_if: re.Pattern | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            if retry_if is not None and retry_if.search(log.read_text()):
                raise PortTaken(url)
            pytest.fail(f"demo.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"demo.py did not answer on {url} in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def demo_server(tmp_path: Path):
    """``python demo.py`` on a free localhost port, as a subprocess; yields its URL.

    ``VCKIT_DEMO_VOCODER`` picks the vocoder (default griffinlim, for speed).
    """
    vocoder = os.environ.get("VCKIT_DEMO_VOCODER", "griffinlim")
    proc, url, _ = start_demo(["--vocoder", vocoder, "--device", "cpu", "--bank", str(tmp_path / "bank")], tmp_path)
    try:
        yield url
    finally:
        stop_server(proc)


def test_a_taken_port_is_one_clear_line_before_the_models_load(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = subprocess.run([sys.executable, "demo.py", "--port", str(port), "--device", "cpu", "--bank", str(tmp_path / "bank")],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port} (Address already in use): choose another port with --port"


def test_a_port_taken_in_the_race_costs_a_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """free_port's answer can be taken before the demo binds it: start_demo then tries another port."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken, real = held.getsockname()[1], free_port
        ports = iter([taken])
        monkeypatch.setitem(globals(), "free_port", lambda: next(ports, None) or real())
        proc, url, _ = start_demo(["--vocoder", "griffinlim", "--device", "cpu", "--bank", str(tmp_path / "bank")], tmp_path)
    try:
        assert f":{taken}/" not in url and PORT_TAKEN.search((tmp_path / "demo.1.log").read_text())
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200
    finally:
        stop_server(proc)


@pytest.fixture
def sync_api():
    """Playwright's sync API, with Debian's chromium to drive; the test is skipped without them."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; scripts/test.sh does it)")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")


def test_browser_swap(sync_api, demo_server: str, tmp_path: Path, data_dir: Path) -> None:  # sync_api first: skip before starting the server
    """Upload a source and a reference, convert, download the result; a silent source gets a message;
    a reference without speech after a good result gets a message and leaves that result on the page.

    The clips are the first example swap (examples, else two
    validation speakers from shared/data).

    The screenshot goes to ``$VCKIT_DEMO_SCREENSHOT`` if set (``docs/demo.png``
    is made with ``VCKIT_DEMO_SCREENSHOT=docs/demo.png VCKIT_DEMO_VOCODER=hifigan``).
    """
    example = list_examples(EXAMPLES_DIR, fallback_data=data_dir)[0]
    male, female = example.source, example.reference
    silent = write(tmp_path / "silent.wav", np.zeros(32000))
    noise = write(tmp_path / "noise.wav", 0.1 * np.random.default_rng(0).standard_normal(3 * 16000))
    shot = Path(os.environ.get("VCKIT_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(demo_server, wait_until="domcontentloaded")
            page.wait_for_selector("#convert-btn", timeout=30_000)
            report = page.locator("#report")

            # a silent source: a sentence on the page, no result
            page.locator("#source-audio input[type=file]").set_input_files(str(silent))
            page.locator("#reference-audio input[type=file]").set_input_files(str(female))
            page.click("#convert-btn")
            sync_api.expect(report).to_contain_text("Could not convert: source is silent", timeout=30_000)
            sync_api.expect(page.get_by_test_id("toast-body")).to_contain_text("source is silent")  # gr.Warning
            assert page.locator("#result-audio a[download]").count() == 0
            page.get_by_test_id("toast-close").first.click()

            # a real swap
            page.locator("#source-audio button[aria-label='Clear']").click()
            page.locator("#source-audio input[type=file]").set_input_files(str(male))
            page.click("#convert-btn")
            sync_api.expect(report).to_contain_text("similarity of the result to the reference", timeout=60_000)
            sync_api.expect(report).to_contain_text("Closer to the target than to the source: yes")
            link = page.locator("#result-audio a[download]")
            link.wait_for(state="attached", timeout=10_000)
            href = link.get_attribute("href")
            page.locator("#mels img").wait_for(state="visible", timeout=10_000)
            page.wait_for_timeout(500)  # let the waveform and picture finish drawing
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            picture = page.locator("#mels img").get_attribute("src")

            # then a reference without speech: the error is shown, the good result stays
            page.locator("#reference-audio button[aria-label='Clear']").click()
            page.locator("#reference-audio input[type=file]").set_input_files(str(noise))
            page.click("#convert-btn")
            sync_api.expect(report).to_contain_text("Could not convert: reference holds no speech", timeout=30_000)
            sync_api.expect(report).to_contain_text("still the previous one")
            sync_api.expect(report).to_contain_text("Closer to the target than to the source")
            assert page.locator("#result-audio a[download]").get_attribute("href") == href
            assert page.locator("#mels img").get_attribute("src") == picture
            assert "/tmp" not in report.inner_text()
            page.get_by_test_id("toast-close").first.click()

            # the semitone slider is for manual pitch handling only
            slider = page.locator("input[type=range]")
            assert slider.is_disabled()
            page.get_by_label("manual semitones").check()
            sync_api.expect(slider).to_be_enabled()

            # one click on another example converts it
            last = list_examples(EXAMPLES_DIR, fallback_data=data_dir)[-1]
            page.get_by_role("button", name=last.label).click()
            sync_api.expect(report).to_contain_text(f"voice of {last.reference.stem}", timeout=60_000)
        finally:
            browser.close()
    with urllib.request.urlopen(href, timeout=30) as r:
        (tmp_path / "result.wav").write_bytes(r.read())
    info = sf.info(str(tmp_path / "result.wav"))
    assert info.format == "WAV" and info.samplerate == 22050 and info.frames > 0
    assert abs(info.duration - seconds_of(male)) < 0.05
    assert shot.read_bytes()[:8] == PNG_MAGIC
