"""Gradio demo of vckit: convert a voice in the browser.

    python demo.py                          # http://127.0.0.1:7860
    python demo.py --port 8080 --max-seconds 30 --vocoder griffinlim
    python demo.py --host 0.0.0.0 --share   # reachable from elsewhere (off by default)
    python demo.py --stream-checkpoint runs/stream/ck   # another causal model for the Live tab

Needs the demo extra: ``pip install -e '.[demo]'``. The logic lives in
:mod:`vckit.demo.app` and :mod:`vckit.demo.page`; this file only reads
options and starts the server.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from vckit.demo.app import DEFAULT_MAX_SECONDS, VOCODERS

    ap = argparse.ArgumentParser(description="vckit voice-conversion demo (Gradio)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    ap.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    ap.add_argument("--share", action="store_true", help="also open a public *.gradio.live link through Gradio's relay (off by default: the page is private to --host)")
    ap.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, help="longest source or reference accepted, in seconds (default: %(default)g)")
    ap.add_argument("--concurrency", type=int, default=2, help="conversions run at the same time; later requests wait in the queue (default: 2)")
    ap.add_argument("--queue-size", type=int, default=32, help="most requests waiting in the queue (default: 32)")
    ap.add_argument("--checkpoint", default=None, help="model folder (default: the shipped checkpoints/default)")
    ap.add_argument("--stream-checkpoint", default=None, help="causal model for the Live tab (default: the shipped checkpoints/stream)")
    ap.add_argument("--vocoder", choices=VOCODERS, default="hifigan", help="vocoder selected when the page opens (default: hifigan)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    ap.add_argument("--bank", default=None, help="enrolled-speaker folder (default: the user's vckit speaker bank)")
    return ap.parse_args(argv)


def port_error(host: str, port: int, why: str) -> int:
    """Say in one line that ``host:port`` cannot be listened on, and why; the exit status."""
    print(f"error: cannot listen on {host}:{port} ({why}): choose another port with --port", file=sys.stderr)
    return 1


def port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (in use, or not an address of this machine); None when it can."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as e:
        return e.strerror or str(e)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline by default
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the demo needs gradio: pip install -e '.[demo]'", file=sys.stderr)
        return 1
    from vckit.demo.app import DemoService
    from vckit.demo.page import build_app, launch_kwargs
    from vckit.errors import VckitError

    busy = port_taken(args.host, args.port)  # before the models load, so the answer comes at once
    if busy:
        return port_error(args.host, args.port, busy)
    try:
        service = DemoService(args.checkpoint, args.device, args.vocoder, args.max_seconds, bank=args.bank, stream_checkpoint=args.stream_checkpoint)
        service.warm_up()
    except VckitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C: close the server, remove temp files
    app = build_app(service)
    app.queue(default_concurrency_limit=max(1, args.concurrency), max_size=args.queue_size)
    try:
        # quiet: Gradio's own banner says to set share=True in launch(); this demo's switch is --share
        try:
            app.launch(server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False, quiet=True, prevent_thread_lock=True, **launch_kwargs(service))
        except OSError as e:  # taken while the models loaded
            return port_error(args.host, args.port, str(e).split(". ")[0])
        public = f"; public link: {app.share_url}" if app.share_url else " (python demo.py --share also opens a public link)"
        print(f"vckit demo running on {app.local_url}{public}", flush=True)
        app.block_thread()
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
