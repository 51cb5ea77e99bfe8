"""The ``batchmon`` command as a user runs it: real processes, real config files."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import aiohttp
import anyio
import anyio.abc
import pytest
from click.testing import CliRunner

from monitor.cli import EX_CONFIG, main
from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskState

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "config" / "batchmon.example.toml"
BATCHMON = [sys.executable, "-m", "monitor"]


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


class TestCheckConfig:
    """``batchmon check-config``."""

    def test_example_is_valid_and_secrets_are_masked(self, tmp_path: Path) -> None:
        """The shipped example validates; its secrets never reach the output."""
        (tmp_path / "so_password").write_text("marker-password-71f3\n")
        (tmp_path / "api_token").write_text("marker-token-9c2e\n")
        (tmp_path / "slack_url").write_text("https://hooks.example/marker-slack-5b1d\n")
        (tmp_path / "webhook_secret").write_text("whsec_" + "B" * 32 + "\n")
        env = {
            "CREDENTIALS_DIRECTORY": str(tmp_path),
            "BATCHMON_WEBHOOK_URL": "https://receiver.example/marker-hook-0c4e",
        }
        result = CliRunner().invoke(main, ["check-config", str(EXAMPLE)], env=env)

        assert 0 == result.exit_code, result.output
        assert "configuration is valid" in result.output
        assert "marker-" not in result.output
        assert "BBBBBBBB" not in result.output
        assert "********" in result.output

    def test_problems_by_path_and_exit_78(self, tmp_path: Path) -> None:
        """Every problem is listed by key path; the exit code is EX_CONFIG."""
        config = tmp_path / "bad.toml"
        config.write_text(
            '[superoffice]\nurl = "ftp://x"\n[superoffice.auth]\ntype = "basic"\n'
            'username = "u"\npassword = "marker-secret-55aa"\n'
            '[poll]\ninterval = "soon"\n[[sinks]]\nname = "ops"\ntype = "log"\ncolour = 1\n'
        )
        result = CliRunner().invoke(main, ["check-config", str(config)])

        assert EX_CONFIG == result.exit_code
        assert "superoffice.url:" in result.output
        assert "poll.interval:" in result.output
        assert 'sinks["ops"].colour:' in result.output
        assert "marker-secret" not in result.output

    def test_missing_file(self, tmp_path: Path) -> None:
        """A config file that does not exist is a config problem, not a traceback."""
        result = CliRunner().invoke(main, ["check-config", str(tmp_path / "nope.toml")])

        assert EX_CONFIG == result.exit_code
        assert "nope.toml" in result.output
        assert "Traceback" not in result.output

    def test_run_refuses_a_bad_config_before_starting(self, tmp_path: Path) -> None:
        """``run`` with a bad config exits 78 and starts nothing."""
        config = tmp_path / "bad.toml"
        config.write_text("[superoffice]\n")
        result = CliRunner().invoke(main, ["run", "--config", str(config)])

        assert EX_CONFIG == result.exit_code
        assert "superoffice.url:" in result.output
        assert "batchmon_started" not in result.output


class TestShardOption:
    """``--shard K/N`` counts from 1, as the README and prometheus.yml do."""

    @pytest.mark.parametrize("shard", ["1/2", "2/2", "1/1"])
    def test_one_to_n_accepted(self, shard: str, tmp_path: Path) -> None:
        """A valid shard passes the option; the missing config is what stops the run."""
        result = CliRunner().invoke(
            main, ["run", "--config", str(tmp_path / "none.toml"), "--shard", shard]
        )

        assert EX_CONFIG == result.exit_code, result.output

    @pytest.mark.parametrize("shard", ["0/2", "3/2", "two"])
    def test_out_of_range_is_a_usage_error(self, shard: str, tmp_path: Path) -> None:
        """``0/2`` is refused with the numbering spelt out, exit 2."""
        result = CliRunner().invoke(
            main, ["run", "--config", str(tmp_path / "none.toml"), "--shard", shard]
        )

        assert 2 == result.exit_code
        assert "expected K/N with 1 <= K <= N (e.g. 1/2 and 2/2)" in result.output


class TestRun:
    """``batchmon run`` against the simulator, as a real process."""

    async def test_watches_and_stops_cleanly_on_sigterm(self, tmp_path: Path) -> None:
        """It logs events as JSON lines and exits 0 on SIGTERM; a password file others can
        read is a warning."""
        async with Simulator() as simulator:
            task = simulator.add_task(name="Export", state=BatchTaskState.STARTED, progress=10)
            (tmp_path / "password").write_text("batchmon\n")
            (tmp_path / "password").chmod(0o644)
            config = tmp_path / "batchmon.toml"
            config.write_text(
                f'[superoffice]\nurl = "{simulator.url}"\n'
                '[superoffice.auth]\ntype = "basic"\nusername = "batchmon"\n'
                'password_file = "password"\n'
                f"[watch]\nids = [{task.id}]\n"
                '[poll]\ninterval = "0.2s"\n[http]\nlisten = "127.0.0.1:0"\n'
                f'[state]\npath = "{tmp_path / "state.db"}"\n'
            )
            process = await anyio.open_process(
                [*BATCHMON, "run", "--config", str(config)],
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            output = b""
            assert process.stdout is not None
            with anyio.fail_after(20):
                async for chunk in process.stdout:
                    output += chunk
                    if b"task.discovered" in output:
                        break
                simulator.set_task(task.id, state=BatchTaskState.FAILED)
                async for chunk in process.stdout:
                    output += chunk
                    if b"task.failed" in output:
                        break
                process.send_signal(signal.SIGTERM)
                output += b"".join([chunk async for chunk in process.stdout])
                code = await process.wait()
            await process.aclose()

        lines = _json_lines(output.decode())
        events = [e["event"] for e in lines]
        [exposed] = [e for e in lines if e["event"] == "secret_readable_by_others"]
        assert "warning" == exposed["level"]
        assert "superoffice.auth.password_file:" in str(exposed["problem"])
        assert 0 == code
        assert ["batchmon_started", "task.discovered", "task.failed"] == [
            e for e in events if e in {"batchmon_started", "task.discovered", "task.failed"}
        ]
        assert "batchmon_stopped" == events[-1]


class TestDemo:
    """``batchmon demo``: the first thing a new user runs."""

    def test_tells_the_story_of_the_simulated_tasks(self) -> None:
        """At three times speed, at least five tasks are seen starting, moving and ending,
        with a few progress lines each, not one per change."""
        result = subprocess.run(
            [
                *BATCHMON,
                "demo",
                "--duration",
                "27s",
                "--speed",
                "3",
                "--port",
                "0",
                "--log-format",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

        assert 0 == result.returncode, result.stderr
        assert "status page  http://127.0.0.1:" in result.stderr
        seen: dict[object, set[object]] = defaultdict(set)
        for line in _json_lines(result.stdout):
            if "task_id" in line and str(line["event"]).startswith("task."):
                seen[line["task_id"]].add(line["event"])
        full_story = [
            task
            for task, kinds in seen.items()
            if {"task.discovered", "task.started", "task.progress"} <= kinds
            and kinds & {"task.succeeded", "task.failed"}
        ]
        assert len(full_story) >= 5, dict(seen)
        every = set().union(*seen.values())
        assert {"task.failed", "task.stalled", "task.resumed", "task.removed"} <= every
        # One task is stopped through the daemon's API, and fails for it.
        (stop,) = [
            line for line in _json_lines(result.stdout) if line["event"] == "task.stop_requested"
        ]
        assert "task.failed" in seen[stop["task_id"]]
        # Progress every 25 % at most, and once per 10 s of the story: a few lines per task.
        progress = [line for line in _json_lines(result.stdout) if line["event"] == "task.progress"]
        assert len(progress) < 4 * len(seen), len(progress)

    async def test_tenants_grouped(self) -> None:
        """``--tenants 3``: the banner's URLs answer (the overview lists the three tenants, the
        one-tenant page and /metrics name them, the maintenance command is taken), and every
        event and every line of a tenant's pipeline in the log names its tenant."""
        command = [*BATCHMON, "demo", "--tenants", "3", "--duration", "15s", "--speed", "3"]
        command += ["--port", "0", "--log-format", "json"]
        out = bytearray()
        err = bytearray()
        async with await anyio.open_process(command) as process, aiohttp.ClientSession() as http:
            assert process.stdout is not None
            assert process.stderr is not None

            async def drain(stream: anyio.abc.ByteReceiveStream, into: bytearray) -> None:
                async for chunk in stream:
                    into += chunk

            async with anyio.create_task_group() as group:
                group.start_soon(drain, process.stdout, out)
                group.start_soon(drain, process.stderr, err)
                with anyio.fail_after(20):
                    while b"Ctrl-C stops it." not in err:  # noqa: ASYNC110 - the banner is output
                        await anyio.sleep(0.05)
                banner = err.decode()
                found = re.search(r"status page +(\S+)", banner)
                assert found is not None, banner
                async with http.get(found[1]) as response:
                    page = await response.text()
                found = re.search(r"one tenant +(\S+)", banner)
                assert found is not None, banner
                async with http.get(found[1]) as response:
                    one = (response.status, await response.text())
                found = re.search(r"metrics +(\S+)", banner)
                assert found is not None, banner
                async with http.get(found[1]) as response:
                    metrics = await response.text()
                found = re.search(r"curl -X PUT (\S+) -d '([^']+)'", banner)
                assert found is not None, banner
                async with http.put(found[1], data=found[2]) as response:
                    put = response.status
                await process.wait()

        assert 0 == process.returncode, err.decode()
        names = err.decode().split("simulated tenants (")[1].split(")")[0].split(", ")
        assert 3 == len(names)
        assert names == sorted(names)
        assert 3 == page.count("<tr data-tenant="), page
        assert all(f'href="./?tenant={name}"' in page for name in names)
        assert 200 == one[0]
        assert f'<h1>batchmon · <span class="tenant">{names[0]}</span></h1>' in one[1]
        # A tenant whose story has not begun yet has not polled: its API is not up yet.
        assert all(f'batchmon_api_up{{tenant="{name}"}} ' in metrics for name in names)
        assert 200 == put
        lines = _json_lines(out.decode())
        pipeline = {"task.", "tasks_discovered", "tenant_"}
        of_tenants = [line for line in lines if str(line["event"]).startswith(tuple(pipeline))]
        assert [] == [line for line in of_tenants if line.get("tenant") not in names]
        events: defaultdict[str, set[str]] = defaultdict(set)
        for line in of_tenants:
            events[str(line["tenant"])].add(str(line["event"]))
        assert sorted(names) == sorted(events)
        assert all("task.discovered" in kinds for kinds in events.values()), events
        assert {"task.started", "task.succeeded"} <= set().union(*events.values())


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help_with_an_example(command: str) -> None:
    """``--help`` works on every command and shows an example."""
    result = CliRunner().invoke(main, [command, "--help"])

    assert 0 == result.exit_code
    assert "Example" in result.output
    assert f"batchmon {command}" in result.output


def test_top_level_help_shows_whole_summaries() -> None:
    """At 80 columns every command's summary fits: none is cut with "..."."""
    result = CliRunner().invoke(main, ["--help"], terminal_width=80)
    commands = result.output.split("Commands:")[1].splitlines()

    assert 0 == result.exit_code
    assert sorted(main.commands) == sorted(line.split()[0] for line in commands if line.strip())
    assert not any(line.rstrip().endswith("...") for line in commands), result.output


def test_busy_port_is_one_clear_line() -> None:
    """A port in use gives one line naming it and what to do, and exit 1, not a traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*BATCHMON, "demo", "--duration", "5s", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    assert 1 == result.returncode
    assert f"batchmon: cannot listen on 127.0.0.1:{port}:" in result.stderr
    assert result.stderr.rstrip().endswith("; --port 0 picks a free port")
    assert "Traceback" not in result.stderr


def test_unwritable_state_is_one_clear_line(tmp_path: Path) -> None:
    """A state path that cannot be created exits 73 naming the directory, nothing started."""
    (tmp_path / "file").write_text("x")
    config = tmp_path / "c.toml"
    config.write_text(
        '[superoffice]\nurl = "http://127.0.0.1:9/api"\n'
        '[superoffice.auth]\ntype = "bearer"\ntoken = "t"\n'
        f'[state]\npath = "{tmp_path / "file" / "state.db"}"\n'
        '[http]\nlisten = "127.0.0.1:0"\n'
    )
    result = subprocess.run(
        [*BATCHMON, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert 73 == result.returncode
    assert "cannot create the state directory" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "batchmon_started" not in result.stdout
