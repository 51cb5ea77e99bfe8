"""``batchmon status`` and ``batchmon watch`` as a user runs them: real processes, a real
daemon and the simulator on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.to_thread
from click.testing import CliRunner

from monitor.cli import EX_NOPERM, EX_NOT_TRACKED, EX_TEMPFAIL, EX_UNAVAILABLE, main
from monitor.console import StatusReport, read_status
from monitor.simulator import OAuthApp, OnlineTenant, Simulator
from monitor.superoffice.models import BatchTaskState
from tests.test_web import running_daemon

BATCHMON = [sys.executable, "-m", "monitor"]
#: Wide enough that rich does not wrap the table.
ENV = {**os.environ, "COLUMNS": "200"}


async def batchmon(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the command to its end."""
    return await anyio.run_process([*BATCHMON, *args], check=False, env=ENV)


async def read(base: str) -> StatusReport:
    """The daemon's tasks, read the way ``status`` does (urllib blocks: in a thread)."""
    return await anyio.to_thread.run_sync(read_status, base)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Watcher:
    """``batchmon watch`` in the background; records when it ended."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.result: subprocess.CompletedProcess[bytes] | None = None
        self.ended_at: float | None = None

    async def run(self) -> None:
        self.result = await batchmon("watch", *self.args)
        self.ended_at = anyio.current_time()


class TestStatus:
    """``batchmon status``."""

    async def test_table_of_the_daemons_tasks(self) -> None:
        """Every task is a row with its state and progress; names are shown, not interpreted."""
        async with Simulator() as simulator:
            running = simulator.add_task(
                name="Export [bold]contacts[/bold]",
                state=BatchTaskState.STARTED,
                progress=40,
                progress_description="Row 400 of 1000",
            )
            failed = simulator.add_task(name="Import leads", state=BatchTaskState.FAILED)
            queued = simulator.add_task(name="Mass mailing", state=BatchTaskState.NEW)
            async with running_daemon(simulator, [running.id, failed.id, queued.id]) as (_, base):
                result = await batchmon("status", "--url", base)

        out = result.stdout.decode()
        assert 0 == result.returncode, result.stderr.decode()
        assert f"batchmon at {base} · 3 tasks, 2 active · ready" in out
        assert "Export [bold]contacts[/bold]" in out
        assert "Row 400 of 1000" in out
        assert "40 %" in out
        for task, state in [(running, "Started"), (failed, "Failed"), (queued, "New")]:
            (row,) = [line for line in out.splitlines() if f" {task.id} " in line]
            assert state in row

    async def test_unreachable_daemon_exits_69(self) -> None:
        """Without a daemon there is one clear line on stderr and EX_UNAVAILABLE."""
        url = f"http://127.0.0.1:{closed_port()}"
        result = await batchmon("status", "--url", url)

        assert EX_UNAVAILABLE == result.returncode
        assert "" == result.stdout.decode()
        assert result.stderr.decode().startswith(f"batchmon: cannot reach batchmon at {url}/")

    async def test_not_ready_daemon_exits_75_and_says_why(self) -> None:
        """A daemon whose credentials are refused: the reason, no "No tasks watched", 75."""
        async with Simulator() as simulator:
            task = simulator.add_task(name="Export", state=BatchTaskState.STARTED)
            wrong = {"auth": {"type": "basic", "username": "batchmon", "password": "wrong"}}
            async with running_daemon(simulator, [task.id], superoffice=wrong) as (_, base):
                result = await batchmon("status", "--url", base)

        out = result.stdout.decode()
        assert EX_TEMPFAIL == result.returncode, out
        assert "not ready: SuperOffice rejected the credentials" in out
        assert "No tasks watched yet" not in out
        assert "No tasks seen yet: not ready." in out

    async def test_no_words_broken_at_80_columns(self) -> None:
        """At 80 columns, with ETA and running time shown, names wrap between words."""
        names = ["Rebuild freetext index", "Export contacts to the marketing warehouse"]
        started = datetime.now(UTC) - timedelta(minutes=64)
        async with Simulator() as simulator:
            tasks = [
                simulator.add_task(
                    name=name,
                    state=BatchTaskState.STARTED,
                    progress=40,
                    last_started=started,
                    progress_description="Indexing documents of the archive",
                )
                for name in names
            ]
            async with running_daemon(simulator, [t.id for t in tasks]) as (_, base):
                for task in tasks:
                    simulator.set_task(task.id, progress=50)
                with anyio.fail_after(10):
                    while not all(v.eta for v in (await read(base)).tasks):  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                result = await anyio.run_process(
                    [*BATCHMON, "status", "--url", base],
                    check=False,
                    env={**os.environ, "COLUMNS": "80"},
                )

        out = result.stdout.decode()
        assert 0 == result.returncode, out
        assert max(len(line) for line in out.splitlines()) <= 80, out
        rows = [line.split("│") for line in out.splitlines() if line.startswith("│")]
        cells = {word for row in rows for word in row[2].split()}
        assert {w for name in names for w in name.split()} <= cells, out
        assert {"Indexing", "documents", "archive"} <= cells, out
        assert "in 0m" in out or "due" in out


class TestWatch:
    """``batchmon watch ID``: the exit code is the task's outcome."""

    async def test_success_through_the_daemon_exits_0(self) -> None:
        """The watch runs while the task runs and exits 0 once it succeeds."""
        async with Simulator() as simulator:
            task = simulator.add_task(name="Export", state=BatchTaskState.STARTED, progress=10)
            async with running_daemon(simulator, [task.id]) as (_, base):
                watcher = Watcher(str(task.id), "--url", base, "--interval", "100ms")
                async with anyio.create_task_group() as group:
                    group.start_soon(watcher.run)
                    await anyio.sleep(1.5)
                    simulator.set_task(task.id, progress=70)
                    await anyio.sleep(0.3)
                    finished_at = anyio.current_time()
                    simulator.set_task(task.id, state=BatchTaskState.SUCCEEDED, progress=100)

        assert watcher.result is not None
        assert watcher.ended_at is not None
        assert 0 == watcher.result.returncode, watcher.result.stderr.decode()
        assert finished_at < watcher.ended_at
        assert f"#{task.id} Export: Succeeded" in watcher.result.stdout.decode()

    async def test_failure_straight_from_the_api_exits_1(self, tmp_path: Path) -> None:
        """With --config the watch asks SuperOffice itself and reports its Result text."""
        async with Simulator() as simulator:
            task = simulator.add_task(name="Import", state=BatchTaskState.STARTED, progress=30)
            config = tmp_path / "batchmon.toml"
            config.write_text(
                f'[superoffice]\nurl = "{simulator.url}"\n'
                '[superoffice.auth]\ntype = "basic"\nusername = "batchmon"\n'
                'password = "batchmon"\n'
            )
            watcher = Watcher(str(task.id), "--config", str(config), "--interval", "100ms")
            async with anyio.create_task_group() as group:
                group.start_soon(watcher.run)
                with anyio.fail_after(15):
                    while len(simulator.requests) < 2:  # noqa: ASYNC110 - the watch's own reads
                        await anyio.sleep(0.05)
                simulator.set_task(task.id, state=BatchTaskState.FAILED, result="Disk full")

        assert watcher.result is not None
        assert 1 == watcher.result.returncode, watcher.result.stderr.decode()
        assert f"#{task.id} Import: Failed (Disk full)" in watcher.result.stdout.decode()

    async def test_deleted_task_exits_1(self) -> None:
        """A task the API stops knowing ends the watch with exit code 1."""
        async with Simulator() as simulator:
            task = simulator.add_task(name="Cleanup", state=BatchTaskState.STARTED, progress=5)
            async with running_daemon(simulator, [task.id]) as (_, base):
                watcher = Watcher(str(task.id), "--url", base, "--interval", "100ms")
                async with anyio.create_task_group() as group:
                    group.start_soon(watcher.run)
                    await anyio.sleep(1.0)
                    simulator.delete_task(task.id)

        assert watcher.result is not None
        assert 1 == watcher.result.returncode
        assert f"#{task.id} Cleanup: Gone" in watcher.result.stdout.decode()

    async def test_failure_reason_through_the_daemon(self) -> None:
        """With --url the last line says why the task failed, as with --config."""
        async with Simulator() as simulator:
            task = simulator.add_task(name="Import", state=BatchTaskState.STARTED, progress=30)
            async with running_daemon(simulator, [task.id]) as (_, base):
                watcher = Watcher(str(task.id), "--url", base, "--interval", "100ms")
                async with anyio.create_task_group() as group:
                    group.start_soon(watcher.run)
                    simulator.set_task(task.id, state=BatchTaskState.FAILED, result="Disk full")

        assert watcher.result is not None
        assert 1 == watcher.result.returncode, watcher.result.stderr.decode()
        assert f"#{task.id} Import: Failed (Disk full)" in watcher.result.stdout.decode()

    async def test_unwatched_task_exits_3_with_a_hint(self) -> None:
        """A task the daemon does not watch: exit 3 at once, saying how to watch it."""
        async with Simulator() as simulator:
            task = simulator.add_task(state=BatchTaskState.STARTED)
            async with running_daemon(simulator, [task.id]) as (_, base):
                result = await batchmon("watch", "4242", "--url", base)

        err = result.stderr.decode()
        assert EX_NOT_TRACKED == result.returncode, err
        assert f"batchmon at {base} does not track task 4242" in err
        assert f"PUT {base}/api/v1/watches/4242" in err
        assert "--config" in err

    async def test_unknown_task_with_config_exits_3(self, tmp_path: Path) -> None:
        """With --config a task SuperOffice does not know is "not tracked" too."""
        async with Simulator() as simulator:
            config = tmp_path / "batchmon.toml"
            config.write_text(
                f'[superoffice]\nurl = "{simulator.url}"\n'
                '[superoffice.auth]\ntype = "basic"\nusername = "batchmon"\n'
                'password = "batchmon"\n'
            )
            result = await batchmon("watch", "4242", "--config", str(config))

        assert EX_NOT_TRACKED == result.returncode
        assert "task 4242 does not exist (404 from" in result.stderr.decode()

    async def test_unreachable_daemon_exits_69(self) -> None:
        """Nothing listening: EX_UNAVAILABLE, not the exit code of a failed task."""
        result = await batchmon("watch", "212", "--url", f"http://127.0.0.1:{closed_port()}")

        assert EX_UNAVAILABLE == result.returncode
        assert "cannot reach batchmon" in result.stderr.decode()

    async def test_not_ready_daemon_exits_75(self) -> None:
        """A daemon that has not reached the API cannot know the task yet: try again later."""
        async with Simulator() as simulator:
            task = simulator.add_task(name="Export", state=BatchTaskState.STARTED)
            wrong = {"auth": {"type": "basic", "username": "batchmon", "password": "wrong"}}
            async with running_daemon(simulator, [task.id], superoffice=wrong) as (_, base):
                result = await batchmon("watch", str(task.id), "--url", base)

        err = result.stderr.decode()
        assert EX_TEMPFAIL == result.returncode, err
        assert "is not ready (SuperOffice rejected the credentials" in err

    def test_id_that_is_not_a_number(self) -> None:
        """``watch abc`` says what an id is, exit 2."""
        result = CliRunner().invoke(main, ["watch", "abc"])

        assert 2 == result.exit_code
        assert "expected a task id (a whole number from 1 to 2147483647), got 'abc'" in (
            result.output
        )


class TestHelp:
    """Both commands explain themselves."""

    def test_help_has_examples(self) -> None:
        """``--help`` shows examples for status and watch."""
        runner = CliRunner()
        status = runner.invoke(main, ["status", "--help"])
        watch = runner.invoke(main, ["watch", "--help"])

        assert 0 == status.exit_code
        assert "batchmon status --url http://monitor.example.com:9808" in status.output
        assert 0 == watch.exit_code
        assert "batchmon watch 212 --config /etc/batchmon/batchmon.toml" in watch.output
        assert "Exit codes:" in watch.output
        assert "69  the daemon cannot be reached" in status.output

    def test_url_and_config_exclude_each_other(self, tmp_path: Path) -> None:
        """Asking for both sources is a usage error."""
        result = CliRunner().invoke(
            main, ["watch", "1", "--url", "http://x", "--config", str(tmp_path / "c.toml")]
        )

        assert 2 == result.exit_code
        assert "give --url or --config, not both" in result.output


class TestWatchOnline:
    """``batchmon watch --config`` with SuperOffice Online credentials."""

    async def test_oauth_and_tenant_routing(self, tmp_path: Path) -> None:
        """The client logs in and finds the tenant as the daemon's does; exit 0 on success."""
        app, tenant = OAuthApp(), OnlineTenant()
        async with Simulator(oauth=app, tenant=tenant) as simulator:
            task = simulator.add_task(name="Export", state=BatchTaskState.SUCCEEDED, progress=100)
            config = tmp_path / "online.toml"
            config.write_text(
                f'[superoffice]\nenvironment = "online"\ntenant = "{tenant.context_id}"\n'
                f'environment_url = "{simulator.environment_url}"\n'
                f'[superoffice.auth]\ntype = "oauth"\nclient_id = "{app.client_id}"\n'
                f'client_secret = "{app.client_secret}"\nrefresh_token = "{app.refresh_token}"\n'
            )
            process = await anyio.run_process(
                [sys.executable, "-m", "monitor", "watch", str(task.id), "--config", str(config)],
                check=False,
            )

        assert 0 == process.returncode, process.stderr.decode()[-2000:]
        assert f"#{task.id} Export: Succeeded" in process.stdout.decode()


READ_TOKEN = "read-token-0123456789abcdef"


class TestReadToken:
    """A daemon with ``http.read_token``: ``status`` and ``watch`` send it from --token-file."""

    async def test_status_and_watch_with_and_without_the_token(self, tmp_path: Path) -> None:
        """Without the token: exit 77 and a sentence saying what to give; with it: the table."""
        token_file = tmp_path / "read_token"
        token_file.write_text(READ_TOKEN + "\n")
        wrong = tmp_path / "wrong"
        wrong.write_text("not-the-token-0123456789\n")
        async with Simulator() as simulator:
            done = simulator.add_task(name="Export", state=BatchTaskState.SUCCEEDED)
            async with running_daemon(simulator, [done.id], http={"read_token": READ_TOKEN}) as (
                _,
                base,
            ):
                refused = await batchmon("status", "--url", base)
                refused_wrong = await batchmon("status", "--url", base, "--token-file", str(wrong))
                table = await batchmon("status", "--url", base, "--token-file", str(token_file))
                watched = await batchmon(
                    "watch", str(done.id), "--url", base, "--token-file", str(token_file)
                )
                watch_refused = await batchmon("watch", str(done.id), "--url", base)

        assert EX_NOPERM == refused.returncode == refused_wrong.returncode
        assert EX_NOPERM == watch_refused.returncode
        assert "--token-file" in refused.stderr.decode()
        assert "none was given" in refused.stderr.decode()
        assert "refused" in refused_wrong.stderr.decode()
        assert 0 == table.returncode, table.stderr.decode()
        assert "Export" in table.stdout.decode()
        assert 0 == watched.returncode, watched.stderr.decode()

    def test_unreadable_token_file_is_a_usage_error(self, tmp_path: Path) -> None:
        """A missing or empty --token-file is said, with exit 2."""
        empty = tmp_path / "empty"
        empty.write_text("\n")
        missing = CliRunner().invoke(main, ["status", "--token-file", str(tmp_path / "none")])
        blank = CliRunner().invoke(main, ["status", "--token-file", str(empty)])

        assert 2 == missing.exit_code == blank.exit_code
        assert "--token-file" in missing.output
        assert "is empty" in blank.output


class TestManyTasks:
    """``status`` reads every page of ``/api/v1/tasks``, not only the first 500 tasks."""

    async def test_all_pages(self) -> None:
        """With 600 tracked tasks (more than a default page), the report lists all 600."""
        async with Simulator() as simulator:
            ids = [
                simulator.add_task(name=f"Export {n}", state=BatchTaskState.SUCCEEDED).id
                for n in range(600)
            ]
            async with running_daemon(simulator, ids) as (daemon, base):
                with anyio.fail_after(20):
                    while len(daemon.tracker.tasks) < 600:  # noqa: ASYNC110 - the daemon's clock
                        await anyio.sleep(0.05)
                report = await read(base)

        assert 600 == len(report.tasks)
        assert set(ids) == {task.id for task in report.tasks}
