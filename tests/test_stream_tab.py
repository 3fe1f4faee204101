"""The demo's live tab: browser chunks resampled without seams, the stream handler, and the tab in a real browser."""

from __future__ import annotations

import re
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from test_demo import CHROMIUM_ARGS, start_demo, stop_server
from conftest import CI
from vckit.audio import load_audio, resample
from vckit.demo.app import EXAMPLE_PREFIX, REFERENCE_CHOICE, DemoService
from vckit.demo.stream_tab import STREAM_EVERY, ChunkResampler, StreamTab, to_mono_float

BROWSER_RATE = 48000


@pytest.fixture(scope="module")
def live(causal_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> StreamTab:
    root = tmp_path_factory.mktemp("live")
    svc = DemoService(device="cpu", default_vocoder="griffinlim", bank=root / "bank", workdir=root / "work", stream_checkpoint=causal_checkpoint)
    return StreamTab(svc)


@pytest.fixture(scope="module")
def mic(speech: Path) -> np.ndarray:
    """``speech`` as a browser sends it: 48 kHz, 16-bit."""
    wav = load_audio(speech, BROWSER_RATE, trim=False, normalize=False)
    return (np.clip(wav, -1, 1) * 32767).astype(np.int16)


def chunks(x: np.ndarray, seconds: float = STREAM_EVERY) -> list[np.ndarray]:
    n = int(seconds * BROWSER_RATE)
    return [x[i : i + n] for i in range(0, len(x), n)]


def test_browser_audio_becomes_mono_float() -> None:
    stereo = np.array([[32767, -32768], [16384, 16384], [0, 0]], np.int16)
    np.testing.assert_allclose(to_mono_float(stereo), [-0.5 / 32768, 0.5, 0.0], atol=1e-6)
    assert to_mono_float(np.array([0.25, -1.0])).dtype == np.float32


@pytest.mark.parametrize("rate", [48000, 44100, 16000])
def test_chunked_resampling_equals_the_whole_signal_resampled(rate: int) -> None:
    x = np.random.default_rng(rate).uniform(-0.5, 0.5, rate * 2).astype(np.float32)
    whole = resample(x, rate, 22050)
    rs, out, i = ChunkResampler(rate, 22050), [], 0
    rng = np.random.default_rng(0)
    while i < len(x):
        n = int(rng.integers(1, rate // 3))
        out.append(rs(x[i : i + n]))
        i += n
    joined = np.concatenate(out)
    assert len(whole) - len(joined) <= 22050 * rs.delay_ms / 1000 + 1  # only the last few outputs wait for more input
    np.testing.assert_allclose(joined, whole[: len(joined)], atol=1e-5)


def run_session(live: StreamTab, key: str, pieces: list[np.ndarray], choice: str, reference: str | None = None) -> tuple[list, str]:
    live.begin(key)
    outs, text = [], ""
    for piece in pieces:
        audio, text = live.chunk(key, (BROWSER_RATE, piece), choice, reference)
        outs.append(audio)
    return outs, text


def test_live_handler_streams_the_microphone(live: StreamTab, mic: np.ndarray, speech: Path) -> None:
    outs, text = run_session(live, "tab-1", chunks(mic), REFERENCE_CHOICE, str(speech))
    assert all(o is not None and o[0] == 22050 and o[1].dtype == np.int16 and o[1].ndim == 1 for o in outs)
    out = np.concatenate([o[1] for o in outs])
    stream = live.service.stream_converter().stream(live.voice(REFERENCE_CHOICE, str(speech))[0])
    block = stream.block_ms * 22050 / 1000
    assert abs(len(out) - len(mic) * 22050 / BROWSER_RATE) <= block  # as much out as in
    assert np.abs(out).max() > 0
    seconds = len(mic) / BROWSER_RATE
    assert f"Streaming: {seconds:.1f} s streamed" in text and f"voice of *{speech.stem}*" in text
    delay = re.search(r"delay: \*\*about (\d+) ms\*\*", text)
    resampling = ChunkResampler(BROWSER_RATE, 22050).delay_ms  # the most that waits for the next chunk: 13.6 ms at 48 kHz
    assert delay and int(delay.group(1)) == pytest.approx(stream.delay_ms + 1000 * STREAM_EVERY + resampling, abs=1)
    assert f"the model's {stream.delay_ms:.0f} ms" in text and f"{resampling:.1f} ms resampling" in text
    assert "browser adds its own" in text and "server converts a 500 ms chunk" in text

    # the stop sends the stream's tail to the player, which then ends: it played all that was converted
    stopped = live.stop("tab-1")
    assert stopped.startswith(f"**Stopped: {seconds:.1f} s streamed") and delay.group(0) in stopped
    played = list(live.play("tab-1", idle_s=1))
    assert all(r == 22050 for r, _ in played)
    assert np.array_equal(np.concatenate([x for _, x in played])[: len(out)], out)
    assert sum(len(x) for _, x in played) == len(out) + stream.delay
    assert live.chunk("tab-1", (BROWSER_RATE, mic[:24000]), REFERENCE_CHOICE, str(speech))[0] is None  # a late chunk after the stop
    assert live.stop("never-recorded") == "Stopped before any audio arrived."


def test_two_sessions_share_nothing(live: StreamTab, mic: np.ndarray, speech: Path) -> None:
    pieces = chunks(mic[: 2 * BROWSER_RATE])
    alone, _ = run_session(live, "alone", pieces, REFERENCE_CHOICE, str(speech))
    noise = np.random.default_rng(1).integers(-20000, 20000, (len(pieces[0]), 2), dtype=np.int16)  # a loud stereo visitor
    live.begin("a")
    live.begin("b")
    first = []
    for piece in pieces:  # the two sessions' chunks interleave
        first.append(live.chunk("a", (BROWSER_RATE, piece), REFERENCE_CHOICE, str(speech))[0][1])
        _, text_b = live.chunk("b", (BROWSER_RATE, noise), REFERENCE_CHOICE, str(speech))
    a, b = live.session("a"), live.session("b")
    assert a is not b and a.stream is not b.stream and a.resampler is not b.resampler
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate([o[1] for o in alone]))
    assert "Streaming: 2.0 s streamed" in text_b and live.session("a").seconds_in == pytest.approx(2.0)
    live.begin("a")  # a new recording in tab a: a fresh stream, tab b's goes on
    assert live.session("a") is not a and a.stopped and a.stream is None and not b.stopped
    live.forget("b")
    assert b.stopped and b.stream is None


def test_example_voice_and_bad_targets(live: StreamTab, mic: np.ndarray) -> None:
    if live.service.voices:
        ex = live.service.voices[0]
        outs, text = run_session(live, "ex", chunks(mic[:BROWSER_RATE]), f"{EXAMPLE_PREFIX}{ex.label}")
        assert outs[0] is not None and f"voice of *{ex.label.split(' (')[0]}*" in text
    outs, text = run_session(live, "bad", chunks(mic[:BROWSER_RATE]), REFERENCE_CHOICE, None)
    assert outs == [None, None] and text.startswith("**Live conversion stopped:** no reference voice")


def test_without_the_streaming_model_the_tab_says_so(tmp_path: Path, mic: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    import vckit.demo.app as app

    monkeypatch.setattr(app, "STREAM_DIR", tmp_path / "checkpoints" / "stream")  # as before the streaming model ships
    live = StreamTab(DemoService(device="cpu", default_vocoder="griffinlim", bank=tmp_path / "bank", workdir=tmp_path / "work"))
    assert "live conversion needs the streaming model (checkpoints/stream)" in live.intro()
    live.begin("k")
    audio, text = live.chunk("k", (BROWSER_RATE, mic[:24000]), REFERENCE_CHOICE, None)
    assert audio is None and "live conversion needs the streaming model (checkpoints/stream)" in text
    assert live.chunk("k", (BROWSER_RATE, mic[:24000]), REFERENCE_CHOICE, None) == (None, text)  # not retried for every chunk
    missing = StreamTab(DemoService(device="cpu", workdir=tmp_path / "w2", stream_checkpoint=tmp_path / "nope"))
    assert missing.available() == f"no streaming model at {tmp_path / 'nope'}"


def test_build_app_has_the_live_tab(live: StreamTab) -> None:
    import gradio as gr

    from vckit.demo.page import build_app

    app = build_app(live.service)
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"live-mic", "live-out", "live-status", "live-target", "convert-btn"} <= ids
    mic = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "live-mic")
    assert isinstance(mic, gr.Audio) and mic.streaming


# -- the tab in a real browser, with a WAV file as the microphone --------------------------------
@pytest.fixture
def sync_api():
    """Playwright's sync API, with Debian's chromium to drive; the test is skipped without them."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; scripts/test.sh does it)")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")


def test_browser_live_tab(sync_api, causal_checkpoint: Path, mic: np.ndarray, tmp_path: Path) -> None:
    """Record from chromium's fake microphone (the speech, looped), stop; the server's counts, the browser's
    buffered playback and the downloaded stream all show converted audio coming back as one stream."""
    wav = tmp_path / "mic.wav"
    sf.write(str(wav), mic, BROWSER_RATE, subtype="PCM_16")
    proc, url, log = start_demo(["--vocoder", "griffinlim", "--device", "cpu", "--bank", str(tmp_path / "bank"), "--stream-checkpoint", str(causal_checkpoint)], tmp_path)
    args = [*CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required"]
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=args)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url, wait_until="domcontentloaded")
                page.get_by_role("tab", name="Live").click()
                status = page.locator("#live-status")
                sync_api.expect(status).to_contain_text("Press Record", timeout=30_000)
                page.locator("#live-target input").click()
                page.get_by_role("option", name=REFERENCE_CHOICE).click()
                page.locator("#live-reference input[type=file]").set_input_files(str(wav))
                page.locator("#live-mic").get_by_role("button", name=re.compile("record", re.I)).click()
                sync_api.expect(status).to_contain_text(re.compile(r"Streaming: [1-9]\d*\.\d s streamed"), timeout=30_000)
                sync_api.expect(status).to_contain_text(re.compile(r"delay: about \d+ ms"))
                # at least 2 s streamed before stopping: an event to wait for, not a span of wall time
                sync_api.expect(status).to_contain_text(re.compile(r"Streaming: ([2-9]|\d{2,})\.\d s streamed"), timeout=30_000)
                page.locator("#live-mic").get_by_role("button", name=re.compile("stop", re.I)).click()
                sync_api.expect(status).to_contain_text(re.compile(r"Stopped: [1-9]\d*\.\d s streamed"), timeout=15_000)
                sent = float(re.search(r"\(([\d.]+) s sent back\)", status.inner_text()).group(1))
                assert sent > 0.5
                if shutil.which("ffmpeg") is None:  # no playback: the tab says why, and the counts above are what there is
                    assert not CI, "ffmpeg is not installed, so the live tab's playback goes unchecked (scripts/test.sh installs it)"
                    sync_api.expect(page.locator("#live-intro")).to_contain_text("this server has no ffmpeg")
                    return
                player = page.locator("#live-out audio")
                player.wait_for(state="attached", timeout=10_000)
                page.wait_for_function("el => el.buffered.length > 0", arg=player.element_handle(), timeout=10_000)
                buffered = player.evaluate("el => el.buffered.end(el.buffered.length - 1)")  # converted audio the browser holds
                assert buffered > 0.5
                with urllib.request.urlopen(page.locator("#live-out a[download]").get_attribute("href"), timeout=30) as r:
                    (tmp_path / "live.wav").write_bytes(r.read())  # the whole converted recording, one stream
            finally:
                browser.close()
        info = sf.info(str(tmp_path / "live.wav"))  # made by ffmpeg from the streamed chunks
        assert info.samplerate == 22050 and info.duration == pytest.approx(sent, abs=0.3)
    finally:
        stop_server(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_a_player_that_never_comes_holds_little(live: StreamTab, mic: np.ndarray, speech: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vckit.demo.stream_tab as stream_tab

    monkeypatch.setattr(stream_tab, "PLAYER_QUEUE", 2)
    run_session(live, "deaf", chunks(mic[: 2 * BROWSER_RATE]), REFERENCE_CHOICE, str(speech))  # 4 chunks, nobody playing
    assert live.session("deaf").out.qsize() == 2
    live.stop("deaf")
    played = list(live.play("deaf", idle_s=1))  # the oldest audio went; the end still gets through
    assert 1 <= len(played) <= 2


def test_the_live_tab_streams_through_the_fast_vocoder_where_the_page_defaults_to_hifigan(causal_checkpoint, tmp_path):
    from vckit.models.vocoder import Vocos

    # HiFi-GAN cannot keep up live on two cores: the Live tab swaps it for the fast vocoder, as vckit stream does
    svc = DemoService(device="cpu", default_vocoder="hifigan", bank=tmp_path / "bank", workdir=tmp_path / "work", stream_checkpoint=causal_checkpoint)
    assert isinstance(svc.stream_converter().vocoder, Vocos)
    other = DemoService(device="cpu", default_vocoder="griffinlim", bank=tmp_path / "bank", workdir=tmp_path / "work2", stream_checkpoint=causal_checkpoint)
    assert not isinstance(other.stream_converter().vocoder, Vocos)  # a page opened on another vocoder keeps it live
