"""Hostile answers over HTTP, against one running batchmon: nothing crashes, hangs or bloats.

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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    Batchmon,
    Peers,
    base_config,
    corpus,
    http,
    rss_kib,
    toml_dumps,
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
        (tmp / "batchmon.toml").write_text(toml_dumps(config))
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
        """An unusual but readable answer is used, without a warning."""
        lines, grown = _survive(target, case)
        tasks = http(target.url + "/api/v1/tasks").json()["tasks"]

        assert [] == [line for line in lines if line.get("level") in {"warning", "error"}]
        assert ACCEPTED[case] == next(t["name"] for t in tasks if t["id"] == 1)
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
                batchmon.wait_for(
                    lambda line, t=task_id: (
                        line.get("event") == "task.discovered" and line.get("task_id") == t
                    ),
                    20,
                    f"task {task_id} discovered",
                )
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
        failures = []
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
