"""The demo HTTP service the lab fleet patches, packaged as real .deb files.

Tests need patches that are good, that break the service, that break dpkg, and that are merely
slow; building them as genuine Debian packages means apt, dpkg, systemd and the health gates
all see exactly what they would see in production.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import tempfile
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from enum import StrEnum
from pathlib import Path

from debian.debian_support import Version

from patchpilot.errors import BadInputError, EnvironmentProblem
from patchpilot.lab.system import run

DEMO_PACKAGE = "demoweb"
DEMO_PORT = 8080

_MAINTAINER = "patchpilot lab <lab@patchpilot.invalid>"
_DISTRIBUTION = "bookworm"

# The oldest changelog entry is dated here; each later one a day on, so dates depend only on input.
_CHANGELOG_BASE_DATE = datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC)
# Keeps a typo (or a unit mix-up) from making a "slow" version that never answers a health gate.
_MAX_LATENCY_MS = 60_000
# Strict on purpose: the version ends up in file names, shell-facing paths and generated code.
_VERSION_RE = re.compile(r"(?:[0-9]+:)?[0-9][0-9A-Za-z.+~-]*")
_MAX_VERSION_LEN = 64
_SPEC_HINT = (
    "use VERSION[:BEHAVIOUR], e.g. '1.4-1', '1.4-1:http500', '1.4-1:install-fails', "
    "'1.5-1:slow=300', '1.7-1:install-hangs=30'"
)

_SERVER_PATH = f"usr/lib/{DEMO_PACKAGE}/server.py"
_UNIT_PATH = f"lib/systemd/system/{DEMO_PACKAGE}.service"
_DOC_DIR = f"usr/share/doc/{DEMO_PACKAGE}"


class Behaviour(StrEnum):
    """How a demo version behaves once installed; each models one kind of patch outcome."""

    OK = "ok"
    HTTP500 = "http500"
    INSTALL_FAILS = "install-fails"
    SLOW = "slow"
    INSTALL_HANGS = "install-hangs"


# Bad patches claim high urgency, as the real ones that slip through usually do.
_URGENCY: dict[Behaviour, str] = {
    Behaviour.OK: "medium",
    Behaviour.HTTP500: "high",
    Behaviour.INSTALL_FAILS: "high",
    Behaviour.SLOW: "low",
    Behaviour.INSTALL_HANGS: "medium",
}
# A postinst that hangs longer than this is no test of a timeout, just a stuck lab.
_MAX_HANG_S = 600


@dataclass(frozen=True)
class DemoVersion:
    """One buildable demo release; the version is checked when built, since it may be typed in."""

    version: str
    behaviour: Behaviour = Behaviour.OK
    latency_ms: int = 0
    hang_s: int = 0  # install-hangs: how long its postinst sleeps before configuring

    def __post_init__(self) -> None:
        # Accept plain strings so callers can pass "slow" as read from a file.
        object.__setattr__(self, "behaviour", Behaviour(self.behaviour))
        if self.behaviour is Behaviour.SLOW:
            if not 0 < self.latency_ms <= _MAX_LATENCY_MS:
                raise ValueError(
                    f"latency_ms must be between 1 and {_MAX_LATENCY_MS} for a slow version, "
                    f"got {self.latency_ms}"
                )
        elif self.latency_ms != 0:
            raise ValueError(f"latency_ms only applies to slow versions, got {self.latency_ms}")
        if self.behaviour is Behaviour.INSTALL_HANGS:
            if not 0 < self.hang_s <= _MAX_HANG_S:
                raise ValueError(f"hang_s must be between 1 and {_MAX_HANG_S}, got {self.hang_s}")
        elif self.hang_s != 0:
            raise ValueError(f"hang_s only applies to install-hangs versions, got {self.hang_s}")


def _describe(demo: DemoVersion) -> str:
    """Say what this version does, for package descriptions and changelogs."""
    match demo.behaviour:
        case Behaviour.OK:
            return "serves HTTP 200 with a JSON status document"
        case Behaviour.HTTP500:
            return "starts, but every request answers HTTP 500 (simulated bad patch)"
        case Behaviour.INSTALL_FAILS:
            return "postinst fails on configure (simulated broken package)"
        case Behaviour.SLOW:
            return f"every response is delayed by {demo.latency_ms} ms (simulated slowdown)"
        case Behaviour.INSTALL_HANGS:
            return (
                f"postinst hangs for {demo.hang_s} s before configuring (simulated stuck install)"
            )
    raise AssertionError(demo.behaviour)  # pragma: no cover - match is exhaustive


DEFAULT_DEMO_VERSIONS: tuple[DemoVersion, ...] = (
    DemoVersion("1.0-1"),
    DemoVersion("1.1-1"),
    DemoVersion("1.2-1", Behaviour.HTTP500),
    DemoVersion("1.3-1", Behaviour.INSTALL_FAILS),
)


def _check_version(version: str) -> Version:
    """Refuse anything dpkg would reject or that is unsafe in a path or a script."""
    problem = None
    if not version:
        problem = "is empty"
    elif len(version) > _MAX_VERSION_LEN:
        problem = f"is longer than {_MAX_VERSION_LEN} characters"
    elif not _VERSION_RE.fullmatch(version) or version.endswith("-"):
        problem = "is not a Debian version"
    if problem is None:
        try:
            return Version(version)
        except ValueError:
            problem = "is not a Debian version"
    raise BadInputError(
        f"demo version {version!r} {problem}",
        hint="use [EPOCH:]UPSTREAM[-REVISION] made of digits, letters and . + ~ -, "
        "starting with a digit, e.g. '1.4-1'",
    )


def _in_range(arg: str, high: int) -> bool:
    """`arg` is a whole number (ASCII digits only) from 1 to `high`."""
    return arg.isascii() and arg.isdigit() and 0 < int(arg) <= high


def parse_demo_spec(spec: str) -> DemoVersion:
    """Turn a command-line spec into a DemoVersion, so users can ask for any patch shape."""
    text = spec.strip()
    if not text:
        raise BadInputError("empty demo version spec", hint=_SPEC_HINT)
    # Behaviours start with a letter and versions with a digit, which keeps an epoch's
    # colon ("1:1.4-1") apart from the behaviour separator ("1.4-1:slow=300").
    head, sep, tail = text.rpartition(":")
    if sep and tail[:1].isalpha():
        version, behaviour_text = head, tail
    else:
        version, behaviour_text = text, ""
    _check_version(version)
    if not behaviour_text:
        return DemoVersion(version)

    name, eq, arg = behaviour_text.partition("=")
    try:
        behaviour = Behaviour(name)
    except ValueError:
        known = ", ".join(b.value for b in Behaviour)
        raise BadInputError(
            f"unknown demo behaviour {name!r} in {spec!r}", hint=f"choose one of: {known}"
        ) from None
    if behaviour is Behaviour.INSTALL_HANGS:
        if not _in_range(arg, _MAX_HANG_S):
            raise BadInputError(
                f"install-hangs needs whole seconds from 1 to {_MAX_HANG_S} in {spec!r}",
                hint="e.g. '1.7-1:install-hangs=30'",
            )
        return DemoVersion(version, behaviour, hang_s=int(arg))
    if behaviour is not Behaviour.SLOW:
        if eq:
            raise BadInputError(f"behaviour {name!r} takes no value in {spec!r}", hint=_SPEC_HINT)
        return DemoVersion(version, behaviour)
    if not eq or not arg:
        raise BadInputError(
            f"slow needs a latency in milliseconds in {spec!r}", hint="e.g. '1.5-1:slow=300'"
        )
    if not _in_range(arg, _MAX_LATENCY_MS):
        raise BadInputError(
            f"slow latency {arg!r} in {spec!r} is not a whole number of milliseconds "
            f"from 1 to {_MAX_LATENCY_MS}",
            hint="e.g. '1.5-1:slow=300'",
        )
    return DemoVersion(version, behaviour, int(arg))


def _deb_filename(version: str) -> str:
    """Name the .deb as dpkg-name would: the epoch never appears in file names."""
    upstream = version.split(":", 1)[1] if ":" in version else version
    return f"{DEMO_PACKAGE}_{upstream}_all.deb"


def build_demo_deb(demo: DemoVersion, outdir: Path) -> Path:
    """Build the package in a throwaway staging tree so a failed build leaves nothing behind."""
    _check_version(demo.version)
    if shutil.which("dpkg-deb") is None:
        raise EnvironmentProblem(
            "dpkg-deb is needed to build the demo packages", hint="apt-get install -y dpkg"
        )
    entries = _changelog_versions(demo)
    # Debian's convention: the build is as old as the newest changelog entry.
    build_time = int(_entry_date(len(entries) - 1).timestamp())

    outdir.mkdir(parents=True, exist_ok=True)
    target = outdir / _deb_filename(demo.version)
    with tempfile.TemporaryDirectory(prefix="demoweb-build-") as tmp:
        # A subdirectory, because TemporaryDirectory is 0700 and becomes "./" in the package.
        root = Path(tmp) / "root"
        _stage(demo, entries, root, build_time)
        partial = outdir / f".{target.name}.partial"
        try:
            run(
                [
                    "env",
                    f"SOURCE_DATE_EPOCH={build_time}",
                    "dpkg-deb",
                    "--root-owner-group",
                    "-Zxz",
                    "--build",
                    str(root),
                    str(partial),
                ],
                what=f"building {DEMO_PACKAGE} {demo.version}",
            )
            # Atomic, so a repository scan never picks up half a package.
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return target


def _changelog_versions(demo: DemoVersion) -> list[DemoVersion]:
    """Oldest first: the default versions older than this one, then this one."""
    this = Version(demo.version)
    older = [d for d in DEFAULT_DEMO_VERSIONS if Version(d.version) < this]
    return [*sorted(older, key=lambda d: Version(d.version)), demo]


def _entry_date(index: int) -> datetime:
    return _CHANGELOG_BASE_DATE + timedelta(days=index)


def _changelog(entries: list[DemoVersion]) -> str:
    blocks = []
    for index, entry in reversed(list(enumerate(entries))):
        item = textwrap.fill(
            f"Behaviour {entry.behaviour.value}: {_describe(entry)}.",
            width=78,
            initial_indent="  * ",
            subsequent_indent="    ",
        )
        blocks.append(
            f"{DEMO_PACKAGE} ({entry.version}) {_DISTRIBUTION}; "
            f"urgency={_URGENCY[entry.behaviour]}\n"
            f"\n{item}\n\n"
            f" -- {_MAINTAINER}  {format_datetime(_entry_date(index))}\n"
        )
    return "\n".join(blocks)


def _stage(demo: DemoVersion, entries: list[DemoVersion], root: Path, build_time: int) -> None:
    """Lay out the package tree with explicit modes, so the umask never leaks into the .deb."""
    files: dict[str, tuple[bytes, int]] = {
        _SERVER_PATH: (_server_source(demo).encode(), 0o644),
        _UNIT_PATH: (_unit_file().encode(), 0o644),
        f"{_DOC_DIR}/changelog.Debian.gz": (
            gzip.compress(_changelog(entries).encode(), compresslevel=9, mtime=0),
            0o644,
        ),
        f"{_DOC_DIR}/copyright": (_COPYRIGHT.encode(), 0o644),
    }
    for rel, (data, mode) in files.items():
        _write(root / rel, data, mode)

    debian = root / "DEBIAN"
    for name, script in _maintainer_scripts(demo).items():
        _write(debian / name, script.encode(), 0o755)
    md5sums = "".join(
        f"{hashlib.md5(data, usedforsecurity=False).hexdigest()}  {rel}\n"
        for rel, (data, _) in sorted(files.items())
    )
    _write(debian / "md5sums", md5sums.encode(), 0o644)
    installed_kib = sum(-(-len(data) // 1024) for data, _ in files.values())
    _write(debian / "control", _control(demo, installed_kib).encode(), 0o644)

    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
        os.utime(path, (build_time, build_time))


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _control(demo: DemoVersion, installed_kib: int) -> str:
    return (
        f"Package: {DEMO_PACKAGE}\n"
        f"Version: {demo.version}\n"
        "Architecture: all\n"
        f"Maintainer: {_MAINTAINER}\n"
        f"Installed-Size: {installed_kib}\n"
        "Depends: python3\n"
        "Section: web\n"
        "Priority: optional\n"
        f"Description: patchpilot lab demo HTTP service ({demo.behaviour.value})\n"
        + textwrap.fill(
            f"A tiny python3 web service on port {DEMO_PORT} that the patchpilot lab uses to "
            f"model patch outcomes. This version {_describe(demo)}.",
            width=79,
            initial_indent=" ",
            subsequent_indent=" ",
        )
        + "\n"
    )


def _unit_file() -> str:
    return (
        "[Unit]\n"
        f"Description={DEMO_PACKAGE}, the patchpilot lab demo HTTP service\n"
        "After=network.target\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart=/usr/bin/python3 /{_SERVER_PATH}\n"
        "Restart=on-failure\n"
        "RestartSec=1\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


# Runtime actions need a booted systemd; enable/disable work offline, so a chroot install
# (an image being built) still comes up enabled at the next boot.
_SYSTEMD_BOOTED = "[ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1"
_HAVE_SYSTEMCTL = "command -v systemctl >/dev/null 2>&1"
_UNIT = f"{DEMO_PACKAGE}.service"


def _maintainer_scripts(demo: DemoVersion) -> dict[str, str]:
    if demo.behaviour is Behaviour.INSTALL_FAILS:
        postinst_configure = (
            f'        echo "{DEMO_PACKAGE} {demo.version}: simulated configuration failure" >&2\n'
            "        exit 1\n"
        )
    else:
        postinst_configure = (
            f"        sleep {demo.hang_s}\n" if demo.behaviour is Behaviour.INSTALL_HANGS else ""
        ) + (
            f"        if {_SYSTEMD_BOOTED}; then\n"
            "            systemctl daemon-reload\n"
            f"            systemctl enable {_UNIT}\n"
            f"            systemctl restart {_UNIT}\n"
            f"        elif {_HAVE_SYSTEMCTL}; then\n"
            f"            systemctl enable {_UNIT} || true\n"
            "        fi\n"
        )
    header = f"#!/bin/sh\n# {DEMO_PACKAGE} {demo.version} ({demo.behaviour.value})\nset -e\n\n"
    postinst = (
        f'{header}case "$1" in\n    configure)\n{postinst_configure}        ;;\nesac\n\nexit 0\n'
    )
    # On upgrade the new version's postinst restarts the service, so only stop on removal.
    prerm = (
        f'{header}case "$1" in\n'
        "    remove|deconfigure)\n"
        f"        if {_SYSTEMD_BOOTED}; then\n"
        f"            systemctl stop {_UNIT} || true\n"
        "        fi\n"
        "        ;;\n"
        "esac\n\nexit 0\n"
    )
    # The unit file is already gone at purge, so disable may fail: drop the symlink by hand too.
    postrm = (
        f'{header}case "$1" in\n'
        "    remove)\n"
        f"        if {_SYSTEMD_BOOTED}; then\n"
        "            systemctl daemon-reload || true\n"
        "        fi\n"
        "        ;;\n"
        "    purge)\n"
        f"        if {_HAVE_SYSTEMCTL}; then\n"
        f"            systemctl disable {_UNIT} || true\n"
        "        fi\n"
        f"        rm -f /etc/systemd/system/multi-user.target.wants/{_UNIT}\n"
        f"        if [ -d /etc/{DEMO_PACKAGE} ]; then\n"
        f"            rm -rf /etc/{DEMO_PACKAGE}\n"
        "        fi\n"
        f"        if {_SYSTEMD_BOOTED}; then\n"
        "            systemctl daemon-reload || true\n"
        "        fi\n"
        "        ;;\n"
        "esac\n\nexit 0\n"
    )
    return {"postinst": postinst, "prerm": prerm, "postrm": postrm}


_COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: demoweb
Source: generated by patchpilot (patchpilot.lab.demo)

Files: *
Copyright: patchpilot authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 can be found in
 /usr/share/common-licenses/Apache-2.0.
"""

# Stays runnable by the lab's bookworm python3 (3.11) with the stdlib only. The environment
# overrides exist so tests can run it on a free loopback port outside a container.
_SERVER_TEMPLATE = '''\
#!/usr/bin/python3
"""@PACKAGE@ @VERSION_TEXT@: the patchpilot lab demo HTTP service (behaviour: @BEHAVIOUR_TEXT@)."""

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVICE = @PACKAGE_REPR@
VERSION = @VERSION@
BEHAVIOUR = @BEHAVIOUR@
LATENCY_MS = @LATENCY_MS@
DEFAULT_PORT = @PORT@
DEFAULT_BIND = "0.0.0.0"


class Handler(BaseHTTPRequestHandler):
    server_version = SERVICE + "/" + VERSION

    def _respond(self, send_body):
        if LATENCY_MS:
            time.sleep(LATENCY_MS / 1000.0)
        if BEHAVIOUR == "http500":
            status = 500
            doc = {
                "service": SERVICE,
                "version": VERSION,
                "status": "error",
                "error": "simulated internal error",
            }
        else:
            status = 200
            doc = {"service": SERVICE, "version": VERSION, "status": "ok"}
        body = (json.dumps(doc) + "\\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def do_GET(self):
        self._respond(True)

    def do_HEAD(self):
        self._respond(False)


def main():
    bind = os.environ.get("DEMOWEB_BIND", DEFAULT_BIND)
    try:
        port = int(os.environ.get("DEMOWEB_PORT", DEFAULT_PORT))
    except ValueError:
        sys.stderr.write("%s: DEMOWEB_PORT must be a number\\n" % SERVICE)
        return 2
    httpd = ThreadingHTTPServer((bind, port), Handler)
    sys.stderr.write(
        "%s %s (%s) listening on %s:%d\\n" % (SERVICE, VERSION, BEHAVIOUR, bind, port)
    )
    sys.stderr.flush()
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


def _server_source(demo: DemoVersion) -> str:
    replacements = {
        "@PACKAGE_REPR@": repr(DEMO_PACKAGE),
        "@PACKAGE@": DEMO_PACKAGE,
        "@VERSION_TEXT@": demo.version,
        "@BEHAVIOUR_TEXT@": demo.behaviour.value,
        "@VERSION@": repr(demo.version),
        "@BEHAVIOUR@": repr(demo.behaviour.value),
        "@LATENCY_MS@": str(demo.latency_ms),
        "@PORT@": str(DEMO_PORT),
    }
    source = _SERVER_TEMPLATE
    for token, value in replacements.items():
        source = source.replace(token, value)
    return source
