"""Package names and versions: validated against Debian/RPM rules before they reach any
command, and compared with Debian's own algorithm (python-debian), never as strings."""

from __future__ import annotations

import re

from debian.debian_support import Version

from patchpilot.errors import BadInputError

# Debian policy (5.6.1) allows [a-z0-9+.-], starting with an alphanumeric; RPM names also use
# upper case and '_'. Nothing else (spaces, ';', '$', a leading '-') can reach a command line.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+~-]{0,199}")
# [epoch:]upstream[-revision]: Debian's characters plus RPM's '_' and '^'.
_VERSION_RE = re.compile(r"(?:\d{1,9}:)?[A-Za-z0-9][A-Za-z0-9.+~_^:-]{0,199}")

# Where a pending update's rollback artifact will come from, as `plan` shows it: apt's
# cache, a repository that still offers the installed version, a rebuild from the installed
# package, or nowhere.
ROLLBACK_SOURCES = frozenset(("cache", "repository", "rebuild", "none"))


def validate_package_name(name: str, *, where: str = "package") -> str:
    if not _NAME_RE.fullmatch(name):
        raise BadInputError(
            f"{where}: invalid package name {name!r}",
            hint="package names are letters, digits and + . - _ ~, starting with a letter or digit",
        )
    return name


def validate_version(version: str, *, where: str = "version") -> str:
    if not _VERSION_RE.fullmatch(version):
        raise BadInputError(
            f"{where}: invalid package version {version!r}",
            hint="versions are [epoch:]upstream[-revision] of letters, digits and . + ~ - _",
        )
    return version


def compare_versions(a: str, b: str) -> int:
    """Debian version order: <0, 0 or >0, as dpkg --compare-versions."""
    va, vb = Version(a), Version(b)
    return (va > vb) - (va < vb)


def upstream_version(version: str) -> str:
    """'1:3.0.11-1~deb12u2' -> '3.0.11'."""
    return str(Version(version).upstream_version)
