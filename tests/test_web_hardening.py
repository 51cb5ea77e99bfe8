"""The HTTP side under attack: connection floods, slow heads, odd ids and headers, foreign hosts.

The pure parts (task ids, Host headers, credentials, the connection cap) get tables; the
rest runs against real servers on loopback: the daemon's app polling the simulator, and a
small app of blocking handlers served through the same :func:`~monitor.web.serve`.
"""

from __future__ import annotations

import asyncio
import base64
import configparser
import inspect
import logging
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, LineTooLong
from click.testing import CliRunner
from structlog.testing import capture_logs
from yarl import URL

from monitor.cli import EX_CONFIG, main
from monitor.config import ConfigError, parse_config
from monitor.config.superoffice import SuperOfficeConfig
from monitor.http_access import (
    SECURITY_HEADERS,
    bearer,
    credentials,
    host_allowed,
    token_matches,
)
from monitor.http_listener import Limits, RequestErrors, connection_cap, track_requests
from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskState
from monitor.web import MAX_TASK_ID, parse_task_id, serve
from tests.test_web import running_daemon

TOKEN = "api-token-0123456789abcdef"
READER = "read-token-fedcba9876543210"
UNIT = Path(__file__).parents[1] / "deploy" / "batchmon.service"


class TestTaskIds:
    """Task ids in URLs: ASCII digits, 1 to 2,147,483,647."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [("1", 1), ("212", 212), (str(MAX_TASK_ID), MAX_TASK_ID), ("0000000007", 7)],
    )
    def test_accepted(self, text: str, expected: int) -> None:
        """Plain ASCII digits in range are the id."""
        assert expected == parse_task_id(text)

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "0",
            "-1",
            "+3",
            " 3",
            "3 ",
            "1_0",
            "٣",  # ARABIC-INDIC DIGIT THREE: int() reads it as 3
            "३",  # DEVANAGARI DIGIT THREE
            "³",  # SUPERSCRIPT THREE: isdigit() but not int()
            "1e3",
            "0x10",
            str(MAX_TASK_ID + 1),
            "9223372036854775807",
            "99999999999999999999999",
            "1" * 5000,
        ],
    )
    def test_refused(self, text: str) -> None:
        """Everything else is a ValueError saying what an id is."""
        with pytest.raises(ValueError, match="from 1 to 2147483647 in ASCII digits"):
            parse_task_id(text)


class TestHostHeader:
    """The Host check against DNS rebinding."""

    NAMES = frozenset({"batchmon.example.com", "monitor.lan"})

    @pytest.mark.parametrize(
        "header",
        [
            None,
            "127.0.0.1",
            "127.0.0.1:9808",
            "[::1]:9808",
            "[::1]",
            "10.1.2.3:9808",
            "localhost",
            "LOCALHOST:9808",
            "localhost.:9808",
            "batchmon.example.com",
            "Batchmon.Example.Com:443",
            "monitor.lan:9808",
        ],
    )
    def test_allowed(self, header: str | None) -> None:
        """IP addresses, localhost and the configured names, with any port."""
        assert host_allowed(header, self.NAMES)

    @pytest.mark.parametrize(
        "header",
        [
            "",
            ":9808",
            "evil.example",
            "evil.example:9808",
            "batchmon.example.com.evil.example",
            "sub.localhost",
            "localhost:abc",
            "localhost:9808:1",
            "[::1",
            "[::1]x",
            "[evil.example]:9808",
            "127.1",
            "batchmon.example.com\x00",
        ],
    )
    def test_refused(self, header: str) -> None:
        """Any other name, and anything malformed."""
        assert not host_allowed(header, self.NAMES)


class TestCredentials:
    """Authorization headers: Bearer, Basic with the token as password, and garbage."""

    @pytest.mark.parametrize(
        ("header", "token"),
        [
            (None, None),
            ("Bearer abc", "abc"),
            ("BEARER abc", "abc"),
            ("Basic " + base64.b64encode(b"anyone:abc").decode(), None),
            ("abc", None),
        ],
    )
    def test_bearer(self, header: str | None, token: str | None) -> None:
        """Changes take the Bearer form only."""
        assert token == bearer(header)

    @pytest.mark.parametrize(
        ("header", "token"),
        [
            (None, None),
            ("Bearer abc", "abc"),
            ("bearer  abc ", "abc"),
            ("Basic " + base64.b64encode(b"anyone:abc").decode(), "abc"),
            ("Basic " + base64.b64encode(b"no-colon").decode(), None),
            ("Basic !!!", None),
            ("Basic " + base64.b64encode(b"u:\xff\xfe").decode(), None),
            ("Digest abc", None),
            ("abc", None),
            ("Basic \udcff\udcfe", None),
        ],
    )
    def test_credentials(self, header: str | None, token: str | None) -> None:
        """The token, or None."""
        assert token == credentials(header)

    @pytest.mark.parametrize(
        ("given", "matches"),
        [
            (None, False),
            ("", False),
            (TOKEN, True),
            (TOKEN + "x", False),
            ("\udcff\udcfe", False),  # bytes that were not UTF-8 (surrogateescape)
            ("\ud800", False),  # a lone surrogate: no encoding at all
            ("tøken-0123456789abcdef", False),
        ],
    )
    def test_token_matches(self, given: str | None, matches: bool) -> None:
        """Only the token itself matches; nothing raises."""
        assert matches == token_matches(given, TOKEN)


class TestConnectionCap:
    """A quarter of the open-file limit at most, for the rest of the process."""

    @pytest.mark.parametrize(
        ("open_files", "cap"),
        [(-1, 128), (1_048_576, 128), (1024, 128), (256, 64), (64, 16), (3, 1), (0, 1)],
    )
    def test_cap(self, open_files: int, cap: int) -> None:
        """min(128, limit // 4), at least 1; RLIM_INFINITY is -1."""
        assert cap == connection_cap(open_files)


def _http_problems(**http: object) -> list[str]:
    data: dict[str, Any] = {
        "superoffice": {
            "url": "https://crm.example.com/api",
            "auth": {"type": "basic", "username": "u", "password": "p"},
        },
        "http": http,
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=Path())
    return info.value.problems


class TestConfig:
    """The [http] keys of this hardening."""

    @pytest.mark.parametrize("key", ["api_token", "read_token"])
    def test_short_tokens_refused(self, key: str) -> None:
        """A token under 16 characters is a problem naming its key, without its value."""
        (problem,) = _http_problems(**{key: "x" * 15})

        assert problem.startswith(f"http.{key}: ")
        assert "at least 16 characters" in problem
        assert "x" * 15 not in problem

    def test_unsendable_token_refused(self) -> None:
        """A token that cannot travel in a header is refused too."""
        (problem,) = _http_problems(api_token="tøken with spaces 0123456789")

        assert problem.startswith("http.api_token: must be printable ASCII")

    def test_allowed_hosts_and_max_watches(self) -> None:
        """Hosts must be names or addresses without ports; max_watches a number from 0."""
        problems = _http_problems(
            allowed_hosts=["ok.example", "bad.example:9808", "http://x"], max_watches=-1
        )

        assert 3 == len(problems), problems
        assert problems[0].startswith("http.allowed_hosts[1]: expected a host name")
        assert problems[1].startswith("http.allowed_hosts[2]: expected a host name")
        assert problems[2].startswith("http.max_watches:")

    def test_host_names(self) -> None:
        """The listen host, public_url's host and allowed_hosts, normalised."""
        config = parse_config(
            {
                "superoffice": {
                    "url": "https://crm.example.com/api",
                    "auth": {"type": "basic", "username": "u", "password": "p"},
                },
                "http": {
                    "listen": "monitor.lan:9808",
                    "public_url": "https://Batchmon.Example.com/status",
                    "allowed_hosts": ["Proxy.Example.", "[::1]"],
                },
            },
            base_dir=Path(),
        )

        assert 1000 == config.http.max_watches
        assert (
            frozenset({"monitor.lan", "batchmon.example.com", "proxy.example", "::1"})
            == config.http.host_names
        )

    def test_check_config_exits_78(self, tmp_path: Path) -> None:
        """``check-config`` names http.api_token and exits with EX_CONFIG."""
        config = tmp_path / "short.toml"
        config.write_text(
            '[superoffice]\nurl = "https://crm.example.com/api"\n[superoffice.auth]\n'
            'type = "basic"\nusername = "u"\npassword = "p"\n[http]\napi_token = "short-9f"\n'
        )
        result = CliRunner().invoke(main, ["check-config", str(config)])

        assert EX_CONFIG == result.exit_code
        assert "http.api_token: must be at least 16 characters" in result.output
        assert "short-9f" not in result.output


class TestUnitLimits:
    """deploy/batchmon.service bounds what a flood can take."""

    def test_limits(self) -> None:
        """Open files, memory and threads are limited, and the read token is a credential."""
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read_string(UNIT.read_text())
        service = unit["Service"]

        open_files = int(service["LimitNOFILE"])
        assert connection_cap(open_files) < open_files // 2
        assert service["MemoryMax"].endswith(("M", "G"))
        assert int(service["TasksMax"]) >= 64
        assert "LoadCredentialEncrypted=read_token" in UNIT.read_text().splitlines()

    def test_open_files_hold_two_hundred_tenants(self) -> None:
        """200 tenants (bench P10) each keep up to ``max_concurrency`` API connections open; with
        the HTTP server's cap and the sinks' pool they must fit the unit's open-file limit."""
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.read_string(UNIT.read_text())
        open_files = int(unit["Service"]["LimitNOFILE"])
        per_tenant = SuperOfficeConfig.model_fields["max_concurrency"].default
        sinks = inspect.signature(aiohttp.TCPConnector).parameters["limit"].default
        files = 64  # the state database, its WAL, the log, pipes, the event loop's own
        assert 200 * per_tenant + connection_cap(open_files) + sinks + files <= open_files


# --- against the daemon's app -------------------------------------------------------------------

SECTIONS: dict[str, Any] = {
    "http": {
        "api_token": TOKEN,
        "read_token": READER,
        "max_watches": 2,
        "public_url": "https://batchmon.example.com/",
        "allowed_hosts": ["monitor.lan"],
    }
}


async def _raw(port: int, request: bytes) -> bytes:
    """One request as bytes (the client libraries would not send these), the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        with anyio.fail_after(5):
            return await reader.read()
    finally:
        writer.close()


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


class TestDaemonApp:
    """The daemon's HTTP side with every new key set."""

    async def test_bad_authorization_bytes(self) -> None:
        """Bytes that are not text in Authorization are a 401, for reads and writes."""
        async with (
            Simulator() as simulator,
            running_daemon(simulator, [simulator.add_task().id], **SECTIONS) as (_, base),
        ):
            for method, path in [(b"PUT", b"/api/v1/watches/5"), (b"GET", b"/api/v1/tasks")]:
                for value in (b"Bearer \xff\xfe", b"Bearer t\xc3\xb8ken", b"\xff", b"Basic \xff"):
                    answer = await _raw(
                        _port(base),
                        method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Authorization: " + value + b"\r\nConnection: close\r\n\r\n",
                    )
                    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]

    async def test_odd_ids(self) -> None:
        """Ids that int() would take, or the store could not hold, are a 400."""
        auth = {"Authorization": f"Bearer {TOKEN}"}
        odd = ["%D9%A3", "1_0", "99999999999999999999999", "9223372036854775807", "0", "-1"]
        async with (
            Simulator() as simulator,
            running_daemon(simulator, [simulator.add_task().id], **SECTIONS) as (_, base),
            aiohttp.ClientSession(headers=auth) as session,
        ):
            for text in odd:
                url = f"{base}/api/v1/watches/{text}"
                async with session.put(URL(url, encoded=True)) as response:
                    assert 400 == response.status, text
                    assert "ASCII digits" in (await response.json())["error"]
                url = f"{base}/api/v1/tasks/{text}"
                async with session.get(URL(url, encoded=True)) as response:
                    assert 400 == response.status, text
            async with session.get(f"{base}/api/v1/watches") as response:
                assert 404 == response.status

    async def test_max_watches(self) -> None:
        """Past http.max_watches a PUT is a 409 saying so; a watched id is still a 200."""
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            Simulator() as simulator,
            running_daemon(simulator, [simulator.add_task().id], **SECTIONS) as (_, base),
            aiohttp.ClientSession(headers=auth) as session,
        ):
            statuses = []
            for task_id in (501, 502, 503, 501):
                async with session.put(f"{base}/api/v1/watches/{task_id}") as response:
                    statuses.append(response.status)
                    body = await response.json()
            async with session.put(f"{base}/api/v1/watches/503") as response:
                refused = (response.status, await response.json())
            async with session.delete(f"{base}/api/v1/watches/502") as response:
                assert 200 == response.status
            async with session.put(f"{base}/api/v1/watches/503") as response:
                assert 201 == response.status

        assert [201, 201, 409, 200] == statuses, body
        assert 409 == refused[0]
        assert "http.max_watches" in refused[1]["error"]

    async def test_host_check(self) -> None:
        """A foreign name in Host is a 421 even with a token; ours and the machine's name pass."""
        auth = {"Authorization": f"Bearer {READER}"}
        async with (
            Simulator() as simulator,
            running_daemon(simulator, [simulator.add_task().id], **SECTIONS) as (_, base),
            aiohttp.ClientSession(headers=auth) as session,
        ):
            port = _port(base)
            statuses = {}
            for host in (
                "evil.example",
                f"evil.example:{port}",
                "batchmon.example.com.evil.example",
                f"localhost:{port}",
                "batchmon.example.com",
                f"monitor.lan:{port}",
                f"[::1]:{port}",
                f"{socket.gethostname()}:{port}",
            ):
                async with session.get(f"{base}/api/v1/tasks", headers={"Host": host}) as response:
                    statuses[host] = response.status
                    text = await response.text()
                    if response.status == 421:
                        assert "http.allowed_hosts" in text
                        assert "evil" not in text

        assert {
            "evil.example": 421,
            f"evil.example:{port}": 421,
            "batchmon.example.com.evil.example": 421,
            f"localhost:{port}": 200,
            "batchmon.example.com": 200,
            f"monitor.lan:{port}": 200,
            f"[::1]:{port}": 200,
            f"{socket.gethostname()}:{port}": 200,
        } == statuses

    async def test_read_token(self) -> None:
        """With http.read_token, reads need it (or the API token); health checks stay open."""
        basic = "Basic " + base64.b64encode(f"me:{READER}".encode()).decode()
        async with (
            Simulator() as simulator,
            running_daemon(simulator, [simulator.add_task().id], **SECTIONS) as (_, base),
            aiohttp.ClientSession() as session,
        ):
            seen = {}
            for path in ("/", "/metrics", "/api/v1/tasks", "/api/v1/tasks/1", "/nope"):
                for name, value in [
                    ("none", None),
                    ("wrong", "Bearer " + "x" * 26),
                    ("read", f"Bearer {READER}"),
                    ("api", f"Bearer {TOKEN}"),
                    ("basic", basic),
                ]:
                    headers = {"Authorization": value} if value else {}
                    async with session.get(base + path, headers=headers) as response:
                        seen[path, name] = response.status
                        if response.status == 401:
                            challenges = response.headers.getall("WWW-Authenticate")
                            assert ["Bearer", 'Basic realm="batchmon"'] == challenges
            for path in ("/healthz", "/readyz"):
                async with session.get(base + path) as response:
                    seen[path, "none"] = response.status
            async with session.put(
                f"{base}/api/v1/watches/7", headers={"Authorization": f"Bearer {READER}"}
            ) as response:
                seen["PUT", "read"] = response.status
            api_basic = "Basic " + base64.b64encode(f"me:{TOKEN}".encode()).decode()
            async with session.put(
                f"{base}/api/v1/watches/7", headers={"Authorization": api_basic}
            ) as response:
                seen["PUT", "basic"] = response.status

        for path in ("/", "/metrics", "/api/v1/tasks"):
            assert [401, 401, 200, 200, 200] == [
                seen[path, n] for n in ("none", "wrong", "read", "api", "basic")
            ], path
        assert 401 == seen["/nope", "none"]
        assert 404 == seen["/nope", "read"]
        assert 200 == seen["/healthz", "none"]
        assert 200 == seen["/readyz", "none"]
        assert 401 == seen["PUT", "read"], "the read token does not change watches"
        assert 401 == seen["PUT", "basic"], "a browser's remembered Basic password changes nothing"

    async def test_security_headers_on_every_answer(self) -> None:
        """200, 400, 401, 404 and 421 answers all carry CSP, nosniff, DENY and no-referrer."""
        auth = {"Authorization": f"Bearer {READER}"}
        async with (
            Simulator() as simulator,
            running_daemon(
                simulator, [simulator.add_task(state=BatchTaskState.STARTED).id], **SECTIONS
            ) as (_, base),
            aiohttp.ClientSession() as session,
        ):
            answers = []
            for path, headers in [
                ("/", auth),
                ("/healthz", {}),
                ("/api/v1/tasks/x", auth),
                ("/api/v1/tasks", {}),
                ("/nope", auth),
                ("/metrics", {**auth, "Host": "evil.example"}),
            ]:
                async with session.get(base + path, headers=headers) as response:
                    answers.append((response.status, dict(response.headers)))

        assert [200, 200, 400, 401, 404, 421] == [status for status, _ in answers]
        for _, headers in answers:
            assert {k: headers.get(k) for k in SECURITY_HEADERS} == dict(SECURITY_HEADERS)
        assert (
            "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "frame-ancestors 'none'"
        ) == answers[0][1]["Content-Security-Policy"]


# --- the listener ---------------------------------------------------------------------------------


class Blocking:
    """A small app served like the daemon's: /healthz answers, /block waits until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0
        self.all_entered = asyncio.Event()
        self.expected = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[track_requests])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/block", self._block)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _block(self, request: web.Request) -> web.Response:
        self.entered += 1
        if self.entered >= self.expected:
            self.all_entered.set()
        await self.release.wait()
        return web.Response(text="released")


@asynccontextmanager
async def served(app: web.Application, limits: Limits) -> AsyncIterator[int]:
    """The app behind :func:`monitor.web.serve` with these limits; yields the port."""
    runner, port = await serve(app, "127.0.0.1", 0, limits)
    try:
        yield port
    finally:
        await runner.cleanup()


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    with anyio.fail_after(5):
        return await reader.read()


HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"


class TestListener:
    """Connection cap, deadlines and refusals."""

    async def test_slow_head_is_cut(self) -> None:
        """A head trickling a header line at a time is closed at the head deadline."""
        async with served(Blocking().app(), Limits(connections=8, head_timeout=0.5)) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HEAD)

            async def trickle() -> None:
                for n in range(1000):
                    writer.write(b"X-Slow-%d: 1\r\n" % n)
                    await anyio.sleep(0.05)

            async with anyio.create_task_group() as group:
                group.start_soon(trickle)
                answer = await _closed_by_server(reader)
                group.cancel_scope.cancel()
            writer.close()

        assert b"" == answer

    async def test_idle_keep_alive_is_cut(self) -> None:
        """After an answer, a connection that sends nothing more is closed."""
        async with served(Blocking().app(), Limits(connections=8, head_timeout=0.5)) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HEAD + b"\r\n")
            answer = await _closed_by_server(reader)
            writer.close()

        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert answer.endswith(b"ok")

    async def test_full_house_makes_room_for_a_health_check(self) -> None:
        """With every slot held by half-sent heads, the one waiting longest gives way, logged once."""
        with capture_logs() as logs:
            async with (
                served(Blocking().app(), Limits(connections=3, head_timeout=30)) as port,
                aiohttp.ClientSession() as session,
            ):
                held = []
                for _ in range(3):
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(HEAD)
                    held.append((reader, writer))
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    first = response.status
                evicted = await _closed_by_server(held[0][0])
                for _ in range(20):
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(HEAD)
                    held.append((reader, writer))
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    second = response.status
                for _, writer in held:
                    writer.close()

        assert (200, 200) == (first, second)
        assert b"" == evicted
        shed = [e for e in logs if e["event"] == "http_connections_shed"]
        assert 1 == len(shed), logs
        assert "warning" == shed[0]["log_level"]

    async def test_busy_house_refuses_with_503(self) -> None:
        """When every slot is answering, a newcomer gets a 503 and the others finish."""
        blocking = Blocking()
        blocking.expected = 2
        async with (
            served(blocking.app(), Limits(connections=2, head_timeout=30)) as port,
            aiohttp.ClientSession() as session,
        ):
            url = f"http://127.0.0.1:{port}"

            async def block() -> str:
                async with session.get(url + "/block") as response:
                    return await response.text()

            async with anyio.create_task_group() as group:
                results: list[str] = []

                async def keep(result: list[str]) -> None:
                    result.append(await block())

                group.start_soon(keep, results)
                group.start_soon(keep, results)
                with anyio.fail_after(5):
                    await blocking.all_entered.wait()
                refused = await _raw(port, HEAD + b"Connection: close\r\n\r\n")
                blocking.release.set()

        assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        for name, value in SECURITY_HEADERS.items():
            assert f"{name}: {value}\r\n".encode() in refused
        assert ["released", "released"] == results

    async def test_answer_deadline(self) -> None:
        """A request whose answer takes longer than the answer deadline loses its connection."""
        blocking = Blocking()
        async with served(
            blocking.app(), Limits(connections=4, head_timeout=30, answer_timeout=0.3)
        ) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /block HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = await _closed_by_server(reader)
            writer.close()
            blocking.release.set()

        assert b"" == answer


#: A server whose process has used up its descriptors, as a leak elsewhere would leave it.
#: It prints its port, then frees the descriptors when told to on stdin and says "freed".
_STARVED_SERVER = """
import asyncio, os, sys
from aiohttp import web
from monitor.http_listener import Limits, track_requests
from monitor.web import serve

async def healthz(request):
    return web.Response(text="ok")

async def main():
    app = web.Application(middlewares=[track_requests])
    app.router.add_get("/healthz", healthz)
    runner, port = await serve(app, "127.0.0.1", 0, Limits(connections=1000))
    hog = []
    try:
        while True:
            hog.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    for fd in hog:
        os.close(fd)
    print("freed", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    await runner.cleanup()

asyncio.run(main())
"""


class TestOutOfDescriptors:
    """Short of descriptors for another reason, connections are refused, not a traceback storm."""

    def test_refused_with_the_reserve(self) -> None:
        """Each connection gets a 503 while none is left; one log line; then service resumes."""
        prlimit = shutil.which("prlimit")
        if prlimit is None:
            pytest.skip("prlimit not installed (Debian package 'util-linux')")
        command = [prlimit, "--nofile=64:64", "--", sys.executable, "-c", _STARVED_SERVER]
        with subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as server:
            assert server.stdin is not None
            assert server.stdout is not None
            said: list[bytes] = []  # what the server logged before it freed its descriptors
            try:
                port = int(server.stdout.readline())
                starved = [_blocking_get(port) for _ in range(20)]
                server.stdin.write(b"free\n")
                server.stdin.flush()
                while (line := server.stdout.readline()) not in {b"freed\n", b""}:
                    said.append(line)
                fed = _blocking_get(port)
                again = _blocking_get(port)
            finally:
                out, err = server.communicate(b"stop\n", timeout=10)

        assert {b"HTTP/1.1 503 Service Unavailable"} == set(starved)
        assert b"HTTP/1.1 200 OK" == fed == again
        out = b"".join(said) + out
        assert 1 == out.count(b"http_connections_shed"), out
        assert b"cannot accept: Too many open files" in out
        assert 1 == out.count(b"http_connections_recovered"), out
        assert b"" == err


def _blocking_get(port: int) -> bytes:
    """The status line of a GET /healthz (synchronous: the server is another process)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(HEAD + b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def _failed_request(error: Exception) -> logging.LogRecord:
    """The record aiohttp makes for a request that failed with ``error``."""
    try:
        raise error
    except Exception:  # noqa: BLE001 - any error, as aiohttp catches them
        exc_info = sys.exc_info()
    return logging.LogRecord(
        "batchmon.http.server",
        logging.ERROR,
        __file__,
        1,
        "Error handling request from %s",
        ("127.0.0.1",),
        exc_info,
    )


class TestRequestErrors:
    """aiohttp's traceback per failed request, bounded."""

    def test_table(self) -> None:
        """Malformed requests never; handler errors once a minute, with the count left out."""
        now = [0.0]
        errors = RequestErrors(every=60.0, clock=lambda: now[0])
        steps: list[tuple[float, Exception, bool]] = [
            (0.0, BadStatusLine("GARBAGE"), False),
            (0.0, LineTooLong("X: aaaa", "8190"), False),
            (0.0, RuntimeError("a bug"), True),
            (1.0, RuntimeError("a bug"), False),
            (59.0, RuntimeError("a bug"), False),
            (60.0, BadStatusLine("GARBAGE"), False),
            (60.0, RuntimeError("a bug"), True),
            (61.0, RuntimeError("a bug"), False),
        ]
        kept = []
        for at, error, expected in steps:
            now[0] = at
            record = _failed_request(error)
            assert expected == errors.filter(record), (at, error)
            if expected:
                kept.append(record.getMessage())

        assert [
            "Error handling request from 127.0.0.1",
            "Error handling request from 127.0.0.1 (2 more left out since the last one)",
        ] == kept

    async def test_no_traceback_per_bad_request(self, caplog: pytest.LogCaptureFixture) -> None:
        """50 oversized headers and 5 failing handlers leave at most one traceback."""

        async def fail(request: web.Request) -> web.Response:
            raise RuntimeError("a bug in a handler")

        app = web.Application(middlewares=[track_requests])
        app.router.add_get("/fail", fail)
        caplog.set_level(logging.ERROR)
        async with served(app, Limits()) as port:
            for _ in range(50):
                answer = await _raw(
                    port, HEAD + b"X-Big: " + b"a" * 9000 + b"\r\nConnection: close\r\n\r\n"
                )
                assert answer.startswith(b"HTTP/1.0 400 Bad Request"), answer[:100]
            for _ in range(5):
                answer = await _raw(
                    port, b"GET /fail HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                )
                assert answer.startswith(b"HTTP/1.1 500 "), answer[:100]

        tracebacks = [r for r in caplog.records if r.exc_info]
        assert len(tracebacks) <= 1, [r.getMessage() for r in tracebacks]
        assert not any(isinstance(r.exc_info[1], LineTooLong) for r in tracebacks if r.exc_info)
