"""Manifests and the feature cache for your own recordings.

    python recipes/custom/prepare.py --data my_corpus/ --out cache/custom        # my_corpus/<speaker>/*.wav
    python recipes/custom/prepare.py --data my_corpus.csv --out cache/custom     # path,speaker[,text,gender,...]

A folder: every audio file (wav, flac, ogg, mp3, opus) under
``<speaker>/``, at any depth, is that speaker's. A CSV: a ``path`` column
(relative to the CSV's folder, or absolute) and a ``speaker`` column; other
columns (``text``, ``gender``, ``duration``) are kept. Unreadable files are
skipped with a warning, silent or too short ones when the features are made.

Validation speakers: ``--valid-speakers A B``, else ``--n-valid`` (default 1)
spread over the speakers; a corpus of one speaker has none (then train with
``--set data.valid_manifest=''``). To adapt the shipped model to a few
speakers with a few minutes each, ``vckit finetune`` is the faster road.

``--frame-features`` also caches each frame's F0 and the phonetic teacher's
features beside the mels: models with an F0 path (``model.f0.enabled``) or
phonetic input (``model.content.input: phonetic``) need them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from vckit.errors import VckitError
from vckit.data.manifest import rows_from_csv, rows_from_folder
from vckit.data.prepare import recipe_parser, run_recipe


def collect(data: Path) -> list[dict[str, Any]]:
    if data.is_file() and data.suffix.lower() == ".csv":
        return rows_from_csv(data)
    if data.is_dir():
        return rows_from_folder(data)
    raise VckitError(f"--data must be a folder of <speaker>/ folders or a .csv file, got {data}")


def main(argv: list[str] | None = None) -> int:
    ap = recipe_parser(__doc__, "cache/custom")
    ap.set_defaults(n_valid=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return run_recipe(args, lambda: (collect(Path(args.data)), ()))


if __name__ == "__main__":
    sys.exit(main())
