"""Real Debian updates for the lab fleet.

The lab hosts only see the lab apt repo. To give them pending updates that behave like
production ones (real maintainer scripts, real changelogs, real security fixes), we take the
packages installed in the lab's base root filesystem, ask *this* machine's apt which newer
Debian versions it can fetch, and download those .deb files for the lab repo.

How a version's origin is found: `apt-cache policy PKG...` lists, under each version, the
Packages files that carry it (``500 http://deb.debian.org/debian-security
bookworm-security/main amd64 Packages``) but not their Release fields. The global
`apt-cache policy` (no arguments) prints the very same Packages-file lines under "Package
files:", each followed by its ``release v=12,o=Debian,a=...,n=bookworm-security,
l=Debian-Security,...`` line. Both come from the same apt code, so the text after the priority
is an exact key from a version's source line to its Release fields (no URL guessing, works
for any mirror).

Debian's security archive says ``o=Debian,l=Debian-Security`` (only very old releases used
``o=Debian-Security``); we report such versions as origin "Debian-Security" so callers can
tell a security fix from a point-release update.

Only versions from the base image's own release count: suites ``CODENAME``,
``CODENAME-updates`` and ``CODENAME-security`` (codename from the root's os-release). That
keeps out backports, proposed-updates and the next release, which also say ``o=Debian`` but
are not what an `apt upgrade` on a production host of that release would install.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from debian.debian_support import Version

from patchpilot.errors import EnvironmentProblem, LabError
from patchpilot.lab.system import run

log = logging.getLogger(__name__)

DEBIAN_ORIGINS = frozenset({"Debian", "Debian-Security"})
# Keeps each apt command line short; apt-cache answers 200 names in well under a second.
POLICY_CHUNK = 200
DOWNLOAD_CHUNK = 100
DOWNLOAD_TIMEOUT = 1800.0
_DPKG_STATUS = "/var/lib/dpkg/status"
_INSTALLED = "install ok installed"
_APT_HINT = (
    "run `apt-get update` on this machine (its package lists may be stale or a mirror "
    "unreachable), then try again"
)

# "libssl3:" or "libc6:i386:" at column 0 starts a package's section.
_HEADER = re.compile(r"^([a-z0-9][a-z0-9+.-]*(?::[a-z0-9-]+)?):$")
# "1000 http://..." / " 500 http://..." / "       500 http://..." (priority, then the file).
_SOURCE = re.compile(r"^\s*(-?\d+) (\S.*)$")


@dataclass(frozen=True)
class DebianUpdate:
    package: str  # binary package name, without ":arch"
    arch: str  # "amd64" / "all" ...
    installed: str  # version installed in the base image
    candidate: str  # newer version this machine's apt can download
    origin: str  # "Debian-Security" or "Debian"; "" if unknown

    @property
    def filename(self) -> str:
        """The name `apt-get download` gives the file, so present files can be skipped."""
        return f"{self.package}_{self.candidate.replace(':', '%3a')}_{self.arch}.deb"


def installed_packages(root: Path) -> dict[str, tuple[str, str]]:
    """name -> (version, arch) of packages in state 'install ok installed' in `root`.

    Reads the root's dpkg database from outside (``dpkg-query --admindir``): no chroot, so it
    works on a read-only image and needs nothing inside it. Held, half-installed and removed
    packages are left out: apt on the hosts would not upgrade them anyway.
    """
    admindir = root / "var/lib/dpkg"
    if not (admindir / "status").is_file():
        raise LabError(
            f"no dpkg database in {root}: {admindir / 'status'} is missing",
            hint="point it at a root filesystem made by debootstrap",
        )
    proc = run(
        [
            "dpkg-query",
            f"--admindir={admindir}",
            "-W",
            "-f=${Package}\\t${Version}\\t${Architecture}\\t${Status}\\n",
        ],
        what=f"listing the packages installed in {root}",
        timeout=120,
    )
    packages: dict[str, tuple[str, str]] = {}
    machine: str | None = None
    for line in proc.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) != 4 or fields[3] != _INSTALLED:
            continue
        name, version, arch, _ = fields
        if name in packages:
            # Multi-arch duplicate (libc6:amd64 + libc6:i386): keep the native one.
            machine = machine or _machine_arch()
            if arch != machine:
                log.debug("ignoring foreign-arch %s:%s in %s", name, arch, root)
                continue
        packages[name] = (version, arch)
    return packages


def parse_apt_cache_policy(
    text: str, *, origins: Mapping[str, str] | None = None
) -> dict[str, list[tuple[str, str]]]:
    """Parse `apt-cache policy PKG...` output into name -> [(version, origin), ...].

    Every version of a package's version table is listed once per distinct origin, in apt's
    order (highest first), except sources that are only the local dpkg status file: that is
    what is installed on this machine, not something apt can download.

    `origins` maps a Packages-file line (the text after the priority) to its origin. Without
    it, the origins come from a "Package files:" section in `text` itself, so the output of
    `apt-cache policy` followed by `apt-cache policy PKG...` can be parsed in one go.
    Unknown sources give origin "".
    """
    if origins is None:
        origins = {line: _origin_name(rel) for line, rel in parse_package_files(text).items()}
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    version: str | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            # A package header, or anything else (global sections, N:/W: notes) ends it.
            match = _HEADER.match(line)
            current = result.setdefault(match.group(1), []) if match else None
            version = None
            continue
        if current is None:
            continue
        if line.startswith(" *** "):
            version = line[5:].split()[0]
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent == 5:  # "     VERSION PRIORITY"
            version = line.split()[0]
            continue
        if indent < 5:  # Installed:, Candidate:, Version table:
            version = None
            continue
        source = _SOURCE.match(line)
        if version is None or source is None or source.group(2) == _DPKG_STATUS:
            continue
        entry = (version, origins.get(source.group(2), ""))
        if entry not in current:
            current.append(entry)
    return result


def parse_package_files(text: str) -> dict[str, dict[str, str]]:
    """Packages-file line -> its Release fields, from the global `apt-cache policy` output.

    E.g. "http://deb.debian.org/debian bookworm/main amd64 Packages" ->
    {"v": "12.11", "o": "Debian", "a": "stable", "n": "bookworm", "l": "Debian", ...}.
    """
    files: dict[str, dict[str, str]] = {}
    in_files = False
    last: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not raw[0].isspace() and not _SOURCE.match(raw):
            # A section title or package header; only "Package files:" is ours.
            in_files = raw.startswith("Package files:")
            last = None
            continue
        if not in_files:
            continue
        if line.startswith("release "):
            if last is not None:
                files[last] = _release_fields(line.removeprefix("release "))
            continue
        if line.startswith("origin "):
            continue
        source = _SOURCE.match(line)
        if source:
            last = source.group(2)
            files.setdefault(last, {})
    return files


def find_debian_updates(root: Path, *, only: Iterable[str] | None = None) -> list[DebianUpdate]:
    """Newer Debian versions this machine's apt can fetch for the packages installed in root.

    Sorted by package name; at most one update per package, the highest version from a
    Debian origin of the root's own release (see the module docstring). Third-party repos
    configured on this machine (nodesource, Google...) never count, even when newer.
    `only` restricts the search to those package names.
    """
    installed = installed_packages(root)
    if only is not None:
        wanted = set(only)
        unknown = wanted - installed.keys()
        if unknown:
            log.debug("not installed in %s, skipped: %s", root, ", ".join(sorted(unknown)))
        installed = {name: value for name, value in installed.items() if name in wanted}
    if not installed:
        return []
    _require("apt-cache")
    codename = _codename(root)
    if codename is None:
        log.warning("no VERSION_CODENAME in %s's os-release: accepting any Debian suite", root)
    files = parse_package_files(_apt_cache_policy([]))
    origins = {
        line: _origin_name(release)
        for line, release in files.items()
        if codename is None or release.get("n") in _suites(codename)
    }
    machine = _machine_arch()
    query = {_apt_name(name, arch, machine): name for name, (_, arch) in installed.items()}
    names = sorted(query)
    policy: dict[str, list[tuple[str, str]]] = {}
    for start in range(0, len(names), POLICY_CHUNK):
        text = _apt_cache_policy(names[start : start + POLICY_CHUNK])
        for key, versions in parse_apt_cache_policy(text, origins=origins).items():
            if key in query:
                policy[query[key]] = versions
    updates = _choose_updates(installed, policy)
    log.info("%d of %d packages in %s have Debian updates", len(updates), len(installed), root)
    return updates


def download_debian_updates(updates: Iterable[DebianUpdate], dest: Path) -> list[Path]:
    """Download the candidate .deb of each update into dest; return their paths.

    Uses `apt-get download`, so files come from this machine's configured mirrors and are
    checked against its signed package lists. A file already in dest under apt's name is
    complete (apt only moves a file there after checking its hash), so it is reused.
    """
    updates = list(updates)
    dest.mkdir(parents=True, exist_ok=True)
    if not updates:
        return []
    _require("apt-get")
    machine = _machine_arch()
    paths: list[Path] = []
    todo: list[tuple[DebianUpdate, Path]] = []
    for update in updates:
        path = dest / update.filename
        paths.append(path)
        if path.is_file():
            log.debug("already downloaded: %s", path.name)
        else:
            todo.append((update, path))
    for start in range(0, len(todo), DOWNLOAD_CHUNK):
        chunk = todo[start : start + DOWNLOAD_CHUNK]
        specs = [f"{_apt_name(u.package, u.arch, machine)}={u.candidate}" for u, _ in chunk]
        log.info("downloading %d Debian updates into %s", len(specs), dest)
        # `env -C` because apt-get download writes into its working directory.
        proc = run(
            ["env", "-C", str(dest), "LC_ALL=C", "apt-get", "-q", "download", *specs],
            check=False,
            what="apt-get download",
            timeout=DOWNLOAD_TIMEOUT,
        )
        missing = [u for u, path in chunk if not path.is_file()]
        if proc.returncode != 0 or missing:
            raise _download_error(proc.stderr or proc.stdout, [u for u, _ in chunk], missing)
    return paths


def _download_error(
    output: str, chunk: Sequence[DebianUpdate], missing: Sequence[DebianUpdate]
) -> LabError:
    """Name the package apt complained about (or the first one that did not arrive)."""
    errors = [line.strip() for line in output.splitlines() if line.startswith("E:")]
    detail = errors[0] if errors else "apt-get download did not produce the file"
    culprit = next((u for u in chunk if f"'{u.package}'" in detail), None)
    culprit = culprit or (missing[0] if missing else chunk[0])
    return LabError(
        f"could not download {culprit.package}={culprit.candidate}: {detail}", hint=_APT_HINT
    )


def _choose_updates(
    installed: Mapping[str, tuple[str, str]], policy: Mapping[str, list[tuple[str, str]]]
) -> list[DebianUpdate]:
    """The highest Debian version per package, when it is newer than the installed one."""
    updates: list[DebianUpdate] = []
    for name in sorted(installed):
        version, arch = installed[name]
        best: tuple[Version, bool, str, str] | None = None
        for candidate, origin in policy.get(name, []):
            if origin not in DEBIAN_ORIGINS:
                continue
            # Same version in several suites: say Debian-Security, the more telling one.
            key = (Version(candidate), origin == "Debian-Security", candidate, origin)
            if best is None or key[:2] > best[:2]:
                best = key
        if best is not None and best[0] > Version(version):
            updates.append(DebianUpdate(name, arch, version, best[2], best[3]))
    return updates


def _release_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep:
            fields[key.strip()] = value
    return fields


def _origin_name(release: Mapping[str, str]) -> str:
    origin = release.get("o", "")
    if origin == "Debian" and release.get("l") == "Debian-Security":
        return "Debian-Security"
    return origin


def _suites(codename: str) -> set[str]:
    return {codename, f"{codename}-updates", f"{codename}-security"}


def _codename(root: Path) -> str | None:
    # /etc/os-release is usually a symlink; an absolute one would point at this machine's.
    for path in (root / "etc/os-release", root / "usr/lib/os-release"):
        if path.is_symlink() or not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "VERSION_CODENAME" and value.strip().strip("\"'"):
                return value.strip().strip("\"'")
    return None


def _apt_cache_policy(names: Sequence[str]) -> str:
    # LC_ALL=C: the parser relies on apt's untranslated section titles.
    return run(
        ["env", "LC_ALL=C", "apt-cache", "policy", *names],
        what="apt-cache policy",
        timeout=120,
    ).stdout


def _apt_name(name: str, arch: str, machine: str) -> str:
    return name if arch in ("all", machine) else f"{name}:{arch}"


def _machine_arch() -> str:
    return run(["dpkg", "--print-architecture"], what="dpkg --print-architecture").stdout.strip()


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        raise EnvironmentProblem(
            f"{tool} is not installed: it is how the lab finds real Debian updates",
            hint="install it with `apt-get install -y apt`, or run without --with-debian-updates",
        )
