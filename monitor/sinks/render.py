"""What a chat message says, computed once from an event, and how each format escapes it.

A :class:`Renderer` turns an :class:`~monitor.tracking.events.Event` into a
:class:`Message`: a title ("❌ Import contacts failed"), a tone (for colours),
facts (state, a text progress bar, elapsed time, ETA), the main text
(result, step, description, or an operator's template) and a link to the
status page.  The strings in a :class:`Message` are *raw*: each sink escapes
them for its own format with one of the functions here, because text from
the SuperOffice API is untrusted.  A task named ``@everyone <!channel>``
must ping nobody, and ``<https://evil|click>`` or ``**bold**`` must show as
typed.  :data:`ESCAPES` names the function of every format.

Limits are counted in UTF-16 code units (:func:`measure`), as the chat
services' JavaScript clients count them; that is never less than Python's
``len``, so a text that fits here fits there.
"""

from __future__ import annotations

import functools
import html
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, TypeVar, overload

import structlog
from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment, safe_range

from monitor.links import DEFAULT_TENANT, named_tenant, task_url
from monitor.superoffice.models import BatchTaskState
from monitor.tracking.events import KINDS, Event, EventType, TaskSummary, Tone, event_id

__all__ = [
    "ESCAPES",
    "TEMPLATE_MAX_CHARS",
    "TEMPLATE_SECONDS",
    "TEST_MESSAGE",
    "TEST_TITLE",
    "Message",
    "Renderer",
    "TemplateStopped",
    "Tone",
    "check_template",
    "compile_template",
    "escape_discord",
    "escape_googlechat",
    "escape_mattermost",
    "escape_plain",
    "escape_slack",
    "escape_teams",
    "escape_teams_legacy",
    "fit",
    "measure",
    "progress_bar",
    "render_within_budget",
    "tenant_named",
    "test_event",
]

log = structlog.get_logger("batchmon.sinks")

_V = TypeVar("_V")

ELLIPSIS = "…"
#: Cells of the text progress bar.
BAR_CELLS = 10
#: Longest main text any format gets; each format cuts further to its own limits.
MAX_TEXT = 4000
#: The headline and the text of ``batchmon test-sink``'s message (a ``batchmon.test`` event).
TEST_TITLE = "Test message from batchmon"
TEST_MESSAGE = (
    "Sent by batchmon test-sink to check this destination. No task changed; please ignore."
)


#: RGB colours of each tone (Slack's palette: readable in light and dark themes).
TONE_RGB: Mapping[Tone, int] = MappingProxyType(
    {Tone.GOOD: 0x2EB67D, Tone.BAD: 0xE01E5A, Tone.WARNING: 0xECB22E, Tone.INFO: 0x1D9BD1}
)


@dataclass(frozen=True, slots=True)
class Message:
    """What a human-readable message says, before any format's escaping."""

    #: Emoji, task name and what happened: "❌ Import contacts failed".
    title: str
    tone: Tone
    #: Label and value, ours only (never API text): state, progress, elapsed, ETA.
    facts: tuple[tuple[str, str], ...]
    #: The main text (a template's output, or result, step and description); may be empty.
    text: str
    #: "Task #212 · task.failed": which task and event, for the small print.
    footer: str
    #: The status page, when ``http.public_url`` is set.
    link: str | None
    task_id: int | None
    event_id: str
    #: The tenant, when it is not the default one (already named in title and footer).
    tenant: str | None = None


# --- measuring and cutting ---------------------------------------------------------------


def measure(text: str) -> int:
    """Length in UTF-16 code units: how the chat services count characters.

    A lone surrogate counts as the one unit it is in JavaScript (and as the U+FFFD
    :func:`~monitor.sinks.http.json_body` sends in its place), instead of failing.
    """
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _same(text: str) -> str:
    return text


def fit(text: str, limit: int, escape: Callable[[str], str] = _same) -> str:
    """``escape(text)``, cut so that it measures at most ``limit``, ending in "…" if cut.

    The raw text is cut before escaping, so an escape sequence or entity is
    never split.
    """
    escaped = escape(text)
    if measure(escaped) <= limit:
        return escaped
    keep = min(len(text), limit)
    while keep > 0:
        candidate = escape(text[:keep].rstrip()) + ELLIPSIS
        excess = measure(candidate) - limit
        if excess <= 0:
            return candidate
        keep -= max(1, excess // 2)
    return ELLIPSIS if limit >= 1 else ""


# --- escaping ----------------------------------------------------------------------------

_ZWSP = "\u200b"
_SOFT_HYPHEN = "\u00ad"
#: An "@" that could start a mention (``@everyone``, ``@here``, ``<@123>``, ``@user``).
_AT = re.compile(r"@(?=\S)")


def _no_mentions(text: str) -> str:
    """Put a zero-width space after every "@" that could start a mention."""
    return _AT.sub("@" + _ZWSP, text)


def escape_plain(text: str) -> str:
    """For fields shown as plain text (notifications, fallbacks): no mention can form."""
    return _no_mentions(text).replace("<", "<" + _ZWSP)


#: Slack has no escape for its formatting marks; look-alike characters show the same
#: text without the formatting (as jsx-slack's ``<Escape>`` does).
_SLACK_MARKS = {"*": "\u2217", "_": "\u02cd", "~": "\u223c", "`": "\u02cb"}
_SLACK_MARK = re.compile(r"[*_~`]")


def _slack_mark(match: re.Match[str]) -> str:
    """Replace a mark that could open or close formatting; keep ``snake_case`` as is."""
    text, at = match.string, match.start()
    inside_word = 0 < at < len(text) - 1 and text[at - 1].isalnum() and text[at + 1].isalnum()
    return match[0] if inside_word else _SLACK_MARKS[match[0]]


def escape_slack(text: str) -> str:
    """For Slack ``mrkdwn`` (and the top-level ``text``).

    ``&``, ``<`` and ``>`` become entities, as Slack asks, so no link,
    mention (``<!channel>``, ``<@U1>``) or date can form; a ``>`` starting a
    line gets a soft hyphen so it does not quote; formatting marks become
    look-alikes; "@" gets a zero-width space (``verbatim`` is off in the
    fallback text).
    """
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    escaped = re.sub(r"(?m)^(\s*)&gt;", r"\1" + _SOFT_HYPHEN + "&gt;", escaped)
    return _no_mentions(_SLACK_MARK.sub(_slack_mark, escaped))


#: Discord's markdown takes a backslash before any punctuation as "literally this".
_DISCORD_SPECIAL = re.compile(r"([\\*_~`|<>\[\]()#])")
_LINE_START_LIST = re.compile(r"(?m)^(\s*)([-+])")


def escape_discord(text: str) -> str:
    """For Discord embeds and content: markdown shown as typed, mentions broken.

    ``allowed_mentions: {"parse": []}`` already stops pings; this also stops
    ``<@123>`` from rendering as a mention and ``[click](https://evil)`` as a
    disguised link.
    """
    escaped = _DISCORD_SPECIAL.sub(r"\\\1", text)
    escaped = _LINE_START_LIST.sub(r"\1\\\2", escaped)
    return _no_mentions(escaped)


_MATTERMOST_SPECIAL = re.compile(r"([\\*_~`|\[\]()#!=])")


def escape_mattermost(text: str) -> str:
    """For Mattermost markdown (CommonMark): backslash escapes, entities, no mentions.

    ``<``, ``>`` and ``&`` become entities rather than backslash escapes, because
    Mattermost turns ``<!channel>`` and ``<url|text>`` into mentions and links
    (Slack compatibility) before any markdown is read.
    """
    escaped = _MATTERMOST_SPECIAL.sub(r"\\\1", text)
    escaped = _LINE_START_LIST.sub(r"\1\\\2", escaped)
    escaped = escaped.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _no_mentions(escaped)


def escape_teams(text: str) -> str:
    """For an Adaptive Card ``TextRun`` (no markdown there): no mention, no date function.

    Markdown is not read in a ``TextRun``, so marks stay as typed; ``{{`` would
    start a ``{{DATE(...)}}`` function.
    """
    return re.sub(r"\{(?=\{)", "{" + _ZWSP, _no_mentions(text))


_TEAMS_LEGACY_SPECIAL = re.compile(r"([\\*_~`|\[\]()#!])")


def escape_teams_legacy(text: str) -> str:
    """For the legacy MessageCard ``text`` (markdown and a little HTML)."""
    escaped = _TEAMS_LEGACY_SPECIAL.sub(r"\\\1", text)
    escaped = _LINE_START_LIST.sub(r"\1\\\2", escaped)
    return _no_mentions(html.escape(escaped, quote=False))


def escape_googlechat(text: str) -> str:
    """For Google Chat card text (a small HTML subset; markdown is not read there)."""
    return _no_mentions(html.escape(text, quote=False))


#: The escaping function of every format, by name.
ESCAPES: Mapping[str, Callable[[str], str]] = MappingProxyType(
    {
        "plain": escape_plain,
        "slack": escape_slack,
        "discord": escape_discord,
        "mattermost": escape_mattermost,
        "teams": escape_teams,
        "teams_legacy": escape_teams_legacy,
        "googlechat": escape_googlechat,
    }
)


# --- what the message says ---------------------------------------------------------------


def progress_bar(percent: int | None) -> str | None:
    """``▰▰▰▰▱▱▱▱▱▱ 40 %``: the bar and the number, clamped to 0..100; ``None`` if unknown."""
    if percent is None:
        return None
    shown = min(max(percent, 0), 100)
    filled = shown * BAR_CELLS // 100
    return "▰" * filled + "▱" * (BAR_CELLS - filled) + f" {shown} %"


def _duration(delta: timedelta) -> str:
    """``45 s``, ``12 min``, ``1 h 05 min``, ``2 d 3 h``: short enough for a phone."""
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _eta(event: Event) -> str | None:
    """When the task should finish, in UTC, and how far that is from the event."""
    if event.eta is None:
        return None
    eta = event.eta.astimezone(UTC)
    time = event.time.astimezone(UTC)
    when = f"{eta:%H:%M} UTC" if eta.date() == time.date() else f"{eta:%Y-%m-%d %H:%M} UTC"
    if eta <= time:
        return when
    return f"{when} (in {_duration(eta - time)})"


def _task_name(task: TaskSummary) -> str:
    return task.name or f"Task {task.id}"


def _title(event: Event) -> str:
    """The headline: an emoji, the task, what happened (see ``KINDS``)."""
    task = event.task
    if task is None:
        name, state, progress = "A task", BatchTaskState.UNKNOWN.value, None
    else:
        name, state, progress = _task_name(task), task.state.value, task.progress
    percent = "progressing" if progress is None else f"{min(max(progress, 0), 100)} %"
    return KINDS[event.type].title.format(name=name, state=state, progress=percent)


_STATE_TONES: Mapping[BatchTaskState, Tone] = MappingProxyType(
    {
        BatchTaskState.SUCCEEDED: Tone.GOOD,
        BatchTaskState.SUCCEEDED_MANUAL_CLEANUP: Tone.GOOD,
        BatchTaskState.FAILED: Tone.BAD,
        BatchTaskState.UNKNOWN: Tone.WARNING,
    }
)


def _tone(event: Event) -> Tone:
    tone = KINDS[event.type].tone
    if tone is not None:
        return tone
    if event.task is not None:
        return _STATE_TONES.get(event.task.state, Tone.INFO)
    return Tone.INFO


def _facts(event: Event) -> tuple[tuple[str, str], ...]:
    """State, progress, elapsed time and ETA: values batchmon computed, no API text."""
    task = event.task
    if task is None:
        return ()
    facts = [("State", task.state.value)]
    bar = progress_bar(task.progress)
    if bar is not None:
        facts.append(("Progress", bar))
    if task.last_started is not None and event.time >= task.last_started:
        facts.append(("Elapsed", _duration(event.time - task.last_started)))
    eta = _eta(event) if task.state.is_active else None
    if eta is not None:
        facts.append(("ETA", eta))
    if event.first_seen:
        facts.append(("Seen", "already so when batchmon first saw the task"))
    return tuple(facts)


def _default_text(event: Event) -> str:
    """What happened in words: the event's message, the result, the step, the description."""
    lines = [event.message] if event.message else []
    task = event.task
    if task is not None:
        if task.result:
            lines.append(f"Result: {task.result}")
        if task.progress_description and not task.state.is_terminal:
            lines.append(f"Step: {task.progress_description}")
        if task.description:
            lines.append(task.description)
    return "\n".join(line.strip() for line in lines if line.strip())


def _footer(event: Event) -> str:
    if event.task is None:
        return f"batchmon · {event.type.value}"
    return f"Task #{event.task.id} · {event.type.value}"


def tenant_named(tenant: str | None, text: str) -> str:
    """``acme · text``: a message's title and footer name a tenant other than the default.

    The name comes first, so cutting a long title to a format's limit keeps it.
    """
    return f"{tenant} · {text}" if tenant else text


# --- templates ---------------------------------------------------------------------------

#: CPU time one template render may take (the rendering thread's, so a busy machine does
#: not fail a good template): far more than any message needs, little enough that a
#: runaway template costs a delivery 50 ms, not the daemon.
TEMPLATE_SECONDS = 0.05
#: Most characters one render may produce: 16 times the longest text any chat format
#: shows (:data:`MAX_TEXT`), room for a webhook's ``text``, which is not cut; beyond
#: that a template is writing a file, not a message.
TEMPLATE_MAX_CHARS = 64 * 1024
#: The event a template is tried on by :func:`check_template`.
_SAMPLE_TIME = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class TemplateStopped(Exception):
    """A template ran out of its budget (time or size) and was stopped."""


@dataclass(frozen=True, slots=True)
class _Budget:
    """The deadline of the render in progress, on the renderer's clock."""

    clock: Callable[[], float]
    deadline: float

    def check(self) -> None:
        if self.clock() > self.deadline:
            raise TemplateStopped(f"took longer than {TEMPLATE_SECONDS * 1000:g} ms")


#: Set for the duration of one render, in the thread doing it.
_BUDGET: ContextVar[_Budget | None] = ContextVar("template_budget", default=None)


def _check_budget() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.check()


def _checked(values: Iterable[_V]) -> Iterator[_V]:
    """``values``, with the budget checked before each: loops that write nothing stop too."""
    for value in values:
        _check_budget()
        yield value


class _Range(Sequence[int]):
    """The sandbox's ``range`` (at most 100,000 numbers), checking the budget per number."""

    def __init__(self, *args: int) -> None:
        self._range = safe_range(*args)

    def __len__(self) -> int:
        return len(self._range)

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...

    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        _check_budget()
        return self._range[index]

    def __iter__(self) -> Iterator[int]:
        return _checked(self._range)

    def __reversed__(self) -> Iterator[int]:
        return _checked(reversed(self._range))


#: A width or precision in a ``%`` or ``{}`` format: ``%0999999999d``, ``{:>999999999}``.
_FORMAT_WIDTH = re.compile(r"(?:%[#0 +-]*|:.?[<>^=]?[+ -]?#?0?|\.)(\d+)")


def _wide_format(text: str) -> bool:
    """Whether a format string asks for a field wider than the size budget."""
    return any(int(width) > TEMPLATE_MAX_CHARS for width in _FORMAT_WIDTH.findall(text))


def _too_big(operator: str, left: object, right: object) -> bool:
    """Whether ``left <operator> right`` would build a value beyond the size budget."""
    if operator == "%":
        return isinstance(left, str) and _wide_format(left)
    if operator == "*":
        for sized, times in ((left, right), (right, left)):
            if isinstance(sized, str | list | tuple) and isinstance(times, int):
                return len(sized) * times > TEMPLATE_MAX_CHARS
        return False
    # "**": the bits of an integer power (a float power overflows by itself).
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        return abs(left).bit_length() * right > TEMPLATE_MAX_CHARS * 8
    return False


#: Built-in filters whose integer arguments say how big their result is (widths, counts).
_SIZING_FILTERS = frozenset({"center", "indent", "wordwrap", "batch", "slice"})


def _bounded_filter(name: str, function: Callable[..., object]) -> Callable[..., object]:
    """A filter that checks the budget, and refuses sizes (``center(10**9)``) beyond it."""
    skip = 2 if getattr(function, "jinja_pass_arg", None) is not None else 1
    sizing = name in _SIZING_FILTERS

    @functools.wraps(function)
    def bounded(*args: object, **kwargs: object) -> object:
        _check_budget()
        if name == "format" and isinstance(args[0], str) and _wide_format(args[0]):
            raise TemplateStopped(f"a format wider than {TEMPLATE_MAX_CHARS}")
        if sizing and any(
            isinstance(value, int) and abs(value) > TEMPLATE_MAX_CHARS
            for value in (*args[skip:], *kwargs.values())
        ):
            raise TemplateStopped(f"a filter argument over {TEMPLATE_MAX_CHARS}")
        return function(*args, **kwargs)

    return bounded


class _BudgetedCodeGenerator(CodeGenerator):
    """Compiles every ``{% for %}`` to iterate through :func:`_checked`."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        # Before the generator collects the filters a template uses.
        for loop in node.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _CHECKED_FILTER, [], [], None, None)
        super().visit_Template(node, frame)


_CHECKED_FILTER = "_budget_checked"


class _BudgetedEnvironment(SandboxedEnvironment):
    """The sandbox, with the budget checked at every loop step, call, lookup and operator.

    A thread cannot be stopped from outside, so the render stops itself: whatever a
    template does (loops that write nothing, recursion through macros, filters), it
    passes through one of these points often.  One C-level operation cannot be
    interrupted, so operators and filters that would build a value beyond the size
    budget are refused before they run.
    """

    code_generator_class = _BudgetedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(autoescape=False, undefined=StrictUndefined)
        self.globals["range"] = _Range
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.filters[_CHECKED_FILTER] = _checked

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_budget()
        if _too_big(operator, left, right):
            raise TemplateStopped(f"{operator!r} would build a value over {TEMPLATE_MAX_CHARS}")
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None and _wide_format(value.__self__):

            def refused(*args: object, **kwargs: object) -> str:
                raise TemplateStopped(f"a format wider than {TEMPLATE_MAX_CHARS}")

            return refused
        return wrapped

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_budget()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_budget()
        return super().getitem(obj, argument)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _check_budget()
        return super().call(context, obj, *args, **kwargs)


_ENVIRONMENT = _BudgetedEnvironment()


def compile_template(source: str) -> Template:
    """A sink's message template, compiled; :class:`ValueError` saying where it is wrong.

    Templates are Jinja2 in a sandbox, with ``event`` (the event's dict form),
    ``task`` (its task, or ``None``), ``title``, ``progress_bar``, ``status_url``
    and ``tenant`` (its name; ``"default"`` without ``[[tenants]]``); an undefined
    name is an error, not an empty string.
    """
    try:
        return _ENVIRONMENT.from_string(source)
    except TemplateSyntaxError as exc:
        raise ValueError(f"template line {exc.lineno}: {exc.message}") from None


def render_within_budget(
    template: Template, clock: Callable[[], float], **variables: object
) -> str:
    """The template's output; :class:`TemplateStopped` once it is over time or size.

    ``clock`` measures the time (seconds, any origin); the output is produced piece
    by piece and measured as it grows.
    """
    budget = _Budget(clock, clock() + TEMPLATE_SECONDS)
    token = _BUDGET.set(budget)
    try:
        pieces: list[str] = []
        size = 0
        for piece in template.generate(**variables):
            size += len(piece)
            if size > TEMPLATE_MAX_CHARS:
                raise TemplateStopped(f"wrote more than {TEMPLATE_MAX_CHARS} characters")
            budget.check()
            pieces.append(piece)
        return "".join(pieces)
    finally:
        _BUDGET.reset(token)


def check_template(source: str, clock: Callable[[], float] = time.thread_time) -> None:
    """Compile ``source`` and try it on a sample event; :class:`ValueError` if either fails.

    Only the budget counts in the trial: a template may rightly fail on the sample
    (it names a field only some events have), but one that is stopped on it would be
    stopped on every event.
    """
    template = compile_template(source)
    event = test_event(_SAMPLE_TIME)
    try:
        _render_event(
            template, event, _title(event), status_url=None, tenant=DEFAULT_TENANT, clock=clock
        )
    except TemplateStopped as exc:
        raise ValueError(f"stopped on a sample event: {exc}") from None
    except Exception:  # noqa: BLE001, S110 - see the docstring
        pass


def _render_event(
    template: Template,
    event: Event,
    title: str,
    *,
    status_url: str | None,
    tenant: str,
    clock: Callable[[], float],
) -> str:
    data = event.to_dict()
    return render_within_budget(
        template,
        clock,
        event=data,
        task=data["task"],
        title=title,
        progress_bar=progress_bar(event.task.progress) if event.task else None,
        status_url=status_url,
        tenant=tenant,
    ).strip()


class Renderer:
    """Computes each event's :class:`Message` for one sink (its template, its link, its tenant).

    A tenant other than the default one is named in the title and the footer
    ("acme · ❌ Export failed") and in the link's query (``?tenant=acme``).  Rendering is CPU work: sinks call it off the event loop, and a template is
    stopped when it exceeds its budget (:data:`TEMPLATE_SECONDS` on ``clock``, the
    rendering thread's CPU time by default, and :data:`TEMPLATE_MAX_CHARS`).
    """

    def __init__(
        self,
        sink: str,
        *,
        template: str | None,
        status_url: str | None,
        clock: Callable[[], float] = time.thread_time,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        """Compile the template now, so that a bad one stops start-up, not a delivery."""
        self.sink = sink
        self.status_url = status_url
        self.tenant = tenant
        self._clock = clock
        #: The kinds of failure already logged: one line per sink, not one per event.
        self._logged: set[str] = set()
        self._lock = threading.Lock()
        try:
            self._template = compile_template(template) if template is not None else None
        except ValueError as exc:
            raise ValueError(f"sink {sink!r}: {exc}") from None

    def render(self, event: Event) -> Message:
        """The message for ``event``."""
        title = _title(event)
        task = event.task
        text = _default_text(event)
        if self._template is not None:
            text = self._templated(self._template, event, title, text)
        named = named_tenant(self.tenant)
        return Message(
            title=tenant_named(named, title),
            tone=_tone(event),
            facts=_facts(event),
            text=fit(text, MAX_TEXT),
            footer=tenant_named(named, _footer(event)),
            link=task_url(self.status_url, task.id if task is not None else None, named),
            task_id=task.id if task is not None else None,
            event_id=event.id,
            tenant=named,
        )

    def text(self, event: Event) -> str | None:
        """The template's output for ``event`` (``None`` without a template)."""
        if self._template is None:
            return None
        return self._templated(self._template, event, _title(event), _default_text(event))

    def _templated(self, template: Template, event: Event, title: str, default: str) -> str:
        """The template's output, or ``default`` and a warning the first time it fails so."""
        try:
            return _render_event(
                template,
                event,
                title,
                status_url=self.status_url,
                tenant=self.tenant,
                clock=self._clock,
            )
        except TemplateStopped as exc:
            self._warn_once("template_stopped", event, str(exc))
        except Exception as exc:  # noqa: BLE001 - a broken template must not stop delivery
            self._warn_once("template_failed", event, f"{type(exc).__name__}: {exc}")
        return default

    def _warn_once(self, what: str, event: Event, error: str) -> None:
        """Log a failure of this kind the first time only (renders run in worker threads)."""
        kind = what if what == "template_stopped" else error.partition(":")[0]
        with self._lock:
            if kind in self._logged:
                return
            self._logged.add(kind)
        log.warning(
            what,
            sink=self.sink,
            event_id=event.id,
            error=error,
            consequence="the default text is sent instead; logged once per sink",
        )


def test_event(now: datetime) -> Event:
    """A ``batchmon.test`` message: about no task, saying it is a test."""
    return Event(
        id=event_id(EventType.BATCHMON_TEST.value, now.isoformat()),
        type=EventType.BATCHMON_TEST,
        time=now,
        message=TEST_MESSAGE,
    )
