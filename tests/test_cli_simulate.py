"""``batchmon simulate``: a story that can repeat on the same ids, and a banner that says how
to use it."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from monitor.simulator import Scenario
from monitor.simulator.tasks import SimTask
from monitor.superoffice.models import BatchTaskState
from tests.simulate_process import simulate

LOGIN = base64.b64encode(b"batchmon:batchmon").decode()
START = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)


def _states(tasks: dict[int, SimTask]) -> dict[int, tuple[object, ...]]:
    """What a task shows of its story (not its run count or start time)."""
    return {
        t.id: (t.state, t.progress, t.progress_description, t.result, t.deleted)
        for t in tasks.values()
    }


class TestLoop:
    """``Scenario(loop=True)``: the same story again, on the same ids, as re-runs."""

    @pytest.mark.parametrize("speed", [1.0, 3.0])
    def test_each_round_tells_the_same_story(self, speed: float) -> None:
        """At t into round k the tasks show what they showed at t into round 0; those not
        queued again yet show how the last round ended."""
        scenario = Scenario.generate(start=START, speed=speed, loop=True)
        period = timedelta(seconds=scenario.period / speed)
        ended: dict[int, SimTask] = {}
        scenario.apply(ended, START + period - timedelta(seconds=1))
        first: dict[int, SimTask] = {}
        again: dict[int, SimTask] = {}
        for second in range(int(scenario.period / speed)):
            scenario.apply(first, START + timedelta(seconds=second))
            scenario.apply(again, START + 3 * period + timedelta(seconds=second))

            assert {**_states(ended), **_states(first)} == _states(again), second
        assert sorted(scenario.task_ids) == sorted(again) == list(range(212, 220))

    def test_tasks_rerun_with_a_higher_start_count(self) -> None:
        """Queued again after a round: New, the last start kept; then a new start, count + 1."""
        scenario = Scenario.generate(start=START, loop=True)
        tasks: dict[int, SimTask] = {}
        ends = START + timedelta(seconds=scenario.period - 1)
        scenario.apply(tasks, ends)
        first_run = {t.id: (t.start_count, t.last_started) for t in tasks.values()}
        later = START + timedelta(seconds=scenario.period + 20)
        scenario.apply(tasks, later)

        assert {1} == {count for count, _ in first_run.values()}
        for task in tasks.values():
            count, started = first_run[task.id]
            if task.state in (BatchTaskState.NEW, BatchTaskState.AQUIRED):
                assert (count, started) == (task.start_count, task.last_started)
            else:
                assert task.start_count == 2
                assert task.last_started is not None
                assert started is not None
                assert started < task.last_started <= later

    def test_without_loop_the_story_ends(self) -> None:
        """Without ``loop`` the tasks keep their end after the story."""
        scenario = Scenario.generate(start=START)
        tasks: dict[int, SimTask] = {}
        scenario.apply(tasks, START + timedelta(seconds=scenario.period))
        ended = _states(tasks)
        scenario.apply(tasks, START + timedelta(seconds=3 * scenario.period))

        assert ended == _states(tasks)
        assert all(t.start_count == 1 for t in tasks.values())


class TestCommand:
    """The command as a user runs it."""

    async def test_banner_names_the_ids_the_login_and_a_working_url(self) -> None:
        """The banner lists 212-219, the credentials and a URL that answers with them."""
        async with simulate("--loop") as simulating:
            banner = simulating.banner
            [url] = re.findall(r"curl -u batchmon:batchmon (\S+)", banner)
            async with (
                aiohttp.ClientSession() as session,
                session.get(url, headers={"Authorization": f"Basic {LOGIN}"}) as response,
            ):
                task = await response.json()
        code = simulating.code

        assert "tasks  212-219 (the story repeats every" in banner
        assert "login  basic auth, username batchmon, password batchmon" in banner
        assert "ids = [212, 213, 214, 215, 216, 217, 218, 219]" in banner
        assert url.endswith("/api/v1/BatchTask/212")
        assert 212 == task["Id"]
        assert 0 == code
