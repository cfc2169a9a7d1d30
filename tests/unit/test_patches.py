"""Package names and versions: validated before they reach any command, compared in Debian
order (python-debian), never as strings."""

from __future__ import annotations

from functools import cmp_to_key

import pytest

from patchpilot.errors import BadInputError, ExitCode
from patchpilot.patches import (
    compare_versions,
    upstream_version,
    validate_package_name,
    validate_version,
)


@pytest.mark.parametrize(
    "name",
    [
        "libssl3",
        "libstdc++6",
        "python3.11",
        "NetworkManager",
        "perl-Data-Dumper",
        "g++",
        "linux-image-6.1.0-28-amd64",
        "xorg-x11-server_Xorg",
        "0ad",
    ],
)
def test_valid_package_names(name: str) -> None:
    assert validate_package_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "foo;rm -rf /",
        "-rf",
        "$(id)",
        "a b",
        "",
        "../x",
        "x" * 300,
        "libssl3\n",
        "foo`id`",
        "foo|bar",
        ".hidden",
        "pkg/../../etc",
    ],
)
def test_invalid_package_names(name: str) -> None:
    with pytest.raises(BadInputError) as info:
        validate_package_name(name, where="plan.yml packages[2]")
    assert info.value.exit_code == ExitCode.BAD_INPUT
    assert info.value.message.startswith("plan.yml packages[2]: invalid package name")
    assert repr(name) in info.value.message
    assert info.value.hint


def test_package_name_length_limit() -> None:
    assert validate_package_name("a" * 200) == "a" * 200
    with pytest.raises(BadInputError):
        validate_package_name("a" * 201)


@pytest.mark.parametrize(
    "version",
    [
        "1:3.0.11-1~deb12u2",
        "2.6.1",
        "10.42-1+deb12u2",
        "2:8.2.2637-20.el9_1",
        "3.0.7-27.el9^1",
        "1:9.2p1-2+deb12u10",
        "2024a-1.el9",
        "6.4.0-150600.23.25.1",
    ],
)
def test_valid_versions(version: str) -> None:
    assert validate_version(version) == version


@pytest.mark.parametrize(
    "version",
    ["1.0;reboot", "-1", "", "1.0 2", "$(x)", "1.0\n", "1.0`id`", ":1.0", "1.0|sh"],
)
def test_invalid_versions(version: str) -> None:
    with pytest.raises(BadInputError) as info:
        validate_version(version)
    assert info.value.exit_code == ExitCode.BAD_INPUT
    assert info.value.message.startswith("version: invalid package version")
    assert info.value.hint


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.2-1", "1.10-1"),  # numeric, not string, order
        ("2.0", "1:0.9"),  # the epoch wins
        ("3.0.11-1~deb12u2", "3.0.11-1"),  # '~' sorts before everything, even the end
        ("3.0.11-1", "3.0.11-1+deb12u1"),
        ("3.0.11~rc1-1", "3.0.11-1"),
        ("1.0-1", "1.0-1.1"),
        ("9.2p1-2+deb12u9", "9.2p1-2+deb12u10"),
        ("1.0a", "1.0b"),
    ],
)
def test_compare_versions_debian_order(older: str, newer: str) -> None:
    assert compare_versions(older, newer) == -1
    assert compare_versions(newer, older) == 1


@pytest.mark.parametrize(
    ("a", "b"),
    [("3.0.11-1~deb12u2", "3.0.11-1~deb12u2"), ("1.0", "1.0"), ("0:1.0-1", "1.0-1")],
)
def test_compare_versions_equal(a: str, b: str) -> None:
    assert compare_versions(a, b) == 0


def test_compare_versions_sorts_like_dpkg() -> None:
    versions = ["1:0.9", "1.10-1", "3.0.11-1", "1.2-1", "3.0.11-1~deb12u2", "2.0"]
    ordered = sorted(versions, key=cmp_to_key(compare_versions))
    assert ordered == ["1.2-1", "1.10-1", "2.0", "3.0.11-1~deb12u2", "3.0.11-1", "1:0.9"]


@pytest.mark.parametrize(
    ("version", "upstream"),
    [
        ("1:3.0.11-1~deb12u2", "3.0.11"),
        ("2.6.1", "2.6.1"),
        ("10.42-1+deb12u2", "10.42"),
        ("1.2-3-4", "1.2-3"),
        ("1:9.2p1-2+deb12u10", "9.2p1"),
    ],
)
def test_upstream_version(version: str, upstream: str) -> None:
    assert upstream_version(version) == upstream
