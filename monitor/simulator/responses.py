"""How the simulator answers when it is not serving a task: JSON, error objects, scripted faults.

Shared by the server, the login endpoints and the tenant routing, which all answer with
SuperOffice's error object; on its own so none of them has to import another for it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
from aiohttp import web

__all__ = ["Fault", "bad_request", "dumps", "error_response", "json_object"]


def dumps(data: object) -> str:
    return json.dumps(data, ensure_ascii=False)


def error_response(
    status: int,
    error_type: str,
    message: str,
    *,
    source: str = "SuperOffice.WebApi",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A SuperOffice error object: ``{"Error": true, "ErrorType", "ErrorMessage", "ErrorSource"}``."""
    body = {"Error": True, "ErrorType": error_type, "ErrorMessage": message, "ErrorSource": source}
    return web.json_response(body, status=status, headers=headers, dumps=dumps)


def bad_request(message: str) -> web.Response:
    return error_response(400, "ArgumentException", message)


async def json_object(request: web.Request) -> dict[str, object] | web.Response:
    """The request's JSON object body, or the 400 SuperOffice answers when it is not one."""
    try:
        body = json.loads(await request.read())
    except (ValueError, RecursionError):
        return bad_request("The request body is not valid JSON")
    if not isinstance(body, dict):
        return bad_request("The request body must be a JSON object")
    return body


@dataclass(frozen=True, slots=True)
class Fault:
    """A scripted answer; a fresh Response per use, because aiohttp sends each only once.

    ``mode`` ``"hang"`` answers only once the simulator stops (the client times out first);
    ``"truncate"`` announces the whole body but sends half of it and closes the connection.
    """

    status: int
    body: bytes
    headers: Mapping[str, str]
    mode: str = "answer"

    async def respond(self, request: web.Request, released: anyio.Event) -> web.StreamResponse:
        if self.mode == "hang":
            await released.wait()
        if self.mode != "truncate":
            return web.Response(status=self.status, body=self.body, headers=self.headers)
        response = web.StreamResponse(status=self.status, headers=self.headers)
        response.content_length = len(self.body)
        await response.prepare(request)
        await response.write(self.body[: len(self.body) // 2])
        if request.transport is not None:
            request.transport.close()
        return response
