"""``batchmon test-sink NAME``: one test message through a configured sink, and its answer."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result

from monitor.cli import EX_CONFIG, main
from monitor.sinks.render import TEST_MESSAGE, TEST_TITLE
from tests.conftest import Reply, ScriptedServer

TOKEN = "hook-t0ken-77ab"


def _config(tmp_path: Path, server: ScriptedServer, *, template: str | None = None) -> Path:
    """A config with a Slack sink on ``server``, a webhook sink and a log sink."""
    extra = f"template = {json.dumps(template)}\n" if template is not None else ""
    path = tmp_path / "batchmon.toml"
    path.write_text(
        '[superoffice]\nurl = "http://127.0.0.1:9/api"\n'
        '[superoffice.auth]\ntype = "basic"\nusername = "u"\npassword = "p"\n'
        '[http]\npublic_url = "https://batchmon.example.com/"\n'
        f'[[sinks]]\nname = "ops"\ntype = "slack"\nurl = "{server.url}/services/{TOKEN}"\n'
        f'timeout = "300ms"\n{extra}'
        f'[[sinks]]\nname = "hooks"\ntype = "webhook"\nurl = "{server.url}/in"\n'
        '[[sinks]]\nname = "journal"\ntype = "log"\n'
    )
    return path


async def _invoke(*args: str) -> Result:
    """Run the command in a worker thread: it runs its own event loop, the server ours."""
    return await anyio.to_thread.run_sync(
        lambda: CliRunner().invoke(main, ["test-sink", *args], catch_exceptions=False)
    )


class TestTestSink:
    """``batchmon test-sink``."""

    async def test_delivered(self, tmp_path: Path, scripted: ScriptedServer) -> None:
        """The destination's answer is printed; exit 0; the message says it is a test."""
        scripted.replies.append(Reply(200, "ok"))
        result = await _invoke("ops", "--config", str(_config(tmp_path, scripted)))

        assert 0 == result.exit_code, result.output
        assert "ops: delivered: HTTP 200 OK: ok" in result.stdout
        [seen] = scripted.seen
        assert f"/api/services/{TOKEN}" == seen.path
        payload = json.loads(seen.body)
        assert TEST_TITLE in payload["text"]
        assert TEST_MESSAGE in json.dumps(payload["blocks"], ensure_ascii=False)
        assert "batchmon.example.com" in json.dumps(payload["blocks"])

    async def test_answer_escapes_are_shown_not_obeyed(
        self, tmp_path: Path, scripted: ScriptedServer
    ) -> None:
        """Terminal escapes in the destination's answer reach the terminal as text."""
        scripted.replies.append(Reply(200, "ok\x1b]0;TITLE\x07\x1b[2J"))
        result = await _invoke("ops", "--config", str(_config(tmp_path, scripted)))

        assert 0 == result.exit_code, result.output
        assert "\x1b" not in result.output
        assert "ok\\x1b]0;TITLE\\x07\\x1b[2J" in result.stdout

    async def test_refused(self, tmp_path: Path, scripted: ScriptedServer) -> None:
        """A refusal is printed with what the destination said; exit 1; no URL shown."""
        scripted.replies.append(Reply(404, "no_service"))
        result = await _invoke("ops", "--config", str(_config(tmp_path, scripted)))

        assert 1 == result.exit_code
        assert "batchmon: not delivered: ops: HTTP 404 Not Found: no_service" in result.stderr
        assert TOKEN not in result.output

    async def test_unreachable(self, tmp_path: Path, scripted: ScriptedServer) -> None:
        """No answer in time is a failure too, with the reason."""
        scripted.replies.append(Reply(200, "ok", delay=2.0))
        result = await _invoke("ops", "--config", str(_config(tmp_path, scripted)))

        assert 1 == result.exit_code
        assert "ops: no answer within 0.3 s" in result.stderr

    async def test_webhook(self, tmp_path: Path, scripted: ScriptedServer) -> None:
        """Any sink type works; the webhook gets a ``batchmon.test`` CloudEvent about no task,
        which no receiver automating on ``task.succeeded`` acts on."""
        scripted.replies.append(Reply(202, ""))
        result = await _invoke("hooks", "--config", str(_config(tmp_path, scripted)))

        assert 0 == result.exit_code, result.output
        assert "hooks: delivered: HTTP 202 Accepted" in result.stdout
        cloudevent = json.loads(scripted.seen[0].body)
        assert "com.superoffice.batchmon.batchmon.test" == cloudevent["type"]
        assert "subject" not in cloudevent
        assert None is cloudevent["data"]["task"]
        assert TEST_MESSAGE == cloudevent["data"]["message"]

    async def test_alertmanager(self, tmp_path: Path, scripted: ScriptedServer) -> None:
        """An alertmanager sink gets one test alert that ends by itself, severity none."""
        scripted.replies.append(Reply(200, ""))
        config = _config(tmp_path, scripted)
        config.write_text(
            config.read_text()
            + f'[[sinks]]\nname = "am"\ntype = "alertmanager"\nurl = "{scripted.url}"\n'
        )
        result = await _invoke("am", "--config", str(config))

        assert 0 == result.exit_code, result.output
        [alert] = json.loads(scripted.seen[0].body)
        assert {
            "alertname": "BatchmonTest",
            "tenant": "default",
            "severity": "none",
            "source": "batchmon",
        } == alert["labels"]
        assert "please ignore" in alert["annotations"]["summary"]
        assert alert["endsAt"] > alert["startsAt"]

    async def test_log_sink(self, tmp_path: Path, scripted: ScriptedServer) -> None:
        """A sink without a destination answer just reports delivery."""
        result = await _invoke("journal", "--config", str(_config(tmp_path, scripted)))

        assert 0 == result.exit_code, result.output
        assert "journal: delivered\n" == result.stdout
        assert [] == scripted.seen

    async def test_unknown_name(self, tmp_path: Path, scripted: ScriptedServer) -> None:
        """An unknown name exits 2 and lists the configured sinks."""
        result = await _invoke("nope", "--config", str(_config(tmp_path, scripted)))

        assert 2 == result.exit_code
        assert "no sink named 'nope'; configured: ops, hooks, journal" in result.stderr
        assert [] == scripted.seen

    async def test_bad_template(self, tmp_path: Path, scripted: ScriptedServer) -> None:
        """A template that does not compile is a configuration problem."""
        config = _config(tmp_path, scripted, template="{% if %}")
        result = await _invoke("ops", "--config", str(config))

        assert EX_CONFIG == result.exit_code
        assert 'sinks["ops"].template: template line 1' in result.stderr

    @pytest.mark.parametrize("args", [["--help"], ["-h"]])
    def test_help_has_an_example(self, args: list[str]) -> None:
        """The help says what is sent and shows an example."""
        result = CliRunner().invoke(main, ["test-sink", *args])

        assert 0 == result.exit_code
        assert "batchmon test-sink ops --config" in result.output
        assert "batchmon.test" in result.output
