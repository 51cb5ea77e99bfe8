"""The status page as a browser shows it: headless Chromium against a real daemon.

Screenshots are decoded with zlib and struct (no imaging library) and checked for
size and for the state colours of badges and bars; ``--dump-dom`` gives the DOM
Chromium built, checked for rows, states, progress bars and escaped task text.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import anyio
import pytest

from monitor.daemon import Daemon
from monitor.delivery.dispatcher import Dispatcher
from monitor.delivery.sqlite import SqliteStore
from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskState
from monitor.tracking.memory import Rules
from monitor.tracking.tracker import Tracker
from tests.conftest import ManualClock, make_config
from tests.test_task_page import T0, Board, crawling_task, failed_task, served

LONG_NAME = (
    "Mass mailing: November newsletter to all customers in the Nordic region and their "
    "primary contacts (segment 'Prospects 2026 \u2013 high value')"
)
HOSTILE_NAME = "Import contacts <script>alert(1)</script> & <b>more</b>"
FAILURE = "Failed: Quote 3592 has no quote lines"
#: The page's colours (status.html) of the states the scenario shows.
COLOURS = {
    "Started": (0x1F, 0x6F, 0xEB),
    "Failed": (0xCF, 0x22, 0x2E),
    "Succeeded": (0x1A, 0x7F, 0x37),
    "stalled": (0x9A, 0x67, 0x00),
    "New": (0x82, 0x50, 0xDF),
}


@pytest.fixture(name="chromium")
def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("BATCHMON_REQUIRE_TOOLS"):
            pytest.fail("chromium is required (Debian package 'chromium') but not installed")
        pytest.skip("chromium not installed (Debian package 'chromium')")
    return path


@dataclass
class Page:
    """The scenario behind the page: its URL and the ids of its tasks."""

    url: str
    ids: dict[str, int] = field(default_factory=dict)

    def task_url(self, kind: str) -> str:
        """The page of the task of ``kind``."""
        return f"{self.url}tasks/{self.ids[kind]}"


@asynccontextmanager
async def status_page() -> AsyncIterator[Page]:
    """A daemon watching one task of each kind; yields once one is stalled and one has an ETA."""
    now = datetime.now(UTC)
    started = now - timedelta(minutes=3)
    async with Simulator() as simulator:
        tasks = {
            "running": simulator.add_task(
                name="Selection to Excel export",
                state=BatchTaskState.STARTED,
                progress=20,
                progress_description="Processing rows 4400/22284",
                last_started=started,
                start_count=1,
            ),
            "stalled": simulator.add_task(
                name=LONG_NAME,
                state=BatchTaskState.STARTED,
                progress=35,
                last_started=started,
                start_count=1,
            ),
            "failed": simulator.add_task(
                name=HOSTILE_NAME,
                state=BatchTaskState.FAILED,
                progress=37,
                start_count=1,
                result=FAILURE,
            ),
            "succeeded": simulator.add_task(
                name="Quote PDF generation", state=BatchTaskState.SUCCEEDED, progress=100
            ),
            "new": simulator.add_task(name="Document archive cleanup", state=BatchTaskState.NEW),
        }
        ids = {kind: task.id for kind, task in tasks.items()}
        config = make_config(
            simulator.url,
            watch={"ids": list(ids.values())},
            poll={"interval": "0.1s", "stall_after": "1s", "progress_min_interval": "0.1s"},
        )
        daemon = Daemon(config)
        async with anyio.create_task_group() as group:
            port = await group.start(daemon.run)

            async def keep_running() -> None:
                for percent in range(21, 100):
                    simulator.set_task(ids["running"], progress=percent)
                    # The queued task moves up the queue, so it does not stall (after 1 s).
                    simulator.set_task(ids["new"], progress_description=f"Queued, {100 - percent}")
                    await anyio.sleep(0.2)

            group.start_soon(keep_running)
            with anyio.fail_after(10):
                while not (  # noqa: ASYNC110 - waiting on the daemon's own clocks
                    (memory := daemon.tracker.tasks.get(ids["stalled"])) is not None
                    and memory.stalled
                    and daemon.tracker.eta(ids["running"], datetime.now(UTC)) is not None
                ):
                    await anyio.sleep(0.05)
            yield Page(f"http://127.0.0.1:{port}/", ids)
            group.cancel_scope.cancel()


async def browse(chromium: str, tmp_path: Path, *args: str) -> bytes:
    """Run headless Chromium with its quiet, sandbox-free flags; its stdout."""
    profile = tmp_path / "profile"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    with anyio.fail_after(60):
        result = await anyio.run_process(command, check=False)
    assert 0 == result.returncode, result.stderr.decode()[-2000:]
    return result.stdout


@dataclass
class Png:
    """A decoded 8-bit RGB(A) PNG: size and pixels."""

    width: int
    height: int
    pixels: Counter[tuple[int, int, int]]

    def count_near(self, colour: tuple[int, int, int], tolerance: int = 10) -> int:
        """Pixels within ``tolerance`` of ``colour`` on every channel."""
        return sum(
            n
            for pixel, n in self.pixels.items()
            if all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))
        )


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes) -> Png:
    """Decode a non-interlaced 8-bit RGB or RGBA PNG (what Chromium writes)."""
    assert b"\x89PNG\r\n\x1a\n" == data[:8]
    pos, idat = 8, []
    width = height = channels = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        assert (
            zlib.crc32(kind + body)
            == struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]
        )
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert (8, 0) == (depth, interlace)
            channels = {2: 3, 6: 4}[colour_type]
        elif kind == b"IDAT":
            idat.append(body)
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    assert height * (stride + 1) == len(raw)
    previous = bytearray(stride)
    pixels: Counter[tuple[int, int, int]] = Counter()
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 2:  # Up, most of Chromium's rows: no dependency along the row
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        elif kind != 0:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                up_left = previous[i - channels] if i >= channels else 0
                if kind == 1:
                    predictor = left
                elif kind == 3:
                    predictor = (left + previous[i]) // 2
                else:
                    predictor = _paeth(left, previous[i], up_left)
                line[i] = (line[i] + predictor) & 0xFF
        pixels.update((line[i], line[i + 1], line[i + 2]) for i in range(0, stride, channels))
        previous = line
    return Png(width, height, pixels)


class DomRows(HTMLParser):
    """The task rows of the status page as Chromium rendered them."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, dict[str, str]] = {}
        self.bars: dict[int, str] = {}
        self.names: dict[int, str] = {}
        self.reasons: dict[int, str] = {}
        self.links: dict[int, str] = {}
        self.counts: dict[str, str] = {}
        self.scripts = 0
        self._row: int | None = None
        self._in_name = False
        self._in_reason = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "script":
            self.scripts += 1
        if tag == "tr" and "data-task-id" in found:
            self._row = int(found["data-task-id"])
            self.rows[self._row] = found
        if self._row is not None and found.get("role") == "progressbar":
            self.bars[self._row] = found["aria-valuenow"]
        if self._row is not None and tag == "span" and found.get("class") == "name":
            self._in_name = True
            self.names[self._row] = ""
        if self._row is not None and tag == "div" and found.get("class") == "reason":
            self._in_reason = True
            self.reasons[self._row] = ""
        if self._row is not None and tag == "a" and found.get("class") == "task-link":
            self.links[self._row] = found["href"]
        if tag == "a" and "data-state" in found:
            self.counts[found["data-state"]] = found["href"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._in_name = False
        if tag == "div":
            self._in_reason = False

    def handle_data(self, data: str) -> None:
        if self._in_name and self._row is not None:
            self.names[self._row] += data
        if self._in_reason and self._row is not None:
            self.reasons[self._row] += data


class TestScreenshots:
    """What a person sees, on a phone and on a desktop."""

    @pytest.mark.parametrize(("width", "height"), [(390, 844), (1280, 800)])
    async def test_screenshot_shows_the_states(
        self, chromium: str, tmp_path: Path, width: int, height: int
    ) -> None:
        """A PNG of the window's size with every state's badge and bar colour on it."""
        shot = tmp_path / "status.png"
        async with status_page() as page:
            await browse(
                chromium,
                tmp_path,
                f"--window-size={width},{height}",
                f"--screenshot={shot}",
                page.url,
            )
        png = decode_png(shot.read_bytes())

        assert (width, height) == (png.width, png.height)
        assert 50 <= len(png.pixels)
        for state, colour in COLOURS.items():
            assert 100 <= png.count_near(colour), f"no {state} colour on the page"


class TestDom:
    """The DOM Chromium built from the page."""

    async def test_rows_states_bars_and_escaped_names(self, chromium: str, tmp_path: Path) -> None:
        """One row per task with its state and bar; hostile names stay text."""
        async with status_page() as page:
            dom = await browse(chromium, tmp_path, "--dump-dom", page.url)
        parser = DomRows()
        parser.feed(dom.decode())
        ids = page.ids

        assert set(ids.values()) == set(parser.rows)
        assert {
            "running": "Started",
            "stalled": "Started",
            "failed": "Failed",
            "succeeded": "Succeeded",
            "new": "New",
        } == {kind: parser.rows[task_id]["data-state"] for kind, task_id in ids.items()}
        assert "true" == parser.rows[ids["stalled"]].get("data-stalled")
        assert "data-stalled" not in parser.rows[ids["running"]]
        assert "37" == parser.bars[ids["failed"]]
        assert "100" == parser.bars[ids["succeeded"]]
        assert 20 < int(parser.bars[ids["running"]])
        assert HOSTILE_NAME == parser.names[ids["failed"]]
        assert LONG_NAME == parser.names[ids["stalled"]]
        assert {ids["failed"]: FAILURE} == parser.reasons
        assert {task_id: f"tasks/{task_id}" for task_id in ids.values()} == parser.links
        assert {
            state: f"?state={state}" for state in ("New", "Started", "Succeeded", "Failed")
        } == parser.counts
        assert 0 == parser.scripts

    async def test_task_pages_of_the_daemon(self, chromium: str, tmp_path: Path) -> None:
        """The daemon samples what it polls: the running task's chart has its run so far."""
        async with status_page() as page:
            running = await browse(chromium, tmp_path, "--dump-dom", page.task_url("running"))
            failed = await browse(chromium, tmp_path, "--dump-dom", page.task_url("failed"))
        samples = re.search(r"progress seen \((\d+) samples of this run\)", running.decode())

        assert samples is not None
        assert 3 <= int(samples.group(1))
        assert '<path class="eta"' in running.decode()
        assert FAILURE in failed.decode()
        assert "Import contacts &lt;script&gt;" in failed.decode()


#: The task page's chart colours: the stall band is amber at 12 % over white.
CHART_COLOURS = {
    "crawling": {"line": COLOURS["Started"], "band": (0xF3, 0xED, 0xE0)},
    "failed": {"line": COLOURS["Failed"]},
    "stalled": {"line": COLOURS["stalled"], "band": (0xF3, 0xED, 0xE0)},
}


@asynccontextmanager
async def task_pages(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """Task pages of a 200-sample run, a failed run and a stalled one; their URLs by kind."""
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        board = Board(
            Tracker(Rules(stall_after=timedelta(minutes=15))),
            Dispatcher([], store),
            ManualClock(T0),
        )
        last = await crawling_task(board, 301)
        await failed_task(board, 217)
        for minute, percent in [(150, 10), (160, 25), (175, 45)]:
            await board.see(
                T0 + timedelta(minutes=minute),
                Id=214,
                Name="Rebuild freetext index",
                State="Started",
                ProgressPercent=percent,
                ProgressDescription="Indexing documents",
                StartCount=1,
                LastStarted=(T0 + timedelta(minutes=149)).isoformat(),
            )
        await board.wait(last + timedelta(minutes=2))
        async with served(board, store) as base:
            yield {kind: f"{base}/tasks/{task_id}" for kind, task_id in KINDS.items()}
    finally:
        await store.close()


KINDS = {"crawling": 301, "failed": 217, "stalled": 214}


class TestTaskPageScreenshots:
    """The task page as a person sees it: the chart's line, the failure, the stall band."""

    @pytest.mark.parametrize("kind", list(KINDS))
    @pytest.mark.parametrize(("width", "height"), [(390, 844), (1280, 900)])
    async def test_chart_colours(
        self, chromium: str, tmp_path: Path, kind: str, width: int, height: int
    ) -> None:
        """The chart's line in the state's colour, the stall band where the task stalled."""
        shot = tmp_path / f"task-{kind}-{width}.png"
        async with task_pages(tmp_path) as urls:
            await browse(
                chromium,
                tmp_path,
                f"--window-size={width},{height}",
                f"--screenshot={shot}",
                urls[kind],
            )
        png = decode_png(shot.read_bytes())

        assert (width, height) == (png.width, png.height)
        for part, colour in CHART_COLOURS[kind].items():
            assert 300 <= png.count_near(colour, tolerance=6), f"no {part} on the {kind} page"
        if kind == "failed":  # finished: no stall threshold
            assert 100 > png.count_near(CHART_COLOURS["stalled"]["band"], tolerance=3)

    async def test_dom_of_the_200_sample_page(self, chromium: str, tmp_path: Path) -> None:
        """Chromium builds the inline SVG: 200 samples and now on one line, the ETA dashed."""
        async with task_pages(tmp_path) as urls:
            dom = (await browse(chromium, tmp_path, "--dump-dom", urls["crawling"])).decode()

        line = re.search(r'<path class="progress" d="([^"]+)"', dom)
        assert line is not None
        assert 201 == len(re.findall("[ML]", line.group(1)))
        assert '<path class="eta"' in dom
        assert "<script" not in dom
