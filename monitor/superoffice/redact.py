"""Masks credentials in text a peer sent back, before batchmon repeats it.

Errors quote what the other side said (SuperOffice's ``ErrorMessage``, OAuth's
``error_description``) because it says why; those quotes end up in log lines,
``monitor.auth_failed`` events and ``/readyz``.  A peer may echo what it was
sent: a login host that puts the posted form into its error, a proxy that
repeats the request headers.  So every quote of peer text goes through a
:class:`Redactor` that knows the configured secrets and the credentials sent
with the request, in the forms they take on the wire, and replaces each with
:data:`MASK`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import cached_property
from typing import Final, overload
from urllib.parse import quote, quote_plus

from pydantic import BaseModel, SecretStr

__all__ = [
    "CREDENTIAL_HEADERS",
    "MASK",
    "MIN_SECRET_LENGTH",
    "Redactor",
    "configured_secrets",
    "sent_credentials",
]

#: What replaces a secret; ``batchmon check-config`` shows the same for a configured one.
MASK: Final = "********"
#: Shorter values are not masked: a one- to three-character "secret" protects nothing,
#: and masking it would blot out letters and digits all over every message.
MIN_SECRET_LENGTH: Final = 4
#: Request headers (lower case) whose values are credentials.
CREDENTIAL_HEADERS: Final = frozenset({"authorization", "so-apptoken"})
#: Configured secrets that are never sent anywhere.
_NEVER_SENT: Final = frozenset({"private_key"})


class Redactor:
    """Replaces known secrets, wherever they occur in a text, with :data:`MASK`.

    Each secret (of at least :data:`MIN_SECRET_LENGTH` characters) is looked
    for anywhere in the text, as it is and in the forms a peer saw it in: URL
    and form encoded (``quote``/``quote_plus``, how a form post carries it) and
    JSON escaped (a request body quoted inside a JSON error).  Longer matches
    win, so an encoded form is masked whole rather than around a shorter secret
    inside it.  A text that ends in the first part of a secret (a quote cut
    short, by the peer or by us) has that part masked too.  The repr never
    shows the secrets.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = frozenset(s for s in secrets if len(s) >= MIN_SECRET_LENGTH)

    def adding(self, secrets: Iterable[str]) -> Redactor:
        """A redactor for these secrets as well (this one stays as it is)."""
        more = frozenset(secrets) - self._secrets
        return Redactor(self._secrets | more) if more else self

    @overload
    def __call__(self, text: str) -> str: ...

    @overload
    def __call__(self, text: None) -> None: ...

    def __call__(self, text: str | None) -> str | None:
        """``text`` with every secret masked (``None`` stays ``None``)."""
        if text is None or not self._forms:
            return text
        return self._cut_short(self._pattern.sub(MASK, text))

    def _cut_short(self, text: str) -> str:
        """Mask the start of a secret at the end of ``text``: a quote cut short may end so."""
        for form in self._forms:
            for length in range(len(form) - 1, MIN_SECRET_LENGTH - 1, -1):
                if text.endswith(form[:length]):
                    return text[:-length] + MASK
        return text

    @cached_property
    def _forms(self) -> list[str]:
        """Every form of every secret, longest first (worked out on first use)."""
        forms = {form for secret in self._secrets for form in _wire_forms(secret)}
        return sorted(forms, key=lambda form: (-len(form), form))

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        return re.compile("|".join(map(re.escape, self._forms)))

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secrets)"


def _wire_forms(secret: str) -> set[str]:
    """``secret`` as it is and as it travels: percent/form encoded, JSON escaped."""
    return {
        secret,
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }


def configured_secrets(section: BaseModel) -> Iterator[str]:
    """Every secret value in a configuration section and the sections within it.

    Except the system user's private key: it never leaves batchmon (only
    signatures made with it do), so no peer can echo it, and its PEM armour
    (``-----BEGIN``) is no secret to mask.
    """
    for name in type(section).model_fields:
        value = getattr(section, name)
        if name in _NEVER_SENT:
            continue
        if isinstance(value, SecretStr):
            yield value.get_secret_value()
        elif isinstance(value, BaseModel):
            yield from configured_secrets(value)


def sent_credentials(headers: Mapping[str, str]) -> Iterator[str]:
    """The credentials in request headers, without their scheme.

    ``Basic dXNlcjpwYXNz`` gives ``dXNlcjpwYXNz`` (the base64 of ``user:password``
    as sent); likewise the token after ``Bearer`` and the ticket after
    ``SOTicket``.  Masking that part masks the whole header value too, and keeps
    the scheme readable.
    """
    for name, value in headers.items():
        if name.lower() in CREDENTIAL_HEADERS:
            scheme, _, credential = value.strip().partition(" ")
            yield credential.strip() or scheme
