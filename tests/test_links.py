"""Links to a task's page, as chat messages and alerts carry them."""

from __future__ import annotations

import pytest

from monitor.links import task_url


@pytest.mark.parametrize(
    ("public_url", "task_id", "expected"),
    [
        (None, 212, None),
        (None, None, None),
        ("https://batchmon.example.com/", 212, "https://batchmon.example.com/tasks/212"),
        ("https://batchmon.example.com", 212, "https://batchmon.example.com/tasks/212"),
        ("https://ops.example.com/batchmon/", 7, "https://ops.example.com/batchmon/tasks/7"),
        ("https://ops.example.com/batchmon", 7, "https://ops.example.com/batchmon/tasks/7"),
        ("https://batchmon.example.com/", None, "https://batchmon.example.com/"),
        ("https://batchmon.example.com/", 0, "https://batchmon.example.com/"),
    ],
)
def test_task_url(public_url: str | None, task_id: int | None, expected: str | None) -> None:
    """The task page under the public URL (prefix kept); the main page for no task."""
    assert expected == task_url(public_url, task_id)


@pytest.mark.parametrize(
    ("public_url", "task_id", "expected"),
    [
        (None, 212, None),
        (
            "https://batchmon.example.com/",
            212,
            "https://batchmon.example.com/tasks/212?tenant=acme",
        ),
        (
            "https://ops.example.com/batchmon",
            7,
            "https://ops.example.com/batchmon/tasks/7?tenant=acme",
        ),
        ("https://batchmon.example.com/", None, "https://batchmon.example.com/?tenant=acme"),
        (
            "https://batchmon.example.com/?x=1",
            None,
            "https://batchmon.example.com/?x=1&tenant=acme",
        ),
    ],
)
def test_task_url_of_a_tenant(
    public_url: str | None, task_id: int | None, expected: str | None
) -> None:
    """A tenant other than the default is named in the query of its pages."""
    assert expected == task_url(public_url, task_id, "acme")
