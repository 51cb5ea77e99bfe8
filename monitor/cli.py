"""The ``batchmon`` command.

Exit codes follow sysexits: 0 done, 1 failure, 2 usage, 73 (EX_CANTCREAT) for a
state database that cannot be written, 78 (EX_CONFIG) for a configuration that
was refused (nothing is started with a bad config).  ``status`` and ``watch``
add 3 for a task that is not tracked, 69 (EX_UNAVAILABLE) for a daemon that
does not answer and 75 (EX_TEMPFAIL) for one that is not ready yet.
"""

from __future__ import annotations

import errno
import getpass
import inspect
import os
import secrets
import signal
import socket
import sys
import tempfile
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn, TypeVar

import aiohttp
import anyio
import anyio.to_thread
import click
import structlog
from rich.console import Console

from monitor import __version__
from monitor.config import (
    Config,
    ConfigError,
    SuperOfficeConfig,
    load_config,
    parse_config,
    parse_duration,
)
from monitor.config.echo import config_toml
from monitor.config.exposure import secret_exposure
from monitor.console import (
    DaemonSource,
    Problem,
    SourceError,
    TaskView,
    api_source,
    daemon_tenants,
    follow,
    read_status,
    status_view,
    tenant_query,
)
from monitor.daemon import Daemon, freeze_startup_objects
from monitor.delivery.outbox import StoreError
from monitor.links import DEFAULT_TENANT
from monitor.logs import configure_logging
from monitor.polling import Shard
from monitor.polling.stop import StopFailedError, StopOutcome, stop_directly
from monitor.remote import RemoteError, call
from monitor.simulator import Fleet, OnlineTenant, Scenario, Simulator
from monitor.simulator.fleet import MAX_TENANTS
from monitor.sinks.base import DeliveryError
from monitor.sinks.context import SinkContext
from monitor.sinks.factory import build_sink
from monitor.sinks.http import HttpSink
from monitor.sinks.render import test_event
from monitor.text import visible

__all__ = ["main"]

EX_CONFIG = 78
#: sysexits' EX_CANTCREAT: the state database cannot be written.
EX_CANTCREAT = 73
#: ``watch``: the task failed (or was deleted).
EX_FAILED = 1
#: ``status``/``watch``: the daemon does not track the task, or SuperOffice has no such task.
#: Not a sysexits code: nothing went wrong with the system, the question had no subject.
EX_NOT_TRACKED = 3
#: sysexits' EX_UNAVAILABLE: the daemon (or the API) gave no usable answer.
EX_UNAVAILABLE = 69
#: sysexits' EX_TEMPFAIL: the daemon answers but is not ready; try again later.
EX_TEMPFAIL = 75
#: sysexits' EX_NOPERM: the daemon wants a read token, and none or a wrong one was given.
EX_NOPERM = 77
#: The exit code for each reason ``status`` or ``watch`` got no answer.
_PROBLEM_EXITS = {
    Problem.NOT_TRACKED: EX_NOT_TRACKED,
    Problem.UNREACHABLE: EX_UNAVAILABLE,
    Problem.NOT_READY: EX_TEMPFAIL,
    Problem.REFUSED: EX_NOPERM,
}
#: The exit codes as ``status --help`` and ``watch --help`` explain them.
_EXIT_HELP = """\b
Exit codes:
  0   the task succeeded (status: the daemon is ready)
  1   the task failed or was deleted
  2   usage error; also a --tenant not there, or (watch) none when
      the daemon or the --config has several tenants
  3   the daemon does not track the task (add it to [watch] ids or
      PUT /api/v1/watches/ID, or use --config); with --config: no such task
  69  the daemon cannot be reached (EX_UNAVAILABLE)
  75  the daemon is not ready: no poll yet, API down or credentials
      refused; try again later (EX_TEMPFAIL)
  77  the daemon wants its read token (http.read_token): give it with
      --token-file (EX_NOPERM)
  78  the --config file was refused (EX_CONFIG)"""
_E = TypeVar("_E", bound=BaseException)

#: ``--token-file`` of the commands that read from the daemon.
_TOKEN_FILE = click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A file holding the daemon's http.read_token (or its api_token), when it has one.",
)
#: ``--token-file`` of the commands that change something through the daemon.
_API_TOKEN_FILE = click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A file holding the daemon's http.api_token [default: $BATCHMON_API_TOKEN].",
)

#: ``--tenant``: which tenant of several ([[tenants]]) a command is about.
_TENANT = click.option(
    "--tenant",
    default=None,
    help="The tenant ([[tenants]] name) when the daemon or the configuration has several.",
)

log = structlog.get_logger("batchmon.cli")


def _api_of(config: Config, tenant: str | None) -> SuperOfficeConfig:
    """The ``[superoffice]`` of the tenant ``--tenant`` names (the only one without it)."""
    try:
        return config.tenant(tenant).superoffice
    except LookupError as exc:
        raise click.BadParameter(str(exc), param_hint="--tenant") from None


def _daemon_tenant(url: str, token: str | None, tenant: str | None) -> None:
    """Refuse, as a usage error naming the daemon's tenants, a ``--tenant`` it does not watch,
    or none when it watches several and none is ``default`` (which the daemon takes then)."""
    try:
        names = daemon_tenants(url, token)
    except SourceError as exc:
        _fail(exc)
    watched = ", ".join(names)
    if tenant is None and len(names) > 1 and DEFAULT_TENANT not in names:
        message = f"batchmon at {url} watches several tenants: name one with --tenant ({watched})"
        raise click.UsageError(visible(message))
    if tenant is not None and tenant not in names:
        message = f"batchmon at {url} watches no tenant {tenant!r} (it watches {watched})"
        raise click.BadParameter(visible(message), param_hint="--tenant")


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Click callback: ``60``, ``90s``, ``5m`` or ``1h30m`` → seconds."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _shard(ctx: click.Context, param: click.Parameter, value: str | None) -> Shard:
    """Click callback: ``k/N`` (k = 1 … N) → the shard this replica runs."""
    if value is None:
        return Shard()
    try:
        return Shard.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _config_or_exit(path: Path, credentials_dir: Path | None = None) -> Config:
    """The validated config, or every problem on stderr and exit 78."""
    try:
        config = load_config(path, credentials_dir=credentials_dir)
    except ConfigError as exc:
        click.echo(f"batchmon: configuration refused ({path}):", err=True)
        for problem in exc.problems:
            click.echo(f"  {visible(problem)}", err=True)
        sys.exit(EX_CONFIG)
    return config


async def _until_signal(
    main: Callable[[], Awaitable[None]],
    duration: float | None,
    on_hangup: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run ``main`` until SIGINT/SIGTERM, or for ``duration`` seconds; SIGHUP calls ``on_hangup``."""
    async with anyio.create_task_group() as group:

        async def watch_signals() -> None:
            wanted = [signal.SIGINT, signal.SIGTERM]
            if on_hangup is not None:
                wanted.append(signal.SIGHUP)
            with anyio.open_signal_receiver(*wanted) as signals:
                async for signum in signals:
                    log.info("signal_received", signal=signal.Signals(signum).name)
                    if signum == signal.SIGHUP and on_hangup is not None:
                        await on_hangup()
                        continue
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


def _run(
    main: Callable[[], Awaitable[None]],
    duration: float | None,
    listen: str,
    on_hangup: Callable[[], Awaitable[None]] | None = None,
    *,
    busy: str,
) -> None:
    """Run ``main`` until a signal; a port that cannot be bound is one clear line, exit 1.

    ``busy`` says what to do when the port is taken.
    """
    freeze_startup_objects()
    try:
        anyio.run(_until_signal, main, duration, on_hangup)
    except* StoreError as group:
        click.echo(f"batchmon: {next(_leaves(group))}", err=True)
        sys.exit(EX_CANTCREAT)
    except* OSError as group:
        error = next(_leaves(group))
        hint = f"; {busy}" if error.errno == errno.EADDRINUSE else ""
        click.echo(
            f"batchmon: cannot listen on {listen}: {error.strerror or error}{hint}", err=True
        )
        sys.exit(1)


def _leaves(group: BaseExceptionGroup[_E]) -> Iterator[_E]:
    """The exceptions inside nested task-group exception groups."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            yield from _leaves(error)
        else:
            yield error


@click.group(
    context_settings={
        "help_option_names": ["-h", "--help"],
        # Every option can also come from BATCHMON_<COMMAND>_<OPTION>, e.g. BATCHMON_STATUS_URL.
        "auto_envvar_prefix": "BATCHMON",
    }
)
@click.version_option(__version__, prog_name="batchmon")
def main() -> None:
    """Watch SuperOffice CRM batch tasks and report what they do.

    \b
    Try it without any setup:   batchmon demo
    Run it for real:            batchmon run --config /etc/batchmon/batchmon.toml

    Every option can also be set in the environment as
    BATCHMON_<COMMAND>_<OPTION>, e.g. BATCHMON_STATUS_URL.
    """


@main.command(short_help="Run the monitor with a configuration file.")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML configuration file.",
)
@click.option(
    "--shard",
    "shard",
    callback=_shard,
    default=None,
    metavar="K/N",
    help="Watch only shard K of N, K = 1 … N (tasks split by id hash, like Prometheus hashmod).",
)
def run(config_path: Path, shard: Shard) -> None:
    """Run the monitor with a configuration file.

    \b
    Examples:
      batchmon run --config config/batchmon.example.toml
      batchmon run --config batchmon.toml --shard 1/2   # one of two shards
      batchmon run --config batchmon.toml --shard 2/2   # the other one
    """
    config = _config_or_exit(config_path)
    configure_logging(config.log.format, config.log.level)
    for warning in secret_exposure(config_path, config):
        log.warning("secret_readable_by_others", problem=warning)
    daemon = Daemon(config, shard=shard)

    async def reload() -> None:
        """SIGHUP: re-read the file; a valid config is swapped in, a bad one refused."""
        try:
            fresh = await anyio.to_thread.run_sync(load_config, config_path)
        except ConfigError as exc:
            log.error("config_reload_refused", path=str(config_path), problems=exc.problems)
            return
        daemon.reload(fresh)

    _run(
        daemon.run,
        None,
        config.http.listen,
        reload,
        busy="is batchmon already running? Else set another [http] listen port",
    )


@main.command("check-config", short_help="Validate a configuration; print it, secrets masked.")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--credentials-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Look up relative X_file secrets here, as the service finds them in"
    " $CREDENTIALS_DIRECTORY (default: that variable, else next to the file).",
)
def check_config(path: Path, credentials_dir: Path | None) -> None:
    """Validate a configuration file; print it as TOML with secrets masked.

    Prints what batchmon will run with, defaults included, every secret as
    ********.  Warns (on stderr) about secrets other users can read: inline in
    a file that is not private, or in a credential file that is not.  Exits 0
    when valid, 78 with every problem listed by key when not.

    \b
    Examples:
      batchmon check-config /etc/batchmon/batchmon.toml
      sudo batchmon check-config /etc/batchmon/batchmon.toml \\
          --credentials-dir /etc/batchmon/credentials
    """
    config = _config_or_exit(path, credentials_dir)
    click.echo(config_toml(config), nl=False)
    for warning in secret_exposure(path, config, credentials_dir=credentials_dir):
        click.echo(f"batchmon: warning: {warning}", err=True)
    click.echo(f"{path}: configuration is valid", err=True)


@main.command(short_help="Only the fake SuperOffice API (tasks 212-219).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8765, show_default=True, help="Port to listen on (0: any free port)."
)
@click.option("--seed", default=1, show_default=True, help="Scenario seed: same seed, same story.")
@click.option("--tasks", "count", default=8, show_default=True, help="Number of simulated tasks.")
@click.option("--speed", default=1.0, show_default=True, help="Time factor (2 = twice as fast).")
@click.option(
    "--loop",
    is_flag=True,
    help="Tell the story again and again, on the same task ids (the tasks re-run).",
)
@click.option(
    "--tenant",
    metavar="CONTEXT",
    default=None,
    help="Serve an online tenant (e.g. Cust12345) behind a tenant-status API, whose state "
    "PUT /simulator/tenant sets.",
)
@click.option(
    "--tenants",
    "tenants",
    type=click.IntRange(1, MAX_TENANTS),
    default=None,
    help="Serve this many online tenants, each under /CONTEXT/api with --tasks tasks of its own.",
)
def simulate(
    host: str,
    port: int,
    seed: int,
    count: int,
    speed: float,
    loop: bool,
    tenant: str | None,
    tenants: int | None,
) -> None:
    """Run only the fake SuperOffice WebAPI (basic auth batchmon/batchmon).

    Its tasks have ids from 212 up (212-219 by default) and go through their
    lives in about a minute: queued, started, progressing, one
    stalling, one failing, one deleted.  Without --loop they then stay as they
    ended; with --loop the story starts again on the same ids, so a
    configuration written against it keeps having something to watch.

    \b
    Examples:
      batchmon simulate --loop
      curl -u batchmon:batchmon http://127.0.0.1:8765/api/v1/BatchTask/212
      batchmon run --config batchmon.toml   # with [superoffice] url = "http://127.0.0.1:8765/api"

    With --tenant, the API moves under /online1/CONTEXT/api, found through the
    tenant-status API (GET /api/state/CONTEXT), and the tenant's state can be set:

    \b
      batchmon simulate --loop --tenant Cust12345
      curl -X PUT http://127.0.0.1:8765/simulator/tenant -d '{"state": "OfflineMaintenance"}'

    With --tenants N, N such tenants (names from --seed), each under its own
    /CONTEXT/api with its own tasks, and steered under /simulator/tenants:

    \b
      batchmon simulate --loop --tenants 50
      curl http://127.0.0.1:8765/simulator/tenants
    """
    configure_logging("auto", "info", sys.stderr)
    if tenants is not None:
        if tenant is not None:
            msg = "--tenant serves one tenant, --tenants many: give one of them"
            raise click.UsageError(msg)
        fleet = Fleet(tenants, seed=seed, tasks=count, speed=speed, loop=loop)

        async def serve_fleet() -> None:
            await fleet.start(host, port)
            try:
                click.echo(_fleet_banner(fleet), err=True)
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await fleet.stop()

        _run(serve_fleet, None, f"{host}:{port}", busy="--port 0 picks a free port")
        return

    async def serve() -> None:
        scenario = Scenario.generate(
            seed=seed, count=count, start=datetime.now(UTC), speed=speed, loop=loop
        )
        # Status answers hold 30 s (as the demo's): a state PUT shows within that, not in 10 min.
        online = OnlineTenant(context_id=tenant, valid_for=30) if tenant is not None else None
        simulator = Simulator(scenario, tenant=online)
        await simulator.start(host, port)
        try:
            click.echo(_simulator_banner(simulator, scenario), err=True)
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await simulator.stop()

    _run(serve, None, f"{host}:{port}", busy="--port 0 picks a free port")


def _fleet_banner(fleet: Fleet, shown: int = 3) -> str:
    """What ``simulate --tenants`` prints first: the first tenants' bases, the status API, how
    to log in and to steer a tenant."""
    names = list(fleet.tenants)
    bases = "".join(f"    {fleet.url(name)}\n" for name in names[:shown])
    if len(names) > shown:
        bases += f"    ... and {len(names) - shown} more: curl {fleet.environment_url}/simulator/tenants\n"
    first = fleet.tenants[names[0]]
    ids = sorted(first.space.scenario.task_ids) if first.space.scenario else []
    tasks = f"  tasks  {ids[0]}-{ids[-1]} in each tenant, each its own story\n" if ids else ""
    control = f"{fleet.environment_url}/simulator/tenants/{names[0]}"
    try_ = f"{fleet.url(names[0])}/v1/BatchTask/{ids[0]}" if ids else fleet.state_url
    return (
        f"\n  {len(names)} simulated SuperOffice Online tenants at {fleet.environment_url}\n"
        f"{bases}"
        f"  tenant state  GET {fleet.state_url}/{{ContextIdentifier}}\n"
        f"{tasks}"
        "  login  basic auth, username batchmon, password batchmon (every tenant)\n"
        f"  try    curl -u batchmon:batchmon {try_}\n"
        "  one tenant's configuration:\n"
        f'    [superoffice]\n    environment_url = "{fleet.environment_url}"\n'
        f'    tenant = "{names[0]}"\n'
        "  control (tenant state, a task's fields):\n"
        f"""    curl -X PUT {control} -d '{{"state": "OfflineMaintenance"}}'\n"""
        + (
            f"""    curl -X PUT {control}/tasks/{ids[0]} -d '{{"state": "Failed"}}'\n"""
            if ids
            else ""
        )
        + "  Ctrl-C stops it.\n"
    )


def _simulator_banner(simulator: Simulator, scenario: Scenario) -> str:
    """What ``simulate`` prints first: where, which ids, how to log in, a config to start from."""
    url = simulator.url if simulator.tenant is None else simulator.tenant_url
    where = f'    url = "{url}"\n'
    control = ""
    if simulator.tenant is not None:
        where = (
            f'    environment_url = "{simulator.environment_url}"\n'
            f'    tenant = "{simulator.tenant.context_id}"\n'
        )
        control = (
            "  tenant state (Running, OnlineMaintenance, OfflineMaintenance, Suspended, ...):\n"
            f"    curl -X PUT {simulator.environment_url}/simulator/tenant "
            """-d '{"state": "OfflineMaintenance"}'\n"""
        )
    ids = scenario.task_ids
    story = f"{scenario.period / scenario.speed:.0f} s"
    repeats = (
        f"repeats every {story}" if scenario.loop else f"ends after {story}; --loop repeats it"
    )
    return (
        f"\n  simulated SuperOffice API at {url}\n"
        f"  tasks  {ids[0]}-{ids[-1]} (the story {repeats})\n"
        "  login  basic auth, username batchmon, password batchmon\n"
        f"  try    curl -u batchmon:batchmon {url}/v1/BatchTask/{ids[0]}\n"
        "  a configuration for it:\n"
        f"    [superoffice]\n{where}"
        '    [superoffice.auth]\n    type = "basic"\n    username = "batchmon"\n'
        '    password = "batchmon"\n'
        f"    [watch]\n    ids = [{', '.join(map(str, ids))}]\n"
        f"{control}"
        "  Ctrl-C stops it.\n"
    )


@main.command(short_help="Watch simulated tasks: no setup needed.")
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
@click.option(
    "--tenants",
    "tenants",
    type=click.IntRange(2, 50),
    default=None,
    help="Watch this many simulated tenants at once, each with its own tasks.",
)
def demo(
    duration: float | None,
    port: int,
    seed: int,
    count: int,
    speed: float,
    log_format: str,
    tenants: int | None,
) -> None:
    """Watch simulated batch tasks: the built-in simulator plus the monitor, no setup.

    Prints each event as it happens and serves the status page and /metrics.

    \b
    Examples:
      batchmon demo --duration 60s
      batchmon demo --tenants 3     (the status page then lists the tenants)
    """
    configure_logging(log_format, "info")

    async def fleet() -> None:
        assert tenants is not None
        with tempfile.TemporaryDirectory(prefix="batchmon-demo-") as state_dir:
            async with Fleet(tenants, seed=seed, tasks=count, speed=speed) as simulated:
                await _demo_tenants(simulated, Path(state_dir), port, speed)

    if tenants is not None:
        _run(fleet, duration, f"127.0.0.1:{port}", busy="--port 0 picks a free port")
        return

    async def both() -> None:
        scenario = Scenario.generate(seed=seed, count=count, start=datetime.now(UTC), speed=speed)
        with tempfile.TemporaryDirectory(prefix="batchmon-demo-") as state_dir:
            # An Online tenant, so that PUT /simulator/tenant can show a maintenance; its
            # status answers hold 30 s, so a new state shows within that.
            tenant = OnlineTenant(valid_for=30)
            async with Simulator(scenario, tenant=tenant) as simulator:
                await _demo(simulator, scenario, Path(state_dir), port, speed)

    _run(both, duration, f"127.0.0.1:{port}", busy="--port 0 picks a free port")


def _demo_config(
    tenants: Mapping[str, tuple[str, str | None]],
    state_dir: Path,
    port: int,
    speed: float,
    token: str,
) -> Config:
    """The demo's configuration: each tenant (name: environment URL, context id) found by
    discovery, the scenario's minute watched closely, a fresh state of its own."""

    def api(environment_url: str, context: str | None) -> dict[str, object]:
        return {
            "environment_url": environment_url,
            "tenant": context,
            "auth": {"type": "basic", "username": "batchmon", "password": "batchmon"},
            "max_requests_per_second": 50,
        }

    # Found the way a real deployment would: by discovery, not by listed ids.
    watch = {"discover": [{"every": 2 / speed}]}
    data: dict[str, object] = {
        # The scenario's minute, watched closely: stalls show after 10 s.
        "poll": {
            "interval": 1 / speed,
            "stall_after": 10 / speed,
            "progress_min_interval": 10 / speed,
            "progress_step": 25,
            "terminal_linger": 15 / speed,
        },
        # The demo stops one task through the API, as an operator would.
        "http": {"listen": f"127.0.0.1:{port}", "api_token": token},
        "state": {"path": str(state_dir / "state.db")},
    }
    if list(tenants) == ["default"]:
        data.update(superoffice=api(*tenants["default"]), watch=watch)
    else:
        data["tenants"] = [
            {"name": name, "superoffice": api(*where), "watch": watch}
            for name, where in tenants.items()
        ]
    return parse_config(data, base_dir=Path.cwd())


async def _demo(
    simulator: Simulator, scenario: Scenario, state_dir: Path, port: int, speed: float
) -> None:
    """The monitor against the simulator, with a fresh state of its own."""
    token = secrets.token_hex(16)
    context = simulator.tenant.context_id if simulator.tenant else None
    where = {"default": (simulator.environment_url, context)}
    daemon = Daemon(_demo_config(where, state_dir, port, speed, token))
    async with anyio.create_task_group() as group:
        bound = await group.start(daemon.run)
        click.echo(
            f"\n  batchmon demo: {len(scenario.task_ids)} simulated tasks, found by discovery\n"
            f"  status page  http://127.0.0.1:{bound}/\n"
            f"  metrics      http://127.0.0.1:{bound}/metrics\n"
            f"  maintenance  curl -X PUT {simulator.environment_url}/simulator/tenant "
            """-d '{"state": "OfflineMaintenance"}'   (then "Running")\n"""
            f"  Ctrl-C stops it.\n",
            err=True,
        )
        point = scenario.stop_point()
        if point is not None:
            group.start_soon(_demo_stop, scenario.start, bound, token, *point)


async def _demo_tenants(fleet: Fleet, state_dir: Path, port: int, speed: float) -> None:
    """The monitor against several simulated tenants: one pipeline each, one status page."""
    token = secrets.token_hex(16)
    where = {name.lower(): (fleet.environment_url, name) for name in fleet.tenants}
    daemon = Daemon(_demo_config(where, state_dir, port, speed, token))
    async with anyio.create_task_group() as group:
        bound = await group.start(daemon.run)
        first = next(iter(fleet.tenants))
        click.echo(
            f"\n  batchmon demo: {len(where)} simulated tenants ({', '.join(where)}),"
            " each with its own tasks, found by discovery\n"
            f"  status page  http://127.0.0.1:{bound}/   (one line per tenant)\n"
            f"  one tenant   http://127.0.0.1:{bound}/?tenant={first.lower()}\n"
            f"  metrics      http://127.0.0.1:{bound}/metrics   (every series has a tenant label)\n"
            f"  maintenance  curl -X PUT {fleet.environment_url}/simulator/tenants/{first} "
            """-d '{"state": "OfflineMaintenance"}'   (then "Running")\n"""
            "  Ctrl-C stops it.\n",
            err=True,
        )


async def _demo_stop(start: datetime, port: int, token: str, task_id: int, at: float) -> None:
    """Stop one task halfway through its run, as an operator would: through the daemon's API."""
    await anyio.sleep(max(0.0, (start - datetime.now(UTC)).total_seconds() + at))
    url = f"http://127.0.0.1:{port}/api/v1/tasks/{task_id}/stop"
    try:
        await anyio.to_thread.run_sync(call, "POST", url, token, {"by": "batchmon demo"})
    except RemoteError as exc:
        log.warning("demo_stop_failed", task_id=task_id, error=str(exc))


#: Where ``status`` and ``watch`` look for the daemon: ``[http] listen``'s default.
DEFAULT_DAEMON_URL = "http://127.0.0.1:9808"


def _with_exit_codes(doc: str) -> str:
    """A command's help text followed by the exit codes of ``status`` and ``watch``."""
    return f"{inspect.cleandoc(doc)}\n\n{_EXIT_HELP}"


def _fail(error: SourceError) -> NoReturn:
    """One line on stderr and the exit code of the problem."""
    click.echo(f"batchmon: {error}", err=True)
    sys.exit(_PROBLEM_EXITS[error.problem])


@main.command(
    short_help="The running daemon's tasks as a table.",
    help=_with_exit_codes(
        """Show the tasks a running daemon watches: state, progress, ETA, running time.

    Prints the table also when the daemon is not ready, and says why.

    \b
    Examples:
      batchmon status
      batchmon status --url http://monitor.example.com:9808
      batchmon status --tenant acme    (with several tenants: without it, one line each)
    """
    ),
)
@click.option(
    "--url",
    default=DEFAULT_DAEMON_URL,
    show_default=True,
    help="Base URL of the running daemon (its [http] listen address).",
)
@_TOKEN_FILE
@_TENANT
def status(url: str, token_file: Path | None, tenant: str | None) -> None:
    """``batchmon status``: the table, then exit 0 when ready, else 75."""
    token = _read_token(token_file)
    if tenant is not None:
        _daemon_tenant(url, token, tenant)
    try:
        report = read_status(url, token, tenant)
    except SourceError as exc:
        _fail(exc)
    Console().print(status_view(report, datetime.now(UTC)))
    if not report.ready:
        sys.exit(EX_TEMPFAIL)


def _read_token(path: Path | None) -> str | None:
    """The token in ``--token-file`` (its first line), or ``None``; usage error if unreadable."""
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        message = f"cannot read {str(path)!r}: {exc}"
        raise click.BadParameter(message, param_hint="--token-file") from None
    if not token:
        raise click.BadParameter(f"{str(path)!r} is empty", param_hint="--token-file")
    return token


def _task_id(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """Click callback: a SuperOffice task id, 1 to 2,147,483,647, in ASCII digits."""
    if value.isascii() and value.isdigit() and 1 <= int(value) <= 2**31 - 1:
        return int(value)
    message = f"expected a task id (a whole number from 1 to 2147483647), got {value!r}"
    raise click.BadParameter(message, ctx, param)


@main.command(
    short_help="Follow one task live; the exit code is its outcome.",
    help=_with_exit_codes(
        """Follow one task with a live progress bar until it ends.

    The exit code is the task's outcome, so scripts can wait on it; the last
    line says how it ended and, when it failed, why (SuperOffice's Result, else
    its Response).  Once a first answer came, lost connections are retried
    until the task ends.

    \b
    Examples:
      batchmon watch 212
      batchmon watch 212 --config /etc/batchmon/batchmon.toml --interval 10s
      batchmon watch 212 --url http://monitor.example.com:9808 && echo "export done"
    """
    ),
)
@click.argument("task_id", metavar="ID", callback=_task_id)
@click.option(
    "--url",
    default=None,
    help=f"Follow the task through a running daemon [default: {DEFAULT_DAEMON_URL}].",
)
@click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Ask SuperOffice directly, as this configuration's [superoffice] section says.",
)
@click.option(
    "--interval",
    callback=_duration,
    default="2s",
    show_default=True,
    help="Time between two looks at the task.",
)
@_TOKEN_FILE
@_TENANT
def watch(
    task_id: int,
    url: str | None,
    config_path: Path | None,
    interval: float,
    token_file: Path | None,
    tenant: str | None,
) -> None:
    """``batchmon watch ID``: exit 0 when the task succeeds, 1 when it fails."""
    if url is not None and config_path is not None:
        raise click.UsageError("give --url or --config, not both")
    if token_file is not None and config_path is not None:
        raise click.UsageError("--token-file is for the daemon (--url), not --config")
    token = _read_token(token_file)
    if interval <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--interval")
    config = _config_or_exit(config_path) if config_path is not None else None
    if config is not None:
        api_config = _api_of(config, tenant)
        configure_logging(config.log.format, "warning", sys.stderr)  # retries are no news here
    else:
        _daemon_tenant(url or DEFAULT_DAEMON_URL, token, tenant)
    console = Console()

    async def follow_task() -> TaskView:
        if config is None:
            source = DaemonSource(url or DEFAULT_DAEMON_URL, task_id, token, tenant)
            return await follow(source, interval=interval, console=console)
        async with api_source(api_config, task_id) as api:
            return await follow(api, interval=interval, console=console)

    try:
        view = anyio.run(follow_task)
    except SourceError as exc:
        _fail(exc)
    console.print(view.summary())
    sys.exit(0 if view.succeeded else EX_FAILED)


@main.command("test-sink", short_help="Send a test message through one sink.")
@click.argument("name")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML configuration file.",
)
def test_sink(name: str, config_path: Path) -> None:
    """Send a test message through the sink NAME and show what its destination answered.

    The message is a "batchmon.test" event about no task, titled "Test message
    from batchmon" (an alertmanager sink gets a BatchmonTest alert of severity
    "none" that ends by itself).  Exits 0 when the destination took it, 1 when
    it did not, 2 when no sink is called NAME.

    \b
    Example:
      batchmon test-sink ops --config /etc/batchmon/batchmon.toml
    """
    config = _config_or_exit(config_path)
    sinks = {sink.name: sink for sink in config.sinks}
    if name not in sinks:
        click.echo(f"batchmon: no sink named {name!r}; configured: {', '.join(sinks)}", err=True)
        sys.exit(2)
    configure_logging(config.log.format, config.log.level, sys.stderr)

    async def send() -> str | None:
        async with aiohttp.ClientSession() as session:
            context = SinkContext(session, status_url=config.http.public_url)
            try:
                sink = build_sink(sinks[name], context)
            except ValueError as exc:
                click.echo(f"batchmon: configuration refused ({config_path}): {exc}", err=True)
                sys.exit(EX_CONFIG)
            event = test_event(datetime.now(UTC))
            if isinstance(sink, HttpSink):
                return str(await sink.deliver(event))
            await sink.send(event)
            return None

    try:
        answer = anyio.run(send)
    except DeliveryError as exc:
        # The destination's answer is its text, not ours: shown, never obeyed by the terminal.
        click.echo(f"batchmon: not delivered: {visible(str(exc))}", err=True)
        sys.exit(1)
    click.echo(f"{name}: delivered" + (f": {visible(answer)}" if answer else ""))


def _api_token(path: Path | None) -> str | None:
    """The API token: ``--token-file``, else ``$BATCHMON_API_TOKEN``."""
    return _read_token(path) if path is not None else os.environ.get("BATCHMON_API_TOKEN")


@main.command(short_help="Take a failed, stalled or gone task (or give it back).")
@click.argument("task_id", metavar="ID", callback=_task_id)
@click.option(
    "--by",
    default=None,
    help="Who takes it, as chat messages and the status page show it [default: your login].",
)
@click.option("--comment", default=None, help="What you are doing about it.")
@click.option("--undo", is_flag=True, help="Give the task back: its alert fires again.")
@click.option(
    "--url",
    default=DEFAULT_DAEMON_URL,
    show_default=True,
    help="Base URL of the running daemon (its [http] listen address).",
)
@_API_TOKEN_FILE
@_TENANT
def ack(
    task_id: int,
    by: str | None,
    comment: str | None,
    undo: bool,
    url: str,
    token_file: Path | None,
    tenant: str | None,
) -> None:
    """Acknowledge task ID: you are on it.  Its alert resolves, its reminders and escalation
    stop, and chat sinks say who took it, until the condition ends (a rerun, success, removal)
    or you give it back with --undo.  A new failure needs a new acknowledgement.

    \b
    Exit codes:
      0   acknowledged (or given back with --undo)
      1   the task is not failed, stalled or gone (--undo: nobody had it)
      2   usage error
      3   the daemon does not track the task
      69  the daemon cannot be reached, or answered with another error (EX_UNAVAILABLE)
      77  no token, or a wrong one (http.api_token; --token-file or
          BATCHMON_API_TOKEN) (EX_NOPERM)

    \b
    Examples:
      batchmon ack 212 --comment "rerunning after the import fix"
      batchmon ack 212 --undo
    """
    token = _api_token(token_file)
    if comment is not None and undo:
        raise click.UsageError("--comment is for taking a task, not for --undo")
    who = by if by is not None else getpass.getuser()
    _daemon_tenant(url, token, tenant)
    endpoint = f"{url.rstrip('/')}/api/v1/tasks/{task_id}/ack{tenant_query(tenant)}"
    body: dict[str, object] = {"by": who}
    if comment is not None:
        body["comment"] = comment
    try:
        call("DELETE" if undo else "POST", endpoint, token, body)
    except RemoteError as exc:
        click.echo(f"batchmon: {endpoint}: {exc}", err=True)
        sys.exit(exc.exit_code)
    click.echo(f"task {task_id}: " + ("given back" if undo else f"acknowledged by {who}"))


def _operator(command: str = "stop") -> str:
    """Who asks, as the event names them: the user and the machine."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "someone"
    return f"{user}@{socket.gethostname()} (batchmon {command})"


def _task_ids(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[int, ...]:
    """Click callback: each ``--id`` a task id."""
    return tuple(_task_id(ctx, param, one) for one in value)


@main.command(short_help="Ask SuperOffice to stop a task.")
@click.argument("task_id", metavar="ID", callback=_task_id)
@click.option(
    "--force",
    is_flag=True,
    help="Stop a task SuperOffice marks CancelWithWarning (its UI warns before stopping it).",
)
@click.option(
    "--url",
    default=None,
    help=f"Ask through a running daemon, which records the stop [default: {DEFAULT_DAEMON_URL}].",
)
@click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Ask SuperOffice directly, with this configuration's [superoffice] section.",
)
@_API_TOKEN_FILE
@_TENANT
def stop(
    task_id: int,
    force: bool,
    url: str | None,
    config_path: Path | None,
    token_file: Path | None,
    tenant: str | None,
) -> None:
    """Ask SuperOffice to stop task ID (StopBatchJob), if it may be stopped.

    The task is read first: a task SuperOffice marks CannotCancel is refused,
    one marked CancelWithWarning needs --force.  SuperOffice may answer that it
    did not stop the task; the line printed says so.  Through the daemon (--url)
    the stop is also announced as a task.stop_requested event.

    \b
    Exit codes:
      0   SuperOffice stopped the task (it fails with a "stopped" result)
      1   refused (CannotCancel, or CancelWithWarning without --force),
          or SuperOffice answered that it did not stop it
      2   usage error
      3   SuperOffice has no such task
      69  the daemon or SuperOffice cannot be reached
      77  the daemon wants its api_token (--token-file or BATCHMON_API_TOKEN),
          or has none
      78  the --config file was refused

    \b
    Examples:
      batchmon stop 212 --token-file /etc/batchmon/api_token
      batchmon stop 212 --force --url http://monitor.example.com:9808 --token-file api_token
      batchmon stop 212 --config /etc/batchmon/batchmon.toml
    """
    if url is not None and config_path is not None:
        raise click.UsageError("give --url or --config, not both")
    if token_file is not None and config_path is not None:
        raise click.UsageError("--token-file is for the daemon (--url), not --config")
    if config_path is not None:
        config = _config_or_exit(config_path)
        api_config = _api_of(config, tenant)
        configure_logging(config.log.format, "warning", sys.stderr)  # retries are no news here

        async def direct() -> StopOutcome:
            return await stop_directly(
                api_config, task_id, force=force, by=_operator(), now=datetime.now(UTC)
            )

        try:
            outcome = anyio.run(direct)
        except StopFailedError as exc:
            click.echo(f"batchmon: {visible(str(exc))}", err=True)
            sys.exit(EX_NOT_TRACKED if exc.not_found else EX_UNAVAILABLE)
        stopped, message = outcome.stopped, outcome.to_dict()["message"]
    else:
        base = (url or DEFAULT_DAEMON_URL).rstrip("/")
        _daemon_tenant(base, _api_token(token_file), tenant)
        body = {"force": force, "by": _operator()}
        try:
            answer = call(
                "POST",
                f"{base}/api/v1/tasks/{task_id}/stop{tenant_query(tenant)}",
                _api_token(token_file),
                body,
            )
        except RemoteError as exc:
            click.echo(f"batchmon: {exc}", err=True)
            sys.exit(exc.exit_code)
        stopped, message = answer.data.get("stopped"), answer.data.get("message")
    click.echo(visible(str(message)), err=stopped is not True)
    sys.exit(0 if stopped is True else EX_FAILED)


@main.command(short_help="Silence tasks for a while; list or end silences.")
@click.option("--for", "duration", default=None, help="How long, e.g. 30m, 2h, 1d (at most 7d).")
@click.option("--reason", default=None, help="Why: shown on the status page and in the log.")
@click.option("--id", "ids", multiple=True, callback=_task_ids, help="A task id (repeatable).")
@click.option(
    "--name", "names", multiple=True, help="A task-name glob, e.g. 'Export*' (repeatable)."
)
@click.option("--all", "everything", is_flag=True, help="Every task, and the monitor's own events.")
@click.option("--list", "listing", is_flag=True, help="List the silences in force.")
@click.option("--end", "end", default=None, metavar="SID", help="End the silence SID now.")
@click.option(
    "--url",
    default=DEFAULT_DAEMON_URL,
    show_default=True,
    help="Base URL of the running daemon.",
)
@_API_TOKEN_FILE
@_TENANT
def silence(
    duration: str | None,
    reason: str | None,
    ids: tuple[int, ...],
    names: tuple[str, ...],
    everything: bool,
    listing: bool,
    end: str | None,
    url: str,
    token_file: Path | None,
    tenant: str | None,
) -> None:
    """Keep tasks' events out of chat and alerts for a while: they still reach the log and the
    metrics.  A silence ends by itself; whatever it kept quiet that still fails or stalls then is
    announced at once.  Silences are kept across restarts of the daemon.

    \b
    Examples:
      batchmon silence --for 2h --reason "CRM upgrade" --name 'Export*' --token-file api_token
      batchmon silence --for 30m --reason "rerunning by hand" --id 212 --id 213
      batchmon silence --list
      batchmon silence --end 3f2a9c1b7d4e --token-file api_token

    \b
    Exit codes: 0 done, 1 refused (the daemon says why), 2 usage error,
    3 no such silence, 69 the daemon cannot be reached, 77 token missing or wrong.
    """
    selectors = sum(1 for chosen in (ids, names, everything) if chosen)
    making = duration is not None or reason is not None or selectors > 0
    if sum(1 for mode in (making, listing, end is not None) if mode) != 1:
        raise click.UsageError(
            "give --for/--reason with --id, --name or --all; or --list; or --end SID"
        )
    base, token, query = url.rstrip("/"), _api_token(token_file), tenant_query(tenant)
    _daemon_tenant(base, token, tenant)
    try:
        if listing:
            answer = call("GET", f"{base}/api/v1/silences{query}", token)
            for item in answer.data["silences"]:
                click.echo(_silence_line(item))
            if not answer.data["silences"]:
                click.echo("no silences", err=True)
            return
        if end is not None:
            answer = call(
                "DELETE", f"{base}/api/v1/silences/{urllib.parse.quote(end, safe='')}{query}", token
            )
            click.echo(f"ended: {_silence_line(answer.data)}")
            return
        if duration is None or reason is None or selectors != 1:
            raise click.UsageError("a silence needs --for, --reason and one of --id, --name, --all")
        body: dict[str, object] = {"for": duration, "reason": reason, "by": _operator("silence")}
        body.update(
            {"ids": list(ids)} if ids else {"names": list(names)} if names else {"all": True}
        )
        answer = call("POST", f"{base}/api/v1/silences{query}", token, body)
        click.echo(_silence_line(answer.data))
    except RemoteError as exc:
        click.echo(f"batchmon: {exc}", err=True)
        sys.exit(exc.exit_code)


def _silence_line(item: dict[str, object]) -> str:
    """One silence: its id, its end, what it covers, why and who."""
    by = f", by {item['by']}" if item.get("by") else ""
    until = (
        datetime.fromisoformat(str(item["ends"])).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    )
    return visible(f"{item['id']}  until {until}  {item['covers']}: {item['reason']}{by}")
