"""The lease keeper's decisions, without a database: fair share, preference, what a round
loses, hands back and takes, and when a replica cut off must fence itself."""

from __future__ import annotations

import math
import os
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.delivery.leases import (
    Decision,
    LeaseRow,
    decide,
    fair_share,
    fence_at,
    new_replica_id,
    preferred,
)

NAMES = frozenset({"n1", "n2", "n3", "n4"})


@pytest.mark.parametrize(
    ("names", "live", "share"),
    [
        (20, 3, 7),
        (20, 2, 10),
        (20, 1, 20),
        (3, 5, 1),
        (0, 3, 0),
        # This replica is always live itself; a count of none is read as one.
        (5, 0, 5),
    ],
)
def test_fair_share(names: int, live: int, share: int) -> None:
    """A replica holds at most ceil(names / live replicas)."""
    assert share == fair_share(names, live)


@pytest.mark.parametrize(
    ("me", "order"),
    [
        ("a", ["n4", "n1", "n5", "n2", "n6", "n3"]),
        ("b", ["n5", "n3", "n1", "n6", "n2", "n4"]),
    ],
)
def test_each_replica_prefers_its_own_order(me: str, order: list[str]) -> None:
    """The order is fixed for a replica and differs between replicas."""
    assert order == preferred(me, ["n1", "n2", "n3", "n4", "n5", "n6"])
    assert order == preferred(me, reversed(order))


# Replica "a" prefers n4, n1, n2, n3 (of NAMES), see above.
@pytest.mark.parametrize(
    ("names", "held", "renewed", "live", "rows", "decision"),
    [
        pytest.param(
            NAMES, {}, {}, 1, {}, Decision(free=("n4", "n1", "n2", "n3"), room=4), id="alone"
        ),
        pytest.param(
            NAMES,
            {},
            {},
            2,
            {},
            Decision(free=("n4", "n1", "n2", "n3"), room=2),
            id="half-preferred",
        ),
        pytest.param(
            NAMES,
            {},
            {},
            0,
            {},
            Decision(free=("n4", "n1", "n2", "n3"), room=4),
            id="none-live-is-one",
        ),
        pytest.param(
            NAMES,
            {},
            {},
            2,
            {"n4": LeaseRow("b", 1, live=True)},
            Decision(free=("n1", "n2", "n3"), room=2),
            id="held-by-another",
        ),
        pytest.param(
            NAMES,
            {},
            {},
            2,
            {"n4": LeaseRow("b", 1, live=False)},
            Decision(free=("n4", "n1", "n2", "n3"), room=2),
            id="run-out",
        ),
        pytest.param(
            NAMES,
            {},
            {},
            2,
            {"n4": LeaseRow("a", 1, live=True)},
            Decision(free=("n4", "n1", "n2", "n3"), room=2),
            id="own-row-not-held",
        ),
        pytest.param(
            NAMES,
            {"n1": 3},
            {"n1": 3},
            2,
            {"n1": LeaseRow("a", 1, live=True)},
            Decision(free=("n4", "n2", "n3"), room=1),
            id="kept-and-room",
        ),
        pytest.param(
            NAMES,
            {"n4": 3, "n1": 1},
            {"n4": 3, "n1": 1},
            2,
            {"n4": LeaseRow("a", 1, live=True), "n1": LeaseRow("a", 1, live=True)},
            Decision(),
            id="at-share",
        ),
        pytest.param(
            NAMES,
            {"n1": 3},
            {},
            1,
            {"n1": LeaseRow("b", 1, live=True)},
            Decision(lost=("n1",), free=("n4", "n2", "n3"), room=4),
            id="not-renewed",
        ),
        pytest.param(
            NAMES,
            {"n1": 3},
            {"n1": 4},
            2,
            {"n1": LeaseRow("a", 1, live=True)},
            Decision(lost=("n1",), free=("n4", "n2", "n3"), room=2),
            id="other-epoch",
        ),
        pytest.param(
            NAMES,
            {"n1": 1, "n2": 1, "n3": 1, "n4": 1},
            {"n1": 1, "n2": 1, "n3": 1, "n4": 1},
            2,
            {},
            Decision(hand_back=("n2", "n3")),
            id="above-share",
        ),
        pytest.param(
            frozenset({"n1", "n2"}),
            {"n5": 1},
            {"n5": 1},
            1,
            {},
            Decision(hand_back=("n5",), free=("n1", "n2"), room=2),
            id="unconfigured",
        ),
        pytest.param(
            frozenset(), {"n1": 1}, {"n1": 1}, 1, {}, Decision(hand_back=("n1",)), id="no-names"
        ),
    ],
)
def test_decide(
    names: frozenset[str],
    held: dict[str, int],
    renewed: dict[str, int],
    live: int,
    rows: dict[str, LeaseRow],
    decision: Decision,
) -> None:
    """A round loses what it could not renew, hands back what is above its share or no
    longer configured, and takes free leases, the preferred first, up to its share."""
    assert decision == decide("a", names, held, renewed, live, rows)


@given(
    names=st.integers(min_value=0, max_value=30),
    replicas=st.integers(min_value=1, max_value=5),
)
def test_replicas_split_the_names_in_two_rounds(names: int, replicas: int) -> None:
    """Replicas taking turns on one table, all live: after two rounds each name has one
    holder and none holds more than its fair share."""
    all_names = frozenset(f"t{i}" for i in range(names))
    table: dict[str, tuple[str, int]] = {}  # name → (holder, epoch), live
    held: dict[str, dict[str, int]] = {f"r{i}": {} for i in range(replicas)}
    for _ in range(2):
        for me, mine in held.items():
            rows = {
                name: LeaseRow(holder, epoch, live=True) for name, (holder, epoch) in table.items()
            }
            decision = decide(me, all_names, mine, dict(mine), replicas, rows)
            assert decision.lost == ()
            for name in decision.hand_back:
                del mine[name], table[name]
            for name in decision.free[: decision.room]:
                epoch = table.get(name, ("", 0))[1] + 1
                table[name] = (me, epoch)
                mine[name] = epoch
    assert all_names == set(table)
    share = math.ceil(names / replicas)
    assert all(len(mine) <= share for mine in held.values())
    assert {name: me for me, mine in held.items() for name in mine} == {
        name: holder for name, (holder, _) in table.items()
    }


@pytest.mark.parametrize(
    ("last_good", "held", "at"),
    [
        (None, True, math.inf),
        (10.0, False, math.inf),
        # ttl 15: a fifth of it before the leases run out.
        (10.0, True, 22.0),
    ],
)
def test_fence_at(last_good: float | None, held: bool, at: float) -> None:
    """Held leases are given up ttl - ttl/5 after the last good round began; with none
    held, or no good round yet, there is nothing to give up."""
    assert at == fence_at(last_good, held, 15.0)


def test_a_replica_id_is_new_at_each_start_and_says_where() -> None:
    """Two keepers of one process never share a name; the name starts with host and pid."""
    first, second = new_replica_id(), new_replica_id()
    assert first != second
    assert first.startswith(f"{socket.gethostname()}-{os.getpid()}-")
