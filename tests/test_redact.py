"""Secrets a peer echoes back stay out of errors and logs: the redactor, then real echoing peers."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from structlog.testing import capture_logs

from monitor.config import parse_config
from monitor.superoffice.client import open_client
from monitor.superoffice.errors import (
    ApiError,
    AuthenticationFailed,
    MalformedResponse,
    RequestRejected,
)
from monitor.superoffice.redact import MASK, Redactor, configured_secrets, sent_credentials

#: Secrets with characters that form, URL and JSON encoding change, so those forms are tested.
CLIENT_SECRET = 'cl1ent/secret+with spaces&"quotes"='
REFRESH_TOKEN = "rt/refresh+token:0123456789"
TICKET = "7T:dGlja2V0LXZhbHVl/0123"
APP_TOKEN = "app-token/ABCDEF+0123"
PASSWORD = "pa55word/with:colon"
SYSTEM_USER_TOKEN = "BatchmonApp-system+user/token"


@pytest.fixture(name="pem", scope="module")
def _pem() -> str:
    """The app's private key, made for this run, as PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


class TestRedactor:
    """Masks each secret, in the forms a peer saw it in, and nothing else."""

    @pytest.mark.parametrize(
        "form",
        [
            CLIENT_SECRET,
            quote_plus(CLIENT_SECRET),
            quote(CLIENT_SECRET, safe=""),
            json.dumps(CLIENT_SECRET)[1:-1],
        ],
        ids=["plain", "form-encoded", "percent-encoded", "json-escaped"],
    )
    def test_every_wire_form_is_masked(self, form: str) -> None:
        """The secret as sent in a form, a URL or a JSON body is masked like the plain one."""
        redact = Redactor([CLIENT_SECRET])

        assert f"invalid_client: got client_secret={MASK}&x=1" == redact(
            f"invalid_client: got client_secret={form}&x=1"
        )

    def test_within_a_word_and_every_occurrence(self) -> None:
        """A secret inside a longer token is masked, as is each repeat of it."""
        redact = Redactor(["s3cret"])

        assert f"a{MASK}b {MASK} {MASK}" == redact("as3cretb s3cret s3cret")

    def test_short_values_are_not_secrets(self) -> None:
        """Values shorter than four characters are left alone, not masked everywhere."""
        redact = Redactor(["ab", "xyz"])

        assert "ab xyz abc" == redact("ab xyz abc")

    def test_longest_form_wins(self) -> None:
        """A secret containing another is masked whole, not around the shorter one."""
        redact = Redactor(["abcd", "abcdefgh"])

        assert f"[{MASK}] [{MASK}]" == redact("[abcdefgh] [abcd]")

    def test_a_quote_cut_short_loses_the_start_of_a_secret(self) -> None:
        """Text that ends in the first part of a secret (cut to length) has that part masked."""
        redact = Redactor(["0123456789abcdef"])

        assert f"token is {MASK}" == redact("token is 01234567")
        assert "token is 0123456" == redact("token is 0123456")

    def test_none_and_no_secrets(self) -> None:
        """``None`` stays ``None``; a redactor without secrets changes nothing."""
        assert Redactor(["secret"])(None) is None
        assert "secret" == Redactor()("secret")

    def test_adding_keeps_the_first(self) -> None:
        """``adding`` gives a redactor for both; the original masks only its own."""
        first = Redactor(["first-secret"])
        both = first.adding(["second-secret"])

        assert f"{MASK} {MASK}" == both("first-secret second-secret")
        assert f"{MASK} second-secret" == first("first-secret second-secret")

    def test_repr_shows_no_secret(self) -> None:
        """The redactor itself never shows what it masks."""
        shown = repr(Redactor(["first-value", "second-value"]))

        assert "value" not in shown
        assert "Redactor(2 secrets)" == shown

    def test_sent_credentials_without_scheme(self) -> None:
        """Authorization and SO-AppToken values, the scheme dropped; other headers ignored."""
        headers = {
            "Authorization": "Basic dXNlcjpwYXNz",
            "so-apptoken": "app-token",
            "User-Agent": "batchmon/1.0",
        }

        assert ["dXNlcjpwYXNz", "app-token"] == list(sent_credentials(headers))

    def test_configured_secrets_of_a_section(self) -> None:
        """Every secret value of the section and its subsections, nothing else."""
        config = parse_config(
            {
                "superoffice": {
                    "url": "https://crm.example.com/api",
                    "app_token": APP_TOKEN,
                    "auth": {"type": "basic", "username": "batchmon", "password": PASSWORD},
                }
            },
            base_dir=Path("/nonexistent"),
        )

        assert {APP_TOKEN, PASSWORD} == set(configured_secrets(config.superoffice))

    def test_configured_secrets_leave_out_the_private_key(self, pem: str) -> None:
        """The private key is never sent, so there is nothing of it to mask."""
        auth = {
            "type": "system_user",
            "client_secret": CLIENT_SECRET,
            "system_user_token": SYSTEM_USER_TOKEN,
            "private_key": pem,
        }
        config = parse_config(
            {"superoffice": {"tenant": "Cust12345", "environment": "sod", "auth": auth}},
            base_dir=Path("/nonexistent"),
        )

        assert {CLIENT_SECRET, SYSTEM_USER_TOKEN} == set(configured_secrets(config.superoffice))


#: The issue's password: characters that HTML, URL, form and base64 encodings all change.
HOSTILE = "p@ss+w/rd&x<y>"
#: A secret with a space and quotes, for form encoding and HTML's quote entities.
SPACED = "o'pen se\"same"


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


class TestEveryForm:
    """Each form a peer may echo a secret in is masked; the text around it stays."""

    @pytest.mark.parametrize(
        ("secret", "echoed"),
        [
            (HOSTILE, HOSTILE),
            (HOSTILE, "p@ss+w/rd&amp;x&lt;y&gt;"),
            (SPACED, "o&#x27;pen se&quot;same"),
            (SPACED, "o&#39;pen se&quot;same"),
            (HOSTILE, "p%40ss%2Bw%2Frd%26x%3Cy%3E"),
            (HOSTILE, "p%40ss%2bw%2frd%26x%3cy%3e"),
            (HOSTILE, "p%40ss%2Bw/rd%26x%3Cy%3E"),
            (SPACED, "o%27pen+se%22same"),
            (SPACED, "o%27pen%20se%22same"),
            (HOSTILE, base64.b64encode(HOSTILE.encode()).decode()),
            (HOSTILE, base64.b64encode(HOSTILE.encode()).decode().rstrip("=")),
            (HOSTILE, base64.urlsafe_b64encode(HOSTILE.encode()).decode()),
            (HOSTILE, base64.urlsafe_b64encode(HOSTILE.encode()).decode().rstrip("=")),
            (HOSTILE, json.dumps(HOSTILE)[1:-1]),
        ],
        ids=[
            "plain",
            "html",
            "html-hex-quote",
            "html-decimal-quote",
            "percent-upper",
            "percent-lower",
            "percent-slash-kept",
            "form",
            "percent-space",
            "base64",
            "base64-unpadded",
            "base64-urlsafe",
            "base64-urlsafe-unpadded",
            "json",
        ],
    )
    def test_form(self, secret: str, echoed: str) -> None:
        """The whole form is replaced by the mask."""
        redact = Redactor([secret])

        assert f"<p>login failed for {MASK} (form)</p>" == redact(
            f"<p>login failed for {echoed} (form)</p>"
        )

    @pytest.mark.parametrize(
        "user", ["ad", "adm", "admin"], ids=["offset-0", "offset-1", "offset-2"]
    )
    def test_inside_a_basic_header(self, user: str) -> None:
        """In base64 of ``user:password`` the characters the password decides are masked."""
        header = _basic(user, HOSTILE)
        masked = Redactor([HOSTILE])(f"Authorization: Basic {header} refused")

        assert MASK in masked
        assert masked.startswith(f"Authorization: Basic {header[:2]}")
        assert len(masked.replace(MASK, "")) < len(f"Authorization: Basic {header} refused") - 16

    @pytest.mark.parametrize(
        ("echoed", "expected"),
        [
            ("the value was p@ss+w/r", f"the value was {MASK}"),
            ("s+w/rd&x<y> was the value", f"{MASK} was the value"),
            ("p%40ss%2Bw%2F", MASK),
            ("the value was p@ss+w", "the value was p@ss+w"),
            ("d&x<y> was the value", "d&x<y> was the value"),
        ],
        ids=["cut-end", "cut-start", "cut-encoded", "too-short-end", "too-short-start"],
    )
    def test_cut_at_either_end(self, echoed: str, expected: str) -> None:
        """A part of eight characters or more at either end of a text is masked."""
        assert expected == Redactor([HOSTILE])(echoed)


# --- echoing peers over loopback ------------------------------------------------------------


class EchoServer:
    """A loopback server that answers with what it got, as careless servers and proxies do.

    Every answer is an error object that SuperOffice, OAuth and the system user login would
    each read as the reason: the request's body and headers, the decoded basic credentials,
    then a fixed text (which must survive the masking).  ``/api/state/…`` answers that the
    tenant runs here, so the system user flow gets as far as its login.
    """

    def __init__(self, status: int) -> None:
        self.status = status
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def base(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path.startswith("/api/state/"):
            until = datetime.now(UTC) + timedelta(hours=1)
            state = {"IsRunning": True, "Api": f"{self.base}/api", "ValidUntil": until.isoformat()}
            return web.json_response(state)
        body = (await request.read()).decode()
        said = f"{body} {dict(request.headers)}"
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme == "Basic":
            said += f" user:password={base64.b64decode(credential).decode()}"
        said += " - echoed by the test server"
        answer = {
            "Error": True,
            "ErrorType": "Echo",
            "ErrorMessage": said,
            "error": "invalid_request",
            "error_description": said,
            "IsSuccessful": False,
        }
        return web.json_response(answer, status=self.status)


@pytest.fixture(name="echo")
async def _echo(request: pytest.FixtureRequest) -> AsyncIterator[EchoServer]:
    server = EchoServer(getattr(request, "param", 401))
    await server.server.start_server()
    yield server
    await server.server.close()


async def _failure(
    superoffice: dict[str, Any],
) -> tuple[ApiError, list[MutableMapping[str, Any]]]:
    """The error fetching a task raises, and the log lines written meanwhile."""
    data = {"superoffice": {"retries": 0, "max_requests_per_second": 1000, **superoffice}}
    config = parse_config(data, base_dir=Path("/nonexistent"))
    with capture_logs() as logs:
        async with open_client(config.superoffice) as client:
            with pytest.raises(ApiError) as info:
                await client.get_task(5)
    return info.value, logs


def _said(error: ApiError, logs: list[MutableMapping[str, Any]]) -> str:
    """Everything the failure put into words: message, SuperOffice's fields, log lines."""
    return f"{error} {error.error_type} {error.error_message} {logs}"


def _encodings(*secrets: str) -> list[str]:
    """Each secret plain, form and percent encoded, and JSON escaped."""
    forms = (lambda s: s, quote_plus, lambda s: quote(s, safe=""), lambda s: json.dumps(s)[1:-1])
    return [form(s) for s in secrets for form in forms]


class TestEchoingLoginHost:
    """A login host that echoes what was posted to it does not get the secrets quoted."""

    async def test_token_endpoint_echoing_the_form(self, echo: EchoServer) -> None:
        """OAuth: client secret and refresh token masked (form-encoded too), the rest kept."""
        error, logs = await _failure(
            {
                "url": f"{echo.base}/api",
                "environment_url": echo.base,
                "auth": {
                    "type": "oauth",
                    "client_id": "batchmon-app",
                    "client_secret": CLIENT_SECRET,
                    "refresh_token": REFRESH_TOKEN,
                },
            }
        )
        said = _said(error, logs)

        assert isinstance(error, AuthenticationFailed)
        assert [] == [s for s in _encodings(CLIENT_SECRET, REFRESH_TOKEN) if s in said]
        assert "the login was refused (HTTP 401): invalid_request: " in str(error)
        assert f"client_secret={MASK}&refresh_token={MASK}" in str(error)
        assert "grant_type=refresh_token&client_id=batchmon-app" in str(error)
        assert [str(error)] == [line["error"] for line in logs if line["event"] == "login_failed"]

    async def test_system_user_login_echoing_the_body(self, echo: EchoServer, pem: str) -> None:
        """System user: the signed token, its system user token and the app secret masked."""
        error, logs = await _failure(
            {
                "tenant": "Cust12345",
                "environment_url": echo.base,
                "auth": {
                    "type": "system_user",
                    "client_secret": CLIENT_SECRET,
                    "system_user_token": SYSTEM_USER_TOKEN,
                    "private_key": pem,
                },
            }
        )
        said = _said(error, logs)

        assert isinstance(error, AuthenticationFailed)
        assert [] == [s for s in _encodings(CLIENT_SECRET, SYSTEM_USER_TOKEN) if s in said]
        assert f'"SignedSystemToken": "{MASK}"' in said
        assert f"'SO-AppToken': '{MASK}'" in said
        assert '"ContextIdentifier": "Cust12345"' in said


class TestEchoingApi:
    """An API (or a proxy before it) that echoes the request headers into its error."""

    async def test_ticket_and_app_token(self, echo: EchoServer) -> None:
        """401: the ticket and the app token are masked; the scheme and other headers stay."""
        error, logs = await _failure(
            {
                "url": f"{echo.base}/api",
                "app_token": APP_TOKEN,
                "auth": {"type": "ticket", "ticket": TICKET},
            }
        )
        said = _said(error, logs)

        assert isinstance(error, AuthenticationFailed)
        assert [] == [s for s in _encodings(TICKET, APP_TOKEN) if s in said]
        assert f"'Authorization': 'SOTicket {MASK}'" in str(error)
        assert f"'SO-AppToken': '{MASK}'" in str(error)
        assert "GET /v1/BatchTask/5: HTTP 401: Echo: " in str(error)
        assert "echoed by the test server" in str(error)

    @pytest.mark.parametrize("echo", [400], indirect=True)
    async def test_basic_credentials_in_error_fields(self, echo: EchoServer) -> None:
        """400: the base64 credentials and the decoded password are masked in ErrorMessage."""
        error, logs = await _failure(
            {
                "url": f"{echo.base}/api",
                "auth": {"type": "basic", "username": "batchmon", "password": PASSWORD},
            }
        )
        sent = base64.b64encode(f"batchmon:{PASSWORD}".encode()).decode()

        assert isinstance(error, RequestRejected)
        assert [] == [s for s in [sent, *_encodings(PASSWORD)] if s in _said(error, logs)]
        assert error.error_message is not None
        assert f"'Authorization': 'Basic {MASK}'" in error.error_message
        assert f"user:password=batchmon:{MASK} - echoed" in error.error_message

    @pytest.mark.parametrize("echo", [200], indirect=True)
    async def test_error_object_in_a_success(self, echo: EchoServer) -> None:
        """200 with SuperOffice's error object: the bearer token is masked there too."""
        token = "8A:Cust12345.bearer/token+value"
        error, logs = await _failure(
            {"url": f"{echo.base}/api", "auth": {"type": "bearer", "token": token}}
        )

        assert isinstance(error, MalformedResponse)
        assert token not in _said(error, logs)
        assert f"'Authorization': 'Bearer {MASK}'" in str(error)
        assert "echoed by the test server" in str(error)
