"""Hostile HTTP, both ways: answers from the API, and clients of batchmon's own port.

The first part is about hostile answers: nothing crashes, hangs or bloats.

One batchmon process (module scope) watches task 1 of :class:`HostileApi` and discovers
Started tasks through its list call.  Each case switches the API's answer, waits for the
case's log line, and checks that the process is up, /healthz answers at once, poll cycles
keep completing within the timeout bounds and memory stays bounded; then the API answers
validly again before the next case.

Bounds (batchmon's ``superoffice.timeout`` is 2 s, ``retries`` 0, ``poll.interval`` 0.1 s):

* a poll cycle completes within ``CYCLE_BOUND`` = 15 s of the case starting;
* /healthz answers within 2 s, during the case;
* resident memory grows by at most ``RSS_BOUND_MIB`` = 48 MiB from just before the case to
  its end (GET answers are read to 1 MiB at most; a list answer to 64 MiB, hence its own
  ``LIST_RSS_BOUND_MIB`` = 160 MiB).

The second part (:class:`TestHostileClients`) attacks batchmon's HTTP port: a flood of
half-open sockets with the open-file limit at 256 (a unit without ``LimitNOFILE=``), a
head sent one line at a time, bytes that are not text in ``Authorization``, odd task ids,
too many watches, a foreign Host header and reads without the read token.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from monitor.config.echo import toml_text
from monitor.http_listener import HEAD_TIMEOUT
from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskState
from tests.e2e.conftest import (
    Batchmon,
    Peer,
    Peers,
    Prometheus,
    base_config,
    corpus,
    http,
    rss_kib,
    wait_until,
)
from tests.e2e.hostile_api import HostileApi

CYCLE_BOUND = 15.0
RSS_BOUND_MIB = 48
LIST_RSS_BOUND_MIB = 160
Check = Callable[[dict[str, Any]], bool]
#: The log events of a refused answer (logged once per task until a valid one comes) and
#: of a poll cycle without an answer (with ``poll.api_down_after`` = 1).
MALFORMED, DOWN, ANOMALOUS = "task_answer_malformed", "monitor.api_down", "task_answer_anomalous"


def _says(*events: str, text: str = "", key: str = "error") -> tuple[set[str], Check]:
    return set(events), lambda line: text in str(line.get(key) or line.get("message"))


#: The log line each answer must cause: one of these events, saying this.  Exception class
#: names of the JSON parser are not part of it (the parser is batchmon's choice).
EXPECTED: dict[str, tuple[set[str], Check]] = {
    "100 MiB body with Content-Length": _says(MALFORMED, text="larger than 1048576 bytes"),
    "100 MiB body, chunked": _says(MALFORMED, text="larger than 1048576 bytes"),
    "gzip bomb (10 GiB)": _says(MALFORMED, text="larger than 1048576 bytes"),
    "invalid UTF-8": _says(MALFORMED, text="not JSON"),
    "nesting 200,000 deep": _says(MALFORMED, text="not JSON"),
    "nesting 900 deep in ParameterObject": _says(MALFORMED, ANOMALOUS),
    "HTML page with 200": _says(MALFORMED, text="not JSON"),
    "HTML page with 503": _says(DOWN, text="HTTP 503"),
    '{"Error": true} with 200': _says(
        MALFORMED, text="SuperOffice error SoDatabaseException: Timeout expired"
    ),
    "XML as application/xml": _says(MALFORMED, text="not JSON"),
    # Not JSON by RFC 8259: refusing or flagging both are clear.
    "NaN and Infinity": _says(MALFORMED, ANOMALOUS),
    "slow loris body (1 byte / 0.5 s)": _says(DOWN, text="no answer within the timeout"),
    "slow loris, no headers": _says(DOWN, text="no answer within the timeout"),
    "truncated body": _says(MALFORMED, text="broken answer body"),
    "1 MiB header line": _says(DOWN, text="Got more than 8190 bytes"),
    "answer about another task": _says(MALFORMED, text="task 2"),
}

#: Answers that are fine, only unusual: used as they are, no warning.
ACCEPTED = {"valid JSON as text/plain": "Sent as text/plain"}

#: Answers that once killed or fooled batchmon (now refused as malformed), kept as cases.
BUGS: dict[str, Any] = {
    "Id 2**63, past SQLite's INTEGER": (),
    "answer about another task": (),
}


@dataclass
class Target:
    """The running batchmon and the API it polls."""

    peers: Peers
    api: HostileApi
    batchmon: Batchmon
    url: str

    def set_case(self, case: str, *, listing: bool = False) -> None:
        self.peers.call(setattr, self.api, "list_case" if listing else "case", case)

    def cycles(self) -> int:
        return int(http(self.url + "/healthz", timeout=2).json()["cycles"])

    def served(self, case: str) -> int:
        return self.peers.call(lambda: self.api.served[case])

    def listed(self, case: str) -> int:
        return self.peers.call(lambda: self.api.listed[case])

    def back_to_valid(self) -> None:
        """Valid answers again, until batchmon has used two of them and is ready.

        A batchmon that died on the last case (a bug, marked as such) is started again.
        """
        self.set_case("valid")
        if not self.batchmon.alive:
            self.url = self.batchmon.start().wait_started()
        self.set_case("valid", listing=True)
        seen = self.served("valid")
        wait_until(lambda: self.served("valid") >= seen + 2, 30, "two valid answers served")
        wait_until(lambda: http(self.url + "/readyz", timeout=2).status == 200, 30, "ready")


@pytest.fixture(name="target", scope="module")
def _target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("hostile")
    peers = Peers()
    batchmon: Batchmon | None = None
    try:
        api = HostileApi()
        peers.run(api.start())
        config = base_config(
            api.url,
            tmp / "state.db",
            watch={"ids": [1], "discover": [{"states": ["Started"], "every": "1s"}]},
            poll={"interval": "0.1s", "idle_interval": "0.1s", "api_down_after": 1},
            sinks=[{"name": "log", "type": "log"}],
        )
        (tmp / "batchmon.toml").write_text(toml_text(config))
        batchmon = Batchmon(tmp / "batchmon.toml", tmp).start()
        url = batchmon.wait_started()
        target = Target(peers, api, batchmon, url)
        target.back_to_valid()
        yield target
    finally:
        if batchmon is not None:
            batchmon.close()
        if "api" in locals():
            peers.run(api.stop())
        peers.close()


def _case_ids(cases: dict[str, object]) -> list[Any]:
    return [pytest.param(case, id=case, marks=BUGS.get(case, ())) for case in cases]


def _survive(
    target: Target, case: str, *, listing: bool = False
) -> tuple[list[dict[str, Any]], int]:
    """Serve the case, wait until it was answered twice; the new log lines and RSS growth."""
    target.back_to_valid()
    pid = target.batchmon.pid
    before = rss_kib(pid)
    lines_before = len(target.batchmon.lines())
    cycles = target.cycles()
    count = target.listed if listing else target.served
    seen = count(case)
    target.set_case(case, listing=listing)
    started = time.monotonic()

    def served_twice() -> bool:
        if not target.batchmon.alive:
            pytest.fail(f"batchmon died on {case!r}:\n{target.batchmon.stderr()[-3000:]}")
        return count(case) >= seen + 2

    wait_until(served_twice, CYCLE_BOUND * 2, f"{case!r} served twice")
    wait_until(lambda: target.cycles() > cycles + 1, CYCLE_BOUND, "poll cycles completing")
    # /healthz answers at once while the case goes on: the event loop is not blocked.
    assert 200 == http(target.url + "/healthz", timeout=2).status
    assert time.monotonic() - started < CYCLE_BOUND * 3
    grown = rss_kib(pid) - before
    print(f"{case}: RSS {before} KiB before, {before + grown} KiB after")  # shown with -s
    target.set_case("valid", listing=listing)
    assert target.batchmon.alive, target.batchmon.stderr()[-3000:]
    return target.batchmon.lines()[lines_before:], grown


class TestTaskAnswers:
    """Hostile answers to ``GET /v1/BatchTask/{id}``."""

    @pytest.mark.parametrize("case", _case_ids({**EXPECTED, **BUGS}))
    def test_survives_and_says_so(self, target: Target, case: str) -> None:
        """The process stays up, cycles complete, memory is bounded, one clear log line."""
        events, says = EXPECTED.get(case, ({MALFORMED}, lambda line: True))
        lines, grown = _survive(target, case)

        matching = [line for line in lines if line.get("event") in events]
        assert matching, [line.get("event") for line in lines]
        assert says(matching[0]), matching[0]
        assert 1 == len(matching)
        assert grown < RSS_BOUND_MIB * 1024, f"RSS grew {grown} KiB"
        assert ("error" if DOWN in events else "warning") == matching[0]["level"]

    @pytest.mark.parametrize("case", list(ACCEPTED))
    def test_accepted(self, target: Target, case: str) -> None:
        """An unusual but readable answer is used, without a warning.

        The task's own GET carries the case's name, while the list rows (which are
        observations too) keep the valid one: the name shows whichever came last, so the
        case's name must be seen, not be the last word.
        """
        target.set_case(case)
        seen: list[str] = []

        def named() -> bool:
            tasks = http(target.url + "/api/v1/tasks").json()["tasks"]
            seen.append(next(t["name"] for t in tasks if t["id"] == 1))
            return seen[-1] == ACCEPTED[case]

        wait_until(named, CYCLE_BOUND * 2, f"the name of the {case!r} answer")
        lines, grown = _survive(target, case)

        assert [] == [line for line in lines if line.get("level") in {"warning", "error"}]
        assert ACCEPTED[case] in seen
        assert grown < RSS_BOUND_MIB * 1024


class TestListAnswers:
    """Hostile answers to the discovery list call."""

    @pytest.mark.parametrize("case", ["100 MiB list answer", "HTML page with 200"])
    def test_survives(self, target: Target, case: str) -> None:
        """The process stays up and memory stays within the list call's cap."""
        _, grown = _survive(target, case, listing=True)

        assert grown < LIST_RSS_BOUND_MIB * 1024, f"RSS grew {grown} KiB"

    def test_a_failing_list_call_is_logged(self, target: Target) -> None:
        """A list call that keeps failing is said at the default log level.

        The warning is edge-triggered and the process is shared by the module, so an earlier
        case may have said it already: the whole log is read, not only this case's lines.
        """
        _survive(target, "HTML page with 200", listing=True)

        said = [
            line
            for line in target.batchmon.lines()
            if line.get("event") in {"list_answer_malformed", "discovery_failed"}
        ]
        assert said
        assert {"warning"} == {line.get("level") for line in said}


class TestOneBadTaskInTheList:
    """One task of the tenant with an odd name must not blind batchmon to the others."""

    def test_half_an_emoji_in_another_tasks_name(
        self, peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path
    ) -> None:
        """Watched tasks polled by list call still report progress."""
        api = HostileApi()
        peers.run(api.start())
        try:
            api.listed_ids = [1, 2, 3]
            batchmon = launch(
                base_config(
                    api.url,
                    tmp_path / "state.db",
                    watch={"ids": [1, 2, 3]},
                    poll={"interval": "0.2s", "idle_interval": "0.2s", "progress_min_interval": 0},
                    sinks=[{"name": "log", "type": "log"}],
                )
            )
            for task_id in (1, 2, 3):

                def discovered(line: dict[str, Any], t: int = task_id) -> bool:
                    return line.get("event") == "task.discovered" and line.get("task_id") == t

                batchmon.wait_for(discovered, 20, f"task {task_id} discovered")
            bad = b'{"Id": 9, "Name": "Report \\ud83d", "State": "Started", "ProgressPercent": 5}'
            peers.call(setattr, api, "extra", [bad])
            listed = peers.call(lambda: api.listed["valid"])
            wait_until(lambda: peers.call(lambda: api.listed["valid"]) >= listed + 3, 20, "lists")
            peers.call(api.progress.__setitem__, 1, 60)

            batchmon.wait_for(
                lambda line: line.get("event") == "task.progress" and line.get("task_id") == 1,
                8,
                "task 1's progress reported",
            )
        finally:
            peers.run(api.stop())


class TestCorpus:
    """Every collected task body, served to the running batchmon."""

    def test_every_body(self, target: Target) -> None:
        """Each body answered twice: batchmon stays up and every page still answers 200."""
        failures: list[tuple[str, str, str | int]] = []
        target.back_to_valid()
        target.set_case("body")
        for path in corpus("tasks"):
            target.peers.call(setattr, target.api, "body", path.read_bytes())
            enough = target.served("body") + 2

            def answered(n: int = enough) -> bool:
                return target.served("body") >= n or not target.batchmon.alive

            wait_until(answered, CYCLE_BOUND, path.name)
            if not target.batchmon.alive:
                failures.append((path.name, "exited", target.batchmon.stderr()[-500:]))
                target.back_to_valid()
                target.set_case("body")
                continue
            for page in ("/metrics", "/api/v1/tasks", "/api/v1/tasks/1", "/", "/healthz"):
                status = http(target.url + page, timeout=5).status
                if status not in {200, 404}:
                    failures.append((path.name, page, status))
        target.back_to_valid()

        assert [] == failures


class TestAfterEveryCase:
    """The same process, after all of the above (this class runs last in the module)."""

    def test_still_small(self, target: Target) -> None:
        """Resident memory is under 256 MiB after every hostile answer."""
        target.back_to_valid()

        assert rss_kib(target.batchmon.pid) < 256 * 1024
        assert target.batchmon.alive


# --- hostile clients of batchmon's HTTP port ----------------------------------------------------

API_TOKEN = "e2e-api-token-5b7d0c9e1f"
READ_TOKEN = "e2e-read-token-8a6e4c2b0d"
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
WRITE = {"Authorization": f"Bearer {API_TOKEN}"}
#: The open-file limit of the attacked process, as the issue's reproduction had it.
OPEN_FILES = 256
#: Half-open sockets of the flood: more than the process has descriptors.
FLOOD = 300


@dataclass
class Guarded:
    """A batchmon with every HTTP key of the hardening set, and the open-file limit low."""

    peers: Peers
    batchmon: Batchmon
    url: str
    task_id: int

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def cycles(self) -> int:
        return int(http(self.url + "/healthz", timeout=2).json()["cycles"])


@pytest.fixture(name="guarded", scope="class")
def _guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    tmp = tmp_path_factory.mktemp("guarded")
    peers = Peers()
    batchmon: Batchmon | None = None
    try:
        simulator = peers.simulator(Simulator())
        task = peers.call(simulator.add_task, name="Export", state=BatchTaskState.STARTED)
        config = base_config(
            simulator.url,
            tmp / "state.db",
            watch={"ids": [task.id]},
            http={
                "listen": "127.0.0.1:0",
                "api_token": API_TOKEN,
                "read_token": READ_TOKEN,
                "max_watches": 3,
                "public_url": "https://batchmon.example.com/",
                "allowed_hosts": ["monitor.lan"],
            },
            sinks=[{"name": "log", "type": "log"}],
        )
        (tmp / "batchmon.toml").write_text(toml_text(config))
        batchmon = Batchmon(tmp / "batchmon.toml", tmp, open_files=OPEN_FILES).start()
        url = batchmon.wait_started()
        wait_until(lambda: http(url + "/readyz", timeout=2).status == 200, 30, "ready")
        yield Guarded(peers, batchmon, url, task.id)
    finally:
        if batchmon is not None:
            batchmon.close()
        peers.close()


def _raw(port: int, request: bytes) -> bytes:
    """A request as bytes (urllib would not send these), and the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class TestHostileClients:
    """Clients of batchmon's own port that want to read, change or stop what they should not.

    The flood runs last: the process is shared by the class.
    """

    def test_bad_authorization_bytes(self, guarded: Guarded) -> None:
        """Bytes that are not text in Authorization are a 401 for reads and writes, no 500."""
        answers = []
        for method, path in [(b"PUT", b"/api/v1/watches/5"), (b"GET", b"/api/v1/tasks")]:
            for value in (b"Bearer \xff\xfe", b"Bearer t\xc3\xb8ken", b"\xff", b"Basic \xff\xfe"):
                answer = _raw(
                    guarded.port,
                    method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Authorization: " + value + b"\r\nConnection: close\r\n\r\n",
                )
                answers.append(answer.split(b"\r\n", 1)[0])

        assert {b"HTTP/1.1 401 Unauthorized"} == set(answers)
        assert guarded.batchmon.alive
        assert "Traceback" not in guarded.batchmon.stderr()

    @pytest.mark.parametrize(
        "text",
        ["%D9%A3", "1_0", "99999999999999999999999", "9223372036854775807", "2147483648", "0"],
    )
    def test_odd_task_ids(self, guarded: Guarded, text: str) -> None:
        """Ids int() would take, or SuperOffice never gives (int32), are a 400; none is watched."""
        put = http(f"{guarded.url}/api/v1/watches/{text}", method="PUT", headers=WRITE)
        get = http(f"{guarded.url}/api/v1/tasks/{text}", headers=READ)

        assert (400, 400) == (put.status, get.status), (put.body, get.body)
        assert "ASCII digits" in put.json()["error"]
        listed = http(guarded.url + "/api/v1/tasks", headers=READ).json()["tasks"]
        assert [guarded.task_id] == [task["id"] for task in listed]

    def test_max_watches(self, guarded: Guarded) -> None:
        """Past http.max_watches (3 here) a PUT is a 409 saying so; DELETE makes room."""
        statuses = [
            http(f"{guarded.url}/api/v1/watches/{task_id}", method="PUT", headers=WRITE).status
            for task_id in (701, 702, 703)
        ]
        refused = http(f"{guarded.url}/api/v1/watches/704", method="PUT", headers=WRITE)
        again = http(f"{guarded.url}/api/v1/watches/701", method="PUT", headers=WRITE)
        for task_id in (701, 702, 703):
            http(f"{guarded.url}/api/v1/watches/{task_id}", method="DELETE", headers=WRITE)
        after = http(f"{guarded.url}/api/v1/watches/704", method="PUT", headers=WRITE)
        http(f"{guarded.url}/api/v1/watches/704", method="DELETE", headers=WRITE)

        assert [201, 201, 201] == statuses
        assert 409 == refused.status
        assert "http.max_watches" in refused.json()["error"]
        assert 200 == again.status
        assert 201 == after.status

    def test_host_check(self, guarded: Guarded) -> None:
        """A DNS-rebinding page's own name is refused even with the token; ours pass."""
        expected = {
            "rebind.attacker.example": 421,
            "rebind.attacker.example:{port}": 421,
            "batchmon.example.com.attacker.example": 421,
            "localhost:{port}": 200,
            "127.0.0.1:{port}": 200,
            "batchmon.example.com": 200,
            "monitor.lan:{port}": 200,
        }
        answers = {
            host: http(
                guarded.url + "/api/v1/tasks",
                headers={**READ, "Host": host.format(port=guarded.port)},
            )
            for host in expected
        }

        assert expected == {host: answer.status for host, answer in answers.items()}
        for answer in answers.values():
            if answer.status == 421:
                assert b"http.allowed_hosts" in answer.body
                assert b"Export" not in answer.body

    def test_read_token(self, guarded: Guarded) -> None:
        """Reads need the read token or the API token; the health checks stay open."""
        seen = {}
        for path in ("/", "/metrics", "/api/v1/tasks", f"/api/v1/tasks/{guarded.task_id}"):
            for name, headers in [("none", {}), ("read", READ), ("api", WRITE)]:
                answer = http(guarded.url + path, headers=headers)
                seen[path, name] = answer.status
                assert answer.headers["X-Frame-Options"] == "DENY"
                assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
                assert "nosniff" == answer.headers["X-Content-Type-Options"]
                assert "no-referrer" == answer.headers["Referrer-Policy"]
        health = [http(guarded.url + path).status for path in ("/healthz", "/readyz")]

        assert {401} == {status for (_, name), status in seen.items() if name == "none"}
        assert {200} == {status for (_, name), status in seen.items() if name != "none"}
        assert [200, 200] == health

    def test_prometheus_scrapes_with_the_read_token(
        self,
        guarded: Guarded,
        prometheus_binary: str,
        peer_processes: list[Peer],
        tmp_path: Path,
    ) -> None:
        """Prometheus with ``authorization: credentials_file`` scrapes; without it, it is refused."""
        (tmp_path / "read_token").write_text(READ_TOKEN + "\n")
        target = {"static_configs": [{"targets": [f"127.0.0.1:{guarded.port}"]}]}
        config = {
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "batchmon",
                    "authorization": {"credentials_file": str(tmp_path / "read_token")},
                    **target,
                },
                {"job_name": "anonymous", **target},
            ],
        }
        prometheus = Prometheus(prometheus_binary, tmp_path / "prometheus", config)
        peer_processes.append(prometheus)

        def up() -> dict[str, str] | None:
            result = prometheus.api("/query", query="up")["result"]
            seen = {r["metric"]["job"]: r["value"][1] for r in result}
            return seen if len(seen) == 2 else None

        assert {"batchmon": "1", "anonymous": "0"} == wait_until(up, 30, "both jobs scraped")
        series = prometheus.api("/query", query="batchmon_build_info")["result"]
        assert {"batchmon"} == {r["metric"]["job"] for r in series}

    def test_slow_head_is_cut(self, guarded: Guarded) -> None:
        """A head sent one header line a second is closed at the head deadline (10 s)."""
        with socket.create_connection(("127.0.0.1", guarded.port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sock.settimeout(1.0)  # paces the trickle: one line per second without an answer
            deadline = time.monotonic() + HEAD_TIMEOUT + 15
            closed = False
            while not closed and time.monotonic() < deadline:
                try:
                    closed = b"" == sock.recv(1024)
                except TimeoutError:
                    try:
                        sock.sendall(b"X-Trickle: 1\r\n")
                    except OSError:
                        closed = True
                except OSError:
                    closed = True

        assert closed, f"still open after {HEAD_TIMEOUT + 15:g} s"

    def test_malformed_requests_leave_no_tracebacks(self, guarded: Guarded) -> None:
        """200 oversized headers and garbage request lines: each a 400, stderr stays empty."""
        before = len(guarded.batchmon.stderr())
        oversized = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 9000
        statuses = {
            _raw(guarded.port, request + b"\r\nConnection: close\r\n\r\n").split(b" ", 2)[1]
            for request in [oversized] * 200 + [b"\x16\x03\x01 / HTTP/1.1"] * 20
        }

        assert {b"400"} == statuses
        assert "" == guarded.batchmon.stderr()[before:]

    def test_flood_of_half_open_sockets(self, guarded: Guarded) -> None:
        """300 sockets sending half a request against 256 descriptors: batchmon keeps working.

        /healthz answers during the flood, poll cycles complete, no log line says "Too many
        open files", one says connections were shed, and stderr stays empty.
        """
        batchmon = guarded.batchmon
        lines_before = len(batchmon.lines())
        cycles = guarded.cycles()
        held: list[socket.socket] = []
        try:
            for _ in range(FLOOD):
                sock = socket.create_connection(("127.0.0.1", guarded.port), timeout=5)
                sock.sendall(b"GET / HTTP/1.1\r\n")
                held.append(sock)
            healthz = [http(guarded.url + "/healthz", timeout=2).status for _ in range(5)]
            wait_until(lambda: guarded.cycles() > cycles + 3, 15, "poll cycles completing")
            readyz = http(guarded.url + "/readyz", timeout=2).status
        finally:
            for sock in held:
                sock.close()
        lines = batchmon.lines()[lines_before:]

        assert [200] * 5 == healthz
        assert 200 == readyz
        assert batchmon.alive
        assert [] == [line for line in lines if "Too many open files" in str(line)]
        shed = [line for line in lines if line.get("event") == "http_connections_shed"]
        assert 1 == len(shed), shed
        assert "warning" == shed[0]["level"]
        stderr = batchmon.stderr()
        assert "Traceback" not in stderr
        assert len(stderr) < 1024, stderr[-1024:]
