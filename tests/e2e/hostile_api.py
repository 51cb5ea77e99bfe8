"""A hostile SuperOffice API: every answer a broken or malicious server could give.

``GET /api/v1/BatchTask/{id}`` answers as the current :attr:`HostileApi.case` says, the
``Agents/Batch`` list calls as :attr:`HostileApi.list_case` says; ``"valid"`` is a
well-formed Started task.  Big bodies are streamed from one reused buffer, never built in
memory, and every stream stops as soon as the client hangs up.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MIB = 1 << 20
_JSON = "application/json; charset=utf-8"
#: How long a slow answer trickles at most (far beyond batchmon's 2 s timeout).
TRICKLE_FOR = 60.0


def task(task_id: int = 1, **fields: object) -> dict[str, object]:
    """A valid BatchTaskInfo, Started at 10 %."""
    return {
        "Id": task_id,
        "Name": "Hostile test task",
        "State": "Started",
        "ProgressPercent": 10,
        "ProgressDescription": "Working",
        "StartCount": 1,
        **fields,
    }


def _raw(body: bytes, status: int = 200, content_type: str = _JSON) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    return answer


async def _stream(
    request: web.Request,
    chunks: Callable[[], Iterable[bytes]],
    *,
    headers: dict[str, str],
    length: int | None,
    pause: float = 0.0,
) -> web.StreamResponse:
    """Write the chunks until they end, the client hangs up or ``TRICKLE_FOR`` passes."""
    response = web.StreamResponse(status=200, headers=headers)
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TRICKLE_FOR
    try:
        for chunk in chunks():
            if loop.time() > deadline or request.transport is None:
                break
            await response.write(chunk)
            if pause:
                await asyncio.sleep(pause)
    except (ConnectionError, RuntimeError):
        pass  # the client hung up: that is the point
    return response


_SPACES = b" " * MIB


def big_body(*, chunked: bool) -> Handler:
    """100 MiB of JSON whitespace (valid JSON never arrives)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        return await _stream(
            request,
            lambda: (_SPACES for _ in range(100)),
            headers={"Content-Type": _JSON},
            length=None if chunked else 100 * MIB,
        )

    return answer


def _bomb_parts() -> tuple[bytes, bytes]:
    """A gzip header with 1 MiB of zeros, and the identical block for each further MiB."""
    zeros = bytes(MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first, block


_BOMB_FIRST, _BOMB_BLOCK = _bomb_parts()


async def gzip_bomb(request: web.Request) -> web.StreamResponse:
    """``Content-Encoding: gzip`` that expands to 10 GiB (about 10 MB on the wire)."""

    def chunks() -> Iterator[bytes]:
        yield _BOMB_FIRST
        for _ in range(10 * 1024 - 1):
            yield _BOMB_BLOCK

    return await _stream(
        request,
        chunks,
        headers={"Content-Type": _JSON, "Content-Encoding": "gzip"},
        length=None,
    )


def slow_body() -> Handler:
    """Announces 1000 bytes and sends one every half second."""

    async def answer(request: web.Request) -> web.StreamResponse:
        body = json.dumps(task()).encode().ljust(1000)
        return await _stream(
            request,
            lambda: (body[i : i + 1] for i in range(len(body))),
            headers={"Content-Type": _JSON},
            length=len(body),
            pause=0.5,
        )

    return answer


async def no_headers(request: web.Request) -> web.StreamResponse:
    """Says nothing at all for a minute (or until the case changes)."""
    await asyncio.sleep(TRICKLE_FOR)
    return web.Response(body=json.dumps(task()).encode(), headers={"Content-Type": _JSON})


async def truncated(request: web.Request) -> web.StreamResponse:
    """Announces 1000 bytes, sends 100, closes the connection."""
    response = web.StreamResponse(status=200, headers={"Content-Type": _JSON})
    response.content_length = 1000
    await response.prepare(request)
    await response.write(json.dumps(task()).encode()[:100])
    if request.transport is not None:
        request.transport.close()
    return response


async def huge_header(request: web.Request) -> web.StreamResponse:
    """A 1 MiB header line before a valid body."""
    return web.Response(
        body=json.dumps(task()).encode(),
        headers={"Content-Type": _JSON, "X-Padding": "x" * MIB},
    )


HTML = b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head><body>" + (
    b"<h1>Service Unavailable</h1><p>The server is temporarily unable to service your "
    b"request due to maintenance downtime.</p></body></html>"
)

#: The answers to ``GET /api/v1/BatchTask/{id}``.
TASK_CASES: dict[str, Handler] = {
    "100 MiB body with Content-Length": big_body(chunked=False),
    "100 MiB body, chunked": big_body(chunked=True),
    "gzip bomb (10 GiB)": gzip_bomb,
    "invalid UTF-8": _raw(b'{"Id": 1, "Name": "\xff\xfe\xc0\xaf", "State": "Started"}'),
    "nesting 200,000 deep": _raw(b"[" * 200_000 + b"]" * 200_000),
    "nesting 900 deep in ParameterObject": _raw(
        json.dumps(task())[:-1].encode()
        + b', "ParameterObject": '
        + b'{"a": ' * 900
        + b"1"
        + b"}" * 900
        + b"}"
    ),
    "HTML page with 200": _raw(HTML, content_type="text/html"),
    "HTML page with 503": _raw(HTML, status=503, content_type="text/html"),
    '{"Error": true} with 200': _raw(
        b'{"Error": true, "ErrorType": "SoDatabaseException", '
        b'"ErrorMessage": "Timeout expired", "ErrorSource": "NetServer"}'
    ),
    "XML as application/xml": _raw(
        b'<?xml version="1.0"?><BatchTaskInfo><Id>1</Id><State>Started</State></BatchTaskInfo>',
        content_type="application/xml",
    ),
    "valid JSON as text/plain": _raw(
        json.dumps(task(Name="Sent as text/plain")).encode(), content_type="text/plain"
    ),
    "NaN and Infinity": _raw(
        b'{"Id": 1, "State": "Started", "ProgressPercent": NaN, "StartCount": Infinity}'
    ),
    "slow loris body (1 byte / 0.5 s)": slow_body(),
    "slow loris, no headers": no_headers,
    "truncated body": truncated,
    "1 MiB header line": huge_header,
    "Id 2**63, past SQLite's INTEGER": _raw(json.dumps(task(task_id=2**63)).encode()),
    "answer about another task": _raw(json.dumps(task(task_id=2, State="Failed")).encode()),
}

#: The answers to the ``Agents/Batch`` list calls (discovery).
LIST_CASES: dict[str, Handler] = {
    "100 MiB list answer": big_body(chunked=True),
    "HTML page with 200": _raw(HTML, content_type="text/html"),
}


class HostileApi:
    """The server; tests switch :attr:`case` and :attr:`list_case` between polls.

    In case ``"valid"`` task ``n`` is Started at :attr:`progress` ``[n]`` (10 by default), and
    the list call for Started shows :attr:`listed_ids` followed by the raw :attr:`extra`
    items.
    """

    def __init__(self) -> None:
        self.case = "valid"
        self.list_case = "valid"
        #: What the case ``"body"`` answers (as JSON, status 200).
        self.body = b""
        self.progress: dict[int, int] = {}
        self.listed_ids: list[int] = [1]
        self.extra: list[bytes] = []
        self.served: Counter[str] = Counter()
        self.listed: Counter[str] = Counter()
        self.base = ""
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return self.base + "/api"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/BatchTask/{id}", self._task)
        app.router.add_post("/api/v1/Agents/Batch/{call}", self._list)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runner = runner
        self.base = f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _task(self, request: web.Request) -> web.StreamResponse:
        case = self.case
        self.served[case] += 1
        if case == "body":
            return web.Response(body=self.body, headers={"Content-Type": _JSON})
        if case == "valid":
            return web.Response(
                body=json.dumps(self._valid(int(request.match_info["id"]))).encode(),
                headers={"Content-Type": _JSON},
            )
        return await TASK_CASES[case](request)

    def _valid(self, task_id: int) -> dict[str, object]:
        return task(task_id, ProgressPercent=self.progress.get(task_id, 10))

    async def _list(self, request: web.Request) -> web.StreamResponse:
        asked = json.loads(await request.read())
        case = self.list_case
        self.listed[case] += 1
        if case != "valid":
            return await LIST_CASES[case](request)
        items = [json.dumps(self._valid(i)).encode() for i in self.listed_ids] + self.extra
        if asked.get("State") != "Started":
            items = []
        return web.Response(body=b"[" + b",".join(items) + b"]", headers={"Content-Type": _JSON})
