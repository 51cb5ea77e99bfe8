"""Templates cannot freeze the daemon: a render over its time or size budget is stopped.

The budget is measured on a clock the test gives (one millisecond per reading here), so
whether a template is stopped does not depend on how fast this machine is.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from itertools import count
from pathlib import Path

import aiohttp
import anyio
import pytest
from click.testing import CliRunner
from structlog.testing import capture_logs

from monitor.cli import main
from monitor.config import ConfigError, parse_config
from monitor.sinks.render import TEMPLATE_MAX_CHARS, Renderer, check_template
from monitor.sinks.slack import SlackSink
from tests.conftest import Reply, ScriptedServer, make_task_event

#: Two nested loops of 10,000,000,000 steps in all: without a budget, hours of CPU.
NESTED_RANGES = (
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}done"
)
#: The event's text without a template (the fallback).
DEFAULT_TEXT = "Result: Timeout while writing the file"


def ticking() -> Callable[[], float]:
    """A clock that moves one millisecond each time it is read."""
    steps = count()
    return lambda: next(steps) / 1000


def still() -> float:
    """A clock that never moves: no template runs out of time on it."""
    return 0.0


def stopped_logs(logs: Sequence[Mapping[str, object]]) -> list[tuple[object, ...]]:
    return [(line["log_level"], line["event"], line["sink"]) for line in logs]


class TestStopped:
    """Templates over budget give the default text, logged once per sink."""

    @pytest.mark.parametrize(
        "template",
        [
            NESTED_RANGES,
            # Loops over a list (not range) that write nothing.
            (
                "{% set xs = range(100000)|list %}"
                "{% for i in xs %}{% for j in xs %}{% endfor %}{% endfor %}"
            ),
            (
                "{% for i in range(100000) %}{% for j in range(100000)|reverse %}"
                "{% endfor %}{% endfor %}"
            ),
            # A macro called in nested loops.
            (
                "{% macro f() %}{% endmacro %}{% for i in range(100000) %}{{ f() }}{% endfor %}"
                "{% for i in range(100000) %}{% for j in range(100000) %}{{ f() }}{% endfor %}"
                "{% endfor %}"
            ),
        ],
        ids=["nested-ranges", "nested-lists", "reversed", "macro-calls"],
    )
    def test_too_long(self, template: str) -> None:
        """A template still working when its 50 ms are up is stopped, whatever it loops over."""
        renderer = Renderer("ops", template=template, status_url=None, clock=ticking())
        with capture_logs() as logs:
            texts = [renderer.render(make_task_event()).text for _ in range(3)]

        assert all(text.startswith(DEFAULT_TEXT) for text in texts)
        assert [("warning", "template_stopped", "ops")] == stopped_logs(logs)
        assert "took longer than 50 ms" == logs[0]["error"]

    @pytest.mark.parametrize(
        ("template", "error"),
        [
            (
                "{% for i in range(100000) %}{{ task.name }}{% endfor %}",
                f"wrote more than {TEMPLATE_MAX_CHARS} characters",
            ),
            ("{{ 'x' * 100000000 }}", f"'*' would build a value over {TEMPLATE_MAX_CHARS}"),
            ("{{ 9 ** 999999999 }}", f"'**' would build a value over {TEMPLATE_MAX_CHARS}"),
            ("{{ '%0999999999d' % 1 }}", f"'%' would build a value over {TEMPLATE_MAX_CHARS}"),
            ("{{ task.name|center(999999999) }}", f"a filter argument over {TEMPLATE_MAX_CHARS}"),
            ("{{ range(9)|batch(999999999, 0)|list }}", "a filter argument over 65536"),
            ("{{ '%0999999999d'|format(1) }}", f"a format wider than {TEMPLATE_MAX_CHARS}"),
            ("{{ '{:>999999999}'.format(1) }}", f"a format wider than {TEMPLATE_MAX_CHARS}"),
        ],
        ids=["output", "repeat", "power", "percent", "center", "batch", "format", "str-format"],
    )
    def test_too_big(self, template: str, error: str) -> None:
        """Output over 64 KiB, and operations that would build such a value, are stopped."""
        renderer = Renderer("ops", template=template, status_url=None, clock=still)
        with capture_logs() as logs:
            text = renderer.render(make_task_event()).text

        assert text.startswith(DEFAULT_TEXT)
        assert [("warning", "template_stopped", "ops", error)] == [
            (*entry, line["error"]) for entry, line in zip(stopped_logs(logs), logs, strict=True)
        ]

    def test_within_budget_unchanged(self) -> None:
        """Loops, filters, formats and operators within the budget work as in Jinja2."""
        template = (
            "{{ range(3)|list }} {{ range(5)|length }} {{ range(3)|reverse|join(',') }} "
            "{% for k in range(2) %}{{ loop.index }}/{{ loop.length }} {% endfor %}"
            "{{ '%s-%03d'|format(task.name, 7) }} {{ '{:>4}'.format('x') }} {{ 'ab' * 2 }} "
            "{{ 2 ** 10 }} {{ 7 % 3 }} {{ task.name|center(10) }} "
            "{{ nothing|default(100000) }} {{ range(3)|map('string')|join }} {{ range(4)|sum(start=100000) }}"
        )
        renderer = Renderer("ops", template=template, status_url=None, clock=still)

        assert (
            "[0, 1, 2] 5 2,1,0 1/2 2/2 Export-007    x abab 1024 1   Export   100000 012 100006"
            == renderer.render(make_task_event()).text
        )


class TestCheckedAtLoad:
    """``check-config`` (and every load) tries each template on a sample event."""

    def test_stopped_on_the_sample_is_a_config_error(self) -> None:
        """The problem names the sink's template key."""
        with pytest.raises(ConfigError) as info:
            parse_config(
                {
                    "superoffice": {"url": "https://crm.example.com/api"},
                    "sinks": [
                        {"name": "log", "type": "log"},
                        {
                            "name": "ops",
                            "type": "slack",
                            "url": "https://hooks.example.com/x",
                            "template": NESTED_RANGES,
                        },
                    ],
                },
                base_dir=Path.cwd(),
            )

        assert any(
            'sinks["ops"].template' in problem and "took longer than 50 ms" in problem
            for problem in info.value.problems
        )

    def test_check_config_exits_78(self, tmp_path: Path) -> None:
        """``batchmon check-config`` refuses the file with code 78."""
        path = tmp_path / "batchmon.toml"
        path.write_text(
            '[superoffice]\nurl = "https://crm.example.com/api"\n'
            '[superoffice.auth]\ntype = "basic"\nusername = "u"\npassword = "secret"\n'
            '[[sinks]]\nname = "ops"\ntype = "slack"\nurl = "https://hooks.example.com/x"\n'
            f"template = {json.dumps(NESTED_RANGES)}\n"
        )
        result = CliRunner().invoke(main, ["check-config", str(path)])

        assert 78 == result.exit_code
        assert 'sinks["ops"].template' in result.output

    def test_errors_that_depend_on_the_event_pass(self) -> None:
        """A field some events lack is no reason to refuse: those events fall back."""
        check_template("{{ event.previous.state }} {{ no_such_name }}")


class TestOffTheLoop:
    """Rendering runs in a worker thread: the event loop keeps serving while it works."""

    @pytest.fixture(name="session")
    async def _session(self) -> AsyncIterator[aiohttp.ClientSession]:
        async with aiohttp.ClientSession() as session:
            yield session

    async def test_loop_answers_during_a_heavy_render(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """Mid-render the loop runs another task; the message arrives with the default text."""
        mid_render, loop_ran = threading.Event(), threading.Event()
        seen_by_the_render: list[bool] = []
        ticks = count()

        def clock() -> float:
            tick = next(ticks)
            if tick == 10:  # inside the nested loops: 50 readings make the budget
                mid_render.set()
                seen_by_the_render.append(loop_ran.wait(30))
            return tick / 1000

        renderer = Renderer("ops", template=NESTED_RANGES, status_url=None, clock=clock)
        sink = SlackSink("ops", scripted.url, session, renderer=renderer)
        scripted.replies.append(Reply(200, "ok"))

        async with anyio.create_task_group() as group:
            group.start_soon(sink.send, make_task_event())
            await anyio.to_thread.run_sync(mid_render.wait, 30)
            loop_ran.set()

        assert [True] == seen_by_the_render
        [seen] = scripted.seen
        assert DEFAULT_TEXT in seen.body.decode()
