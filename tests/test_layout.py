"""The package's shape: lower layers never import higher ones, and no module grows past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vckit"
LOWER = ("vckit.config", "vckit.config_types", "vckit.config_files", "vckit.errors", "vckit.files", "vckit.shipped", "vckit.devices", "vckit.audio", "vckit.activity", "vckit.pitch", "vckit.frontend", "vckit.speakers", "vckit.checkpoint", "vckit.models", "vckit.data")
HIGHER = ("vckit.training", "vckit.evaluation", "vckit.api", "vckit.streaming", "vckit.stream_io", "vckit.cli", "vckit.cli_convert", "vckit.cli_prepare", "vckit.cli_stream", "vckit.shards", "vckit.demo")
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


def test_one_training_entry_point_and_one_schedule():
    """Every trainer runs through ``training.loop.train`` and takes its rate from ``training.loop.lr_at``: no module
    defines its own, and no trainer's config copies the shared run settings instead of extending ``LoopConfig``."""
    defined: dict[str, list[str]] = {"train": [], "lr_at": []}
    trainers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in defined:
                defined[node.name].append(_module(path))
            if isinstance(node, ast.ClassDef) and node.name.endswith("TrainConfig"):
                trainers.append((node.name, [ast.unparse(b) for b in node.bases]))
    assert defined == {"train": ["vckit.training.loop"], "lr_at": ["vckit.training.loop"]}, defined
    assert len(trainers) >= 3 and all(bases == ["LoopConfig"] for _, bases in trainers), trainers


def test_losses_live_in_training():
    """Models define what runs at conversion (and the discriminators that judge it); what is minimised is
    written in ``vckit.training`` (``training.losses`` for every term two trainers share)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            named = isinstance(node, (ast.FunctionDef, ast.ClassDef)) and "loss" in node.name.lower()
            if named and not _under(_module(path), ("vckit.training",)):
                found.append(f"{_module(path)}.{node.name}")
    assert not found, found


def test_inference_never_imports_training():
    """What converts (the API, the live path) does not need the trainers: they may be left out of an install."""
    inference = ("vckit.api", "vckit.streaming", "vckit.stream_io", "vckit.shipped", "vckit.devices", "vckit.models")
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = _module(path)
        if _under(mod, inference):
            bad += [f"{mod} imports {name}" for name in sorted(_imports(path)) if _under(name, ("vckit.training",))]
    assert not bad, bad


def test_models_never_import_data_the_api_or_the_faces():
    faces = ("vckit.data", "vckit.api", "vckit.streaming", "vckit.stream_io", "vckit.cli", "vckit.cli_convert", "vckit.cli_prepare", "vckit.cli_stream", "vckit.demo", "vckit.training", "vckit.evaluation")
    bad = []
    for path in sorted((PACKAGE / "models").rglob("*.py")):
        bad += [f"{_module(path)} imports {name}" for name in sorted(_imports(path)) if _under(name, faces)]
    assert not bad, bad


def test_the_front_end_knows_no_network_and_inference_reads_no_cache():
    """Audio -> Frames sits in the audio layer: it is given the teacher, it imports no model. What converts
    (the API, the live path) takes its input from the front-end, never from the training caches in data/."""
    bad = [f"vckit.frontend imports {name}" for name in sorted(_imports(PACKAGE / "frontend.py")) if _under(name, ("vckit.models", "vckit.data", "vckit.training", "vckit.api", "vckit.streaming"))]
    for name in ("api.py", "streaming.py", "stream_io.py", "speakers.py", "__init__.py"):
        bad += [f"vckit/{name} imports {m}" for m in sorted(_imports(PACKAGE / name)) if _under(m, ("vckit.data", "vckit.training"))]
    assert not bad, bad


def _package_imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (deferred imports and ``if TYPE_CHECKING:`` ones included)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n in modules}
    return out


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import one another round a circle (strongly connected, more than one)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(group) > 1:
                circles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_no_import_circles():
    """Deferred and typing-only imports count too: a circle hidden inside a function (the demo's page and Live tab once)
    or under ``if TYPE_CHECKING:`` (the API and the stream once) is still a circle."""
    paths = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: _package_imports(p, set(paths)) - {m} for m, p in paths.items()}
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the finder finds one
    assert not import_circles(graph), import_circles(graph)
