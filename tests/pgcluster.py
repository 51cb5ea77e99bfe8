"""A throwaway PostgreSQL cluster in a temporary directory, for the tests and the bench.

Debian's ``postgresql`` package ships ``initdb`` and ``pg_ctl`` in
``/usr/lib/postgresql/<version>/bin``; no system service is involved.  PostgreSQL
refuses to run as root, so as root the server runs as the ``postgres`` user the
package creates.  The cluster listens on a free loopback port with a password
(``scram-sha-256``, as a real deployment would) and on a Unix socket in its
directory; ``fsync`` is off unless asked for: nothing in it outlives the run.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Cluster", "find_bindir", "running_cluster"]

#: The superuser of the throwaway cluster.
USER = "batchmon"


def find_bindir() -> Path | None:
    """The directory of ``pg_ctl`` and ``initdb``: on the PATH, else Debian's newest."""
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        bindir = Path(on_path).resolve().parent
        if (bindir / "initdb").is_file() and (bindir / "createdb").is_file():
            return bindir
    found = [
        (int(candidate.parent.name), candidate)
        for candidate in Path("/usr/lib/postgresql").glob("*/bin")
        if (candidate / "pg_ctl").is_file() and re.fullmatch(r"\d+", candidate.parent.name)
    ]
    return max(found)[1] if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Cluster:
    """A running cluster: where it listens and how to log in."""

    bindir: Path
    directory: Path
    port: int
    password: str

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL over loopback TCP, with the password."""
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database (over the Unix socket); its URL."""
        _run(
            [
                str(self.bindir / "createdb"),
                "--host",
                str(self.directory),
                "--port",
                str(self.port),
                "--username",
                USER,
                name,
            ],
            cwd=self.directory,
        )
        return self.url(name)


def _as_server_user(argv: Sequence[str]) -> list[str]:
    """PostgreSQL's server programs refuse root: run them as ``postgres`` then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return list(argv)


def _run(argv: Sequence[str], *, cwd: Path) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        msg = f"{Path(argv[0]).name} failed ({done.returncode}): {done.stderr or done.stdout}"
        raise RuntimeError(msg)


@contextmanager
def running_cluster(bindir: Path, *, fsync: bool = False) -> Iterator[Cluster]:
    """Start a fresh cluster (``initdb`` + ``pg_ctl start``); stop and delete it afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="batchmon-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(directory, "postgres", "postgres")
        password = secrets.token_hex(16)
        pwfile = directory / "password"
        pwfile.write_text(password)
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        data = directory / "data"
        initdb = [str(bindir / "initdb"), "--pgdata", str(data), "--username", USER]
        initdb += ["--pwfile", str(pwfile), "--auth-local=trust", "--auth-host=scram-sha-256"]
        initdb += ["--encoding=UTF8", "--no-locale", "--no-sync"]
        _run(_as_server_user(initdb), cwd=directory)
        port = _free_port()
        options = f"-k {directory} -h 127.0.0.1 -p {port} -c max_connections=200"
        if not fsync:
            options += " -F"
        start = [str(bindir / "pg_ctl"), "--pgdata", str(data), "--options", options]
        start += ["--log", str(directory / "server.log"), "--wait", "start"]
        _run(_as_server_user(start), cwd=directory)
        try:
            yield Cluster(bindir, directory, port, password)
        finally:
            stop = [str(bindir / "pg_ctl"), "--pgdata", str(data), "--mode=immediate", "stop"]
            _run(_as_server_user(stop), cwd=directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
