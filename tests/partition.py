"""A loopback TCP relay that can be cut, to put a network partition between a client and a
server: once cut, bytes are dropped both ways and connections stay open, as when packets
are lost (no reset tells the client); new connections are accepted and hear nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import SocketAttribute, SocketStream

__all__ = ["Partition", "partition"]


class Partition:
    """The relay's port, and the switch."""

    def __init__(self, port: int, target: int) -> None:
        self.port = port
        self._target = target
        self.cut = False

    async def _relay(self, source: SocketStream, sink: SocketStream) -> None:
        async for chunk in source:
            if not self.cut:
                await sink.send(chunk)

    async def _handle(self, client: SocketStream) -> None:
        try:
            async with client:
                if self.cut:
                    async for _ in client:
                        pass
                    return
                server = await anyio.connect_tcp("127.0.0.1", self._target)
                async with server, anyio.create_task_group() as group:

                    async def one_way(source: SocketStream, sink: SocketStream) -> None:
                        await self._relay(source, sink)
                        group.cancel_scope.cancel()

                    group.start_soon(one_way, client, server)
                    group.start_soon(one_way, server, client)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # either end went away: so does the relay


@asynccontextmanager
async def partition(target: int) -> AsyncIterator[Partition]:
    """A relay to ``127.0.0.1:target`` on a free loopback port, for the block's time."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as group:
        relay = Partition(listener.extra(SocketAttribute.local_port), target)
        group.start_soon(listener.serve, relay._handle)
        yield relay
        group.cancel_scope.cancel()
