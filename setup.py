"""The wheel carries the shipped models: the build step copies ``checkpoints/<name>`` (and ``examples/``) into ``vckit/_shipped/<name>``.

Everything else is in pyproject.toml. An editable install (``pip install -e .``, the clone) reads
``checkpoints/`` in place and copies nothing.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("default", "stream", "speaker_verification", "vocoder_fast", "examples")  # as vckit/shipped.py


class BuildWithModels(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        for name in SHIPPED:
            folder = root / name if name == "examples" else root / "checkpoints" / name  # as vckit/shipped.py's clone_dir
            if folder.is_dir():
                shutil.copytree(folder, Path(self.build_lib) / "vckit" / "_shipped" / name, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithModels})
