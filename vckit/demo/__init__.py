"""The Gradio demo over the public API (``python demo.py``).

* :mod:`~vckit.demo.app`: :class:`DemoService`, :func:`handle_convert`, :func:`build_app`;
* :mod:`~vckit.demo.examples`: the example swaps;
* :mod:`~vckit.demo.mel_image`: mel spectrograms as PNG pictures.
"""
