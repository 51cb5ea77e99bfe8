"""The real chain: batchmon, Prometheus and Alertmanager, each message checked where it lands.

One scenario runs once for the module (:func:`_chain`) and the tests read what it recorded.
batchmon (the real CLI and a TOML file, with ``http.public_url``) watches three hand-scripted
tasks in the simulator: A fails, is run again and succeeds; B stalls, resumes and succeeds;
C progresses and succeeds; then the API answers 503 to everything and comes back.  batchmon
posts to a fake Slack (its third post is answered 503, so one delivery is retried), a signed
webhook receiver and a real Alertmanager; a real Prometheus scrapes batchmon with the shipped
rules and alerts the same Alertmanager, which notifies a loopback webhook.

Test copy of the rules: ``BatchTaskStalled`` looks for 4 s without progress instead of
30 min and fires after 1 s instead of 5 min, ``BatchmonApiUnreachable`` fires after 1 s
instead of 5 min; every other rule is as shipped.  Prometheus scrapes and evaluates every
second.  The scenario takes about 40 s.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook

from monitor.config.echo import toml_text
from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskState
from tests.e2e.conftest import (
    AM_ONE_HOOK,
    PROMETHEUS_DIR,
    WEBHOOK_SECRET,
    Alertmanager,
    Batchmon,
    Hit,
    Peers,
    Prometheus,
    Receiver,
    base_config,
    free_port,
    http,
    require_tool,
    wait_until,
)

SLACK_PATH = "/services/T0000/B0000/chat"
HOOK_PATH = "/batchmon/events"
AM_HOOK_PATH = "/alertmanager"
#: Generous bounds for a busy 2-core machine; nothing here is a timing assertion.
STEP = 30.0
NAMES = {"A": "Import contacts from CSV", "B": "Rebuild freetext index", "C": "Email export"}


def fast_rules(text: str) -> str:
    """The shipped rules with the stall threshold and two ``for:`` durations shortened."""
    blocks = re.split(r"(?m)^(?=      - (?:alert|record): )", text)
    changes = {
        "BatchTaskStalled": [("> 1800", "> 4"), ("for: 5m", "for: 1s")],
        "BatchmonApiUnreachable": [("for: 5m", "for: 1s")],
    }
    out = []
    for block in blocks:
        for alert, edits in changes.items():
            if block.startswith(f"      - alert: {alert}\n"):
                for old, new in edits:
                    assert 1 == block.count(old), f"{alert}: expected one {old!r} to shorten"
                    block = block.replace(old, new)
        out.append(block)
    fast = "".join(out)
    assert 2 == fast.count("for: 1s")
    return fast


@dataclass
class Snapshot:
    """What Prometheus and Alertmanager listed at one moment."""

    at: float
    prometheus: list[dict[str, Any]]
    alertmanager: list[dict[str, Any]]


@dataclass
class ChainRun:
    """Everything the scenario saw; the tests judge it."""

    ids: dict[str, int]
    hits: list[Hit]
    snapshots: list[Snapshot]
    metrics: dict[tuple[str, str], float]
    lines: list[dict[str, Any]]
    exit_code: int
    public_url: str
    marks: dict[str, float] = field(default_factory=dict)


class Sampler:
    """Lists the alerts of Prometheus and Alertmanager twice a second, in a thread."""

    def __init__(self, prometheus: Prometheus, alertmanager: Alertmanager) -> None:
        self.snapshots: list[Snapshot] = []
        self._prometheus = prometheus
        self._alertmanager = alertmanager
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="alert-sampler")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                snapshot = Snapshot(
                    time.monotonic(), self._prometheus.alerts(), self._alertmanager.alerts()
                )
            except (OSError, ValueError):
                continue
            self.snapshots.append(snapshot)

    def latest(self) -> Snapshot | None:
        return self.snapshots[-1] if self.snapshots else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def prometheus_alert(snapshot: Snapshot, name: str, task_id: int | None = None) -> bool:
    """Whether Prometheus lists the alert as firing (not just pending)."""
    return any(
        a["labels"]["alertname"] == name
        and a["state"] == "firing"
        and (task_id is None or a["labels"].get("task_id") == str(task_id))
        for a in snapshot.prometheus
    )


def am_alert(snapshot: Snapshot, name: str, source: str, task_id: int | None = None) -> bool:
    """Whether Alertmanager has the alert active, from batchmon or from Prometheus."""
    return any(
        a["labels"]["alertname"] == name
        and (a["labels"].get("source") == "batchmon") == (source == "batchmon")
        and (task_id is None or a["labels"].get("task_id") == str(task_id))
        for a in snapshot.alertmanager
    )


def events(hits: list[Hit]) -> list[dict[str, Any]]:
    """The CloudEvents the webhook receiver took."""
    return [hit.json() for hit in hits if hit.path == HOOK_PATH and hit.status < 300]


def has(hits: list[Hit], kind: str, task_id: int | None = None) -> bool:
    return any(
        e["type"] == f"com.superoffice.batchmon.{kind}"
        and (task_id is None or e.get("subject") == str(task_id))
        for e in events(hits)
    )


def scrape(url: str) -> dict[tuple[str, str], float]:
    """Delivery counters by (sample name, sink) from /metrics."""
    values = {}
    for family in text_string_to_metric_families(http(url + "/metrics").body.decode()):
        for sample in family.samples:
            if "sink" in sample.labels:
                values[(sample.name, sample.labels["sink"])] = sample.value
    return values


@pytest.fixture(name="chain", scope="module")
def _chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChainRun]:
    prometheus_binary = require_tool("prometheus", "prometheus")
    am_binary = require_tool("prometheus-alertmanager", "prometheus-alertmanager", "alertmanager")
    tmp = tmp_path_factory.mktemp("chain")
    peers = Peers()
    closers: list[Callable[[], None]] = [peers.close]
    try:
        simulator = peers.simulator(Simulator())
        inbox = peers.receiver(Receiver(fail_at={SLACK_PATH: {3}}))
        started = datetime.now(UTC) - timedelta(minutes=2)
        ids = {
            key: peers.call(
                simulator.add_task,
                name=NAMES[key],
                request="ImportContacts" if key == "A" else "RebuildFreetextIndex",
                state=BatchTaskState.STARTED,
                progress=progress,
                start_count=1,
                last_started=started,
            ).id
            for key, progress in (("A", 10), ("B", 20), ("C", 30))
        }

        port = free_port()
        public_url = f"http://127.0.0.1:{port}"
        alertmanager = Alertmanager(
            am_binary, tmp / "alertmanager", AM_ONE_HOOK.format(url=inbox.url(AM_HOOK_PATH))
        )
        closers.append(alertmanager.close)
        (tmp / "prometheus").mkdir()
        (tmp / "prometheus" / "batchmon-rules.yml").write_text(
            fast_rules((PROMETHEUS_DIR / "batchmon-rules.yml").read_text())
        )
        shipped = (PROMETHEUS_DIR / "prometheus.yml").read_text()
        scrape_config = (
            shipped.replace("127.0.0.1:9808", f"127.0.0.1:{port}")
            .replace("127.0.0.1:9093", alertmanager.url.removeprefix("http://"))
            .replace("interval: 15s", "interval: 1s")
        )
        assert 2 == scrape_config.count("interval: 1s")
        (tmp / "prometheus" / "prometheus.yml").write_text(scrape_config)
        prometheus = Prometheus(prometheus_binary, tmp / "prometheus")
        closers.append(prometheus.close)

        config = base_config(
            simulator.url,
            tmp / "state" / "state.db",
            watch={"ids": sorted(ids.values())},
            poll={
                "interval": "0.5s",
                "idle_interval": "0.5s",
                "stall_after": "5s",
                "progress_min_interval": 0,
                "terminal_linger": "10m",
                "api_down_after": 2,
            },
            http={"listen": f"127.0.0.1:{port}", "public_url": public_url + "/"},
            sinks=[
                {
                    "name": "chat",
                    "type": "slack",
                    "url": inbox.url(SLACK_PATH),
                    "rate": "20/s",
                    "events": [
                        "task.failed",
                        "task.stalled",
                        "task.resumed",
                        "task.restarted",
                        "task.succeeded",
                        "monitor.*",
                    ],
                },
                {
                    "name": "hook",
                    "type": "webhook",
                    "url": inbox.url(HOOK_PATH),
                    "secret": WEBHOOK_SECRET,
                    "rate": "100/s",
                },
                {"name": "am", "type": "alertmanager", "url": alertmanager.url},
                {"name": "log", "type": "log"},
            ],
        )
        workdir = tmp / "batchmon"
        workdir.mkdir()
        (workdir / "batchmon.toml").write_text(toml_text(config))
        batchmon = Batchmon(workdir / "batchmon.toml", workdir).start()
        closers.append(batchmon.close)
        sampler = Sampler(prometheus, alertmanager)
        closers.append(sampler.close)
        marks: dict[str, float] = {}

        def hard(kind: str, key: str | None = None) -> None:
            task_id = ids[key] if key else None
            wait_until(
                lambda: has(list(inbox.hits), kind, task_id), STEP, f"{kind} of {key} delivered"
            )
            marks[f"{kind} {key}"] = time.monotonic()

        def soft(condition: Callable[[Snapshot], bool], mark: str) -> None:
            """Wait for what Prometheus or Alertmanager should show; the tests judge it."""
            deadline = time.monotonic() + STEP
            while time.monotonic() < deadline:
                latest = sampler.latest()
                if latest is not None and condition(latest):
                    marks[mark] = time.monotonic()
                    return
                time.sleep(0.2)

        batchmon.wait_started()
        for key in ids:
            hard("task.discovered", key)
        peers.call(
            simulator.set_task, ids["A"], state=BatchTaskState.FAILED, result="Failed: locked"
        )
        peers.call(simulator.set_task, ids["C"], progress=60)
        hard("task.failed", "A")
        hard("task.progress", "C")
        peers.call(simulator.set_task, ids["C"], state=BatchTaskState.SUCCEEDED, progress=100)
        hard("task.succeeded", "C")
        soft(
            lambda s: (
                prometheus_alert(s, "BatchTaskFailed", ids["A"])
                and am_alert(s, "BatchTaskFailed", "prometheus", ids["A"])
                and am_alert(s, "BatchTaskFailed", "batchmon", ids["A"])
            ),
            "failed fired",
        )
        hard("task.stalled", "B")
        soft(
            lambda s: (
                prometheus_alert(s, "BatchTaskStalled", ids["B"])
                and am_alert(s, "BatchTaskStalled", "prometheus", ids["B"])
                and am_alert(s, "BatchTaskStalled", "batchmon", ids["B"])
            ),
            "stalled fired",
        )
        peers.call(simulator.set_task, ids["B"], progress=50)
        hard("task.resumed", "B")
        soft(
            lambda s: (
                not prometheus_alert(s, "BatchTaskStalled")
                and not am_alert(s, "BatchTaskStalled", "prometheus")
                and not am_alert(s, "BatchTaskStalled", "batchmon")
            ),
            "stalled resolved",
        )
        peers.call(
            simulator.set_task,
            ids["A"],
            state=BatchTaskState.STARTED,
            progress=0,
            start_count=2,
            last_started=datetime.now(UTC),
            result="",
        )
        hard("task.restarted", "A")
        for key in ("A", "B"):
            peers.call(simulator.set_task, ids[key], state=BatchTaskState.SUCCEEDED, progress=100)
        hard("task.succeeded", "A")
        hard("task.succeeded", "B")
        soft(
            lambda s: (
                not prometheus_alert(s, "BatchTaskFailed")
                and not am_alert(s, "BatchTaskFailed", "prometheus")
                and not am_alert(s, "BatchTaskFailed", "batchmon")
            ),
            "failed resolved",
        )

        peers.call(simulator.fail_next, 2000, 503)
        hard("monitor.api_down")
        soft(
            lambda s: (
                prometheus_alert(s, "BatchmonApiUnreachable")
                and am_alert(s, "BatchmonApiUnreachable", "prometheus")
                and am_alert(s, "BatchmonApiDown", "batchmon")
            ),
            "api fired",
        )
        # The API comes back: the test takes the remaining scripted 503s itself.
        wait_until(
            lambda: http(simulator.url + "/v1/BatchTask/1", timeout=2).status != 503,
            STEP,
            "the simulator answering again",
            every=0.0,
        )
        hard("monitor.api_recovered")
        soft(
            lambda s: (
                not prometheus_alert(s, "BatchmonApiUnreachable")
                and not am_alert(s, "BatchmonApiUnreachable", "prometheus")
                and not am_alert(s, "BatchmonApiDown", "batchmon")
            ),
            "api resolved",
        )

        def notified_resolved() -> bool:
            fired = _am_notifications(list(inbox.hits), "firing")
            resolved = _am_notifications(list(inbox.hits), "resolved")
            ours = {k for k in fired if k[0] != "BatchmonDeliveriesFailing"}
            return ours <= set(resolved)

        deadline = time.monotonic() + STEP
        while not notified_resolved() and time.monotonic() < deadline:
            time.sleep(0.2)
        metrics = scrape(public_url)
        code = batchmon.stop()
        sampler.close()
        yield ChainRun(
            ids=ids,
            hits=list(inbox.hits),
            snapshots=list(sampler.snapshots),
            metrics=metrics,
            lines=batchmon.lines(),
            exit_code=code,
            public_url=public_url + "/",
            marks=marks,
        )
    finally:
        for close in reversed(closers):
            close()


def _am_notifications(hits: list[Hit], status: str) -> Counter[tuple[str, str, str]]:
    """How often Alertmanager notified each alert in ``status``: (alertname, task, source)."""
    seen: Counter[tuple[str, str, str]] = Counter()
    for hit in hits:
        if hit.path != AM_HOOK_PATH:
            continue
        for alert in hit.json()["alerts"]:
            if alert["status"] == status:
                labels = alert["labels"]
                source = "batchmon" if labels.get("source") == "batchmon" else "prometheus"
                seen[(labels["alertname"], labels.get("task_id", ""), source)] += 1
    return seen


def _slack_messages(hits: list[Hit]) -> list[tuple[str, str, dict[str, Any]]]:
    """(task id or "", event type, payload) of each message the fake Slack took."""
    messages = []
    for hit in hits:
        if hit.path != SLACK_PATH or hit.status >= 300:
            continue
        payload = hit.json()
        context = payload["blocks"][-1]["elements"][0]["text"]
        match = re.match(r"(?:Task #(\d+)|batchmon) · ([a-z_.]+)", context)
        assert match is not None, context
        messages.append((match[1] or "", match[2], payload))
    return messages


# Each task is first seen running: task.started comes with task.discovered (first_seen).
EXPECTED_WEBHOOK = {
    "A": [
        "task.discovered",
        "task.started",
        "task.failed",
        "task.restarted",
        "task.started",
        "task.succeeded",
    ],
    "B": [
        "task.discovered",
        "task.started",
        "task.stalled",
        "task.progress",
        "task.resumed",
        "task.succeeded",
    ],
    "C": ["task.discovered", "task.started", "task.progress", "task.succeeded"],
    "": ["monitor.api_down", "monitor.api_recovered"],
}
CHAT = {"task.failed", "task.stalled", "task.resumed", "task.restarted", "task.succeeded"}


class TestDelivery:
    """Each message arrives where it should, once, saying the right thing."""

    def test_webhook_gets_every_event_once_signed(self, chain: ChainRun) -> None:
        """Every CloudEvent is correctly signed, carries its id as webhook-id, and comes once."""
        hook = [hit for hit in chain.hits if hit.path == HOOK_PATH]
        verifier = Webhook(WEBHOOK_SECRET)
        ids = [hit.headers["webhook-id"] for hit in hook]
        by_task: dict[str, list[str]] = {}
        for hit in hook:
            event = verifier.verify(hit.body, dict(hit.headers))
            assert event["id"] == hit.headers["webhook-id"]
            assert "application/cloudevents+json" == hit.headers["content-type"]
            assert chain.public_url == event["source"]
            by_task.setdefault(event.get("subject", ""), []).append(
                event["type"].removeprefix("com.superoffice.batchmon.")
            )
            task = event["data"]["task"]
            if task is not None:
                key = next(k for k, v in chain.ids.items() if v == task["id"])
                assert NAMES[key] == task["name"]
        expected = {
            (str(chain.ids[key]) if key else ""): sorted(kinds)
            for key, kinds in EXPECTED_WEBHOOK.items()
        }
        assert [] == [i for i, n in Counter(ids).items() if n > 1]
        assert expected == {task: sorted(kinds) for task, kinds in by_task.items()}

    def test_webhook_events_say_the_state(self, chain: ChainRun) -> None:
        """Each task event carries the task's state; the failure carries its result."""
        tasks = {
            (e["subject"], e["type"].removeprefix("com.superoffice.batchmon.")): e["data"]["task"]
            for e in events(chain.hits)
            if "subject" in e
        }
        a, b, c = (str(chain.ids[k]) for k in "ABC")

        assert ("Failed", "Failed: locked") == (
            tasks[(a, "task.failed")]["state"],
            tasks[(a, "task.failed")]["result"],
        )
        assert ("Started", 2) == (
            tasks[(a, "task.restarted")]["state"],
            tasks[(a, "task.restarted")]["start_count"],
        )
        assert ("Started", 20) == (
            tasks[(b, "task.stalled")]["state"],
            tasks[(b, "task.stalled")]["progress"],
        )
        assert 50 == tasks[(b, "task.resumed")]["progress"]
        assert {"Succeeded"} == {tasks[(t, "task.succeeded")]["state"] for t in (a, b, c)}

    def test_slack_gets_its_events_once(self, chain: ChainRun) -> None:
        """The chat sink gets only the events it asked for, each once, named and linked."""
        messages = _slack_messages(chain.hits)
        seen = Counter((task, kind) for task, kind, _ in messages)
        expected = Counter(
            (str(chain.ids[key]) if key else "", kind)
            for key, kinds in EXPECTED_WEBHOOK.items()
            for kind in kinds
            if kind in CHAT or kind.startswith("monitor.")
        )
        assert expected == seen
        for task, _, payload in messages:
            if task:
                key = next(k for k, v in chain.ids.items() if str(v) == task)
                assert NAMES[key] in payload["text"]
            context = payload["blocks"][-1]["elements"][0]["text"]
            link = f"{chain.public_url}tasks/{task}" if task else chain.public_url
            assert f"<{link}|Status page>" in context

    def test_the_refused_slack_post_was_retried(self, chain: ChainRun) -> None:
        """The third post was answered 503; the same message went again and was taken."""
        posts = [hit for hit in chain.hits if hit.path == SLACK_PATH]
        refused, again = posts[2:4]
        assert [200, 200, 503, 200] == [hit.status for hit in posts[:4]]
        assert refused.body == again.body  # the same message, again
        assert 0 == chain.metrics[("batchmon_outbox_events", "chat")]

    def test_stops_cleanly(self, chain: ChainRun) -> None:
        """SIGTERM at the end: exit 0 after ``batchmon_stopped``."""
        assert 0 == chain.exit_code
        assert "batchmon_stopped" == chain.lines[-1]["event"]


def _fired_and_resolved(chain: ChainRun, check: Callable[[Snapshot], bool]) -> tuple[bool, bool]:
    """Whether a sampled listing ever showed it, and whether the last one no longer does."""
    return any(check(s) for s in chain.snapshots), not check(chain.snapshots[-1])


class TestAlerts:
    """Each alert fires and resolves, in Prometheus and in Alertmanager."""

    @pytest.mark.parametrize(
        ("name", "key"),
        [("BatchTaskFailed", "A"), ("BatchTaskStalled", "B"), ("BatchmonApiUnreachable", None)],
    )
    def test_prometheus(self, chain: ChainRun, name: str, key: str | None) -> None:
        """Prometheus fires the rule for the right task, and resolves it."""
        task_id = chain.ids[key] if key else None

        assert (True, True) == _fired_and_resolved(
            chain, lambda s: prometheus_alert(s, name, task_id)
        )

    @pytest.mark.parametrize(
        ("name", "source", "key"),
        [
            ("BatchTaskFailed", "batchmon", "A"),
            ("BatchTaskFailed", "prometheus", "A"),
            ("BatchTaskStalled", "batchmon", "B"),
            ("BatchTaskStalled", "prometheus", "B"),
            ("BatchmonApiDown", "batchmon", None),
            ("BatchmonApiUnreachable", "prometheus", None),
        ],
    )
    def test_alertmanager(self, chain: ChainRun, name: str, source: str, key: str | None) -> None:
        """Alertmanager lists the alert while it lasts and notifies firing and resolved once."""
        task_id = chain.ids[key] if key else None
        notified = (name, str(task_id) if task_id else "", source)

        assert (True, True) == _fired_and_resolved(
            chain, lambda s: am_alert(s, name, source, task_id)
        )
        assert 1 == _am_notifications(chain.hits, "firing")[notified]
        assert 1 == _am_notifications(chain.hits, "resolved")[notified]

    def test_alert_content(self, chain: ChainRun) -> None:
        """The task alerts name the task, in batchmon's labels and in Prometheus's."""
        a = str(chain.ids["A"])
        labels = [
            alert["labels"]
            for hit in chain.hits
            if hit.path == AM_HOOK_PATH
            for alert in hit.json()["alerts"]
            if alert["labels"]["alertname"] == "BatchTaskFailed"
        ]
        assert {NAMES["A"]} == {
            lab.get("task_name") or lab.get("name") for lab in labels if lab["task_id"] == a
        }
        assert {"warning"} == {lab["severity"] for lab in labels}

    def test_a_retried_delivery_is_not_a_given_up_one(self, chain: ChainRun) -> None:
        """One refused Slack post, retried and delivered, raises no "gives up" alert."""
        assert 0 == chain.metrics[("batchmon_deliveries_given_up_total", "chat")]
        assert 1 <= chain.metrics[("batchmon_delivery_failures_total", "chat")]

        assert not any(prometheus_alert(s, "BatchmonDeliveriesFailing") for s in chain.snapshots)


class TestRulesCopy:
    """The test copy of the rules."""

    def test_changes_only_what_it_says(self) -> None:
        """The test copy differs from the shipped rules in three values, nothing else."""
        shipped = (PROMETHEUS_DIR / "batchmon-rules.yml").read_text()
        fast = fast_rules(shipped)
        changed = [
            (old.strip(), new.strip())
            for old, new in zip(shipped.splitlines(), fast.splitlines(), strict=True)
            if old != new
        ]
        progress = (
            "time() - max by (tenant, task_id) (batchmon_task_last_progress_timestamp_seconds)"
        )

        assert [
            (f"{progress} > 1800", f"{progress} > 4"),
            ("for: 5m", "for: 1s"),
            ("for: 5m", "for: 1s"),
        ] == changed
