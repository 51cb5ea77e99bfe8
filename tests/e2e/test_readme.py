"""The README's quick start and "Running it against SuperOffice", walked through from a fresh
copy of the repository with the commands exactly as the README writes them.

The commands are read out of the README's ``sh`` blocks, not copied here, so a README that
drifts from what works fails this test.  What differs from a person at a terminal is only
around the commands: ports and speed come from ``BATCHMON_<COMMAND>_<OPTION>`` variables (a
free port instead of 9808 or 8765, the story three times faster), the simulator's printed
configuration is saved as ``batchmon.toml`` with a free ``[http] listen`` port added, and
Ctrl-C is a SIGINT to the command's process group.

It installs the package into a new virtual environment (pip may take half a minute), so it
runs only with ``BATCHMON_README=1``; ``.ci/run`` sets it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
import threading
import tomllib
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from tests.e2e.conftest import ROOT, wait_until

pytestmark = [
    pytest.mark.skipif(
        not os.environ.get("BATCHMON_README"),
        reason="installs into a fresh virtual environment; BATCHMON_README=1 runs it",
    ),
    pytest.mark.timeout(600),
]

#: How long pip and the first events may take.
SLOW = 300.0


def sections(readme: str) -> dict[str, str]:
    """The README's text by heading (``## `` and ``### ``)."""
    parts = re.split(r"^#{2,3} (.+)$", readme, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def commands(section: str) -> list[str]:
    """The command lines of a section's ``sh`` blocks, in order."""
    blocks = re.findall(r"^ *```sh\n(.*?)^ *```", section, flags=re.MULTILINE | re.DOTALL)
    return [line for block in blocks for line in textwrap.dedent(block).splitlines() if line]


def the(lines: list[str], word: str) -> str:
    """The one command line that contains ``word``."""
    [line] = [line for line in lines if word in line]
    return line


class Shell:
    """One command line run by bash in the clone, as a terminal would: its own process group,
    output collected line by line."""

    def __init__(self, line: str, cwd: Path, **env: str) -> None:
        self.line = line
        self.out: list[str] = []
        self.err: list[str] = []
        self.process = subprocess.Popen(
            ["bash", "-c", line],
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._readers = [
            threading.Thread(target=self._collect, args=(stream, lines), daemon=True)
            for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream: IO[str], lines: list[str]) -> None:
        with stream:
            lines.extend(stream)

    def wait_for(self, found: Callable[[str], bool], what: str, timeout: float = SLOW) -> str:
        """The first output line (stdout or stderr) for which ``found`` is true."""

        def seen() -> str | None:
            if self.process.poll() is not None and not any(map(found, self.out + self.err)):
                pytest.fail(f"{self.line!r} ended ({self.process.returncode}): {self.text()}")
            return next((line for line in self.out + self.err if found(line)), None)

        return wait_until(seen, timeout, f"{what} from {self.line!r}")

    def ctrl_c(self) -> int:
        """SIGINT to the process group, as Ctrl-C does; the exit code."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.finish(30)

    def finish(self, timeout: float = SLOW) -> int:
        """Wait for the command to end by itself and its output to be read; the exit code."""
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def text(self) -> str:
        return "".join(self.out[-40:] + self.err[-40:])


def _event(line: str, name: str) -> dict[str, object] | None:
    if not line.startswith("{"):
        return None
    data = json.loads(line)
    return data if data.get("event") == name else None


@pytest.fixture(name="clone")
def _clone(tmp_path: Path) -> Path:
    """The repository's files as a fresh clone has them (the working tree's content)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    clone = tmp_path / "batchmon"
    for name in filter(None, listed.split("\0")):
        source, target = ROOT / name, clone / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode & 0o777)
    return clone


def test_quick_start_then_running_it_against_the_simulator(clone: Path) -> None:
    """Install and demo as the quick start says, then simulate, check-config, run, status and
    watch as "Running it against SuperOffice" says."""
    readme = sections((clone / "README.md").read_text())
    quick = commands(readme["Quick start"])
    walk = commands(readme["Running it against SuperOffice"])

    demo = Shell(
        the(quick, "batchmon demo"), clone, BATCHMON_DEMO_PORT="0", BATCHMON_DEMO_SPEED="3"
    )
    page = demo.wait_for(lambda line: "status page  http://" in line, "the status page")
    demo.wait_for(lambda line: _event(line, "task.failed") is not None, "a failed task")
    with urllib.request.urlopen(page.split()[-1], timeout=5) as response:
        assert 200 == response.status
    assert 0 == demo.ctrl_c(), demo.text()

    simulator = Shell(
        the(walk, "simulate"), clone, BATCHMON_SIMULATE_PORT="0", BATCHMON_SIMULATE_SPEED="3"
    )
    try:
        simulator.wait_for(lambda line: "Ctrl-C stops it" in line, "the banner")
        banner = "".join(simulator.err)
        printed = banner.split("a configuration for it:\n")[1].split("  Ctrl-C")[0]
        config = textwrap.dedent(printed) + '[http]\nlisten = "127.0.0.1:0"\n'
        (clone / "batchmon.toml").write_text(config)

        check = subprocess.run(
            ["bash", "-c", the(walk, "check-config")],
            cwd=clone,
            capture_output=True,
            text=True,
            check=False,
        )
        assert 0 == check.returncode, check.stderr
        assert [212, 213, 214, 215, 216, 217, 218, 219] == tomllib.loads(check.stdout)["watch"][
            "ids"
        ]

        run = Shell(the(walk, "batchmon run"), clone)
        try:
            started = run.wait_for(lambda line: bool(_event(line, "batchmon_started")), "start")
            url = str(json.loads(started)["url"]).rstrip("/")
            wait_until(lambda: _ready(url), 60, "the daemon ready")

            status = Shell(the(walk, "batchmon status"), clone, BATCHMON_STATUS_URL=url)
            assert 0 == status.finish(), status.text()
            assert "· ready" in "".join(status.out)
            assert re.search(r"│ +212 │", "".join(status.out)), status.text()

            watch = Shell(the(walk, "batchmon watch"), clone, BATCHMON_WATCH_URL=url)
            code = watch.finish()
            assert code in (0, 1), watch.text()
            assert "#212 " in "".join(watch.out)
        finally:
            assert 0 == run.ctrl_c(), run.text()
    finally:
        simulator.ctrl_c()


def _ready(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
        return bool(response.status == 200)
