"""The HTTP server's listening side: a cap on connections, deadlines, refusals, not tracebacks.

aiohttp bounds neither how many connections it holds nor how long a request head may take
(its keep-alive timer closes idle connections, and a head that trickles in is not idle), so
300 sockets that send half a request hold 300 file descriptors for as long as they like.  At the open-file limit
asyncio's accept loop logs a traceback for every attempt, and the poller's own connections
fail with "Too many open files".

Here each connection has ``head_timeout`` from its accept, or from the end of its last
answer, to deliver a complete request head, and ``answer_timeout`` for the answer.  When
every slot is taken, the connection that has waited longest for its request makes room: a
health check sends its request at once, a slow-loris never does.  When every slot is busy
answering, the newcomer gets a 503.  Short of file descriptors anyway (something else used
them up), a reserved one takes the waiting connection and refuses it.  Each such episode is
logged once when it starts and once, with its count, when it is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from monitor.http_access import SECURITY_HEADERS

__all__ = [
    "ANSWER_TIMEOUT",
    "CONNECTIONS",
    "HEAD_TIMEOUT",
    "MAX_CONNECTIONS",
    "SERVER_LOG",
    "Connections",
    "GuardedSite",
    "Limits",
    "RequestErrors",
    "connection_cap",
    "track_requests",
]

log = structlog.get_logger("batchmon.http")

#: Prometheus, a few browsers and ``batchmon watch`` need a handful; the rest is headroom.
MAX_CONNECTIONS: Final = 128
#: Seconds to deliver a complete request head (slow headers, idle keep-alive alike).
HEAD_TIMEOUT: Final = 10.0
#: Seconds for a request from its complete head to the end of its answer.
ANSWER_TIMEOUT: Final = 60.0
#: accept() errors that say the process or the system is out of something, not the peer.
_SHORT_OF: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept() errors of one connection that went wrong before it was taken (accept(2), Linux).
_RETRY: Final = frozenset(
    {
        errno.ECONNABORTED,
        errno.EPROTO,
        errno.EPERM,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENOPROTOOPT,
        errno.EOPNOTSUPP,
    }
)
#: How much of a refused connection's request is read before closing it.
_DRAIN: Final = 65536
#: How long to wait before accepting again when not even the reserved descriptor helped.
_RETRY_AFTER_SHORTAGE: Final = 0.1

_REFUSAL_TEXT: Final = b"too many connections; try again in a few seconds\n"
#: Written straight to a socket that gets no slot (with the security headers of every answer).
_REFUSAL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Retry-After: 5\r\n"
    b"Connection: close\r\n"
    b"%s"
    b"\r\n%s"
    % (
        len(_REFUSAL_TEXT),
        "".join(f"{name}: {value}\r\n" for name, value in SECURITY_HEADERS.items()).encode(),
        _REFUSAL_TEXT,
    )
)


def connection_cap(open_files: int, wanted: int = MAX_CONNECTIONS) -> int:
    """Connections to allow with this open-file limit: at most a quarter of it.

    The other three quarters are for the API and sink connections, SQLite and the log;
    ``-1`` is ``RLIM_INFINITY``.
    """
    if open_files < 0:
        return wanted
    return max(1, min(wanted, open_files // 4))


@dataclass(frozen=True, slots=True)
class Limits:
    """How many connections, and how long each may take for what."""

    connections: int = MAX_CONNECTIONS
    head_timeout: float = HEAD_TIMEOUT
    answer_timeout: float = ANSWER_TIMEOUT

    def within_open_files(self) -> Limits:
        """These limits, with the connection cap lowered to fit the process's open-file limit."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return Limits(
            connection_cap(soft, self.connections), self.head_timeout, self.answer_timeout
        )


@dataclass(slots=True, eq=False)
class _Connection:
    transport: asyncio.Transport
    #: Loop time of the accept or of the end of the last answer.
    since: float
    #: A request's handler is running.
    busy: bool = False
    timer: asyncio.TimerHandle | None = None


class Connections:
    """The open connections of one server: who gets a slot, and the deadlines of each.

    :meth:`request_started` and :meth:`request_ended` are called around each request (a
    middleware does), so that a connection is known to be waiting for its next request
    head or busy answering.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._open: dict[asyncio.BaseTransport, _Connection] = {}
        #: Connections shed (evicted or refused) in the current episode; ``None`` outside one.
        self._shed: int | None = None

    def admit(self) -> bool:
        """Whether one more connection may come in, making room for it when all slots are taken."""
        self._prune()
        limit = self.limits.connections
        if len(self._open) < limit:
            if self._shed is not None and len(self._open) <= limit // 2:
                log.info("http_connections_recovered", shed=self._shed)
                self._shed = None
            return True
        self._shedding("all connection slots are taken")
        waiting = [c for c in self._open.values() if not c.busy]
        if not waiting:
            return False
        self._drop(min(waiting, key=lambda c: c.since))
        return True

    def short_of_files(self, error: OSError) -> None:
        """A connection was refused for lack of descriptors or memory (counted in the episode)."""
        self._shedding(f"cannot accept: {error.strerror or error}")

    def opened(self, transport: asyncio.Transport) -> None:
        """A connection got its slot; its request head is due within ``head_timeout``."""
        connection = _Connection(transport, asyncio.get_running_loop().time())
        self._open[transport] = connection
        self._arm(connection, self.limits.head_timeout)

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        """A complete request head arrived; its answer is due within ``answer_timeout``."""
        connection = self._open.get(transport) if transport is not None else None
        if connection is not None:
            connection.busy = True
            self._arm(connection, self.limits.answer_timeout)

    def request_ended(self, transport: asyncio.BaseTransport | None) -> None:
        """The answer is on its way; the next request head is due within ``head_timeout``."""
        connection = self._open.get(transport) if transport is not None else None
        if connection is not None:
            connection.busy = False
            connection.since = asyncio.get_running_loop().time()
            self._arm(connection, self.limits.head_timeout)

    def close(self) -> None:
        """Stop every deadline (the server closes the connections themselves)."""
        for connection in self._open.values():
            if connection.timer is not None:
                connection.timer.cancel()
        self._open.clear()

    def _shedding(self, reason: str) -> None:
        if self._shed is None:
            log.warning(
                "http_connections_shed",
                reason=reason,
                limit=self.limits.connections,
                open=len(self._open),
            )
            self._shed = 0
        self._shed += 1

    def _arm(self, connection: _Connection, seconds: float) -> None:
        if connection.timer is not None:
            connection.timer.cancel()
        loop = asyncio.get_running_loop()
        connection.timer = loop.call_later(seconds, self._drop, connection)

    def _drop(self, connection: _Connection) -> None:
        """Close a connection whose slot is needed or whose deadline passed."""
        if connection.timer is not None:
            connection.timer.cancel()
        self._open.pop(connection.transport, None)
        transport = connection.transport
        if transport.get_write_buffer_size():
            transport.abort()  # a peer that does not read would keep a close() waiting
        else:
            transport.close()

    def _prune(self) -> None:
        """Forget the connections that closed by themselves."""
        for connection in [c for c in self._open.values() if c.transport.is_closing()]:
            if connection.timer is not None:
                connection.timer.cancel()
            del self._open[connection.transport]


CONNECTIONS = web.AppKey("connections", Connections)


class RequestErrors(logging.Filter):
    """aiohttp's traceback per failed request, made bounded.

    A malformed request (a 20 KB header, a garbage request line) is answered 400 and is the
    client's problem: no record.  A handler that fails is batchmon's: its first traceback
    is kept, then one a minute with the count of those left out, so that a request that
    can make a handler fail cannot also fill the journal.
    """

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._every = every
        self._clock = clock
        self._quiet_until = 0.0
        self._left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            return False
        now = self._clock()
        if now < self._quiet_until:
            self._left_out += 1
            return False
        self._quiet_until = now + self._every
        if self._left_out:
            record.msg = f"{record.msg} ({self._left_out} more left out since the last one)"
            self._left_out = 0
        return True


#: The logger aiohttp's request handlers log their errors to (instead of aiohttp.server).
SERVER_LOG: Final = logging.getLogger("batchmon.http.server")
SERVER_LOG.addFilter(RequestErrors())


@web.middleware
async def track_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tell the app's :class:`Connections` (if served by a :class:`GuardedSite`) about a request."""
    connections = request.app.get(CONNECTIONS)
    if connections is None:
        return await handler(request)
    connections.request_started(request.transport)
    try:
        return await handler(request)
    finally:
        connections.request_ended(request.transport)


def _refuse(sock: socket.socket) -> None:
    """A 503 straight on the socket, then close it.

    What the client sent already is read first: closing a socket with unread data resets
    the connection, and the client would see the reset instead of the 503.
    """
    sock.setblocking(False)
    with contextlib.suppress(OSError):
        sock.recv(_DRAIN)
    with contextlib.suppress(OSError):
        sock.send(_REFUSAL)
        sock.shutdown(socket.SHUT_WR)
    sock.close()


class _Acceptor(asyncio.AbstractServer):
    """The accept loops of one site, one per bound socket."""

    def __init__(
        self,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], asyncio.Protocol],
        connections: Connections,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = sockets
        self._factory = protocol_factory
        self._connections = connections
        #: Kept open to be closed when accept() finds no descriptor left (then reopened).
        self._reserve: int | None = os.open(os.devnull, os.O_RDONLY)
        self._tasks = [self._loop.create_task(self._accept(sock)) for sock in sockets]

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return any(not task.done() for task in self._tasks)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for sock in self._sockets:
            sock.close()
        self._connections.close()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    async def start_serving(self) -> None:
        """Serving starts with the accept loops, in ``__init__``."""

    async def serve_forever(self) -> None:
        await self.wait_closed()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, listening: socket.socket) -> None:
        # accept() fails for lack of a descriptor even when no connection waits (Linux
        # takes the descriptor first): then wait for one, and try again before refusing it.
        waited = False
        while True:
            try:
                sock, _ = await self._loop.sock_accept(listening)
            except OSError as error:
                if error.errno in _SHORT_OF:
                    if waited:
                        await self._refuse_with_reserve(listening, error)
                    else:
                        await self._readable(listening)
                    waited = not waited
                    continue
                if error.errno in _RETRY:
                    continue
                log.error("http_accept_failed", error=str(error))
                return
            waited = False
            if not self._connections.admit():
                _refuse(sock)
                continue
            try:
                transport, _ = await self._loop.connect_accepted_socket(self._factory, sock)
            except OSError:
                sock.close()
                continue
            assert isinstance(transport, asyncio.Transport)
            self._connections.opened(transport)

    async def _refuse_with_reserve(self, listening: socket.socket, error: OSError) -> None:
        """Out of descriptors: take the waiting connection with the reserved one, and refuse it."""
        if self._reserve is None:
            with contextlib.suppress(OSError):
                self._reserve = os.open(os.devnull, os.O_RDONLY)
            await asyncio.sleep(_RETRY_AFTER_SHORTAGE)
            return
        os.close(self._reserve)
        self._reserve = None
        try:
            sock, _ = listening.accept()
        except OSError:
            pass  # taken by the other accept, or gone
        else:
            self._connections.short_of_files(error)
            _refuse(sock)
        with contextlib.suppress(OSError):
            self._reserve = os.open(os.devnull, os.O_RDONLY)

    async def _readable(self, listening: socket.socket) -> None:
        """Until a connection waits on the listening socket."""
        ready = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_reader(listening.fileno(), wake)
        try:
            await ready
        finally:
            self._loop.remove_reader(listening.fileno())


async def _bind(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to, as asyncio's create_server."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through :class:`Connections` (aiohttp's TCPSite takes all)."""

    __slots__ = ("_connections", "_host", "_port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, connections: Connections
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._connections = connections

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host, port=self._port))

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        sockets = await _bind(self._host, self._port, self._backlog)
        self._port = sockets[0].getsockname()[1]
        self._server = _Acceptor(sockets, server, self._connections)
