"""Posting JSON to a webhook, and what its answer means for the dispatcher.

:func:`post_json` sends one request and classifies the answer: 2xx is
delivered; 408, 429 and 5xx, timeouts and network errors are worth another
try (with the server's ``Retry-After``, or Discord's JSON ``retry_after``);
anything else (3xx, other 4xx) is permanent.  It never retries or sleeps
itself: that is the dispatcher's job.

Webhook URLs are credentials (the token is in the path or the query), so no
message, log line or exception made here contains the URL, not even through
a chained aiohttp exception or an answer that echoes the path: errors name
the sink instead.

:class:`HttpSink` is the shared shape of every sink that posts: it builds one
:class:`Request` per event and posts it.
"""

from __future__ import annotations

import abc
import functools
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Self

import aiohttp
import anyio.to_thread
from yarl import URL

from monitor.retry import MAX_RETRY_AFTER, parse_retry_after
from monitor.sinks.base import DeliveryError
from monitor.sinks.digest import Digest, digest_message
from monitor.sinks.render import Message, Renderer
from monitor.superoffice.redact import Redactor
from monitor.text import replace_surrogates

if TYPE_CHECKING:
    from monitor.config.sinks import MessageSinkConfig
    from monitor.sinks.context import SinkContext
    from monitor.tracking.events import Event

__all__ = ["ChatSink", "DestinationReply", "HttpSink", "Request", "json_body", "post_json"]

#: Read at most this much of an answer: a misbehaving server must not fill memory.
MAX_ANSWER_BYTES = 64 * 1024
#: How much of an answer goes into an error message.
EXCERPT_CHARS = 200
#: Path segments and query values at least this long are treated as secrets.
_SECRET_PART_CHARS = 6


@dataclass(frozen=True, slots=True)
class DestinationReply:
    """What the destination said to a delivered request."""

    status: int
    #: The reason phrase, treated like the body (servers echo the path in it too).
    reason: str
    #: The start of the answer's body, whitespace collapsed, secrets of the URL removed.
    excerpt: str

    def __str__(self) -> str:
        said = f": {self.excerpt}" if self.excerpt else ""
        return f"HTTP {self.status} {self.reason}{said}"


@dataclass(frozen=True, slots=True)
class Request:
    """One POST: the exact body bytes, extra headers, extra query parameters."""

    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def json_body(payload: object) -> bytes:
    """Compact UTF-8 JSON: the bytes that are sent (and, for webhooks, signed).

    A lone surrogate (half an emoji: not text, and not encodable) is sent as U+FFFD,
    as the API parser reads it, rather than failing the delivery.
    """
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        return replace_surrogates(text).encode()


def _secret_parts(url: URL) -> list[str]:
    """The parts of a URL that may carry its credentials, longest first."""
    parts = {str(url), url.path_qs, url.raw_path_qs, url.query_string, url.raw_query_string}
    parts.update(url.parts)
    parts.update(url.raw_parts)
    parts.update(url.query.values())
    return sorted(
        (p for p in parts if len(p) >= _SECRET_PART_CHARS and p != "/"), key=len, reverse=True
    )


@functools.lru_cache(maxsize=64)
def _url_redactor(url: URL) -> Redactor:
    """Masks the URL's secret parts in every form a server may echo them in."""
    return Redactor(_secret_parts(url))


def _excerpt(text: str, url: URL) -> str:
    """A short, single-line start of what the server said, with nothing of the URL in it.

    Used for the body and for the reason phrase alike: a server may put the request's
    path in either (``404 Not Found /hook/SECRET?token=SECRET``).
    """
    text = _url_redactor(url)(" ".join(text.split()))
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def _json_retry_after(body: bytes) -> float | None:
    """Discord's ``{"retry_after": 1.234}`` (seconds, a float), if the body has it."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    value = data.get("retry_after") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return min(max(float(value), 0.0), MAX_RETRY_AFTER)


def _retryable(status: int) -> bool:
    return status in (408, 429) or 500 <= status <= 599


async def post_json(
    session: aiohttp.ClientSession,
    url: str | URL,
    request: Request,
    *,
    sink: str,
    seconds: float,
) -> DestinationReply:
    """POST ``request`` to ``url``; the :class:`DestinationReply` if 2xx, else :class:`DeliveryError`.

    ``seconds`` bounds the whole exchange.  Redirects are not followed (a webhook that moved is a configuration
    problem, and following would re-send the body elsewhere).
    """
    target = URL(url) if isinstance(url, str) else url
    if request.params:
        target = target.extend_query(dict(request.params))
    headers = {"Content-Type": request.content_type, **request.headers}
    try:
        async with session.post(
            target,
            data=request.body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=seconds),
            allow_redirects=False,
        ) as response:
            body = await response.content.read(MAX_ANSWER_BYTES)
            status, reason = response.status, response.reason or ""
            retry_header = response.headers.get("Retry-After")
    except TimeoutError:
        raise DeliveryError(f"{sink}: no answer within {seconds:g} s") from None
    except aiohttp.InvalidURL:
        raise DeliveryError(f"{sink}: the configured URL is not valid", permanent=True) from None
    except aiohttp.ClientConnectorError as exc:
        # strerror may carry the address ("Connect call failed ('10.0.0.5', 443)"): name
        # only what went wrong.
        errno = exc.os_error.errno
        reason = os.strerror(errno) if errno else type(exc.os_error).__name__
        raise DeliveryError(f"{sink}: cannot connect: {reason}") from None
    except aiohttp.ClientError as exc:
        raise DeliveryError(f"{sink}: request failed: {type(exc).__name__}") from None
    answer = DestinationReply(
        status, _excerpt(reason, target), _excerpt(body.decode("utf-8", "replace"), target)
    )
    if 200 <= status <= 299:
        return answer
    if _retryable(status):
        wait = _json_retry_after(body) if status == 429 else None
        if wait is None:
            wait = parse_retry_after(retry_header, datetime.now(UTC))
        raise DeliveryError(f"{sink}: {answer}", retry_after=wait, status=status)
    raise DeliveryError(f"{sink}: {answer}", permanent=True, status=status)


_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


class HttpSink(abc.ABC):
    """A sink that POSTs one request per event to a configured URL.

    Subclasses say what to send (:meth:`request`); posting and judging the
    answer are shared.  The URL stays private: it is in no ``repr``.
    """

    #: Deliveries per second the destination tolerates by default.
    default_rate: float = 1.0
    #: One at a time: a chat channel shows messages in the order they were sent.
    default_concurrency: int = 1

    def __init__(
        self,
        name: str,
        url: str,
        session: aiohttp.ClientSession,
        *,
        timeout: float = 10.0,
        renderer: Renderer | None = None,
    ) -> None:
        if not _SCHEME_RE.match(url):
            raise ValueError(f"sink {name!r}: expected an http(s) URL")
        self.name = name
        self._url = URL(url)
        self._session = session
        self._timeout = timeout
        self._renderer = renderer or Renderer(name, template=None, status_url=None)

    @classmethod
    def from_config(cls, config: MessageSinkConfig, context: SinkContext, **options: Any) -> Self:
        """The sink a ``[[sinks]]`` entry describes (``url``, ``template``, ``timeout``);
        ``options`` are the constructor's keywords only some sink types take."""
        return cls(
            config.name,
            config.url.get_secret_value(),
            context.session,
            timeout=config.timeout,
            renderer=Renderer(
                config.name,
                template=config.template,
                status_url=context.status_url,
                tenant=context.tenant,
            ),
            **options,
        )

    @property
    def host(self) -> str:
        """The destination's host name (not a secret: no path, no query)."""
        return self._url.host or ""

    @abc.abstractmethod
    def request(self, event: Event) -> Request:
        """What to POST for ``event``."""

    async def send(self, event: Event) -> None:
        """Deliver ``event``, or raise :class:`DeliveryError`."""
        await self.deliver(event)

    async def deliver(self, event: Event) -> DestinationReply:
        """Deliver ``event`` and return the destination's answer (``batchmon test-sink``).

        The request is built in a worker thread: an operator's template may take its
        whole budget (:data:`~monitor.sinks.render.TEMPLATE_SECONDS`), and the event
        loop must keep serving /healthz and signals meanwhile.
        """
        request = await anyio.to_thread.run_sync(self.request, event)
        return await self._post(request)

    async def _post(self, request: Request) -> DestinationReply:
        """Post one request to the sink's URL (a subclass may judge the answer further)."""
        return await post_json(
            self._session, self._url, request, sink=self.name, seconds=self._timeout
        )


class ChatSink(HttpSink):
    """A sink whose messages people read: one per event, or one per digest of many.

    Subclasses say how a :class:`~monitor.sinks.render.Message` looks in their
    format (:meth:`message_request`); an event's message and a digest's go
    through the same escaping and limits.
    """

    @abc.abstractmethod
    def message_request(self, message: Message, time: datetime) -> Request:
        """What to POST for ``message`` (``time``: when what it says happened)."""

    def request(self, event: Event) -> Request:
        """The message of ``event``."""
        return self.message_request(self._renderer.render(event), event.time)

    async def send_digest(self, digest: Digest) -> None:
        """Post one message for all of ``digest``'s events, or raise :class:`DeliveryError`."""
        message = digest_message(digest, self._renderer.status_url, self._renderer.tenant)
        request = await anyio.to_thread.run_sync(self.message_request, message, digest.time)
        await self._post(request)
