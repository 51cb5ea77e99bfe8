"""Where a message or an alert sends a person: the task's own page on the status site."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["task_url"]


def task_url(public_url: str | None, task_id: int | None) -> str | None:
    """``{public_url}/tasks/{id}``; ``public_url`` itself without a task; ``None`` without one.

    The path is joined, so a status site under a prefix (``https://host/batchmon``)
    keeps it.  Ids that cannot be a task (0 in a test message) get the main page.
    """
    if public_url is None:
        return None
    if task_id is None or task_id <= 0:
        return public_url
    parts = urlsplit(public_url)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/tasks/{task_id}"))
