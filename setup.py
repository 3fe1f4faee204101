"""The wheel carries the shipped models: the build step copies ``checkpoints/<name>`` into ``vckit/_shipped/<name>``.

Everything else is in pyproject.toml. An editable install (``pip install -e .``, the clone) reads
``checkpoints/`` in place and copies nothing.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("default", "stream", "speaker_verification", "examples")  # as vckit/shipped.py


class BuildWithModels(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent / "checkpoints"
        for name in SHIPPED:
            if (root / name).is_dir():
                shutil.copytree(root / name, Path(self.build_lib) / "vckit" / "_shipped" / name, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithModels})
