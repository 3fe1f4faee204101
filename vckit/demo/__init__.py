"""The Gradio demo over the public API (``python demo.py``).

* :mod:`~vckit.demo.app`: :class:`DemoService` (one conversion per call);
* :mod:`~vckit.demo.page`: :func:`handle_convert`, :func:`build_app` (the page);
* :mod:`~vckit.demo.examples`: the example swaps and the example voices;
* :mod:`~vckit.demo.mel_image`: mel spectrograms as PNG pictures.
"""
