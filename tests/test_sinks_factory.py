"""Each sink type has one config model and one builder, keyed by the same ``type``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from pydantic import TypeAdapter

from monitor.config import SINK_TYPES, SinkConfig
from monitor.sinks.context import SinkContext
from monitor.sinks.factory import BUILDERS, build_sink

#: The keys each type needs to load (the URL sinks need a URL).
REQUIRED: dict[str, dict[str, str]] = {
    kind: {} if kind == "log" else {"url": "http://127.0.0.1:9/hook"} for kind in SINK_TYPES
}


@pytest.fixture(name="session")
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def test_every_sink_type_has_a_builder() -> None:
    """A type without a builder fails here, not with a KeyError at start-up."""
    assert set(BUILDERS) == set(SINK_TYPES)


@pytest.mark.parametrize("kind", sorted(SINK_TYPES))
def test_builder_takes_its_own_model(kind: str) -> None:
    """The builder under a type builds from that type's model."""
    assert BUILDERS[kind].config is SINK_TYPES[kind]


@pytest.mark.parametrize("kind", sorted(SINK_TYPES))
async def test_each_type_builds(kind: str, session: aiohttp.ClientSession) -> None:
    """A loaded entry of each type builds a sink named after it."""
    config = TypeAdapter(SinkConfig).validate_python(
        {"name": "ops", "type": kind, **REQUIRED[kind]}
    )

    sink = build_sink(config, SinkContext(session, status_url=None))

    assert "ops" == sink.name


async def test_a_builder_refuses_another_types_model(session: aiohttp.ClientSession) -> None:
    """A model given to the wrong builder is a programming error, said plainly."""
    config = TypeAdapter(SinkConfig).validate_python({"name": "ops", "type": "log"})

    with pytest.raises(TypeError, match="a 'log' entry, not 'slack'"):
        BUILDERS["slack"](config, SinkContext(session, status_url=None))
