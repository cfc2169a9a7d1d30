from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from debian.debian_support import Version

from patchpilot.errors import LabError
from patchpilot.lab import debian_updates as du
from patchpilot.lab.debian_updates import (
    DebianUpdate,
    find_debian_updates,
    installed_packages,
    parse_apt_cache_policy,
)

MANUAL_BASE = Path("/var/cache/patchpilot/lab/manual-base")

SECURITY = "http://deb.debian.org/debian-security bookworm-security/main amd64 Packages"
MAIN = "http://deb.debian.org/debian bookworm/main amd64 Packages"
UPDATES = "http://deb.debian.org/debian bookworm-updates/main amd64 Packages"
NODESOURCE = "https://deb.nodesource.com/node_20.x nodistro/main amd64 Packages"
BACKPORTS = "http://deb.debian.org/debian bookworm-backports/main amd64 Packages"

# `LC_ALL=C apt-cache policy` on a bookworm machine with nodesource, Google and backports.
GLOBAL_POLICY = f"""\
Package files:
 100 /var/lib/dpkg/status
     release a=now
 600 {NODESOURCE}
     release o=. nodistro,a=nodistro,n=nodistro,l=. nodistro,c=main,b=amd64
     origin deb.nodesource.com
 500 https://packages.cloud.google.com/apt cloud-sdk-bookworm/main amd64 Packages
     release o=cloud-sdk-bookworm,a=cloud-sdk-bookworm,n=cloud-sdk-bookworm,l=cloud-sdk-bookworm,c=main,b=amd64
     origin packages.cloud.google.com
 100 {BACKPORTS}
     release o=Debian Backports,a=oldstable-backports,n=bookworm-backports,l=Debian Backports,c=main,b=amd64
     origin deb.debian.org
 500 {SECURITY}
     release v=12,o=Debian,a=oldstable-security,n=bookworm-security,l=Debian-Security,c=main,b=amd64
     origin deb.debian.org
 500 {UPDATES}
     release v=12-updates,o=Debian,a=oldstable-updates,n=bookworm-updates,l=Debian,c=main,b=amd64
     origin deb.debian.org
 500 {MAIN}
     release v=12.11,o=Debian,a=oldstable,n=bookworm,l=Debian,c=main,b=amd64
     origin deb.debian.org
Pinned packages:
     nodejs -> 20.19.2-1nodesource1 with priority 600
"""  # noqa: E501 (captured output)

# `LC_ALL=C apt-cache policy libssl3 nodejs libfoo1 dpkg`.
PACKAGE_POLICY = f"""\
libssl3:
  Installed: 3.0.15-1~deb12u1
  Candidate: 3.0.17-1~deb12u2
  Version table:
     3.0.17-1~deb12u2 500
        500 {SECURITY}
     3.0.16-1~deb12u1 500
        500 {MAIN}
 *** 3.0.15-1~deb12u1 100
        100 /var/lib/dpkg/status
     3.0.11-1~deb12u2 500
        500 {UPDATES}
nodejs:
  Installed: 18.19.0+dfsg-6~deb12u2
  Candidate: 20.19.2-1nodesource1
  Version table:
     20.19.2-1nodesource1 600
        600 {NODESOURCE}
     18.20.4+dfsg-1~deb12u1 500
        500 {SECURITY}
 *** 18.19.0+dfsg-6~deb12u2 500
        500 {MAIN}
        100 /var/lib/dpkg/status
libfoo1:
  Installed: (none)
  Candidate: (none)
  Version table:
dpkg:
  Installed: 1.21.22
  Candidate: 1.21.22
  Version table:
 *** 1.21.22 500
        500 {MAIN}
        100 /var/lib/dpkg/status
"""


def test_parse_policy_with_global_section_maps_origins() -> None:
    parsed = parse_apt_cache_policy(GLOBAL_POLICY + PACKAGE_POLICY)

    assert parsed == {
        "libssl3": [
            ("3.0.17-1~deb12u2", "Debian-Security"),
            ("3.0.16-1~deb12u1", "Debian"),
            ("3.0.11-1~deb12u2", "Debian"),
        ],
        "nodejs": [
            ("20.19.2-1nodesource1", ". nodistro"),
            ("18.20.4+dfsg-1~deb12u1", "Debian-Security"),
            ("18.19.0+dfsg-6~deb12u2", "Debian"),
        ],
        "libfoo1": [],
        "dpkg": [("1.21.22", "Debian")],
    }


def test_parse_policy_without_origins_gives_unknown_origin() -> None:
    parsed = parse_apt_cache_policy(PACKAGE_POLICY)

    assert parsed["libssl3"][0] == ("3.0.17-1~deb12u2", "")
    # The locally installed version is a source only through the dpkg status file.
    assert ("3.0.15-1~deb12u1", "") not in parsed["libssl3"]


def test_parse_policy_multiarch_header_and_explicit_origins() -> None:
    text = (
        "libc6:i386:\n  Installed: (none)\n  Candidate: 2.36-9\n  Version table:\n"
        f"     2.36-9 500\n        500 {MAIN}\n"
    )

    assert parse_apt_cache_policy(text, origins={MAIN: "Debian"}) == {
        "libc6:i386": [("2.36-9", "Debian")]
    }


def test_parse_package_files_release_fields() -> None:
    files = du.parse_package_files(GLOBAL_POLICY + PACKAGE_POLICY)

    assert files[SECURITY]["l"] == "Debian-Security"
    assert files[MAIN]["n"] == "bookworm"
    assert files[NODESOURCE]["o"] == ". nodistro"
    assert "/var/lib/dpkg/status" in files
    # Package sections after the global one add nothing.
    assert len(files) == 7


@pytest.mark.parametrize(
    ("low", "high"),
    [("1.2-1", "1.10-1"), ("2.0", "1:0.9"), ("3.0.11-1~deb12u2", "3.0.11-1")],
)
def test_highest_debian_version_uses_debian_ordering(low: str, high: str) -> None:
    assert Version(high) > Version(low)
    policy = {"pkg": [(low, "Debian"), (high, "Debian-Security")]}
    for installed in ("0.1", low):
        [update] = du._choose_updates({"pkg": (installed, "amd64")}, policy)
        assert (update.candidate, update.origin) == (high, "Debian-Security")
    # Listed in the other order, the answer is the same.
    [update] = du._choose_updates({"pkg": ("0.1", "amd64")}, {"pkg": policy["pkg"][::-1]})
    assert update.candidate == high


def test_third_party_and_unknown_origins_are_ignored() -> None:
    parsed = parse_apt_cache_policy(GLOBAL_POLICY + PACKAGE_POLICY)
    parsed["dpkg"].append(("1.99", ""))  # unknown source: never trusted
    installed = {
        "nodejs": ("18.19.0+dfsg-6~deb12u2", "amd64"),
        "libssl3": ("3.0.15-1~deb12u1", "amd64"),
        "dpkg": ("1.21.22", "amd64"),
        "libfoo1": ("1.0", "amd64"),
    }

    updates = du._choose_updates(installed, parsed)

    assert updates == [
        DebianUpdate("libssl3", "amd64", "3.0.15-1~deb12u1", "3.0.17-1~deb12u2", "Debian-Security"),
        DebianUpdate(
            "nodejs", "amd64", "18.19.0+dfsg-6~deb12u2", "18.20.4+dfsg-1~deb12u1", "Debian-Security"
        ),
    ]


def test_no_update_when_installed_is_newest() -> None:
    policy = {"pkg": [("3.0.11-1~deb12u2", "Debian")]}
    assert du._choose_updates({"pkg": ("3.0.11-1", "amd64")}, policy) == []


def test_find_debian_updates_wiring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").write_text('ID=debian\nVERSION_CODENAME="bookworm"\n')
    installed = {
        "libssl3": ("3.0.15-1~deb12u1", "amd64"),
        "nodejs": ("18.19.0+dfsg-6~deb12u2", "amd64"),
        "dpkg": ("1.21.22", "amd64"),
        "libc6": ("2.36-9", "i386"),
        "tzdata": ("2025a-0+deb12u1", "all"),
    }
    calls: list[list[str]] = []

    def fake_run(cmd: Sequence[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        if cmd[0] == "dpkg":
            out = "amd64\n"
        elif cmd[-1] == "policy":
            out = GLOBAL_POLICY
        else:
            out = PACKAGE_POLICY + (
                f"libc6:i386:\n  Installed: (none)\n  Candidate: 2.36-9+deb12u1\n"
                f"  Version table:\n     2.36-9+deb12u1 500\n        500 {MAIN}\n"
                # Backports say o=Debian too but are not updates of the release.
                f"tzdata:\n  Installed: (none)\n  Candidate: 2025b-0+deb12u1\n"
                f"  Version table:\n     2099a-1~bpo12+1 100\n        100 {BACKPORTS}\n"
                f"     2025b-0+deb12u1 500\n        500 {UPDATES}\n"
            )
        return subprocess.CompletedProcess(list(cmd), 0, out, "")

    monkeypatch.setattr(du, "run", fake_run)
    monkeypatch.setattr(du, "_require", lambda tool: None)
    monkeypatch.setattr(du, "installed_packages", lambda root: installed)
    monkeypatch.setattr(du, "POLICY_CHUNK", 2)

    updates = find_debian_updates(tmp_path)

    assert [(u.package, u.arch, u.candidate, u.origin) for u in updates] == [
        ("libc6", "i386", "2.36-9+deb12u1", "Debian"),
        ("libssl3", "amd64", "3.0.17-1~deb12u2", "Debian-Security"),
        ("nodejs", "amd64", "18.20.4+dfsg-1~deb12u1", "Debian-Security"),
        ("tzdata", "all", "2025b-0+deb12u1", "Debian"),
    ]
    policy_calls = [c for c in calls if "apt-cache" in c and c[-1] != "policy"]
    assert len(policy_calls) == 3  # 5 names in chunks of 2
    assert any("libc6:i386" in c for c in policy_calls)

    assert [u.package for u in find_debian_updates(tmp_path, only=["tzdata", "zzz"])] == ["tzdata"]


def test_download_skips_present_files_and_names_failing_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ok = DebianUpdate("passwd", "amd64", "1:4.13-1", "1:4.13-2", "Debian")
    bad = DebianUpdate("libc6", "i386", "2.36-9", "2.36-10", "Debian")
    dest = tmp_path / "debs"
    calls: list[list[str]] = []

    def fake_run(cmd: Sequence[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        if cmd[0] == "dpkg":
            return subprocess.CompletedProcess(list(cmd), 0, "amd64\n", "")
        assert cmd[:3] == ["env", "-C", str(dest)]
        if any(arg.startswith("libc6") for arg in cmd):
            err = "E: Version '2.36-10' for 'libc6' was not found\n"
            return subprocess.CompletedProcess(list(cmd), 100, "", err)
        (dest / ok.filename).write_bytes(b"deb")
        return subprocess.CompletedProcess(list(cmd), 0, "", "")

    monkeypatch.setattr(du, "run", fake_run)
    monkeypatch.setattr(du, "_require", lambda tool: None)

    assert du.download_debian_updates([ok], dest) == [dest / "passwd_1%3a4.13-2_amd64.deb"]
    assert calls[-1][-1] == "passwd=1:4.13-2"
    calls.clear()
    assert du.download_debian_updates([ok], dest) == [dest / ok.filename]
    assert [c[0] for c in calls] == ["dpkg"]  # nothing downloaded again

    with pytest.raises(LabError) as info:
        du.download_debian_updates([ok, bad], dest)
    assert "libc6=2.36-10" in info.value.message
    assert "\n" not in info.value.message
    assert info.value.hint and "apt-get update" in info.value.hint
    assert calls[-1][-1] == "libc6:i386=2.36-10"


_STANZA = """\
Package: {name}
Status: {status}
Priority: optional
Maintainer: Lab <lab@example.org>
Architecture: {arch}
Version: {version}
Description: test package {name}

"""


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg-query")
def test_installed_packages_reads_fake_dpkg_database(tmp_path: Path) -> None:
    admin = tmp_path / "var/lib/dpkg"
    (admin / "info").mkdir(parents=True)
    (admin / "available").write_text("")
    (admin / "status").write_text(
        _STANZA.format(name="libfoo1", status="install ok installed", arch="amd64", version="1:0.9")
        + _STANZA.format(
            name="tzdata", status="install ok installed", arch="all", version="2025b-0"
        )
        + _STANZA.format(
            name="oldpkg", status="deinstall ok config-files", arch="amd64", version="1"
        )
    )

    assert installed_packages(tmp_path) == {
        "libfoo1": ("1:0.9", "amd64"),
        "tzdata": ("2025b-0", "all"),
    }


def test_installed_packages_without_dpkg_database(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="no dpkg database"):
        installed_packages(tmp_path)


@pytest.mark.skipif(
    shutil.which("apt-cache") is None or not (MANUAL_BASE / "var/lib/dpkg/status").is_file(),
    reason="needs apt-cache and the manual base image",
)
def test_find_debian_updates_on_manual_base() -> None:
    updates = find_debian_updates(MANUAL_BASE)

    assert updates == sorted(updates, key=lambda u: u.package)
    assert len({u.package for u in updates}) == len(updates)
    for update in updates:
        assert Version(update.candidate) > Version(update.installed), update
        assert update.origin in {"Debian", "Debian-Security"}, update
