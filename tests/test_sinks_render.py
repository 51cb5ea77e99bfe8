"""What chat messages say: titles, facts, progress bars, templates, escaping and cutting."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import pytest
from structlog.testing import capture_logs

from monitor.sinks.render import (
    ESCAPES,
    TEST_MESSAGE,
    TEST_TITLE,
    Renderer,
    Tone,
    escape_discord,
    escape_googlechat,
    escape_mattermost,
    escape_slack,
    escape_teams,
    fit,
    measure,
    progress_bar,
)
from monitor.sinks.render import test_event as make_test_event
from monitor.superoffice.models import BatchTaskState
from monitor.tracking.events import Event, EventType
from tests.conftest import make_task_event

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _render(event: Event, template: str | None = None) -> tuple[str, dict[str, str], str]:
    message = Renderer("ops", template=template, status_url=None).render(event)
    return message.title, dict(message.facts), message.text


class TestProgressBar:
    """The text progress bar."""

    @pytest.mark.parametrize(
        ("percent", "expected"),
        [
            (0, "▱▱▱▱▱▱▱▱▱▱ 0 %"),
            (40, "▰▰▰▰▱▱▱▱▱▱ 40 %"),
            (99, "▰▰▰▰▰▰▰▰▰▱ 99 %"),
            (100, "▰▰▰▰▰▰▰▰▰▰ 100 %"),
            (250, "▰▰▰▰▰▰▰▰▰▰ 100 %"),
            (-5, "▱▱▱▱▱▱▱▱▱▱ 0 %"),
            (None, None),
        ],
    )
    def test_bar(self, percent: int | None, expected: str | None) -> None:
        """Ten cells, clamped to 0..100; a bar is never full before 100 %."""
        assert expected == progress_bar(percent)


class TestTitles:
    """The headline of each event type."""

    @pytest.mark.parametrize(
        ("kind", "state", "expected", "tone"),
        [
            (EventType.TASK_SUCCEEDED, BatchTaskState.SUCCEEDED, "✅ Export finished", Tone.GOOD),
            (EventType.TASK_FAILED, BatchTaskState.FAILED, "❌ Export failed", Tone.BAD),
            (EventType.TASK_STALLED, BatchTaskState.STARTED, "⏸ Export stalled", Tone.WARNING),
            (EventType.TASK_RESUMED, BatchTaskState.STARTED, "▶ Export resumed", Tone.INFO),
            (EventType.TASK_STARTED, BatchTaskState.STARTED, "▶ Export started", Tone.INFO),
            (EventType.TASK_RESTARTED, BatchTaskState.STARTED, "🔁 Export ran again", Tone.INFO),
            (
                EventType.TASK_GONE,
                BatchTaskState.STARTED,
                "🗑 Export vanished before it finished",
                Tone.WARNING,
            ),
            (EventType.TASK_PROGRESS, BatchTaskState.STARTED, "📈 Export 40 %", Tone.INFO),
            (
                EventType.TASK_STATE_CHANGED,
                BatchTaskState.AQUIRED,
                "🔄 Export is now Aquired",
                Tone.INFO,
            ),
            (
                EventType.TASK_DISCOVERED,
                BatchTaskState.FAILED,
                "👀 Watching Export (Failed)",
                Tone.BAD,
            ),
        ],
    )
    def test_task_events(
        self, kind: EventType, state: BatchTaskState, expected: str, tone: Tone
    ) -> None:
        """Emoji, task name, what happened; the tone follows the outcome."""
        message = Renderer("ops", template=None, status_url=None).render(
            make_task_event(kind, state=state)
        )

        assert (expected, tone) == (message.title, message.tone)

    @pytest.mark.parametrize(
        ("kind", "expected"),
        [
            (EventType.MONITOR_API_DOWN, "🔴 SuperOffice API down"),
            (EventType.MONITOR_API_RECOVERED, "🟢 SuperOffice API recovered"),
            (EventType.MONITOR_AUTH_FAILED, "🔑 SuperOffice credentials rejected"),
        ],
    )
    def test_monitor_events(self, kind: EventType, expected: str) -> None:
        """Monitor events have no task: the headline, the message, no facts."""
        event = Event(id="e1", type=kind, time=T0, message="3 consecutive poll cycles failed")
        message = Renderer("ops", template=None, status_url=None).render(event)

        assert expected == message.title
        assert () == message.facts
        assert "3 consecutive poll cycles failed" == message.text
        assert "batchmon · " + kind.value == message.footer

    def test_unnamed_task(self) -> None:
        """A task without a name is called by its id."""
        title, _, _ = _render(make_task_event(name=None))

        assert "❌ Task 212 failed" == title


class TestFacts:
    """State, progress, elapsed time and ETA."""

    def test_running_task(self) -> None:
        """An active task shows elapsed time since LastStarted and its ETA."""
        event = make_task_event(
            EventType.TASK_PROGRESS,
            state=BatchTaskState.STARTED,
            last_started=T0 - timedelta(hours=1, minutes=5),
            eta=T0 + timedelta(minutes=12),
        )
        _, facts, _ = _render(event)

        assert {
            "State": "Started",
            "Progress": "▰▰▰▰▱▱▱▱▱▱ 40 %",
            "Elapsed": "1 h 05 min",
            "ETA": "12:12 UTC (in 12 min)",
        } == facts

    def test_eta_on_another_day_shows_the_date(self) -> None:
        """An ETA after midnight carries its date."""
        event = make_task_event(state=BatchTaskState.STARTED, eta=T0 + timedelta(days=2, minutes=1))
        _, facts, _ = _render(event)

        assert "2026-11-30 12:01 UTC (in 2 d 0 h)" == facts["ETA"]

    def test_an_outcome_seen_after_the_fact_says_so(self) -> None:
        """A failure announced at the task's first sighting says batchmon saw it late."""
        late = replace(make_task_event(), first_seen=True)

        _, facts, _ = _render(late)
        _, live, _ = _render(make_task_event())

        assert "already so when batchmon first saw the task" == facts["Seen"]
        assert "Seen" not in live

    def test_finished_task_has_no_eta(self) -> None:
        """A terminal task shows no ETA, however the event came to carry one."""
        _, facts, _ = _render(make_task_event(eta=T0 + timedelta(minutes=5)))

        assert "ETA" not in facts
        assert "12 min" == facts["Elapsed"]

    def test_unknown_progress_and_start(self) -> None:
        """Without progress or LastStarted, those facts are left out."""
        _, facts, _ = _render(make_task_event(progress=None, last_started=None))

        assert {"State": "Failed"} == facts


class TestMainText:
    """The main text: message, result, step and description."""

    def test_default(self) -> None:
        """Result, then description; the step of a finished task is left out."""
        _, _, text = _render(make_task_event(message="flagged by batchmon"))

        assert (
            "flagged by batchmon\nResult: Timeout while writing the file\n"
            "Nightly export of all contacts"
        ) == text

    def test_step_of_a_running_task(self) -> None:
        """A running task's ProgressDescription is its current step."""
        _, _, text = _render(make_task_event(state=BatchTaskState.STARTED, result=None))

        assert "Step: Exporting contacts\nNightly export of all contacts" == text

    def test_long_text_is_cut(self) -> None:
        """A 10 kB description is cut, ending in an ellipsis."""
        _, _, text = _render(make_task_event(description="x" * 10_000))

        assert 4000 == len(text)
        assert text.endswith("…")


class TestTemplates:
    """Per-sink Jinja2 templates."""

    def test_template_replaces_the_main_text(self) -> None:
        """The template sees the event, the task, the title and the bar."""
        template = (
            "{{ title }} | {{ task.name }} #{{ event.task.id }} | {{ progress_bar }} | "
            "{{ event.type }} | {{ status_url }}"
        )
        message = Renderer("ops", template=template, status_url="https://b.example/").render(
            make_task_event()
        )

        assert (
            "❌ Export failed | Export #212 | ▰▰▰▰▱▱▱▱▱▱ 40 % | task.failed | https://b.example/"
            == message.text
        )

    def test_monitor_event_has_no_task(self) -> None:
        """``task`` is None for monitor events, so templates can test for it."""
        renderer = Renderer("ops", template="{{ task is none }} {{ title }}", status_url=None)
        event = Event(id="e1", type=EventType.MONITOR_API_DOWN, time=T0)

        assert "True 🔴 SuperOffice API down" == renderer.render(event).text

    @pytest.mark.parametrize(
        "template",
        [
            "{{ nothing_here }}",
            "{{ event.no_such_key }}",
            "{{ ''.__class__.__mro__[1].__subclasses__() }}",
            "{{ task.name | int(0) // 0 }}",
        ],
    )
    def test_failing_template_falls_back_with_one_warning(self, template: str) -> None:
        """Undefined names, sandbox violations and errors give the default text."""
        with capture_logs() as logs:
            _, _, text = _render(make_task_event(), template)

        assert text.startswith("Result: Timeout while writing the file")
        assert [("warning", "template_failed", "ops")] == [
            (entry["log_level"], entry["event"], entry["sink"]) for entry in logs
        ]

    def test_syntax_error_at_construction(self) -> None:
        """A template that does not compile stops start-up, naming sink and line."""
        with pytest.raises(
            ValueError, match=r"^sink 'ops': template line 2: Expected an expression"
        ):
            Renderer("ops", template="fine\n{% if %}", status_url=None)

    def test_no_autoescape(self) -> None:
        """Templates produce text, not HTML: each format escapes it."""
        _, _, text = _render(make_task_event(name="A & <B>"), "{{ task.name }}")

        assert "A & <B>" == text


class TestFit:
    """Cutting escaped text to a limit."""

    @pytest.mark.parametrize("limit", [1, 2, 5, 17, 100])
    def test_escaped_text_fits_and_entities_stay_whole(self, limit: int) -> None:
        """The escaped result never passes the limit and never splits an entity."""
        result = fit("<&>" * 50, limit, escape_slack)

        assert measure(result) <= limit
        assert result.removesuffix("…").count("&") == result.count(";")

    def test_short_text_is_untouched(self) -> None:
        """Text within the limit is only escaped."""
        assert "a &lt;b&gt;" == fit("a <b>", 11, escape_slack)

    def test_measure_counts_utf16_units(self) -> None:
        """Astral emoji count twice, as the chat services' clients count them."""
        assert 2 == measure("📈")
        assert 1 == measure("✅")


#: What untrusted text may try.
ATTACKS = ("@everyone", "<!channel>", "<https://evil|click>", "**bold**", "<@123>")
#: What must not survive escaping, per format: a live mention anywhere, and each format's
#: own active syntax (``<`` where entities are the escape, unescaped marks where the
#: backslash is; a Teams ``TextRun`` and plain text read no markup at all).
LIVE: dict[str, str] = {
    "slack": r"<|\*\*",
    "discord": r"(?<!\\)[<*\[]",
    "mattermost": r"<|(?<!\\)\*",
    "teams": r"\{\{",
    "teams_legacy": r"<|(?<!\\)\*",
    "googlechat": r"<",
    "plain": r"<[!@h]",
}
MENTION = r"@(everyone|here|channel|all)|<@\d"


class TestEscaping:
    """Each format's escaping function."""

    @pytest.mark.parametrize(
        ("escape", "attack", "expected"),
        [
            (escape_slack, "<!channel>", "&lt;!channel&gt;"),
            (escape_slack, "<https://evil|click>", "&lt;https://evil|click&gt;"),
            (escape_slack, "**bold**", "\u2217\u2217bold\u2217\u2217"),
            (escape_slack, "snake_case_name", "snake_case_name"),
            (
                escape_slack,
                "_italic_ ~strike~ `code`",
                "\u02cditalic\u02cd \u223cstrike\u223c \u02cbcode\u02cb",
            ),
            (escape_slack, "> quoted", "\u00ad&gt; quoted"),
            (escape_slack, "@here", "@\u200bhere"),
            (escape_discord, "@everyone", "@\u200beveryone"),
            (escape_discord, "<@123>", "\\<@\u200b123\\>"),
            (escape_discord, "**bold**", "\\*\\*bold\\*\\*"),
            (escape_discord, "[click](https://evil)", "\\[click\\]\\(https://evil\\)"),
            (escape_discord, "# heading\n- item", "\\# heading\n\\- item"),
            (escape_mattermost, "@channel", "@\u200bchannel"),
            (escape_mattermost, "<!channel>", "&lt;\\!channel&gt;"),
            (escape_mattermost, "a & b", "a &amp; b"),
            (escape_mattermost, "**bold**", "\\*\\*bold\\*\\*"),
            (
                escape_teams,
                "{{DATE(2026-01-01T00:00:00Z)}}",
                "{\u200b{DATE(2026-01-01T00:00:00Z)}}",
            ),
            (escape_teams, "@all", "@\u200ball"),
            (escape_googlechat, "<users/all> <b>x</b>", "&lt;users/all&gt; &lt;b&gt;x&lt;/b&gt;"),
            (escape_googlechat, "a@b", "a@\u200bb"),
        ],
    )
    def test_cases(self, escape: Callable[[str], str], attack: str, expected: str) -> None:
        """Each construct comes out as literal text of that format."""
        assert expected == escape(attack)

    @pytest.mark.parametrize("name", sorted(ESCAPES))
    @pytest.mark.parametrize("attack", ATTACKS)
    def test_nothing_stays_live_in_any_format(self, name: str, attack: str) -> None:
        """No escaped attack keeps a mention or its format's active syntax."""
        escaped = ESCAPES[name](attack)

        assert None is re.search(MENTION, escaped)
        assert None is re.search(LIVE[name], escaped)

    def test_plain_text_is_unchanged_by_every_format(self) -> None:
        """Ordinary text reads the same in every format."""
        text = "Export 2026 contacts, 40 percent done"

        assert {name: text for name in ESCAPES} == {
            name: escape(text) for name, escape in ESCAPES.items()
        }


class TestTestEvent:
    """The event ``batchmon test-sink`` sends."""

    def test_clearly_marked(self) -> None:
        """A ``batchmon.test`` about no task, titled and worded as a test."""
        event = make_test_event(T0)
        message = Renderer("ops", template=None, status_url=None).render(event)

        assert (EventType.BATCHMON_TEST, None) == (event.type, event.task)
        assert f"🧪 {TEST_TITLE}" == message.title
        assert TEST_MESSAGE in message.text
        assert "succeeded" not in f"{message.title} {message.text}".lower()

    def test_each_run_has_its_own_id(self) -> None:
        """Receivers deduplicate on the id, so two tests are two messages."""
        assert make_test_event(T0).id != make_test_event(T0 + timedelta(seconds=1)).id

    def test_previous_is_empty(self) -> None:
        """Nothing changed: the test event carries no previous values."""
        assert MappingProxyType({}) == make_test_event(T0).previous
