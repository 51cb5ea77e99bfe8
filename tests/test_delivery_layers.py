"""Who may import whom around delivery: sinks know nothing of the outbox, protocols import nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MONITOR = Path(__file__).parent.parent / "monitor"


def imported(path: Path, *, at_runtime: bool = False) -> set[str]:
    """The ``monitor`` modules a file imports (with ``at_runtime``: outside ``TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    if at_runtime:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "monitor" or name.startswith("monitor.")}


@pytest.mark.parametrize("path", sorted((MONITOR / "sinks").glob("*.py")), ids=lambda p: p.name)
def test_sinks_do_not_import_delivery(path: Path) -> None:
    """A sink sends one event; the outbox, the dispatcher and the daemon are above it."""
    above = ("monitor.delivery", "monitor.daemon", "monitor.polling", "monitor.web")
    assert [] == sorted(m for m in imported(path) if m.startswith(above))


def test_protocols_import_nothing_at_runtime() -> None:
    """``monitor.types`` names other modules only in annotations: anyone may import it."""
    assert set() == imported(MONITOR / "types.py", at_runtime=True)


@pytest.mark.parametrize(
    "name", ["outbox.py", "schema.py", "serial.py", "recovery.py", "reminders.py", "lanes.py"]
)
def test_the_stores_parts_do_not_import_the_dispatcher(name: str) -> None:
    """The store and its pieces are below the dispatcher, so a second backend can reuse them."""
    assert "monitor.delivery.dispatcher" not in imported(MONITOR / "delivery" / name)
