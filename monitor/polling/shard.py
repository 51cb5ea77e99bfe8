"""This replica's part of the tasks, for ``--shard k/N``."""

from __future__ import annotations

import hashlib
import re

__all__ = ["Shard"]


class Shard:
    """This replica's part of the tasks: shard ``number`` of ``count``, split by id hash.

    Shards are numbered 1 … N, as ``--shard k/N`` and the Prometheus ``shard``
    labels in ``deploy/`` write them.  The hash is Prometheus's ``hashmod`` (the
    low 64 bits of the MD5 of the value, big-endian, modulo ``count``): shard k
    owns the ids whose hashmod is k - 1, so the split is stable, even, and the
    same one a Prometheus relabelling would make.
    """

    def __init__(self, number: int = 1, count: int = 1) -> None:
        if count < 1 or not 1 <= number <= count:
            msg = f"expected K/N with 1 <= K <= N (e.g. 1/2 and 2/2), got {number}/{count}"
            raise ValueError(msg)
        self.number = number
        self.count = count

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"2/3"`` → shard 2 of 3; anything else raises :class:`ValueError` saying why."""
        match = re.fullmatch(r"([0-9]+)/([0-9]+)", text.strip())
        if match is None:
            msg = f"expected K/N with 1 <= K <= N (e.g. 1/2 and 2/2), got {text!r}"
            raise ValueError(msg)
        return cls(int(match[1]), int(match[2]))

    def owns(self, task_id: int) -> bool:
        """Whether this replica watches the task."""
        if self.count == 1:
            return True
        digest = hashlib.md5(str(task_id).encode(), usedforsecurity=False).digest()
        return int.from_bytes(digest[8:], "big") % self.count == self.number - 1

    def __str__(self) -> str:
        return f"{self.number}/{self.count}"
