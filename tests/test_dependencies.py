"""Security floors: pyproject.toml refuses releases with known holes, and the installed ones pass.

pyproject.toml is the one place the floors are written; this test reads them from there.
The table below is the other half: releases with published advisories that the floors
must keep out (when a new advisory comes, add its last bad release here and raise the floor).
"""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"

#: Distribution → the last release of each advisory the floors must refuse.
KNOWN_BAD = {
    # CVE-2024-56326, CVE-2025-27516: sandbox breakouts (sink templates rely on the sandbox).
    "jinja2": ["3.1.5"],
    # CVE-2024-52304, CVE-2025-53643, and the set fixed in 3.13.3.
    "aiohttp": ["3.10.10", "3.12.13", "3.13.2"],
    # CVE-2024-26130, CVE-2024-12797.
    "cryptography": ["42.0.3", "44.0.0"],
    # CVE-2024-53861 (2.10.0 only).
    "pyjwt": ["2.10.0"],
    # CVE-2024-47081 (tests).
    "requests": ["2.32.3"],
}


def requirements() -> dict[str, Requirement]:
    """Every requirement of the project and its test extra, by canonical name."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    listed = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return {canonicalize_name(req.name): req for req in map(Requirement, listed)}


@pytest.mark.parametrize("name", sorted(KNOWN_BAD))
def test_floors_refuse_known_bad_releases(name: str) -> None:
    """pyproject.toml admits none of the releases with a published advisory."""
    specifier = requirements()[name].specifier

    assert [] == [bad for bad in KNOWN_BAD[name] if specifier.contains(bad, prereleases=True)]


@pytest.mark.parametrize("name", sorted(KNOWN_BAD))
def test_installed_release_meets_the_floor(name: str) -> None:
    """The environment the tests run in has a release pyproject.toml admits."""
    installed = Version(version(name))

    assert requirements()[name].specifier.contains(installed, prereleases=True), (
        f"{name} {installed} is installed; pyproject.toml asks for {requirements()[name]}"
    )
