"""``[[tenants]]``: several tenants, each with its own API and tasks; the single form is ``default``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from monitor.config import parse_config
from tests.config_helpers import minimal, problems


def _tenant(name: object, **extra: Any) -> dict[str, Any]:
    return {"name": name, "superoffice": dict(minimal()["superoffice"]), **extra}


def _tenants(*entries: dict[str, Any]) -> dict[str, Any]:
    data = {key: value for key, value in minimal().items() if key != "superoffice"}
    return {**data, "tenants": list(entries)}


class TestTenants:
    """Each entry is a tenant; names key everything, so they are checked as labels."""

    def test_single_form_is_default(self) -> None:
        config = parse_config(minimal(), base_dir=Path())
        [tenant] = config.tenant_list
        assert ("default", config.superoffice, config.watch) == (
            tenant.name,
            tenant.superoffice,
            tenant.watch,
        )

    def test_entries_in_order_with_their_own_watch(self) -> None:
        data = _tenants(_tenant("acme", watch={"ids": [7]}), _tenant("globex-2"))
        config = parse_config(data, base_dir=Path())
        assert [("acme", [7]), ("globex-2", [])] == [
            (t.name, t.watch.ids) for t in config.tenant_list
        ]
        assert "acme" == config.tenant("acme").name

    @pytest.mark.parametrize(
        ("name", "lookup", "error"),
        [
            (None, None, "this configuration watches several tenants; name one of acme, b"),
            (None, "nope", "no tenant 'nope' in this configuration (it has acme, b)"),
        ],
    )
    def test_lookup_says_which_names_exist(
        self, name: object, lookup: str | None, error: str
    ) -> None:
        config = parse_config(_tenants(_tenant("acme"), _tenant("b")), base_dir=Path())
        with pytest.raises(LookupError, match=error.replace("(", r"\(").replace(")", r"\)")):
            config.tenant(lookup)

    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("Acme", "tenants[\"Acme\"].name: 'Acme' is not a usable tenant name"),
            ("-acme", "tenants[\"-acme\"].name: '-acme' is not a usable tenant name"),
            ("ac me", "tenants[0].name: 'ac me' is not a usable tenant name"),
            ("a" * 64, "is not a usable tenant name"),
            ("", "is not a usable tenant name"),
            (7, "tenants[0].name: expected a string, got an integer"),
        ],
    )
    def test_names_are_label_safe(self, name: object, expected: str) -> None:
        [problem] = problems(_tenants(_tenant(name)))
        assert expected in problem

    def test_duplicate_names_refused(self) -> None:
        data = _tenants(_tenant("acme"), _tenant("acme"))
        assert ["tenants[1].name: duplicate tenant name 'acme'"] == problems(data)

    def test_both_forms_refused(self) -> None:
        data = {**_tenants(_tenant("acme")), "superoffice": minimal()["superoffice"]}
        [problem] = problems(data)
        assert problem.startswith("superoffice: give either [superoffice] and [watch]")

    def test_a_tenant_needs_its_api(self) -> None:
        [problem] = problems(_tenants({"name": "acme"}))
        assert 'tenants["acme"].superoffice: required, but not given' == problem

    def test_a_tenant_problem_is_named_by_the_tenant(self) -> None:
        entry = _tenant("acme", watch={"ids": [0]})
        [problem] = problems(_tenants(entry))
        assert problem.startswith('tenants["acme"].watch.ids[0]: must be greater than 0')

    def test_a_sink_for_no_tenant_is_refused(self) -> None:
        """A glob with a typo would leave the sink unused without a word."""
        sinks = [{"type": "log", "name": "acme-log", "tenants": ["acne*"]}]
        data = {**_tenants(_tenant("acme"), _tenant("globex")), "sinks": sinks}
        expected = (
            'sinks["acme-log"].tenants: matches none of the tenants (acme, globex): '
            "the sink would never be used"
        )
        assert [expected] == problems(data)


class TestShards:
    """A tenant split into shards: each a unit of its own, with PostgreSQL only."""

    def test_units_are_named_by_their_shard(self) -> None:
        data = {
            **_tenants(_tenant("acme", shards=3), _tenant("globex")),
            "state": {"url": "postgresql://batchmon@db.example.com/batchmon"},
        }
        config = parse_config(data, base_dir=Path())
        assert [
            ("acme-1of3", 1, 3),
            ("acme-2of3", 2, 3),
            ("acme-3of3", 3, 3),
            ("globex", 1, 1),
        ] == [(unit.name, unit.number, unit.count) for unit in config.units]

    @pytest.mark.parametrize(
        ("entries", "state", "expected"),
        [
            (
                [_tenant("acme", shards=2)],
                {},
                'tenants["acme"].shards: shards spread a tenant over replicas: give [state] url',
            ),
            (
                [_tenant("acme", shards=2), _tenant("acme-1of2")],
                {"url": "postgresql://batchmon@db.example.com/batchmon"},
                "tenants[\"acme\"].shards: the shard name 'acme-1of2' is another",
            ),
            (
                [_tenant("acme", shards=17)],
                {"url": "postgresql://batchmon@db.example.com/batchmon"},
                'tenants["acme"].shards: must be less than or equal to 16, got 17',
            ),
        ],
    )
    def test_refused(
        self, entries: list[dict[str, Any]], state: dict[str, Any], expected: str
    ) -> None:
        [problem] = problems({**_tenants(*entries), "state": state})
        assert problem.startswith(expected), problem
