"""Posting to webhooks: what each answer means, and that the URL never leaks."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import quote

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner

from monitor.cli import main
from monitor.sinks.base import DeliveryError
from monitor.sinks.http import DestinationReply, Request, post_json
from tests.conftest import Reply, ScriptedServer

TOKEN = "T0KEN-5ecret-9f8e7d"
BODY = Request(b'{"text":"hi"}')


@pytest.fixture(name="session")
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _hook(server: ScriptedServer) -> str:
    """A webhook URL on the server with a secret in its path and query."""
    return f"{server.url}/hooks/{TOKEN}?token={TOKEN}x"


async def _fail(session: aiohttp.ClientSession, url: str, *, seconds: float = 5.0) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        await post_json(session, url, BODY, sink="ops", seconds=seconds)
    return info.value


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TestDelivered:
    """2xx answers."""

    @pytest.mark.parametrize(
        ("status", "body", "expected"),
        [
            (200, "ok", DestinationReply(200, "OK", "ok")),
            (202, "", DestinationReply(202, "Accepted", "")),
            (204, "", DestinationReply(204, "No Content", "")),
        ],
    )
    async def test_success(
        self,
        scripted: ScriptedServer,
        session: aiohttp.ClientSession,
        status: int,
        body: str,
        expected: DestinationReply,
    ) -> None:
        """The answer is returned; the body and headers arrive as given."""
        scripted.replies.append(Reply(status, body))
        answer = await post_json(
            session,
            scripted.url,
            Request(b'{"a":1}', headers={"X-Extra": "1"}),
            sink="ops",
            seconds=5,
        )

        assert expected == answer
        [seen] = scripted.seen
        assert (b'{"a":1}', "application/json", "1") == (
            seen.body,
            seen.headers["Content-Type"],
            seen.headers["X-Extra"],
        )

    async def test_params_extend_the_query(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """Extra parameters join the URL's own query; its encoded values survive."""
        scripted.replies.append(Reply(200))
        await post_json(
            session,
            scripted.url + "?key=k&token=a%3Db%2B",
            Request(b"{}", params={"option": "x"}),
            sink="ops",
            seconds=5,
        )

        assert {"key": "k", "token": "a=b+", "option": "x"} == scripted.seen[0].query


class TestRefused:
    """Answers that are not 2xx."""

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 413])
    async def test_client_errors_are_permanent(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, status: int
    ) -> None:
        """A 4xx other than 408 and 429 is not worth another try; the answer is quoted."""
        scripted.replies.append(Reply(status, "invalid_payload"))
        error = await _fail(session, scripted.url)

        assert (True, status, None) == (error.permanent, error.status, error.retry_after)
        assert str(error).startswith(f"ops: HTTP {status} ")
        assert str(error).endswith(": invalid_payload")

    @pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
    async def test_server_errors_are_retryable(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, status: int
    ) -> None:
        """408 and 5xx are worth another try."""
        scripted.replies.append(Reply(status, "busy"))
        error = await _fail(session, scripted.url)

        assert (False, status, None) == (error.permanent, error.status, error.retry_after)

    async def test_redirect_is_permanent_and_not_followed(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """A webhook that moved is a configuration problem; the body goes nowhere else."""
        scripted.replies.append(Reply(308, "", {"Location": scripted.url + "/elsewhere"}))
        error = await _fail(session, scripted.url)

        assert (True, 308) == (error.permanent, error.status)
        assert 1 == len(scripted.seen)

    async def test_long_answer_is_cut(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """A 1 MB error page gives a short message."""
        scripted.replies.append(Reply(400, "x" * 1_000_000))
        error = await _fail(session, scripted.url)

        assert len(str(error)) < 250
        assert str(error).endswith("x…")


class TestRetryAfter:
    """How long the destination asks to wait."""

    @pytest.mark.parametrize(
        ("status", "headers", "body", "expected"),
        [
            (429, {"Retry-After": "7"}, "rate_limited", 7.0),
            (503, {"Retry-After": "30"}, "", 30.0),
            (429, {}, "", None),
            # Discord: the JSON body's float is more precise than the header's integer.
            (
                429,
                {"Retry-After": "2"},
                '{"message": "You are being rate limited.", "retry_after": 1.234, "global": false}',
                1.234,
            ),
            (429, {}, '{"retry_after": 0.5, "global": true}', 0.5),
            (429, {"Retry-After": "3"}, '{"retry_after": "soon"}', 3.0),
            (429, {"Retry-After": "99999"}, "", 3600.0),
        ],
    )
    async def test_retry_after(
        self,
        scripted: ScriptedServer,
        session: aiohttp.ClientSession,
        status: int,
        headers: dict[str, str],
        body: str,
        expected: float | None,
    ) -> None:
        """``Retry-After`` and Discord's JSON ``retry_after`` make a retryable error."""
        scripted.replies.append(Reply(status, body, headers))
        error = await _fail(session, scripted.url)

        assert (False, status, expected) == (error.permanent, error.status, error.retry_after)

    async def test_http_date(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """A ``Retry-After`` date is turned into seconds from now."""
        when = datetime.now(UTC) + timedelta(seconds=120)
        scripted.replies.append(Reply(429, "", {"Retry-After": format_datetime(when, usegmt=True)}))
        error = await _fail(session, scripted.url)

        assert error.retry_after is not None
        assert 110 <= error.retry_after <= 121


class TestUnreachable:
    """No answer at all."""

    async def test_timeout_is_retryable(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """A destination slower than the timeout is worth another try."""
        scripted.replies.append(Reply(200, "ok", delay=2.0))
        error = await _fail(session, _hook(scripted), seconds=0.2)

        assert (False, None) == (error.permanent, error.status)
        assert "ops: no answer within 0.2 s" == str(error)

    async def test_connection_refused_is_retryable(self, session: aiohttp.ClientSession) -> None:
        """Nobody listening is worth another try."""
        error = await _fail(session, f"http://127.0.0.1:{_closed_port()}/hooks/{TOKEN}")

        assert (False, None) == (error.permanent, error.status)
        assert str(error).startswith("ops: cannot connect: ")


class TestSecrecy:
    """Webhook URLs are credentials: no error carries them."""

    async def test_answer_echoing_the_url(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """An answer that quotes the path and query loses them from the excerpt."""
        url = _hook(scripted)
        echo = json.dumps({"message": f"Unknown Webhook {url} /hooks/{TOKEN}", "token": TOKEN})
        scripted.replies.append(Reply(404, echo))
        error = await _fail(session, url)

        assert TOKEN not in str(error)
        assert "Unknown Webhook" in str(error)

    @pytest.mark.parametrize("case", ["refused", "timeout", "404"])
    async def test_no_url_in_any_error(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, case: str
    ) -> None:
        """Neither the message nor a chained exception holds the URL."""
        url = _hook(scripted)
        if case == "refused":
            url = f"http://127.0.0.1:{_closed_port()}/hooks/{TOKEN}"
        scripted.replies.append(Reply(404, "", delay=2.0 if case == "timeout" else 0.0))
        error = await _fail(session, url, seconds=0.2)

        assert TOKEN not in repr(error.args)
        assert None is error.__cause__
        assert error.__context__ is None or error.__suppress_context__


class EchoingReason:
    """A receiver that puts the request's path and query in its reason phrase."""

    def __init__(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def _handle(self, request: web.Request) -> web.Response:
        said = f"Not Found {request.path_qs} {quote(request.path_qs, safe='')}"
        return web.Response(status=404, reason=said, text="nothing here")


@pytest.fixture(name="echoing")
async def _echoing() -> AsyncIterator[EchoingReason]:
    echoing = EchoingReason()
    await echoing.server.start_server()
    yield echoing
    await echoing.server.close()


class TestReasonPhrase:
    """The reason phrase is quoted like the body: without the URL's secret parts."""

    async def test_error_masks_the_echoed_path(
        self, echoing: EchoingReason, session: aiohttp.ClientSession
    ) -> None:
        """``404 Not Found /hooks/SECRET?token=SECRET`` keeps its words, loses the secrets."""
        error = await _fail(session, str(echoing.server.make_url(f"/hooks/{TOKEN}?token={TOKEN}x")))

        assert TOKEN not in str(error)
        assert quote(TOKEN) not in str(error)
        assert str(error).startswith("ops: HTTP 404 Not Found ")
        assert str(error).endswith(": nothing here")

    async def test_test_sink_output(self, echoing: EchoingReason, tmp_path: Path) -> None:
        """``batchmon test-sink`` prints the refusal without the URL's secret parts."""
        url = echoing.server.make_url(f"/services/{TOKEN}?token={TOKEN}x")
        config = tmp_path / "batchmon.toml"
        config.write_text(
            '[superoffice]\nurl = "http://127.0.0.1:9/api"\n'
            '[superoffice.auth]\ntype = "basic"\nusername = "u"\npassword = "p"\n'
            f'[[sinks]]\nname = "ops"\ntype = "slack"\nurl = "{url}"\n'
        )
        result = await anyio.to_thread.run_sync(
            lambda: CliRunner().invoke(main, ["test-sink", "ops", "--config", str(config)])
        )

        assert 1 == result.exit_code
        assert "HTTP 404 Not Found" in result.output
        assert TOKEN not in result.output
