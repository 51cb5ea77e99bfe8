"""OAuth and system-user logins against the simulator over loopback: renewal, validation, refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import TypeAdapter

from monitor.config import AUTH_TYPES, ONLINE_AUTH_TYPES, AuthConfig, parse_config
from monitor.simulator import OAuthApp, OnlineTenant, Simulator, SystemUserApp
from monitor.superoffice.auth import (
    JWKS_PATH,
    SYSTEM_USER_PATH,
    TOKEN_PATH,
    BasicAuth,
    BearerAuth,
    TicketAuth,
    auth_from_config,
)
from monitor.superoffice.client import SuperOfficeClient, open_client
from monitor.superoffice.errors import AuthenticationFailed
from monitor.types import Auth
from tests.conftest import ManualClock

TOKEN_CALL = f"POST {TOKEN_PATH}"
LOGIN_CALL = f"POST {SYSTEM_USER_PATH}"
JWKS_CALL = f"GET {JWKS_PATH}"


@pytest.fixture(name="app_key", scope="module")
def _app_key() -> rsa.RSAPrivateKey:
    """The app's key pair, made for this run (nothing secret is committed)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(name="stranger_key", scope="module")
def _stranger_key() -> rsa.RSAPrivateKey:
    """A key nobody registered."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


@asynccontextmanager
async def client_for(
    sim: Simulator, clock: ManualClock, auth: dict[str, Any], **superoffice: Any
) -> AsyncIterator[SuperOfficeClient]:
    """A client for the simulator's tenant (or its plain API when it has none)."""
    where: dict[str, Any] = {"environment_url": sim.environment_url}
    if sim.tenant is not None:
        where["tenant"] = sim.tenant.context_id
    else:
        where["url"] = sim.url
    limits = {"retries": 0, "max_requests_per_second": 1000}
    data = {"superoffice": {**where, "auth": auth, **limits, **superoffice}}
    config = parse_config(data, base_dir=Path("/nonexistent"))
    async with open_client(config.superoffice, clock=clock) as client:
        yield client


def oauth_auth(app: OAuthApp) -> dict[str, Any]:
    return {
        "type": "oauth",
        "client_id": app.client_id,
        "client_secret": app.client_secret,
        "refresh_token": app.refresh_token,
    }


def system_user_auth(app: SystemUserApp, key: rsa.RSAPrivateKey, **more: Any) -> dict[str, Any]:
    return {
        "type": "system_user",
        "client_secret": app.client_secret,
        "system_user_token": app.system_user_token,
        "private_key": pem(key),
        **more,
    }


class TestOAuth:
    """Access tokens from the refresh-token grant."""

    @pytest.fixture(name="app")
    def _app(self) -> OAuthApp:
        return OAuthApp()

    @pytest.fixture(name="sim")
    async def _sim(self, clock: ManualClock, app: OAuthApp) -> AsyncIterator[Simulator]:
        async with Simulator(clock=clock, oauth=app) as sim:
            yield sim

    async def test_logs_in_once_for_many_requests(
        self, sim: Simulator, clock: ManualClock, app: OAuthApp
    ) -> None:
        """The first request fetches a token; the next ones reuse it."""
        task = sim.add_task()
        async with client_for(sim, clock, oauth_auth(app)) as client:
            for _ in range(3):
                await client.get_task(task.id)
            stats = client.stats

        assert 1 == sim.requests.count(TOKEN_CALL)
        assert (4, {}) == (stats.requests, dict(stats.failures))

    async def test_token_expiring_mid_run_is_renewed_once(
        self, sim: Simulator, clock: ManualClock, app: OAuthApp
    ) -> None:
        """A token the API stops accepting gives one 401, one renewal, and a successful retry."""
        task = sim.add_task()
        async with client_for(sim, clock, oauth_auth(app)) as client:
            await client.get_task(task.id)
            sim.expire_credentials()
            found = await client.get_task(task.id)
            await client.get_task(task.id)
            failures = dict(client.stats.failures)

        assert task.id == found.id
        assert 2 == sim.requests.count(TOKEN_CALL)
        assert {"unauthorized": 1} == failures

    async def test_concurrent_requests_share_one_renewal(
        self, sim: Simulator, clock: ManualClock, app: OAuthApp
    ) -> None:
        """Eight requests refused at once cause exactly one login, and all of them succeed."""
        tasks = [sim.add_task() for _ in range(8)]
        async with client_for(sim, clock, oauth_auth(app), max_concurrency=8) as client:
            await client.get_task(tasks[0].id)
            sim.expire_credentials()
            found: list[int] = []

            async def fetch(task_id: int) -> None:
                found.append((await client.get_task(task_id)).id)

            async with anyio.create_task_group() as group:
                for task in tasks:
                    group.start_soon(fetch, task.id)

        assert sorted(t.id for t in tasks) == sorted(found)
        assert 2 == sim.requests.count(TOKEN_CALL)

    async def test_renews_before_the_hour_is_up(
        self, sim: Simulator, clock: ManualClock, app: OAuthApp
    ) -> None:
        """Close to expires_in the token is renewed before use (once), so the API never says 401."""
        task = sim.add_task()
        async with client_for(sim, clock, oauth_auth(app)) as client:
            await client.get_task(task.id)
            clock.advance(3600 - 299)
            async with anyio.create_task_group() as group:
                for _ in range(4):
                    group.start_soon(client.get_task, task.id)
            await client.get_task(task.id)
            failures = dict(client.stats.failures)

        assert 2 == sim.requests.count(TOKEN_CALL)
        assert {} == failures

    async def test_refused_refresh_token_is_authentication_failed(
        self, sim: Simulator, clock: ManualClock, app: OAuthApp
    ) -> None:
        """A revoked refresh token fails with why; no new login is tried for 30 s."""
        task = sim.add_task()
        async with client_for(sim, clock, oauth_auth(app)) as client:
            await client.get_task(task.id)
            app.refuse = "invalid_grant"
            sim.expire_credentials()
            with pytest.raises(AuthenticationFailed) as first:
                await client.get_task(task.id)
            with pytest.raises(AuthenticationFailed):
                await client.get_task(task.id)
            logins_while_backing_off = sim.requests.count(TOKEN_CALL)
            app.refuse = None
            clock.advance(31)
            await client.get_task(task.id)

        assert "auth_failed" == first.value.reason
        assert "invalid_grant" in str(first.value)
        assert app.refresh_token not in str(first.value)
        assert app.client_secret not in str(first.value)
        assert 2 == logins_while_backing_off
        assert 3 == sim.requests.count(TOKEN_CALL)

    async def test_credentials_stay_out_of_reprs(
        self, sim: Simulator, clock: ManualClock, app: OAuthApp
    ) -> None:
        """The auth object shows no secret, before or after a login."""
        async with client_for(sim, clock, oauth_auth(app)) as client:
            await client.get_task(sim.add_task().id)
            shown = repr(client._auth) + repr(vars(client))

        assert app.client_secret not in shown
        assert app.refresh_token not in shown
        assert "8A:" not in shown


class TestSystemUser:
    """The signed system user token exchanged for a ticket."""

    @pytest.fixture(name="app")
    def _app(self, app_key: rsa.RSAPrivateKey) -> SystemUserApp:
        return SystemUserApp(public_key=app_key.public_key())

    @pytest.fixture(name="sim")
    async def _sim(self, clock: ManualClock, app: SystemUserApp) -> AsyncIterator[Simulator]:
        async with Simulator(clock=clock, tenant=OnlineTenant(), system_user=app) as sim:
            yield sim

    async def test_end_to_end_with_the_jwks(
        self, sim: Simulator, clock: ManualClock, app: SystemUserApp, app_key: rsa.RSAPrivateKey
    ) -> None:
        """Signature checked, JWT validated against the JWKS, ticket and app token sent."""
        task = sim.add_task()
        async with client_for(sim, clock, system_user_auth(app, app_key)) as client:
            found = await client.get_task(task.id)
            await client.get_task(task.id)

        assert task.id == found.id
        assert (1, 1) == (sim.requests.count(LOGIN_CALL), sim.requests.count(JWKS_CALL))
        assert f"GET /online1/Cust12345/api/v1/BatchTask/{task.id}" == sim.requests[-1]

    async def test_federation_key_file_replaces_the_jwks(
        self,
        sim: Simulator,
        clock: ManualClock,
        app: SystemUserApp,
        app_key: rsa.RSAPrivateKey,
        tmp_path: Path,
    ) -> None:
        """With SuperOffice's key in a file, the JWKS is never fetched."""
        key_file = tmp_path / "federation.pem"
        key_file.write_bytes(sim.federation_key_pem)
        auth = system_user_auth(app, app_key, federation_key_file=str(key_file))
        async with client_for(sim, clock, auth) as client:
            await client.get_task(sim.add_task().id)

        assert 0 == sim.requests.count(JWKS_CALL)

    async def test_rejected_signature_is_authentication_failed(
        self,
        sim: Simulator,
        clock: ManualClock,
        app: SystemUserApp,
        stranger_key: rsa.RSAPrivateKey,
    ) -> None:
        """Signed with a key the app did not register: refused, and no API request is made."""
        async with client_for(sim, clock, system_user_auth(app, stranger_key)) as client:
            with pytest.raises(AuthenticationFailed, match="InvalidSignature"):
                await client.get_task(sim.add_task().id)

        assert not [r for r in sim.requests if "/api/v1/" in r]

    async def test_jwt_signed_by_another_key_is_refused(
        self,
        sim: Simulator,
        clock: ManualClock,
        app: SystemUserApp,
        app_key: rsa.RSAPrivateKey,
        stranger_key: rsa.RSAPrivateKey,
        tmp_path: Path,
    ) -> None:
        """A JWT that does not verify against the federation key gives no ticket."""
        key_file = tmp_path / "other.pem"
        key_file.write_bytes(
            stranger_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        auth = system_user_auth(app, app_key, federation_key_file=str(key_file))
        async with client_for(sim, clock, auth) as client:
            with pytest.raises(AuthenticationFailed, match="did not validate"):
                await client.get_task(sim.add_task().id)

    async def test_expired_ticket_is_renewed_once(
        self, sim: Simulator, clock: ManualClock, app: SystemUserApp, app_key: rsa.RSAPrivateKey
    ) -> None:
        """A ticket the API stops accepting is replaced by one new login."""
        task = sim.add_task()
        async with client_for(sim, clock, system_user_auth(app, app_key)) as client:
            await client.get_task(task.id)
            sim.expire_credentials()
            await client.get_task(task.id)

        assert 2 == sim.requests.count(LOGIN_CALL)

    @pytest.mark.parametrize(
        ("idle", "logins"), [(5 * 3600, 1), (6 * 3600 - 60, 2)], ids=["slid", "near-limit"]
    )
    async def test_sliding_ticket_lifetime(
        self,
        sim: Simulator,
        clock: ManualClock,
        app: SystemUserApp,
        app_key: rsa.RSAPrivateKey,
        idle: float,
        logins: int,
    ) -> None:
        """Each use restarts the 6 h; near the limit the ticket is renewed before use."""
        task = sim.add_task()
        async with client_for(sim, clock, system_user_auth(app, app_key)) as client:
            await client.get_task(task.id)
            clock.advance(idle)
            await client.get_task(task.id)
            failures = dict(client.stats.failures)

        assert logins == sim.requests.count(LOGIN_CALL)
        assert {} == failures

    async def test_revoked_app_says_why(
        self, sim: Simulator, clock: ManualClock, app: SystemUserApp, app_key: rsa.RSAPrivateKey
    ) -> None:
        """The ErrorMessage of a refused login is in the error."""
        app.refuse = "Revoked"
        async with client_for(sim, clock, system_user_auth(app, app_key)) as client:
            with pytest.raises(AuthenticationFailed, match="Revoked"):
                await client.get_task(sim.add_task().id)


class TestStatic:
    """Fixed credentials."""

    async def test_refused_static_credentials_are_final(self, clock: ManualClock) -> None:
        """A 401 for a static scheme is AuthenticationFailed at once, without a login."""
        async with Simulator(clock=clock, token="8A:Cust1.good") as sim:
            auth = {"type": "bearer", "token": "8A:Cust1.stale"}
            config = parse_config(
                {"superoffice": {"url": sim.url, "auth": auth}}, base_dir=Path("/nonexistent")
            )
            async with open_client(config.superoffice, clock=clock) as client:
                with pytest.raises(AuthenticationFailed, match="cannot be renewed"):
                    await client.get_task(sim.add_task().id)

        assert [r for r in sim.requests if "login" in r.casefold()] == []


class TestSchemeOfEachType:
    """Each ``[superoffice.auth]`` type has a model and a scheme (mypy's exhaustive-match
    checks that :func:`auth_from_config` handles every model of the union)."""

    STATIC: ClassVar[dict[str, tuple[dict[str, str], type[Auth]]]] = {
        "basic": ({"username": "u", "password": "p"}, BasicAuth),
        "ticket": ({"ticket": "7T:abc"}, TicketAuth),
        "bearer": ({"token": "8A:abc"}, BearerAuth),
    }

    def test_every_type_is_covered_here(self) -> None:
        """A new auth type needs a row here, or in the online tests above."""
        assert set(AUTH_TYPES) == {*self.STATIC, *ONLINE_AUTH_TYPES}

    @pytest.mark.parametrize("kind", sorted(STATIC))
    def test_static_scheme(self, kind: str) -> None:
        """The static types build their scheme from their own keys alone."""
        keys, scheme = self.STATIC[kind]
        config = TypeAdapter(AuthConfig).validate_python({"type": kind, **keys})

        assert isinstance(auth_from_config(config), scheme)

    @pytest.mark.parametrize("kind", ONLINE_AUTH_TYPES)
    def test_online_scheme_needs_the_login(self, kind: str, app_key: rsa.RSAPrivateKey) -> None:
        """The online types log in at the environment's host: without it, a clear error."""
        keys = {
            "oauth": {"client_id": "c", "client_secret": "s", "refresh_token": "r"},
            "system_user": {
                "client_secret": "s",
                "system_user_token": "t",
                "private_key": pem(app_key),
            },
        }[kind]
        config = TypeAdapter(AuthConfig).validate_python({"type": kind, **keys})

        with pytest.raises(ValueError, match=f"auth type '{kind}' logs in"):
            auth_from_config(config)
