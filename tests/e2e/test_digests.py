"""Storms as digests, end to end: a real batchmon, the simulator, loopback chat receivers.

200 watched tasks fail within 10 s.  Five chat sinks (Slack, Discord, Teams, Mattermost,
Google Chat) with a ``group_window`` each get at most 3 messages, each valid for its format,
that together name or count all 200; the signed webhook sink, which has no window, gets each
of the 200 failures.  Then a ``kill -9`` while a window is open: the digest arrives after the
restart, once.  ``[poll]`` keeps its defaults (5 s for active tasks).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskState
from tests.chat_formats import discord_problems, slack_problems, teams_problems
from tests.e2e.conftest import (
    WEBHOOK_SECRET,
    Batchmon,
    Hit,
    Peers,
    Receiver,
    base_config,
    http,
    wait_until,
)

STORM = 200
HOOK = "/hook"
#: Where each chat format puts a message's headline, and its validator (if the tests have one).
CHATS: dict[str, tuple[Callable[[Any], str], Callable[[Any], list[str]] | None]] = {
    "slack": (lambda body: body["text"], slack_problems),
    "discord": (lambda body: body["embeds"][0]["title"], discord_problems),
    "teams": (
        lambda body: body["attachments"][0]["content"]["body"][0]["inlines"][0]["text"],
        teams_problems,
    ),
    "mattermost": (lambda body: body["attachments"][0]["fallback"], None),
    "googlechat": (lambda body: body["fallbackText"], None),
}
DIGEST = re.compile(r"📋 (\d+) failed")


def config(simulator: Simulator, receiver: Receiver, state: Path, ids: list[int]) -> dict[str, Any]:
    """Every chat sink with a 30 s window, and a signed webhook for each failure."""
    chats = [
        {
            "name": kind,
            "type": kind,
            "url": receiver.url(f"/{kind}"),
            "events": ["task.failed", "monitor.*"],
            "group_window": "30s",
        }
        for kind in CHATS
    ]
    hook = {
        "name": "hook",
        "type": "webhook",
        "url": receiver.url(HOOK),
        "secret": WEBHOOK_SECRET,
        "events": ["task.failed"],
    }
    data = base_config(
        simulator.url,
        state,
        watch={"ids": ids},
        http={"listen": "127.0.0.1:0", "public_url": "https://batchmon.example.com/"},
        sinks=[*chats, hook],
    )
    data["poll"] = {}  # the defaults: active tasks every 5 s
    return data


def tracking(url: str, count: int) -> None:
    """Wait until batchmon tracks ``count`` tasks (its first poll saw them)."""
    wait_until(
        lambda: http(url + "/api/v1/tasks?limit=1").json()["total"] >= count or None,
        60,
        f"{count} tasks tracked",
    )


def counted(hits: list[Hit], headline: Callable[[Any], str]) -> int:
    """Failures a chat sink's messages name or count: a digest's number, else one each."""
    total = 0
    for hit in hits:
        title = headline(hit.json())
        digest = DIGEST.search(title)
        total += int(digest[1]) if digest else int(title.startswith("❌"))
    return total


def test_a_storm_of_200_failures(
    peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path
) -> None:
    """≤ 3 valid messages per chat sink naming or counting all 200; 200 signed webhooks."""
    simulator = peers.simulator(Simulator())
    receiver = peers.receiver(Receiver())
    tasks = [
        peers.call(simulator.add_task, name=f"Export {n}", state=BatchTaskState.STARTED)
        for n in range(STORM)
    ]
    ids = [task.id for task in tasks]
    batchmon = launch(config(simulator, receiver, tmp_path / "state.db", ids))
    tracking(batchmon.wait_started(), STORM)
    started = time.monotonic()
    for task_id in ids:  # 200 failures spread over about 4 s
        peers.call(simulator.set_task, task_id, state=BatchTaskState.FAILED, result="Disk full")
        time.sleep(0.02)
    assert time.monotonic() - started < 10

    def all_counted() -> bool | None:
        hooks = receiver.taken(HOOK)
        chats = [counted(receiver.taken(f"/{kind}"), CHATS[kind][0]) for kind in CHATS]
        return (len(hooks) >= STORM and all(n >= STORM for n in chats)) or None

    wait_until(all_counted, 120, "every failure delivered to every sink", every=0.5)

    for kind, (headline, check) in CHATS.items():
        hits = receiver.taken(f"/{kind}")
        assert 1 <= len(hits) <= 3, (kind, [headline(hit.json()) for hit in hits])
        assert STORM == counted(hits, headline), kind
        for hit in hits:
            body = hit.json()
            assert check is None or [] == check(body), kind
            assert len(hit.body) < 28_000
        digests = [hit for hit in hits if DIGEST.search(headline(hit.json()))]
        assert digests, kind
        assert "batchmon.example.com/?ids=" in digests[0].body.decode()
    verifier = Webhook(WEBHOOK_SECRET)
    failures = {
        verifier.verify(hit.body, dict(hit.headers))["data"]["task"]["id"]
        for hit in receiver.taken(HOOK)
    }
    assert set(ids) == failures
    assert STORM == len(receiver.taken(HOOK))


def test_kill_9_mid_window_then_the_digest_once(
    peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path
) -> None:
    """Killed while the window is open: after the restart the digest goes out, once."""
    simulator = peers.simulator(Simulator())
    receiver = peers.receiver(Receiver())
    tasks = [
        peers.call(simulator.add_task, name=f"Import {n}", state=BatchTaskState.STARTED)
        for n in range(10)
    ]
    ids = [task.id for task in tasks]
    data = config(simulator, receiver, tmp_path / "state.db", ids)
    data["sinks"] = [dict(data["sinks"][0], group_window="20s"), data["sinks"][-1]]
    batchmon = launch(data)
    tracking(batchmon.wait_started(), len(ids))
    for task_id in ids:
        peers.call(simulator.set_task, task_id, state=BatchTaskState.FAILED)
    # The webhook is sent at once from the same commit that queued the digest's rows.
    wait_until(lambda: len(receiver.taken(HOOK)) >= len(ids) or None, 60, "failures committed")
    batchmon.kill()
    assert [] == receiver.taken("/slack")

    batchmon.start()
    batchmon.wait_for(lambda line: line.get("event") == "digest_sent", 60, "the digest sent")
    assert 0 == batchmon.stop()

    [digest] = receiver.taken("/slack")
    assert "📋 10 failed" == digest.json()["text"]
    assert [] == slack_problems(digest.json())
    assert len(ids) == len(receiver.taken(HOOK))
