"""A sink's rate is the destination's: the tenants' dispatchers share one limiter per sink."""

from __future__ import annotations

import math

from monitor.delivery.dispatcher import Limiters, Subscription
from monitor.sinks.base import Route
from monitor.sinks.log import LogSink


def _subscription(name: str, rate: float, tenant: str) -> Subscription:
    return Subscription(LogSink(name, tenant=tenant), Route(), rate=rate)


class TestLimiters:
    """Per sink name, not per tenant; a sink without a rate has none."""

    def test_tenants_share_a_sinks_limiter(self) -> None:
        limiters = Limiters()
        acme = limiters.of(_subscription("slack", 1.0, "acme"))
        globex = limiters.of(_subscription("slack", 1.0, "globex"))
        assert acme is not None
        assert acme is globex
        assert 1.0 == acme.interval

    def test_sinks_have_their_own(self) -> None:
        limiters = Limiters()
        slack = limiters.of(_subscription("slack", 1.0, "acme"))
        teams = limiters.of(_subscription("teams", 4.0, "acme"))
        assert slack is not teams

    def test_no_rate_no_limiter(self) -> None:
        assert Limiters().of(_subscription("log", math.inf, "acme")) is None

    def test_a_new_rate_gets_a_new_limiter(self) -> None:
        """A reload that changes a sink's rate must not keep the old one."""
        limiters = Limiters()
        before = limiters.of(_subscription("slack", 1.0, "acme"))
        after = limiters.of(_subscription("slack", 4.0, "acme"))
        assert after is not None
        assert after is not before
        assert 0.25 == after.interval
