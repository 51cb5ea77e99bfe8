"""Who may import whom: the module map of ARCHITECTURE.md, held by a test.

Each part of ``monitor`` (a package, or a module at the top) may import at run time only the
parts its row below names; imports under ``if TYPE_CHECKING:`` are annotations and free.  A
new import across parts fails here until ARCHITECTURE.md and this table say why it is right.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

MONITOR = Path(__file__).parent.parent / "monitor"

#: Parts that import no other part: the version (``monitor/__init__``), text helpers,
#: counters, protocols, small pure tools.
LEAVES = frozenset(
    {
        "__init__",
        "text",
        "histogram",
        "ratelimit",
        "retry",
        "types",
        "links",
        "systemd",
        "chart",
        "http_access",
        "windows",
    }
)
#: What each part may import (besides leaves, which every part may use).
ALLOWED: dict[str, frozenset[str]] = {
    "superoffice": frozenset({"config"}),
    "tracking": frozenset({"superoffice"}),
    # The config names event types, and checks sink templates with the renderer (a leaf of
    # sinks that imports no sink, see SINK_LEAVES).
    "config": frozenset({"tracking", "sinks.render"}),
    "sinks": frozenset({"config", "superoffice", "tracking"}),
    "polling": frozenset({"config", "superoffice", "tracking"}),
    "delivery": frozenset({"config", "sinks", "superoffice", "tracking"}),
    "task_metrics": frozenset({"superoffice", "tracking"}),
    "task_list": frozenset({"config", "superoffice", "tracking"}),
    "metrics": frozenset({"delivery", "superoffice", "task_metrics", "tracking"}),
    "http_listener": frozenset(),
    "web": frozenset({"http_listener", "polling", "task_list", "task_metrics", "tracking"}),
    "logs": frozenset(),
    "simulator": frozenset({"superoffice"}),
    "console": frozenset({"config", "superoffice", "tracking"}),
    "daemon": frozenset(
        {
            "config",
            "delivery",
            "metrics",
            "polling",
            "sinks",
            "superoffice",
            "task_metrics",
            "tracking",
            "web",
        }
    ),
    "cli": frozenset(
        {"config", "console", "daemon", "delivery", "logs", "polling", "simulator", "sinks"}
    ),
    "__main__": frozenset({"cli"}),
    "templates": frozenset(),
}
#: Modules of ``sinks`` that the config may import: they import no sink.
SINK_LEAVES = frozenset({"render"})


def _part(module: str) -> str:
    """``monitor.sinks.render`` → ``sinks``; ``monitor`` → ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _runtime_imports(path: Path) -> Iterator[str]:
    """The ``monitor`` modules a file imports outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        yield from (name for name in names if name == "monitor" or name.startswith("monitor."))


def _allowed(part: str, module: str) -> bool:
    target = _part(module)
    if target == part or target in LEAVES:
        return True
    allowed = ALLOWED[part]
    if target in allowed:
        return True
    inner = module.split(".")[2] if module.count(".") >= 2 else ""
    return f"{target}.{inner}" in allowed and inner in SINK_LEAVES


def _files() -> list[Path]:
    return sorted(MONITOR.rglob("*.py"))


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(MONITOR)))
def test_imports_follow_the_module_map(path: Path) -> None:
    """Every run-time import across parts is one the map allows."""
    part = path.relative_to(MONITOR).parts[0].removesuffix(".py")
    assert part in ALLOWED or part in LEAVES, f"{part} is not in the module map"
    wrong = sorted(m for m in _runtime_imports(path) if not _allowed(part, m))
    assert [] == wrong, f"{part} may not import these (see ARCHITECTURE.md)"


def test_leaves_import_no_part() -> None:
    """A leaf imports nothing of batchmon's but other leaves."""
    for path in _files():
        part = path.relative_to(MONITOR).parts[0].removesuffix(".py")
        if part in LEAVES:
            others = {_part(m) for m in _runtime_imports(path)} - LEAVES - {part}
            assert set() == others, path


def test_sink_leaves_import_no_sink() -> None:
    """What the config may import of ``sinks`` imports no other sink module."""
    for name in SINK_LEAVES:
        modules = set(_runtime_imports(MONITOR / "sinks" / f"{name}.py"))
        assert not {m for m in modules if m.startswith("monitor.sinks.")}, name


def test_the_map_names_only_parts_that_exist() -> None:
    """No stale rows: every part in the map is a package or module of ``monitor``."""
    present = {p.name.removesuffix(".py") for p in MONITOR.iterdir() if not p.name.startswith(".")}
    assert set() == (set(ALLOWED) | LEAVES) - present - {"__init__"}
