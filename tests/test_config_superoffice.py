"""``[superoffice]`` and ``[superoffice.auth]``: each auth type's keys, online access."""

from __future__ import annotations

import base64
import datetime
import json
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from monitor.config import (
    parse_config,
    redacted,
)
from monitor.config.superoffice import OAuthConfig, SystemUserAuthConfig
from tests.config_helpers import (
    MARKER,
    minimal,
    problems,
    with_,
)


class TestAuth:
    """Each auth type requires its own fields and refuses the others."""

    @pytest.mark.parametrize(
        ("auth", "header_field"),
        [
            ({"type": "basic", "username": "u", "password": "p"}, "password"),
            ({"type": "ticket", "ticket": "7T:abc"}, "ticket"),
            ({"type": "bearer", "token": "8A:abc"}, "token"),
        ],
    )
    def test_valid(self, auth: dict[str, str], header_field: str) -> None:
        """Each type with exactly its fields is accepted."""
        config = parse_config(with_("superoffice.auth", auth), base_dir=Path())

        secret = getattr(config.superoffice.auth, header_field)
        assert secret.get_secret_value() == auth[header_field]

    @pytest.mark.parametrize(
        ("auth", "expected"),
        [
            (
                {"type": "basic", "username": "u"},
                [
                    (
                        "superoffice.auth.password: required for auth type 'basic' "
                        "(give password, password_file or password_env)"
                    )
                ],
            ),
            (
                {"type": "basic", "password": "p"},
                ["superoffice.auth.username: required for auth type 'basic'"],
            ),
            (
                {"type": "ticket", "ticket": "t", "username": "u", "token": "x"},
                [
                    "superoffice.auth.username: not used by auth type 'ticket'",
                    "superoffice.auth.token: not used by auth type 'ticket'",
                ],
            ),
            (
                {"type": "bearer"},
                [
                    (
                        "superoffice.auth.token: required for auth type 'bearer' "
                        "(give token, token_file or token_env)"
                    )
                ],
            ),
            (
                {"type": "kerberos"},
                [
                    (
                        "superoffice.auth.type: must be 'basic', 'ticket', 'bearer', 'oauth' or "
                        "'system_user', got 'kerberos'"
                    )
                ],
            ),
            ({"username": "u"}, ["superoffice.auth.type: required, but not given"]),
        ],
    )
    def test_refused(self, auth: dict[str, str], expected: list[str]) -> None:
        """Missing and superfluous fields are each named."""
        assert problems(with_("superoffice.auth", auth)) == expected


class TestOnlineAccess:
    """oauth and system_user, url versus environment + tenant, and the retry keys."""

    @staticmethod
    def _rsa_xml(key: rsa.RSAPrivateKey) -> str:
        """The key as .NET's RSA XML, the form SuperOffice hands out."""
        numbers = key.private_numbers()

        def b64(value: int) -> str:
            return base64.b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).decode()

        parts = {
            "Modulus": numbers.public_numbers.n,
            "Exponent": numbers.public_numbers.e,
            "P": numbers.p,
            "Q": numbers.q,
            "DP": numbers.dmp1,
            "DQ": numbers.dmq1,
            "InverseQ": numbers.iqmp,
            "D": numbers.d,
        }
        inner = "".join(f"<{name}>{b64(value)}</{name}>" for name, value in parts.items())
        return f"<RSAKeyValue>{inner}</RSAKeyValue>"

    @staticmethod
    def _certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
        """A self-signed certificate for ``key``, like SuperOfficeFederatedLogin.crt."""
        name = x509.Name(
            [x509.NameAttribute(x509.NameOID.COMMON_NAME, "SuperOfficeFederatedLogin")]
        )
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )

    @pytest.fixture(name="key", scope="class")
    @classmethod
    def _key(cls) -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @pytest.fixture(name="key_files")
    def _key_files(self, key: rsa.RSAPrivateKey, tmp_path: Path) -> Path:
        """app.pem, app.xml, federation.crt (DER), federation.cer (PEM), federation.pem."""
        (tmp_path / "app.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (tmp_path / "app.xml").write_text(self._rsa_xml(key))
        certificate = self._certificate(key)
        (tmp_path / "federation.crt").write_bytes(
            certificate.public_bytes(serialization.Encoding.DER)
        )
        (tmp_path / "federation.cer").write_bytes(
            certificate.public_bytes(serialization.Encoding.PEM)
        )
        (tmp_path / "federation.pem").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return tmp_path

    def test_oauth_snippet(self) -> None:
        """The README's oauth snippet loads; its secrets stay hidden."""
        data = tomllib.loads(
            """
            [superoffice]
            environment = "online"
            tenant = "Cust12345"
            [superoffice.auth]
            type = "oauth"
            client_id = "0123456789abcdef"
            client_secret = "s3cr3t-MARKER-7f1c"
            refresh_token = "s3cr3t-MARKER-7f1c-refresh"
            redirect_uri = "https://batchmon.example.com/callback"
            """
        )

        config = parse_config(data, base_dir=Path("/nonexistent"))

        so = config.superoffice
        assert isinstance(so.auth, OAuthConfig)
        assert ("https://online.superoffice.com", None) == (so.environment_base, so.url)
        assert "0123456789abcdef" == so.auth.client_id
        assert MARKER not in repr(config) + json.dumps(redacted(config))

    @pytest.mark.parametrize(
        ("key_file", "federation"),
        [("app.pem", None), ("app.xml", "federation.crt"), ("app.pem", "federation.cer")],
        ids=["pem-jwks", "rsa-xml-der-certificate", "pem-pem-certificate"],
    )
    def test_system_user_snippet(
        self,
        key: rsa.RSAPrivateKey,
        key_files: Path,
        monkeypatch: pytest.MonkeyPatch,
        key_file: str,
        federation: str | None,
    ) -> None:
        """The app key loads from PEM or RSA XML; SuperOffice's key from a certificate."""
        monkeypatch.setenv("BATCHMON_TEST_SYSTEM_USER_TOKEN", "batchmon-4fGh7Kp2")
        text = f"""
            [superoffice]
            environment = "sod"
            tenant = "Cust12345"
            [superoffice.auth]
            type = "system_user"
            client_secret_file = "client_secret"
            private_key_file = "{key_file}"
            system_user_token_env = "BATCHMON_TEST_SYSTEM_USER_TOKEN"
            """
        if federation is not None:
            text += f'federation_key_file = "{federation}"\n'
        (key_files / "client_secret").write_text("app-secret\n")

        auth = parse_config(tomllib.loads(text), base_dir=key_files).superoffice.auth

        assert isinstance(auth, SystemUserAuthConfig)
        assert key.private_numbers() == auth.signing_key().private_numbers()
        federation_key = auth.federation_key()
        if federation is None:
            assert federation_key is None
        else:
            assert federation_key is not None
            assert key.public_key().public_numbers() == federation_key.public_numbers()
        assert "-----BEGIN" not in repr(auth)

    @pytest.mark.parametrize(
        ("auth", "expected"),
        [
            (
                {"type": "oauth", "client_id": "c"},
                [
                    (
                        "superoffice.auth.client_secret: required for auth type 'oauth' "
                        "(give client_secret, client_secret_file or client_secret_env)"
                    ),
                    (
                        "superoffice.auth.refresh_token: required for auth type 'oauth' "
                        "(give refresh_token, refresh_token_file or refresh_token_env)"
                    ),
                ],
            ),
            (
                {
                    "type": "system_user",
                    "client_secret": "s",
                    "system_user_token": "t",
                    "private_key": "not a key",
                    "redirect_uri": "https://x.example",
                },
                [
                    "superoffice.auth.redirect_uri: not used by auth type 'system_user'",
                    (
                        "superoffice.auth.private_key: expected an RSA private key, "
                        "as PEM or as RSA XML"
                    ),
                ],
            ),
            (
                {"type": "basic", "username": "u", "password": "p", "client_id": "c"},
                ["superoffice.auth.client_id: not used by auth type 'basic'"],
            ),
            (
                {
                    "type": "system_user",
                    "client_secret": "s",
                    "system_user_token": "t",
                    "private_key_file": "app.pem",
                    "federation_key_file": "app.xml",
                },
                [
                    (
                        "superoffice.auth.federation_key_file: '{dir}/app.xml': expected an X.509 "
                        "certificate (PEM or DER) or a PEM public key"
                    )
                ],
            ),
        ],
        ids=["oauth-missing", "system-user-wrong", "basic-extra", "federation-not-a-key"],
    )
    def test_auth_refused(self, key_files: Path, auth: dict[str, str], expected: list[str]) -> None:
        """Each type names what it misses, what it does not use and what is no key."""
        data = {
            "superoffice": {"environment": "online", "tenant": "Cust12345", "auth": auth},
        }

        found = problems(data, base_dir=key_files)

        assert [line.format(dir=key_files) for line in expected] == found

    @pytest.mark.parametrize(
        ("where", "auth_type", "expected"),
        [
            ({"url": "https://online3.superoffice.com/Cust12345/api"}, "basic", []),
            ({"environment": "online", "tenant": "Cust12345"}, "basic", []),
            ({"environment_url": "http://127.0.0.1:8765", "tenant": "Cust1"}, "basic", []),
            ({"url": "https://x.example/api", "environment": "sod"}, "oauth", []),
            (
                {"url": "https://x.example/api", "environment": "online", "tenant": "Cust1"},
                "basic",
                ["superoffice.tenant: give either url or environment + tenant, not both"],
            ),
            (
                {},
                "basic",
                [
                    (
                        "superoffice.url: required, but not given; give url (the API base) or "
                        "environment + tenant (SuperOffice Online)"
                    )
                ],
            ),
            (
                {"tenant": "Cust1"},
                "basic",
                ["superoffice.environment: required with tenant (sod, qaonline or online)"],
            ),
            (
                {"url": "https://x.example/api"},
                "oauth",
                [
                    (
                        "superoffice.environment: required with auth type 'oauth' "
                        "(sod, qaonline or online)"
                    )
                ],
            ),
            (
                {"url": "https://x.example/api", "environment": "online"},
                "basic",
                ["superoffice.environment: not used with url and auth type 'basic'"],
            ),
            (
                {"environment": "prod", "tenant": "12345"},
                "basic",
                [
                    (
                        "superoffice.environment: must be 'sod', 'qaonline', 'stage' or 'online', "
                        "got 'prod'"
                    ),
                    (
                        "superoffice.tenant: expected a context identifier like 'Cust12345', "
                        "got '12345'"
                    ),
                ],
            ),
        ],
        ids=[
            "url",
            "environment-tenant",
            "environment-url",
            "url-oauth",
            "both",
            "neither",
            "tenant-alone",
            "oauth-without-environment",
            "unused-environment",
            "bad-values",
        ],
    )
    def test_url_or_environment_and_tenant(
        self, where: dict[str, str], auth_type: str, expected: list[str]
    ) -> None:
        """Exactly one of url and environment + tenant; each problem named by its key."""
        auth: dict[str, str] = {"type": "basic", "username": "u", "password": "p"}
        if auth_type == "oauth":
            auth = {"type": "oauth", "client_id": "c", "client_secret": "s", "refresh_token": "r"}
        data = {"superoffice": {**where, "auth": auth}}

        if expected:
            assert expected == problems(data)
        else:
            parse_config(data, base_dir=Path("/nonexistent"))

    def test_system_user_needs_a_tenant(self, key_files: Path) -> None:
        """The system user logs in to one tenant, so url alone is not enough."""
        auth = {
            "type": "system_user",
            "client_secret": "s",
            "system_user_token": "t",
            "private_key_file": "app.pem",
        }
        data = {"superoffice": {"url": "https://x.example/api", "environment": "sod", "auth": auth}}

        assert ["superoffice.tenant: required for auth type 'system_user'"] == problems(
            data, base_dir=key_files
        )

    def test_retry_keys(self) -> None:
        """The retry keys have defaults, read durations, and the base may not exceed the cap."""
        so = parse_config(minimal(), base_dir=Path("/nonexistent")).superoffice
        tuned = with_("superoffice.retries", 4)
        tuned["superoffice"].update(backoff_base="250ms", backoff_cap="1m", max_retry_after="2m")
        custom = parse_config(tuned, base_dir=Path("/nonexistent")).superoffice

        assert (2, 0.5, 30.0, 60.0) == (
            so.retries,
            so.backoff_base,
            so.backoff_cap,
            so.max_retry_after,
        )
        assert (4, 0.25, 60.0, 120.0) == (
            custom.retries,
            custom.backoff_base,
            custom.backoff_cap,
            custom.max_retry_after,
        )
        slow = with_("superoffice.backoff_base", "1m")
        assert [
            (
                "superoffice.backoff_base: must not be longer than superoffice.backoff_cap (30s), "
                "got 60s"
            )
        ] == problems(slow)
