"""The ``batchmon`` command.

Exit codes follow sysexits: 0 done, 1 failure, 78 (EX_CONFIG) for a
configuration that was refused; nothing is started with a bad config.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import anyio
import click
import structlog

from monitor import __version__
from monitor.config import (
    Config,
    ConfigError,
    load_config,
    parse_config,
    parse_duration,
    redacted,
)
from monitor.daemon import Daemon
from monitor.logs import configure_logging
from monitor.simulator import Scenario, Simulator
from monitor.sinks.factory import unavailable
from monitor.store import StoreError

__all__ = ["main"]

EX_CONFIG = 78
#: sysexits' EX_CANTCREAT: the state database cannot be written.
EX_CANTCREAT = 73
_E = TypeVar("_E", bound=BaseException)

log = structlog.get_logger("batchmon.cli")


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Click callback: ``60``, ``90s``, ``5m`` or ``1h30m`` → seconds."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _config_or_exit(path: Path) -> Config:
    """The validated config, or every problem on stderr and exit 78."""
    try:
        config = load_config(path)
        problems = unavailable(config.sinks)
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        click.echo(f"batchmon: configuration refused ({path}):", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(EX_CONFIG)
    return config


async def _until_signal(main: Callable[[], Awaitable[None]], duration: float | None) -> None:
    """Run ``main`` until SIGINT/SIGTERM, or for ``duration`` seconds."""
    async with anyio.create_task_group() as group:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("signal_received", signal=signal.Signals(signum).name)
                    group.cancel_scope.cancel()
                    return

        async def body() -> None:
            await main()
            group.cancel_scope.cancel()

        group.start_soon(watch_signals)
        group.start_soon(body)
        if duration is not None:
            await anyio.sleep(duration)
            group.cancel_scope.cancel()


def _run(main: Callable[[], Awaitable[None]], duration: float | None, listen: str) -> None:
    """Run ``main`` until a signal; a port that cannot be bound is one clear line, exit 1."""
    try:
        anyio.run(_until_signal, main, duration)
    except* StoreError as group:
        click.echo(f"batchmon: {next(_leaves(group))}", err=True)
        sys.exit(EX_CANTCREAT)
    except* OSError as group:
        error = next(_leaves(group))
        click.echo(f"batchmon: cannot listen on {listen}: {error.strerror or error}", err=True)
        sys.exit(1)


def _leaves(group: BaseExceptionGroup[_E]) -> Iterator[_E]:
    """The exceptions inside nested task-group exception groups."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            yield from _leaves(error)
        else:
            yield error


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchmon")
def main() -> None:
    """Watch SuperOffice CRM batch tasks and report what they do.

    \b
    Try it without any setup:   batchmon demo
    Run it for real:            batchmon run --config /etc/batchmon/batchmon.toml
    """


@main.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML configuration file.",
)
def run(config_path: Path) -> None:
    """Run the monitor with a configuration file.

    \b
    Example:
      batchmon run --config config/batchmon.example.toml
    """
    config = _config_or_exit(config_path)
    configure_logging(config.log.format, config.log.level)
    _run(Daemon(config).run, None, config.http.listen)


@main.command("check-config")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
def check_config(path: Path) -> None:
    """Validate a configuration file; print it with secrets masked.

    Exits 0 when valid, 78 with every problem listed by key when not.

    \b
    Example:
      batchmon check-config /etc/batchmon/batchmon.toml
    """
    config = _config_or_exit(path)
    click.echo(json.dumps(redacted(config), indent=2, default=str))
    click.echo(f"{path}: configuration is valid", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8765, show_default=True, help="Port to listen on (0: any free port)."
)
@click.option("--seed", default=1, show_default=True, help="Scenario seed: same seed, same story.")
@click.option("--tasks", "count", default=8, show_default=True, help="Number of simulated tasks.")
@click.option("--speed", default=1.0, show_default=True, help="Time factor (2 = twice as fast).")
def simulate(host: str, port: int, seed: int, count: int, speed: float) -> None:
    """Run only the fake SuperOffice WebAPI (basic auth batchmon/batchmon).

    \b
    Example:
      batchmon simulate --port 8765
      curl -u batchmon:batchmon http://127.0.0.1:8765/api/v1/BatchTask/200
    """
    configure_logging("auto", "info", sys.stderr)

    async def serve() -> None:
        scenario = Scenario.generate(seed=seed, count=count, start=datetime.now(UTC), speed=speed)
        simulator = Simulator(scenario)
        url = await simulator.start(host, port)
        try:
            click.echo(f"simulated SuperOffice API at {url}", err=True)
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await simulator.stop()

    _run(serve, None, f"{host}:{port}")


@main.command()
@click.option(
    "--duration",
    callback=_duration,
    default=None,
    help="Stop after this long (e.g. 60s); default: until Ctrl-C.",
)
@click.option(
    "--port",
    default=9808,
    show_default=True,
    help="Port of the status page and /metrics (0: any free port).",
)
@click.option("--seed", default=1, show_default=True, help="Scenario seed.")
@click.option("--tasks", "count", default=8, show_default=True, help="Number of simulated tasks.")
@click.option(
    "--speed",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.1, max=20),
    help="Time factor (2 = the story runs twice as fast).",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "console", "json"]),
    default="auto",
    show_default=True,
    help="Console lines or JSON lines (auto: console on a terminal).",
)
def demo(
    duration: float | None, port: int, seed: int, count: int, speed: float, log_format: str
) -> None:
    """Watch simulated batch tasks: the built-in simulator plus the monitor, no setup.

    Prints each event as it happens and serves the status page and /metrics.

    \b
    Example:
      batchmon demo --duration 60s
    """
    configure_logging(log_format, "info")

    async def both() -> None:
        scenario = Scenario.generate(seed=seed, count=count, start=datetime.now(UTC), speed=speed)
        with tempfile.TemporaryDirectory(prefix="batchmon-demo-") as state_dir:
            async with Simulator(scenario) as simulator:
                await _demo(simulator, scenario, Path(state_dir), port, speed)

    _run(both, duration, f"127.0.0.1:{port}")


async def _demo(
    simulator: Simulator, scenario: Scenario, state_dir: Path, port: int, speed: float
) -> None:
    """The monitor against the simulator, with a fresh state of its own."""
    config = parse_config(
        {
            "superoffice": {
                "url": simulator.url,
                "auth": {"type": "basic", "username": "batchmon", "password": "batchmon"},
                "max_requests_per_second": 50,
            },
            "watch": {"ids": list(scenario.task_ids)},
            # The scenario's minute, watched closely: stalls show after 10 s.
            "poll": {
                "interval": 1 / speed,
                "idle_interval": 2 / speed,
                "stall_after": 10 / speed,
                "progress_min_interval": 3 / speed,
                "progress_step": 20,
                "terminal_linger": 15 / speed,
            },
            "http": {"listen": f"127.0.0.1:{port}"},
            "state": {"path": str(state_dir / "state.db")},
        },
        base_dir=Path.cwd(),
    )
    daemon = Daemon(config)
    async with anyio.create_task_group() as group:
        bound = await group.start(daemon.run)
        click.echo(
            f"\n  batchmon demo: watching {len(scenario.task_ids)} simulated tasks\n"
            f"  status page  http://127.0.0.1:{bound}/\n"
            f"  metrics      http://127.0.0.1:{bound}/metrics\n"
            f"  Ctrl-C stops it.\n",
            err=True,
        )
