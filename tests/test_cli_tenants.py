"""The commands against a daemon watching several tenants, as a user runs them: real processes,
a real daemon and the simulator's fleet on loopback (the daemon of tests/test_web_tenants.py:
``acme`` with 212 failed and 213 running, ``globex`` with 212 running and 213 done,
``initech`` with its credentials refused)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import aiohttp

from tests.test_cli_status import batchmon
from tests.test_web_tenants import TOKEN, fetch, running_tenants

TENANTS = "acme, globex, initech"


def said(result: subprocess.CompletedProcess[bytes]) -> str:
    """What the command printed, stdout then stderr."""
    return (result.stdout + result.stderr).decode()


class TestStatus:
    """``batchmon status`` with and without ``--tenant``."""

    async def test_one_line_per_tenant_then_one_tenants_tasks(self) -> None:
        """Without --tenant a line per tenant with its API and what fires; with it, that
        tenant's tasks; an unknown tenant is a usage error naming the tenants."""
        async with running_tenants() as tenants:
            overview = await batchmon("status", "--url", tenants.base)
            globex = await batchmon("status", "--url", tenants.base, "--tenant", "globex")
            unknown = await batchmon("status", "--url", tenants.base, "--tenant", "umbrella")

        out = overview.stdout.decode()
        assert 0 == overview.returncode, said(overview)
        assert f"batchmon at {tenants.base} · 3 tenants · ready" in out
        rows = {row.split("│")[1].strip(): row for row in out.splitlines() if row.startswith("│")}
        assert ["acme", "globex", "initech"] == list(rows)
        assert "1 failed" in rows["acme"]
        assert "credentials rejected" in rows["initech"]
        assert "Replica" not in out  # one process holds every tenant
        assert "batchmon status --tenant NAME" in out

        out = globex.stdout.decode()
        assert 0 == globex.returncode, said(globex)
        assert f"batchmon at {tenants.base} · tenant globex · 2 tasks, 1 active" in out
        states = {
            row.split("│")[1].strip(): row.split("│")[3].strip()
            for row in out.splitlines()
            if row.startswith("│") and row.split("│")[1].strip()
        }
        assert {"212": "Started", "213": "Succeeded"} == states

        assert 2 == unknown.returncode
        assert f"watches no tenant 'umbrella' (it watches {TENANTS})" in said(unknown)


class TestWatch:
    """``batchmon watch ID --tenant``: the task of that tenant."""

    async def test_the_named_tenants_task(self) -> None:
        """212 of acme failed (exit 1, its reason), 213 of globex succeeded (exit 0); without
        --tenant, a usage error naming the tenants."""
        async with running_tenants() as tenants:
            acme = await batchmon("watch", "212", "--url", tenants.base, "--tenant", "acme")
            globex = await batchmon("watch", "213", "--url", tenants.base, "--tenant", "globex")
            unnamed = await batchmon("watch", "212", "--url", tenants.base)

        assert 1 == acme.returncode, said(acme)
        assert "Disk full" in said(acme)
        assert 0 == globex.returncode, said(globex)
        assert 2 == unnamed.returncode
        assert f"watches several tenants: name one with --tenant ({TENANTS})" in said(unnamed)

    async def test_config_of_several_tenants_needs_the_tenant(self, tmp_path: Path) -> None:
        """--config with [[tenants]]: no --tenant, or one it lacks, is a usage error naming them."""
        config = tmp_path / "batchmon.toml"
        config.write_text(
            "".join(
                f'[[tenants]]\nname = "{name}"\n[tenants.superoffice]\n'
                'url = "http://127.0.0.1:9/api"\n'
                '[tenants.superoffice.auth]\ntype = "bearer"\ntoken = "t"\n'
                for name in ("acme", "globex", "initech")
            )
        )
        for command in ("watch", "stop"):
            unnamed = await batchmon(command, "212", "--config", str(config))
            unknown = await batchmon(command, "212", "--config", str(config), "--tenant", "x")

            assert 2 == unnamed.returncode, said(unnamed)
            assert f"several tenants; name one of {TENANTS}" in said(unnamed)
            assert 2 == unknown.returncode, said(unknown)
            assert f"no tenant 'x' in this configuration (it has {TENANTS})" in said(unknown)

    async def test_config_asks_the_named_tenants_api(self, tmp_path: Path) -> None:
        """--config --tenant asks that tenant's SuperOffice: acme's 212 failed (exit 1),
        globex's 212 runs and 213 succeeded (exit 0)."""
        async with running_tenants() as tenants:
            config = tmp_path / "batchmon.toml"
            config.write_text(
                "".join(
                    f'[[tenants]]\nname = "{name}"\n[tenants.superoffice]\n'
                    f'environment_url = "{tenants.fleet.environment_url}"\n'
                    f'tenant = "{context}"\n'
                    '[tenants.superoffice.auth]\ntype = "basic"\n'
                    'username = "batchmon"\npassword = "batchmon"\n'
                    for name, context in tenants.contexts.items()
                )
            )
            acme = await batchmon("watch", "212", "--config", str(config), "--tenant", "acme")
            globex = await batchmon("watch", "213", "--config", str(config), "--tenant", "globex")

        assert 1 == acme.returncode, said(acme)
        assert "Disk full" in said(acme)
        assert 0 == globex.returncode, said(globex)


class TestChanges:
    """``ack``, ``stop`` and ``silence`` with ``--tenant`` change that tenant only."""

    async def test_each_reaches_the_named_tenant(self, tmp_path: Path) -> None:
        """acme's 212 is taken, globex's 212 cannot be; acme's 213 is stopped, not globex's;
        a silence of acme is listed by acme only; without --tenant each is a usage error."""
        token = tmp_path / "token"
        token.write_text(TOKEN + "\n")
        auth = ("--token-file", str(token))
        async with running_tenants() as tenants:
            url = ("--url", tenants.base, *auth)
            taken = await batchmon("ack", "212", "--by", "ann", *url, "--tenant", "acme")
            refused = await batchmon("ack", "212", "--by", "ann", *url, "--tenant", "globex")
            stopped = await batchmon("stop", "213", *url, "--tenant", "acme")
            silenced = await batchmon(
                "silence", "--for", "1h", "--reason", "upgrade", "--id", "212", *url,
                "--tenant", "acme",
            )  # fmt: skip
            listed = {
                tenant: await batchmon("silence", "--list", *url, "--tenant", tenant)
                for tenant in ("acme", "globex")
            }
            unnamed = [
                await batchmon("ack", "212", *url),
                await batchmon("stop", "213", *url),
                await batchmon("silence", "--list", *url),
            ]
            async with aiohttp.ClientSession() as http:
                stop_events = {
                    name: [e["type"] for e in answer["events"]]
                    for name in ("acme", "globex")
                    for _, answer in [
                        await fetch(http, "GET", f"{tenants.base}/api/v1/tasks/213?tenant={name}")
                    ]
                }

        assert (0, "task 212: acknowledged by ann\n") == (taken.returncode, said(taken))
        assert 1 == refused.returncode, said(refused)
        assert 0 == stopped.returncode, said(stopped)
        assert "task.stop_requested" in stop_events["acme"]
        assert "task.stop_requested" not in stop_events["globex"]
        assert 0 == silenced.returncode, said(silenced)
        sid = silenced.stdout.decode().split()[0]
        assert sid in listed["acme"].stdout.decode()
        assert "no silences" in said(listed["globex"])
        for result in unnamed:
            assert 2 == result.returncode, said(result)
            assert f"name one with --tenant ({TENANTS})" in said(result)
