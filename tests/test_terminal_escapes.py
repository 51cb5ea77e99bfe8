"""Task text full of terminal escapes, through ``status`` and ``watch`` in a real pseudo-terminal.

A task name is the API's text.  Printed raw, ``ESC ] 0 ;`` retitles the window,
``ESC [ 2 J`` clears the screen and ``ESC ] 52`` writes the clipboard.  Every
terminal view must show such text as escapes (``\\x1b``) and send none of it.
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskState
from monitor.text import visible
from tests.test_web import running_daemon

EVIL = "evil\x1b]0;TITLE\x07\x1b[2J\x1b[31mRED\x1b]52;c;SGVsbG8=\x07"
SHOWN = r"evil\x1b]0;TITLE\x07"
#: What the evil text would send to the terminal if it got through.
COMMANDS = [b"\x1b]", b"\x07", b"\x1b[2J", b"\x1b[31m"]


def _in_terminal(args: list[str], term: str) -> tuple[int, bytes]:
    """Run ``batchmon`` with a pseudo-terminal (120x40) as stdin, stdout and stderr."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in {"COLUMNS", "LINES", "NO_COLOR"}}
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", *args],
        stdin=child,
        stdout=child,
        stderr=child,
        env={**env, "TERM": term},
    )
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    return process.wait(timeout=30), output


async def in_terminal(*args: str, term: str = "xterm-256color") -> tuple[int, str, bytes]:
    """Exit code, output as text and output as bytes of ``batchmon *args`` in a terminal."""
    code, output = await anyio.to_thread.run_sync(_in_terminal, list(args), term)
    return code, output.decode(errors="replace"), output


def _assert_shown_not_obeyed(raw: bytes, text: str, term: str) -> None:
    for command in COMMANDS:
        assert command not in raw, (command, text)
    assert SHOWN in text.replace("\r\n", "\n")
    if term == "dumb":
        assert b"\x1b" not in raw, text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Export contacts", "Export contacts"),
        ("line\nnext\tcell", "line\nnext\tcell"),
        ("\x1b[2J", "\\x1b[2J"),
        ("bell\x07 del\x7f nul\x00", "bell\\x07 del\\x7f nul\\x00"),
        ("csi\x9b1m", "csi\\x9b1m"),
        ("\u202eevil\u2066", "\\u202eevil\\u2066"),
        ("émoji 😀 ok", "émoji 😀 ok"),
    ],
)
def test_visible(text: str, shown: str) -> None:
    """Controls but newline and tab, C1 and bidi overrides become escapes; the rest stays."""
    assert shown == visible(text)


@pytest.mark.parametrize("term", ["xterm-256color", "dumb"])
class TestEscapes:
    """No escape sequence from task text reaches the terminal."""

    async def test_status(self, term: str) -> None:
        """``status``: name, progress text and the header's readiness problems."""
        async with Simulator() as simulator:
            task = simulator.add_task(
                name=EVIL, state=BatchTaskState.STARTED, progress=40, progress_description=EVIL
            )
            async with running_daemon(simulator, [task.id]) as (_, base):
                code, text, raw = await in_terminal("status", "--url", base, term=term)

        assert 0 == code, text
        _assert_shown_not_obeyed(raw, text, term)

    async def test_watch_through_the_daemon(self, term: str) -> None:
        """``watch --url``: the live bar and the last line, with the failure reason."""
        async with Simulator() as simulator:
            task = simulator.add_task(
                name=EVIL,
                state=BatchTaskState.FAILED,
                progress=10,
                progress_description=EVIL,
                result=EVIL,
            )
            async with running_daemon(simulator, [task.id]) as (_, base):
                code, text, raw = await in_terminal(
                    "watch", str(task.id), "--url", base, "--interval", "100ms", term=term
                )

        assert 1 == code, text
        _assert_shown_not_obeyed(raw, text, term)
        # The live bar is erased at the end: what stays is the summary, without a spinner.
        last = text.rsplit("\x1b[2K", 1)[-1].strip()
        assert last.startswith(f"#{task.id} "), last
        assert not any("\u2800" <= char <= "\u28ff" or char == "•" for char in last), last

    async def test_watch_straight_from_the_api(self, term: str, tmp_path: Path) -> None:
        """``watch --config``: the same, with the text as SuperOffice sent it."""
        async with Simulator() as simulator:
            task = simulator.add_task(
                name=EVIL, state=BatchTaskState.FAILED, progress=10, result=EVIL
            )
            config = tmp_path / "batchmon.toml"
            config.write_text(
                f'[superoffice]\nurl = "{simulator.url}"\n'
                '[superoffice.auth]\ntype = "basic"\nusername = "batchmon"\n'
                'password = "batchmon"\n'
            )
            code, text, raw = await in_terminal(
                "watch", str(task.id), "--config", str(config), term=term
            )

        assert 1 == code, text
        _assert_shown_not_obeyed(raw, text, term)
