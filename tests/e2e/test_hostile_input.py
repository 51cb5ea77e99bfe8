"""Hostile input, generated (hypothesis) and collected (``tests/corpus/``).

* Task bodies: :func:`parse_task` raises nothing but :class:`ParseError`, and whatever it
  accepts goes through detection, storage's JSON, events and every message format.
* Configurations: :func:`load_config` / :func:`parse_config` raise nothing but
  :class:`ConfigError`; ``batchmon check-config`` exits 0 or 78 on every corpus file; what
  check-config accepts, ``batchmon run`` starts (or refuses in one line).
* ``Retry-After``: :func:`parse_retry_after` gives ``None`` or 0 to 3600 seconds.
* Task names in every chat format: no mention survives, and the name adds no live markup.
"""

from __future__ import annotations

import json
import os
import re
import signal
import string
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter

from monitor.cli import main
from monitor.config import (
    AUTH_TYPES,
    SINK_TYPES,
    Config,
    ConfigError,
    DiscoverRule,
    HttpConfig,
    LogConfig,
    PollConfig,
    SinkConfig,
    StateConfig,
    SuperOfficeConfig,
    WatchConfig,
    load_config,
    parse_config,
    parse_duration,
)
from monitor.config.echo import toml_text
from monitor.config.sinks import WebhookSinkConfig
from monitor.delivery.serial import memory_from_json, memory_to_json
from monitor.retry import MAX_RETRY_AFTER, parse_retry_after
from monitor.sinks.alertmanager import alerts_for
from monitor.sinks.context import SinkContext
from monitor.sinks.factory import build_sink
from monitor.sinks.http import HttpSink
from monitor.superoffice.models import BatchTaskInfo, ParseError, parse_task
from monitor.tracking.events import Event, EventType
from monitor.tracking.memory import Rules
from monitor.tracking.tracker import Tracker
from tests.conftest import make_task_event
from tests.e2e.conftest import CORPUS, Batchmon, base_config, corpus, wait_until
from tests.test_sinks_chat import FORMATS
from tests.test_sinks_render import LIVE, MENTION

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
CORPUS_TASKS = corpus("tasks")
CORPUS_CONFIGS = corpus("configs")
PLAIN_LIVE = r"<[!@h]"
#: The existing table's patterns, except that Google Chat's ``<br>`` is batchmon's own line
#: break (a newline in the name becomes one), not markup the name brought.
LIVE_MARKUP = {**LIVE, "googlechat": r"<(?!br>)"}
#: Examples per generated test; ``BATCHMON_FUZZ_EXAMPLES=5000`` for a longer hunt.
FAST = settings(
    max_examples=int(os.environ.get("BATCHMON_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _names() -> list[str]:
    names: list[str] = json.loads((CORPUS / "names.json").read_text())
    return names


def _retry_afters() -> list[str]:
    return (CORPUS / "retry_after.txt").read_text().splitlines()


# --- task bodies --------------------------------------------------------------------------------

#: Every property of BatchTaskInfo, and the keys of SuperOffice's error object.
TASK_KEYS = sorted(
    {str(f.alias) for f in BatchTaskInfo.model_fields.values()}
    | {"Error", "ErrorType", "ErrorMessage", "ErrorSource"}
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
STATE_NAMES = ["New", "Aquired", "Started", "Succeeded", "Failed", "SucceededManualCleanup"]
states = st.sampled_from(
    [*STATE_NAMES, "Unknown", "All", "started ", "3", "-1", 0, 1, 3, 5, 6, 7, 99999, -3, 2**63]
)
dates = st.datetimes(
    min_value=datetime(1, 1, 1),  # noqa: DTZ001 - naive on purpose: offsets are added as text
    max_value=datetime(9999, 12, 31, 23, 59, 59),  # noqa: DTZ001
).flatmap(
    lambda moment: st.sampled_from(
        [
            moment.isoformat(),
            moment.isoformat() + "Z",
            moment.isoformat() + "+14:00",
            moment.isoformat() + "-1400",
            moment.isoformat() + ".1234567-12:00",
            moment.strftime("%Y-%m-%dT%H:%M:60Z"),
        ]
    )
) | st.text(alphabet="0123456789-T:.+Z ", max_size=32)
task_values = json_values | states | dates | st.integers(min_value=-(2**70), max_value=2**70)
task_bodies = st.fixed_dictionaries(
    {"Id": st.integers(min_value=-(2**70), max_value=2**70) | json_values},
    optional={key: task_values for key in TASK_KEYS if key != "Id"},
)

#: The message sinks, built as the daemon builds them (their request() makes no I/O).
MESSAGE_SINKS: list[tuple[str, HttpSink]] = []
for _kind, _host, _escaping, _, _plain in FORMATS:
    _sink = build_sink(
        TypeAdapter(SinkConfig).validate_python(
            {"name": "ops", "type": _kind, "url": f"http://{_host}/hook"}
        ),
        SinkContext(None, status_url="https://batchmon.example.com/"),  # type: ignore[arg-type]
    )
    assert isinstance(_sink, HttpSink)
    MESSAGE_SINKS.append((_escaping, _sink))
_webhook = build_sink(
    WebhookSinkConfig.model_validate(
        {"name": "hook", "type": "webhook", "url": "http://127.0.0.1/h", "template": "{{ title }}"}
    ),
    SinkContext(None, status_url=None),  # type: ignore[arg-type]
)
assert isinstance(_webhook, HttpSink)
ALL_SINKS = [*MESSAGE_SINKS, ("webhook", _webhook)]


def downstream(info: BatchTaskInfo) -> list[Event]:
    """What batchmon does with a parsed task, short of I/O: detect, remember, store, send."""
    tracker = Tracker(Rules(progress_min_interval=timedelta(0), stall_after=timedelta(seconds=1)))
    events = tracker.observe(info, T0)
    events += tracker.observe(info, T0 + timedelta(seconds=5))
    tracker.eta(info.id, T0 + timedelta(seconds=5))
    stored = memory_to_json(tracker.tasks[info.id])
    assert info.id == memory_from_json(stored).info.id
    events += tracker.observe_gone(info.id, T0 + timedelta(seconds=10))
    for event in events:
        text = json.dumps(event.to_dict())
        assert event.id == Event.from_dict(json.loads(text)).id
        alerts_for(event)
        for _, sink in ALL_SINKS:
            sink.request(event)
    return events


def _parse_or_parse_error(body: bytes) -> BatchTaskInfo | None:
    try:
        return parse_task(body)
    except ParseError:
        return None


class TestTaskBodies:
    """Whatever the API sends as a BatchTaskInfo."""

    @FAST
    @given(body=task_bodies)
    def test_task_like_objects(self, body: dict[str, Any]) -> None:
        """Objects with the real keys and hostile values: parsed or ParseError, then used."""
        info = _parse_or_parse_error(json.dumps(body).encode())
        if info is not None:
            downstream(info)

    @FAST
    @given(body=json_values)
    def test_any_json(self, body: object) -> None:
        """Any JSON document: parsed or ParseError."""
        info = _parse_or_parse_error(json.dumps(body).encode())
        if info is not None:
            downstream(info)

    @FAST
    @given(body=st.binary(max_size=200))
    @example(body=b"\xef\xbb\xbf{}")
    @example(body=b'{"Id": 1, "Name": "\\udfff"}')
    def test_any_bytes(self, body: bytes) -> None:
        """Any bytes at all: parsed or ParseError (no sink here: see the surrogate test)."""
        _parse_or_parse_error(body)

    @pytest.mark.parametrize(
        "path",
        [pytest.param(p, id=p.name) for p in CORPUS_TASKS],
    )
    def test_corpus(self, path: Path) -> None:
        """Each collected body: parsed or ParseError, then through the whole pipeline."""
        info = _parse_or_parse_error(path.read_bytes())
        if info is not None:
            assert [] != downstream(info)


# --- configurations -----------------------------------------------------------------------------

#: Each section's models: one, or one per ``type`` of a union.
SECTIONS: dict[str, tuple[type[BaseModel], ...]] = {
    "superoffice": (SuperOfficeConfig,),
    "superoffice.auth": tuple(AUTH_TYPES.values()),
    "watch": (WatchConfig,),
    "poll": (PollConfig,),
    "state": (StateConfig,),
    "http": (HttpConfig,),
    "log": (LogConfig,),
    "sinks": tuple(SINK_TYPES.values()),
    "watch.discover": (DiscoverRule,),
}
MINIMAL: dict[str, Any] = {
    "superoffice": {
        "url": "http://127.0.0.1:9/api",
        "auth": {"type": "basic", "username": "u", "password": "p"},
    }
}


def _keys(models: tuple[type[BaseModel], ...]) -> list[str]:
    keys: set[str] = set()
    for model in models:
        keys |= set(model.model_fields)
        for secret in getattr(model, "_secrets", ()):
            keys |= {f"{secret}_file", f"{secret}_env"}
    return sorted(keys)


toml_scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "0",
            "90s",
            "1h30m",
            "-5s",
            "1e999s",
            "99999999999999d",
            "250ms",
            "5/2s",
            "inf",
            "slack",
            "webhook",
            "basic",
            "oauth",
            "http://127.0.0.1:1/x",
            "whsec_AAAA",
            "*",
            "task.*",
            "New",
            "[::1]:0",
            "127.0.0.1:99999",
            "/",
            "/dev/null",
            ".",
            "",
        ]
    )
    | st.datetimes(timezones=st.just(UTC))
    | st.dates()
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
overrides = st.lists(
    st.sampled_from(sorted(SECTIONS)).flatmap(
        lambda section: st.tuples(
            st.just(section), st.sampled_from(_keys(SECTIONS[section])), toml_values
        )
    ),
    max_size=5,
)


def _apply(changes: list[tuple[str, str, object]]) -> dict[str, Any]:
    """The minimal configuration with hostile values put at real keys.

    A change under a section an earlier change replaced by a non-table is left out.
    """
    data: dict[str, Any] = json.loads(json.dumps(MINIMAL))
    for section, key, value in changes:
        if section == "sinks":
            sinks = data.setdefault("sinks", [{"name": "s", "type": "log"}])
            table = sinks[0] if isinstance(sinks, list) and sinks else None
        elif section == "watch.discover":
            watch = data.setdefault("watch", {})
            rules = watch.setdefault("discover", [{}]) if isinstance(watch, dict) else None
            table = rules[0] if isinstance(rules, list) and rules else None
        elif section == "superoffice.auth":
            superoffice = data["superoffice"]
            table = superoffice.get("auth") if isinstance(superoffice, dict) else None
        else:
            table = data.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = value
    return data


def _load_or_config_error(path: Path) -> Config | None:
    try:
        return load_config(path)
    except ConfigError:
        return None


@pytest.fixture(name="scratch", scope="module")
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="batchmon-fuzz-") as directory:
        yield Path(directory)


class TestConfigurations:
    """Whatever is in the TOML file."""

    @FAST
    @given(changes=overrides)
    def test_hostile_values_at_real_keys(self, scratch: Path, changes: list[Any]) -> None:
        """Parsed directly and through a TOML file: a Config or ConfigError, nothing else."""
        data = _apply(changes)
        try:
            parse_config(data, base_dir=scratch)
        except ConfigError as exc:
            problems = exc.problems
        else:
            problems = ["accepted"]
        assert problems
        path = scratch / "fuzz.toml"
        try:
            path.write_text(toml_text(data))
        except (TypeError, UnicodeEncodeError):
            return  # not expressible in TOML (our writer's limits, not batchmon's)
        _load_or_config_error(path)

    @FAST
    @given(data=st.data())
    def test_mutated_valid_file(self, scratch: Path, data: st.DataObject) -> None:
        """A valid file with random edits: a Config or ConfigError, nothing else."""
        text = (CORPUS / "configs" / "valid-every-section.toml").read_text()
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(text)))
            cut = data.draw(st.integers(0, 5))
            text = text[:at] + data.draw(st.text(max_size=6)) + text[at + cut :]
        path = scratch / "mutated.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        _load_or_config_error(path)

    @FAST
    @given(text=st.text(alphabet=string.printable, max_size=300))
    def test_any_text(self, scratch: Path, text: str) -> None:
        """Any text: a Config or ConfigError."""
        path = scratch / "text.toml"
        path.write_text(text)
        _load_or_config_error(path)

    @pytest.mark.parametrize(
        "path",
        [pytest.param(p, id=p.name) for p in CORPUS_CONFIGS],
    )
    def test_check_config_on_the_corpus(self, path: Path) -> None:
        """``batchmon check-config`` exits 0 (valid-*) or 78 with problems, never a traceback."""
        result = CliRunner().invoke(main, ["check-config", str(path)])

        assert isinstance(result.exception, SystemExit | None), result.exception
        assert result.exit_code in ({0} if path.name.startswith("valid-") else {0, 78})
        assert "Traceback" not in result.output

    @FAST
    @given(
        seconds=st.floats(min_value=0, allow_nan=False, allow_infinity=False)
        | st.integers(min_value=0, max_value=10**30)
    )
    @example(seconds=1e308)
    def test_every_accepted_duration_is_usable(self, seconds: float) -> None:
        """A duration the config accepts is one a timedelta can hold; others are refused."""
        if seconds > 10 * 365 * 86400:
            with pytest.raises(ValueError, match="at most 10 years"):
                parse_duration(seconds)
        else:
            timedelta(seconds=parse_duration(seconds))


def _starts_or_refuses(launch: Callable[..., Batchmon], config: dict[str, Any]) -> None:
    batchmon = launch(config)

    def settled() -> bool:
        return bool(batchmon.events("batchmon_started")) or not batchmon.alive

    wait_until(settled, 30, "started or refused")
    if batchmon.alive:
        assert 0 == batchmon.stop()
        return
    stderr = batchmon.stderr()
    assert "Traceback" not in stderr, stderr[-2000:]
    assert batchmon.returncode in {73, 78}
    assert 1 <= len(stderr.strip().splitlines()) <= 10


class TestAcceptedConfigurationsRun:
    """What check-config accepts, ``batchmon run`` starts, or refuses in a line."""

    @pytest.mark.parametrize(
        "poll",
        [{"stall_after": 1e308}, {"progress_min_interval": "99999999999999999999999999d"}],
        ids=["stall_after 1e308 s", "progress_min_interval 1e26 days"],
    )
    def test_huge_durations(
        self, launch: Callable[..., Batchmon], tmp_path: Path, poll: dict[str, Any]
    ) -> None:
        """A duration too long for the clock is refused by the config, not by a traceback."""
        _starts_or_refuses(
            launch, base_config("http://127.0.0.1:9/api", tmp_path / "s.db", poll=poll)
        )

    def test_nul_in_the_state_path(self, launch: Callable[..., Batchmon], tmp_path: Path) -> None:
        """A state path with a NUL byte is refused in one line."""
        _starts_or_refuses(launch, base_config("http://127.0.0.1:9/api", tmp_path / "s\x00.db"))

    def test_reload_of_a_deeply_nested_file(
        self, launch: Callable[..., Batchmon], tmp_path: Path
    ) -> None:
        """SIGHUP with a 500-level array in the file: refused and logged, the daemon goes on."""
        config = base_config("http://127.0.0.1:9/api", tmp_path / "s.db")
        batchmon = launch(config)
        batchmon.wait_started()
        batchmon.config.write_text(
            toml_text(config) + "\n[extra]\nx = " + "[" * 500 + "]" * 500 + "\n"
        )
        assert batchmon.process is not None
        batchmon.process.send_signal(signal.SIGHUP)

        batchmon.wait_for(
            lambda line: line.get("event") == "config_reload_refused", 20, "the reload refused"
        )
        assert batchmon.alive


# --- Retry-After ----------------------------------------------------------------------------------

http_dates = st.datetimes(
    min_value=datetime(1, 1, 2),  # noqa: DTZ001 - hypothesis wants naive bounds
    max_value=datetime(9999, 12, 30),  # noqa: DTZ001
    timezones=st.just(UTC),
).map(lambda moment: format_datetime(moment, usegmt=True))
retry_values = (
    st.text(max_size=40)
    | http_dates
    | st.floats().map(str)
    | st.integers().map(str)
    | st.from_regex(
        r"(Mon|Tue|Foo), [0-9]{1,3} (Jan|Oct|Xyz) [0-9]{1,6} [0-9]{2}:[0-9]{2}:[0-9]{2} "
        r"(GMT|UTC|\+[0-9]{4}|-[0-9]{4}|[A-Z]{3})",
        fullmatch=True,
    )
)


class TestRetryAfter:
    """Whatever a server puts in ``Retry-After``."""

    @FAST
    @given(value=retry_values)
    def test_generated(self, value: str) -> None:
        """``None``, or seconds from 0 to the cap; never an exception."""
        wait = parse_retry_after(value, T0)

        assert wait is None or 0.0 <= wait <= MAX_RETRY_AFTER

    @pytest.mark.parametrize("value", _retry_afters())
    def test_corpus(self, value: str) -> None:
        """Each collected value: ``None`` or seconds from 0 to the cap."""
        wait = parse_retry_after(value, T0)

        assert wait is None or 0.0 <= wait <= MAX_RETRY_AFTER


# --- task names in chat ---------------------------------------------------------------------------

FRAGMENTS = [
    "@",
    "everyone",
    "here",
    "channel",
    "all",
    "<",
    ">",
    "!",
    "|",
    "*",
    "**",
    "_",
    "~",
    "`",
    "[",
    "]",
    "(",
    ")",
    "#",
    "-",
    "+",
    "{{",
    "}}",
    "\\",
    "&",
    "&lt;",
    "\n",
    "\r",
    " ",
    "\t",
    "\u200b",
    "\u00ad",
    "https://evil.example",
    "U123",
    "123",
    "^",
    "=",
    ":",
    ">>",
]
names = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=12).map(
    "".join
) | st.text(max_size=40)
_PLAIN_KEYS = {escaping: plain for _, _, escaping, _, plain in FORMATS}


def _strings(value: object, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _strings(item, name)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, key)


def _live(escaping: str, payload: object) -> tuple[int, int, list[str]]:
    """Live markup in a payload: (matches in marked-up keys, in plain keys, mentions)."""
    marked = plain = 0
    mentions = []
    for key, text in _strings(payload):
        if re.search(MENTION, text):
            mentions.append(text)
        if key in _PLAIN_KEYS[escaping]:
            plain += len(re.findall(PLAIN_LIVE, text))
        else:
            marked += len(re.findall(LIVE_MARKUP[escaping], text))
    return marked, plain, mentions


def _named(name: str, kind: EventType) -> Event:
    return make_task_event(
        kind, name=name, description=name, result=name, progress_description=name
    )


def assert_inert(name: str) -> None:
    """In every format, the name adds no live markup and no mention, whatever it holds."""
    for kind in (EventType.TASK_FAILED, EventType.TASK_PROGRESS, EventType.TASK_STALLED):
        for escaping, sink in MESSAGE_SINKS:
            payload = json.loads(sink.request(_named(name, kind)).body)
            baseline = json.loads(sink.request(_named("x", kind)).body)
            marked, plain, mentions = _live(escaping, payload)
            base_marked, base_plain, _ = _live(escaping, baseline)

            assert [] == mentions, (escaping, name)
            assert (base_marked, base_plain) >= (marked, plain), (escaping, name, payload)


class TestTaskNames:
    """Task names (and descriptions, results, steps) in every chat format."""

    @FAST
    @given(name=names)
    def test_generated(self, name: str) -> None:
        """No generated name mentions anyone or adds links or formatting."""
        assert_inert(name)

    @pytest.mark.parametrize("name", _names())
    def test_corpus(self, name: str) -> None:
        """No collected name mentions anyone or adds links or formatting."""
        assert_inert(name)

    @pytest.mark.parametrize("name", ["{{{DATE(2026-01-01T00:00:00Z, SHORT)}}", "{{{{"])
    def test_three_braces_in_teams(self, name: str) -> None:
        """Braces in any number cannot open an Adaptive Card function."""
        assert_inert(name)

    def test_lone_surrogate(self) -> None:
        """An event whose name holds half a surrogate pair still makes every message."""
        event = _named("Export \ud83d half", EventType.TASK_FAILED)

        for escaping, sink in ALL_SINKS:
            body = sink.request(event).body.decode("utf-8")
            json.loads(body)
            assert "Export \ufffd half" in body, escaping
