"""The demo's page: the convert button's handler and the Gradio layout.

:func:`handle_convert` turns a :class:`~vckit.demo.app.DemoService` result or
error into what the page shows; :func:`build_app` lays out the page. Gradio
is imported inside :func:`build_app` only, so ``import vckit`` stays light
and the rest of this module works without it.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from vckit.demo.app import MAX_SEMITONES, PITCH_MODES, REFERENCE_CHOICE, VOCODERS, DemoService, Progress, hide_paths
from vckit.errors import VckitError

log = logging.getLogger(__name__)

# an absolute path of two or more parts, e.g. /tmp/gradio/3f2a.../notes.wav: only its base name is shown
def handle_convert(
    service: DemoService,
    *args: Any,
    progress: Progress | None = None,
    warn: Callable[[str], Any] | None = None,
    previous: str | None = None,
) -> tuple[str | None, str | None, str]:
    """The convert button: ``(audio path, picture path, Markdown)``; never raises.

    ``args`` are :meth:`DemoService.convert`'s. A request that cannot be
    served gives ``(None, None, message)``: the page then keeps the previous
    result, and the message says so and repeats ``previous`` (that result's
    Markdown). The message, without the server's folders, is also passed to
    ``warn`` (``gr.Warning`` on the page).
    """
    try:
        res = service.convert(*args, progress=progress)
    except VckitError as e:
        msg = hide_paths(str(e), (args[0] if args else None, args[2] if len(args) > 2 else None))
    except Exception:  # a bug: keep the traceback in the server log, not on the page
        log.exception("conversion failed")
        msg = "internal error while converting (the server log has the details)"
    else:
        return str(res.audio), str(res.mels), res.summary
    if warn is not None:
        warn(msg)
    text = f"**Could not convert:** {msg}"
    if previous:
        text += f"\n\n---\n*The result shown is still the previous one:*\n\n{previous}"
    return None, None, text


INTRO = """# vckit voice conversion
Speech from the **source** comes out in the voice of the **target**. Upload or record a source, then
upload or record a reference clip of the target voice (at least 1 s of speech), or pick an example or
enrolled voice. Or click one of the examples below. Runs the shipped model (`checkpoints/default`) offline.
The **Live** tab converts the microphone while you speak (with the streaming model, `checkpoints/stream`)."""


def build_app(service: DemoService) -> Any:
    """The Gradio Blocks page over ``service`` (not yet queued or launched)."""
    import gradio as gr

    from vckit.demo.stream_tab import build_stream_tab

    choices = service.target_choices()
    with gr.Blocks(title="vckit voice conversion", delete_cache=(3600, 3600)) as app:
        gr.Markdown(INTRO)
        with gr.Tab("Convert", id="convert"):
            with gr.Row():
                source = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Source speech", elem_id="source-audio")
                with gr.Column():
                    target = gr.Dropdown(choices, value=REFERENCE_CHOICE, label="Target voice", elem_id="target-choice")
                    reference = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Reference clip of the target voice", elem_id="reference-audio")
            with gr.Accordion("Options", open=True):
                with gr.Row():
                    vocoder = gr.Radio(list(VOCODERS), value=service.default_vocoder, label="Vocoder", info="hifigan: neural, natural; fast: distilled from it, a quarter of the time, less natural; griffinlim: no neural vocoder, buzzy")
                    pitch = gr.Radio(list(PITCH_MODES), value="none", label="Pitch handling",
                                     info="match F0: shift the source to the target's median F0 first (a model with an F0 path, as the default, always does this itself)")
                    semitones = gr.Slider(-MAX_SEMITONES, MAX_SEMITONES, value=0, step=0.5, label="Manual shift (semitones)", interactive=False)
            button = gr.Button("Convert", variant="primary", elem_id="convert-btn")
            with gr.Row():
                result = gr.Audio(type="filepath", format="wav", label="Converted speech", interactive=False, buttons=["download"], elem_id="result-audio")
                report = gr.Markdown("The result and its speaker similarity will appear here.", elem_id="report")
            mels = gr.Image(type="filepath", label="Log-mel spectrograms", show_label=False, interactive=False, elem_id="mels")
            last = gr.State(None)  # the Markdown of the last good result, repeated under a later error
            inputs = [source, target, reference, vocoder, pitch, semitones, last]
            outputs = [result, mels, report, last]

            def on_convert(src, tgt, ref, voc, pitch_mode, semis, previous, progress=gr.Progress()):
                audio, picture, text = handle_convert(service, src, tgt, ref, voc, pitch_mode, semis, progress=progress, warn=gr.Warning, previous=previous)
                if audio is None:  # keep the previous result on the page
                    return gr.skip(), gr.skip(), text, previous
                return audio, picture, text, text

            button.click(on_convert, inputs, outputs, concurrency_id="convert")
            target.change(lambda c: gr.update(visible=c == REFERENCE_CHOICE), target, reference, queue=False)
            app.load(lambda: gr.update(choices=service.target_choices()), None, target, queue=False)  # voices enrolled since start
            pitch.change(lambda m: gr.update(interactive=m == "manual semitones"), pitch, semitones, queue=False)
            if service.examples:
                ex = gr.Examples(
                    [[str(e.source), REFERENCE_CHOICE, str(e.reference)] for e in service.examples],
                    [source, target, reference],
                    example_labels=[e.label for e in service.examples],
                    label="Examples (one click converts)",
                )
                ex.load_input_event.then(on_convert, inputs, outputs, concurrency_id="convert")
        with gr.Tab("Live", id="live", elem_id="live-tab"):
            build_stream_tab(gr, app, service)
    return app


def launch_kwargs(service: DemoService) -> dict[str, Any]:
    """Settings for ``app.launch``: serve the example files, cap upload size."""
    paths = sorted({str(p.parent) for e in service.examples for p in (e.source, e.reference)})
    # a 192 kHz stereo float WAV is 1.5 MB/s; allow that for the longest accepted clip
    return {"allowed_paths": paths, "max_file_size": f"{max(10, int(service.max_seconds * 1.6))}mb"}
