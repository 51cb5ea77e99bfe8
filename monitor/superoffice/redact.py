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

import base64
import html
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cached_property
from typing import Final, overload
from urllib.parse import quote, quote_plus

from pydantic import BaseModel, SecretStr

__all__ = [
    "CREDENTIAL_HEADERS",
    "MASK",
    "MIN_CUT_LENGTH",
    "MIN_SECRET_LENGTH",
    "Redactor",
    "configured_secrets",
    "sent_credentials",
    "wire_forms",
]

#: What replaces a secret; ``batchmon check-config`` shows the same for a configured one.
MASK: Final = "********"
#: Shorter values are not masked: a one- to three-character "secret" protects nothing,
#: and masking it would blot out letters and digits all over every message.
MIN_SECRET_LENGTH: Final = 4
#: The part of a secret at either end of a text that is masked as a quote cut short.
MIN_CUT_LENGTH: Final = 8
#: Request headers (lower case) whose values are credentials.
CREDENTIAL_HEADERS: Final = frozenset({"authorization", "so-apptoken"})
#: Configured secrets that are never sent anywhere.
_NEVER_SENT: Final = frozenset({"private_key"})


class Redactor:
    """Replaces known secrets, wherever they occur in a text, with :data:`MASK`.

    Each secret (of at least :data:`MIN_SECRET_LENGTH` characters) is looked
    for anywhere in the text, as it is and in the forms a peer saw it in
    (:func:`wire_forms`): URL and form encoded, in either case of hex digit,
    HTML escaped (an ASP.NET error page echoing the form), JSON escaped, and
    base64, alone or inside a longer base64 text (``user:password`` in a Basic
    header).  Longer matches win, so an encoded form is masked whole rather
    than around a shorter secret inside it.  A text that ends in the first part
    of a form, or starts with the last part (a quote cut short, by the peer or
    by us), has that part masked too.  The repr never shows the secrets.
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
        """Mask a part of a secret at either end of ``text``: a quote cut short may end so.

        The part must be :data:`MIN_CUT_LENGTH` long: shorter ones would blot out
        ordinary words that happen to match.  The longest part at each end wins.
        """
        longest = min(len(text), len(self._forms[0]) - 1)
        for length in range(longest, MIN_CUT_LENGTH - 1, -1):
            if text[-length:] in self._starts:
                text = text[:-length] + MASK
                break
        longest = min(len(text), longest)
        for length in range(longest, MIN_CUT_LENGTH - 1, -1):
            if text[:length] in self._ends:
                return MASK + text[length:]
        return text

    @cached_property
    def _starts(self) -> frozenset[str]:
        """The first parts of every form that are long enough to be masked when cut."""
        return frozenset(f[:n] for f in self._forms for n in range(MIN_CUT_LENGTH, len(f)))

    @cached_property
    def _ends(self) -> frozenset[str]:
        """The last parts of every form that are long enough to be masked when cut."""
        return frozenset(f[-n:] for f in self._forms for n in range(MIN_CUT_LENGTH, len(f)))

    @cached_property
    def _forms(self) -> list[str]:
        """Every form of every secret, longest first (worked out on first use)."""
        forms = {form for secret in self._secrets for form in wire_forms(secret)}
        return sorted(forms, key=lambda form: (-len(form), form))

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        return re.compile("|".join(map(re.escape, self._forms)))

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secrets)"


#: A percent escape in upper-case hex, as :func:`~urllib.parse.quote` writes it.
_UPPER_HEX = re.compile(r"%[0-9A-F]{2}")


def wire_forms(secret: str) -> set[str]:
    """``secret`` as it is and as it travels or is echoed.

    Percent encoded as :func:`~urllib.parse.quote` does, with ``/`` kept and as
    JavaScript's ``encodeURIComponent`` does; form encoded (``+`` for a space);
    each in upper- and lower-case hex.  HTML escaped with and without quotes
    (``&#x27;`` and ``&#39;``).  JSON escaped.  Base64, standard and URL-safe,
    with and without padding, and the part of a longer base64 text that the
    secret alone determines (:func:`_base64_cores`).
    """
    encoded = {
        quote(secret, safe=""),
        quote(secret),
        quote(secret, safe="!'()*"),
        quote_plus(secret, safe=""),
    }
    encoded |= {_UPPER_HEX.sub(lambda match: match[0].lower(), form) for form in encoded}
    escaped = html.escape(secret)
    forms = {
        secret,
        *encoded,
        escaped,
        escaped.replace("&#x27;", "&#39;"),
        html.escape(secret, quote=False),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }
    data = secret.encode()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(data).decode()
        forms |= {whole, whole.rstrip("=")}
        forms |= {core for core in _base64_cores(data, encode) if len(core) >= MIN_CUT_LENGTH}
    return forms


def _base64_cores(data: bytes, encode: Callable[[bytes], bytes]) -> Iterator[str]:
    """The base64 characters ``data`` alone decides, at each of the three byte offsets.

    Inside ``user:password`` the password starts 0, 1 or 2 bytes into a 3-byte
    group; the characters whose 6 bits all come from the password are the same
    whatever surrounds it.
    """
    for offset in range(3):
        padded = b"\0" * offset + data + b"\0" * (-(offset + len(data)) % 3)
        text = encode(padded).decode()
        first = -(-offset * 8 // 6)  # the first character starting inside data
        last = (offset + len(data)) * 8 // 6  # one past the last ending inside it
        yield text[first:last]


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
