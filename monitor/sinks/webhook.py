"""The ``webhook`` sink: CloudEvents 1.0 JSON, signed per Standard Webhooks.

The body is a CloudEvent in structured mode (``application/cloudevents+json``)
whose ``data`` is the event's wire form (:meth:`Event.to_dict`), plus
``text`` when the sink has a template.  Headers follow Standard Webhooks:
``webhook-id`` is the event id, the same on every retry, so receivers
deduplicate on it; ``webhook-timestamp`` is when this attempt was made; with
a ``secret``, ``webhook-signature`` is ``v1,`` and the base64 HMAC-SHA256 of
``"{id}.{timestamp}.{body}"`` keyed with the secret's base64-decoded bytes.
The signature covers exactly the bytes sent.

Tenants: the ``source`` is per tenant (:func:`tenant_source`), and a tenant other
than the default one is named in the ``tenant`` extension attribute, so a receiver
of many tenants can route on it (absent: the tenant ``default``).  A single-tenant
configuration sends exactly what it did before tenants existed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import time
from collections.abc import Callable
from datetime import UTC
from typing import TYPE_CHECKING, Self

import aiohttp

from monitor.links import DEFAULT_TENANT, named_tenant, with_tenant
from monitor.sinks.http import HttpSink, Request, json_body
from monitor.sinks.render import Renderer

if TYPE_CHECKING:
    from monitor.config.sinks import WebhookSinkConfig
    from monitor.sinks.context import SinkContext
    from monitor.tracking.events import Event

__all__ = ["CONTENT_TYPE", "TYPE_PREFIX", "WebhookSink", "cloudevent", "sign", "tenant_source"]

CONTENT_TYPE = "application/cloudevents+json"
#: CloudEvents ``type`` is this prefix and the event type (``...task.failed``).
TYPE_PREFIX = "com.superoffice.batchmon."


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``v1`` signature of one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def tenant_source(source: str, tenant: str) -> str:
    """The CloudEvents ``source`` of a tenant's events, from the process's own ``source``.

    The default tenant keeps ``source`` as it is; another tenant's is the status page
    of that tenant (``https://host/?tenant=acme``), or the URN with the tenant appended
    (``urn:batchmon:host:acme``): ``source`` + ``id`` stays unique although event ids
    are unique only within a tenant.
    """
    named = named_tenant(tenant)
    if named is None:
        return source
    if source.lower().startswith("urn:"):
        return f"{source}:{named}"
    return with_tenant(source, named)


def cloudevent(
    event: Event, *, source: str, text: str | None = None, tenant: str | None = None
) -> dict[str, object]:
    """``event`` as a structured-mode CloudEvent 1.0; ``tenant`` is the extension attribute
    (left out for ``None``, the default tenant)."""
    data = event.to_dict()
    if text is not None:
        data["text"] = text
    envelope: dict[str, object] = {
        "specversion": "1.0",
        "id": event.id,
        "source": source,
        "type": TYPE_PREFIX + event.type.value,
        "time": event.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,
    }
    if event.task is not None:
        envelope["subject"] = str(event.task.id)
    if tenant is not None:
        envelope["tenant"] = tenant
    return envelope


class WebhookSink(HttpSink):
    """Posts CloudEvents to any HTTP endpoint, signed when a secret is configured."""

    default_rate = 10.0
    #: Machines read webhooks: a burst goes out four at a time (each task's in order).
    default_concurrency = 4

    def __init__(
        self,
        name: str,
        url: str,
        session: aiohttp.ClientSession,
        *,
        timeout: float = 10.0,
        renderer: Renderer | None = None,
        secret: str | None = None,
        source: str | None = None,
        clock: Callable[[], float] = time.time,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        """``source`` defaults to ``urn:batchmon:<hostname>``, made per ``tenant`` by
        :func:`tenant_source`; ``clock`` gives unix seconds."""
        super().__init__(name, url, session, timeout=timeout, renderer=renderer)
        self._key = (
            base64.b64decode(secret.removeprefix("whsec_"), validate=True)
            if secret is not None
            else None
        )
        self.source = tenant_source(source or f"urn:batchmon:{socket.gethostname()}", tenant)
        self._tenant = named_tenant(tenant)
        self._clock = clock

    @classmethod
    def from_webhook_config(cls, config: WebhookSinkConfig, context: SinkContext) -> Self:
        """The sink a ``webhook`` entry describes: the signing ``secret``; the status page's
        URL, when public, is the ``source``."""
        secret = config.secret.get_secret_value() if config.secret is not None else None
        return cls.from_config(
            config, context, secret=secret, source=context.status_url, tenant=context.tenant
        )

    @property
    def signed(self) -> bool:
        """Whether requests carry ``webhook-signature``."""
        return self._key is not None

    def request(self, event: Event) -> Request:
        """The CloudEvent, with Standard Webhooks headers for this attempt."""
        text = self._renderer.text(event)
        body = json_body(cloudevent(event, source=self.source, text=text, tenant=self._tenant))
        timestamp = int(self._clock())
        headers = {"webhook-id": event.id, "webhook-timestamp": str(timestamp)}
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, event.id, timestamp, body)
        return Request(body, content_type=CONTENT_TYPE, headers=headers)
