"""The package's shape: lower layers never import higher ones, and no module grows past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vckit"
LOWER = ("vckit.config", "vckit.config_types", "vckit.config_files", "vckit.errors", "vckit.shipped", "vckit.devices", "vckit.audio", "vckit.activity", "vckit.pitch", "vckit.frontend", "vckit.speakers", "vckit.checkpoint", "vckit.models", "vckit.data")
HIGHER = ("vckit.training", "vckit.evaluation", "vckit.api", "vckit.streaming", "vckit.live", "vckit.cli", "vckit.cli_convert", "vckit.cli_stream", "vckit.shards", "vckit.demo")
MAX_LINES = 410


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_lower_layers_never_import_higher_ones():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = _module(path)
        if _under(mod, LOWER):
            bad += [f"{mod} imports {name}" for name in sorted(_imports(path)) if _under(name, HIGHER)]
    assert not bad, bad


def test_no_module_is_two_ideas():
    long = [f"{p.relative_to(PACKAGE.parent)}: {n}" for p in sorted(PACKAGE.rglob("*.py")) if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, long


def test_inference_never_imports_training():
    """What converts (the API, the live path) does not need the trainers: they may be left out of an install."""
    inference = ("vckit.api", "vckit.streaming", "vckit.live", "vckit.shipped", "vckit.devices", "vckit.models")
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = _module(path)
        if _under(mod, inference):
            bad += [f"{mod} imports {name}" for name in sorted(_imports(path)) if _under(name, ("vckit.training",))]
    assert not bad, bad


def test_models_never_import_data_the_api_or_the_faces():
    faces = ("vckit.data", "vckit.api", "vckit.streaming", "vckit.live", "vckit.cli", "vckit.cli_convert", "vckit.cli_stream", "vckit.demo", "vckit.training", "vckit.evaluation")
    bad = []
    for path in sorted((PACKAGE / "models").rglob("*.py")):
        bad += [f"{_module(path)} imports {name}" for name in sorted(_imports(path)) if _under(name, faces)]
    assert not bad, bad


def test_the_front_end_knows_no_network_and_inference_reads_no_cache():
    """Audio -> Frames sits in the audio layer: it is given the teacher, it imports no model. What converts
    (the API, the live path) takes its input from the front-end, never from the training caches in data/."""
    bad = [f"vckit.frontend imports {name}" for name in sorted(_imports(PACKAGE / "frontend.py")) if _under(name, ("vckit.models", "vckit.data", "vckit.training", "vckit.api", "vckit.streaming"))]
    for name in ("api.py", "streaming.py", "live.py", "speakers.py", "__init__.py"):
        bad += [f"vckit/{name} imports {m}" for m in sorted(_imports(PACKAGE / name)) if _under(m, ("vckit.data", "vckit.training"))]
    assert not bad, bad
