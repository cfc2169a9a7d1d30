"""The pure functions of the `patchpilot_pending` Ansible module (runs on managed hosts).

The module file is imported as a plain Python file; its parsers are fed real Debian changelogs
from this machine and realistic dnf / zypper output. Version order is Debian's own
(python-debian), and python-debian's changelog parser is the independent oracle for the
real changelogs.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import time
from datetime import datetime
from email.utils import parsedate_to_datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from debian.changelog import Changelog
from debian.debian_support import Version

from tests.unit.host_modules import LIBRARY, load

MODULE_PATH = LIBRARY / "patchpilot_pending.py"
pp = load("patchpilot_pending")


def debcmp(a: str, b: str) -> int:
    """Debian version comparison, <0, 0 or >0 like apt_pkg.version_compare."""
    va, vb = Version(a), Version(b)
    return (va > vb) - (va < vb)


# ---- parse_changelog on the real changelogs of this machine ----------------------------
REAL_CHANGELOGS = {
    "libssl3": Path("/usr/share/doc/libssl3/changelog.Debian.gz"),
    "openssh-client": Path("/usr/share/doc/openssh-client/changelog.Debian.gz"),
}


def _real_changelog(package: str) -> str:
    path = REAL_CHANGELOGS[package]
    if not path.exists():
        pytest.skip(f"{path} is not installed on this machine")
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


@pytest.fixture(params=sorted(REAL_CHANGELOGS))
def real_changelog(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param, _real_changelog(request.param)


def test_real_changelog_entries_match_python_debian(real_changelog: tuple[str, str]) -> None:
    _, text = real_changelog
    entries = pp.parse_changelog(text)
    oracle = list(Changelog(text))
    assert len(entries) > 5
    assert [e["version"] for e in entries] == [str(b.version) for b in oracle]
    assert [e["package"] for e in entries] == [b.package for b in oracle]
    assert [e["urgency"] for e in entries] == [b.urgency.lower() for b in oracle]
    assert all(e["urgency"] in pp.URGENCY_RANK for e in entries)


def test_real_changelog_versions_are_in_order(real_changelog: tuple[str, str]) -> None:
    package, text = real_changelog
    versions = [e["version"] for e in pp.parse_changelog(text)]
    # Newest first, strictly decreasing in Debian order.
    assert all(debcmp(a, b) > 0 for a, b in pairwise(versions))
    dpkg_query = shutil.which("dpkg-query")
    if dpkg_query:
        installed = subprocess.run(
            [dpkg_query, "-W", "-f", "${Version}", package],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if installed:  # the top entry is the installed version (a binNMU only adds +bN)
            assert installed == versions[0] or installed.startswith(versions[0] + "+b")


def test_real_changelog_dates_are_iso(real_changelog: tuple[str, str]) -> None:
    _, text = real_changelog
    entries = pp.parse_changelog(text)
    oracle = list(Changelog(text))
    for entry, ref in zip(entries, oracle, strict=True):
        assert isinstance(entry["date"], str)
        parsed = datetime.fromisoformat(entry["date"])
        assert parsed.tzinfo is not None
        assert parsed == parsedate_to_datetime(ref.date)
        assert 1995 <= parsed.year <= datetime.now().year + 1


def test_real_changelog_bodies_are_the_text_between_header_and_trailer(
    real_changelog: tuple[str, str],
) -> None:
    _, text = real_changelog
    entries = pp.parse_changelog(text)
    oracle = list(Changelog(text))
    for entry, ref in zip(entries, oracle, strict=True):
        body = entry["body"]
        assert body.strip() == "\n".join(ref.changes()).strip()
        assert body.strip(), entry["version"]
        assert not pp.HEADER_RE.match(body.splitlines()[0] if body else "")
        assert not any(line.startswith(" -- ") for line in body.splitlines())
    # The text itself: every change line of the top entry is in its body.
    for line in oracle[0].changes():
        if line.strip():
            assert line in entries[0]["body"]


def test_real_changelog_facts_since_an_older_entry(real_changelog: tuple[str, str]) -> None:
    _, text = real_changelog
    entries = pp.parse_changelog(text)
    oracle = list(Changelog(text))
    k = 4
    facts = pp.changelog_facts(text, entries[k]["version"], entries[0]["version"], debcmp)
    assert facts["changelog_entries"] == k
    expected_cves = {c for b in oracle[:k] for c in pp.CVE_RE.findall("\n".join(b.changes()))}
    assert set(facts["cve_ids"]) == expected_cves
    assert len(facts["cve_ids"]) == len(expected_cves)
    assert facts["urgency"] == max(
        (b.urgency.lower() for b in oracle[:k]), key=pp.URGENCY_RANK.__getitem__
    )
    newest = max(parsedate_to_datetime(b.date) for b in oracle[:k])
    assert datetime.fromisoformat(facts["changelog_date"]) == newest


def test_is_debian_changelog_on_real_text(real_changelog: tuple[str, str]) -> None:
    _, text = real_changelog
    assert pp.is_debian_changelog(text)
    assert pp.is_debian_changelog("\n\n" + text)


# ---- parse_changelog edge cases ---------------------------------------------------------
EDGE_CHANGELOG = """\
foo (1:2.3-1) unstable; urgency=high, binary-only=yes

  * Binary-only non-maintainer upload; fixes CVE-2024-12345.

 -- Build Daemon <buildd@example.org>  Tue, 02 Jan 2024 10:00:00 +0000

foo (2.2-1) unstable; urgency=medium, binary-only=yes

  * An entry whose trailer line was lost.

foo (2.1-1) unstable; urgency=low

  * An entry with a mangled date.

 -- Jane Doe <jane@example.org>  yesterday around noon

foo (2.0-1) unstable; urgency=emergency (fixes a regression)

  * Initial release.

 -- Jane Doe <jane@example.org>  Mon, 01 Jan 2024 09:00:00 +0100
"""


def test_edge_changelog_headers() -> None:
    entries = pp.parse_changelog(EDGE_CHANGELOG)
    assert [e["version"] for e in entries] == ["1:2.3-1", "2.2-1", "2.1-1", "2.0-1"]
    assert [e["package"] for e in entries] == ["foo"] * 4
    assert [e["urgency"] for e in entries] == ["high", "medium", "low", "emergency"]


def test_edge_changelog_epoch_version_and_date() -> None:
    first = pp.parse_changelog(EDGE_CHANGELOG)[0]
    assert first["version"] == "1:2.3-1"
    assert first["date"] == "2024-01-02T10:00:00+00:00"
    assert "fixes CVE-2024-12345." in first["body"]
    assert "Build Daemon" not in first["body"]


def test_edge_changelog_entry_without_trailer() -> None:
    entries = pp.parse_changelog(EDGE_CHANGELOG)
    no_trailer = entries[1]
    assert no_trailer["date"] is None
    assert "An entry whose trailer line was lost." in no_trailer["body"]
    # The next header still starts a new entry.
    assert "foo (2.1-1)" not in no_trailer["body"]
    assert entries[2]["body"].strip() == "* An entry with a mangled date."


def test_edge_changelog_unparsable_trailer_date() -> None:
    entries = pp.parse_changelog(EDGE_CHANGELOG)
    mangled = entries[2]
    assert mangled["date"] is None
    assert "yesterday" not in mangled["body"]  # the trailer ends the entry all the same
    assert entries[3]["date"] == "2024-01-01T09:00:00+01:00"


def test_header_without_urgency() -> None:
    text = (
        "foo (1.0-1) unstable; binary-only=yes\n\n  * x\n\n"
        " -- A <a@b.c>  Mon, 01 Jan 2024 09:00:00 +0000\n"
    )
    [entry] = pp.parse_changelog(text)
    assert entry["urgency"] is None
    assert entry["date"] == "2024-01-01T09:00:00+00:00"


def test_parse_changelog_empty_and_preamble() -> None:
    assert pp.parse_changelog("") == []
    assert pp.parse_changelog("not a changelog\n  * really not\n") == []


def test_is_debian_changelog_rejects_other_text() -> None:
    gnu_style = "2024-01-02  Jane Doe  <jane@example.org>\n\n\t* foo.c (main): Fix.\n"
    assert not pp.is_debian_changelog(gnu_style)
    assert not pp.is_debian_changelog("")
    assert not pp.is_debian_changelog("\n   \n")
    assert not pp.is_debian_changelog("Version 3.0.11\n- fixed things\n")


# ---- changelog_facts --------------------------------------------------------------------
FACTS_CHANGELOG = """\
openssl (3.0.15-1~deb12u1) bookworm-security; urgency=critical

  * Entry above the candidate: CVE-2024-55555 must not be counted.

 -- Sebastian Andrzej Siewior <sebastian@breakpoint.cc>  Sat, 05 Oct 2024 10:00:00 +0200

openssl (3.0.14-1~deb12u2) bookworm-security; urgency=high

  * CVE-2024-10000 (out-of-bounds read)
  * CVE-2025-1000 (an id from next year)
  * CVE-2024-9999, again CVE-2024-10000 in another sentence.

 -- Sebastian Andrzej Siewior <sebastian@breakpoint.cc>  Mon, 02 Sep 2024 20:00:00 +0200

openssl (3.0.14-1~deb12u1) bookworm; urgency=low

  * Import 3.0.14; fixes CVE-2024-9999.

 -- Sebastian Andrzej Siewior <sebastian@breakpoint.cc>  Sat, 03 Aug 2024 11:00:00 +0200

openssl (3.0.13-1~deb12u1) bookworm; urgency=emergency

  * Installed version: CVE-2023-5678 is already fixed here.

 -- Sebastian Andrzej Siewior <sebastian@breakpoint.cc>  Sun, 04 Feb 2024 12:00:00 +0100
"""


def test_changelog_facts_between_installed_and_candidate() -> None:
    facts = pp.changelog_facts(FACTS_CHANGELOG, "3.0.13-1~deb12u1", "3.0.14-1~deb12u2", debcmp)
    assert facts == {
        # deduplicated, numeric order (a string sort would put 10000 before 9999)
        "cve_ids": ["CVE-2024-9999", "CVE-2024-10000", "CVE-2025-1000"],
        "urgency": "high",  # emergency/critical are on entries that do not count
        "changelog_entries": 2,
        "changelog_date": "2024-09-02T20:00:00+02:00",
    }


def test_changelog_facts_candidate_older_than_newest_entry() -> None:
    facts = pp.changelog_facts(FACTS_CHANGELOG, "3.0.14-1~deb12u1", "3.0.14-1~deb12u2", debcmp)
    assert facts["changelog_entries"] == 1
    assert "CVE-2024-55555" not in facts["cve_ids"]
    assert facts["cve_ids"] == ["CVE-2024-9999", "CVE-2024-10000", "CVE-2025-1000"]
    assert facts["urgency"] == "high"


def test_changelog_facts_installed_equals_candidate() -> None:
    facts = pp.changelog_facts(FACTS_CHANGELOG, "3.0.14-1~deb12u2", "3.0.14-1~deb12u2", debcmp)
    assert facts == {
        "cve_ids": [],
        "urgency": None,
        "changelog_entries": 0,
        "changelog_date": None,
    }


def test_changelog_facts_uses_debian_order_not_string_order() -> None:
    # '~deb12u1' sorts before the release it backports; '3.0.9' is older than '3.0.13'.
    text = (
        "x (3.0.13-1) unstable; urgency=low\n\n  * CVE-2024-2222\n\n"
        " -- A <a@b.c>  Mon, 01 Jan 2024 09:00:00 +0000\n\n"
        "x (3.0.13-1~deb12u1) bookworm; urgency=medium\n\n  * CVE-2024-1111\n\n"
        " -- A <a@b.c>  Sun, 31 Dec 2023 09:00:00 +0000\n\n"
        "x (3.0.9-1) unstable; urgency=low\n\n  * old\n\n"
        " -- A <a@b.c>  Sat, 30 Dec 2023 09:00:00 +0000\n"
    )
    facts = pp.changelog_facts(text, "3.0.9-1", "3.0.13-1~deb12u1", debcmp)
    assert facts["changelog_entries"] == 1
    assert facts["cve_ids"] == ["CVE-2024-1111"]
    assert facts["urgency"] == "medium"


def _changelog_with_urgencies(*urgencies: str) -> str:
    out = []
    for i, urgency in enumerate(urgencies):
        version = f"1.{len(urgencies) - i}-1"
        out.append(
            f"pkg ({version}) unstable; urgency={urgency}\n\n  * change {i}\n\n"
            f" -- A <a@b.c>  Mon, 0{len(urgencies) - i} Jan 2024 09:00:00 +0000\n"
        )
    return "\n".join(out)


@pytest.mark.parametrize(
    ("urgencies", "highest"),
    [
        (("low", "medium"), "medium"),
        (("medium", "high", "low"), "high"),
        (("high", "emergency"), "emergency"),
        (("emergency", "critical", "high"), "critical"),
        (("low", "low"), "low"),
    ],
)
def test_changelog_facts_highest_urgency(urgencies: tuple[str, ...], highest: str) -> None:
    text = _changelog_with_urgencies(*urgencies)
    facts = pp.changelog_facts(text, "1.0-1", f"1.{len(urgencies)}-1", debcmp)
    assert facts["changelog_entries"] == len(urgencies)
    assert facts["urgency"] == highest
    assert facts["changelog_date"] == f"2024-01-0{len(urgencies)}T09:00:00+00:00"


def test_changelog_facts_newest_date_across_time_zones() -> None:
    # 1.1-1 was uploaded at 00:00 UTC on Jan 2, 1.2-1 at 04:30 UTC the same day (from
    # US Eastern time, so its local date is still Jan 1).
    text = (
        "pkg (1.2-1) unstable; urgency=medium\n\n  * regression fix\n\n"
        " -- US Maintainer <us@example.org>  Mon, 01 Jan 2024 23:30:00 -0500\n\n"
        "pkg (1.1-1) unstable; urgency=high\n\n  * CVE-2024-1234\n\n"
        " -- EU Maintainer <eu@example.org>  Tue, 02 Jan 2024 01:00:00 +0100\n\n"
        "pkg (1.0-1) unstable; urgency=low\n\n  * initial\n\n"
        " -- EU Maintainer <eu@example.org>  Mon, 01 Jan 2024 09:00:00 +0100\n"
    )
    facts = pp.changelog_facts(text, "1.0-1", "1.2-1", debcmp)
    assert datetime.fromisoformat(facts["changelog_date"]) == datetime.fromisoformat(
        "2024-01-01T23:30:00-05:00"
    )


# ---- small helpers ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("version", "upstream"),
    [
        ("1:3.0.11-1~deb12u2", "3.0.11"),
        ("2.6.1", "2.6.1"),
        ("10.42-1+deb12u2", "10.42"),
        ("1.2-3-4", "1.2-3"),
        ("1:9.2p1-2+deb12u10", "9.2p1"),
        ("2:1.0", "1.0"),
    ],
)
def test_upstream_version(version: str, upstream: str) -> None:
    assert pp.upstream_version(version) == upstream
    assert str(Version(version).upstream_version) == upstream  # agrees with python-debian


@pytest.mark.parametrize(
    ("labels", "security"),
    [
        (("Debian-Security", ""), True),
        (("Debian", "bookworm-security"), True),
        (("Ubuntu", "jammy-security"), True),
        (("Debian", "bookworm-updates"), False),
        (("Debian", "bookworm"), False),
        ((None, None), False),
        (("", ""), False),
    ],
)
def test_is_security_origin(labels: tuple[str | None, str | None], security: bool) -> None:
    assert pp.is_security_origin(*labels) is security


@pytest.mark.parametrize(
    ("package", "needed"),
    [
        ("linux-image-6.1.0-28-amd64", True),
        ("linux-modules-6.1.0-28-amd64", True),
        ("libc6", True),
        ("systemd", True),
        ("intel-microcode", True),
        ("kernel-core", True),
        ("glibc", True),
        ("libssl3", False),
        ("openssh-server", False),
        ("libc6-dev", False),
        ("systemd-timesyncd", False),
        ("linux-libc-dev", False),
    ],
)
def test_reboot_needed(package: str, needed: bool) -> None:
    assert pp.reboot_needed(package) is needed


# ---- dnf / yum --------------------------------------------------------------------------
# `dnf -q check-update` on a Rocky Linux 9 host (stdout piped, so no line wrapping).
DNF_CHECK_UPDATE = """
NetworkManager.x86_64                 1:1.42.2-8.el9_3                 baseos
NetworkManager-libnm.x86_64           1:1.42.2-8.el9_3                 baseos
kernel.x86_64                         5.14.0-362.18.1.el9_3            baseos
openssl.x86_64                        1:3.0.7-25.el9_3                 baseos
openssl-libs.x86_64                   1:3.0.7-25.el9_3                 baseos
python3.11.x86_64                     3.11.5-1.el9_3                   appstream
tzdata.noarch                         2024a-1.el9                      baseos
vim-minimal.x86_64                    2:8.2.2637-20.el9_1              baseos
Obsoleting Packages
grub2-tools.x86_64                    1:2.06-70.el9_3.2.rocky.0.2      baseos
    grub2-tools.x86_64                1:2.06-61.el9_2.rocky.0.1        @baseos
"""


def test_parse_dnf_check_update() -> None:
    updates = pp.parse_dnf_check_update(DNF_CHECK_UPDATE)
    assert [(u["package"], u["arch"], u["candidate"], u["origin"]) for u in updates] == [
        ("NetworkManager", "x86_64", "1:1.42.2-8.el9_3", "baseos"),
        ("NetworkManager-libnm", "x86_64", "1:1.42.2-8.el9_3", "baseos"),
        ("kernel", "x86_64", "5.14.0-362.18.1.el9_3", "baseos"),
        ("openssl", "x86_64", "1:3.0.7-25.el9_3", "baseos"),
        ("openssl-libs", "x86_64", "1:3.0.7-25.el9_3", "baseos"),
        ("python3.11", "x86_64", "3.11.5-1.el9_3", "appstream"),
        ("tzdata", "noarch", "2024a-1.el9", "baseos"),
        ("vim-minimal", "x86_64", "2:8.2.2637-20.el9_1", "baseos"),
    ]
    # Nothing from the Obsoleting Packages section.
    assert "grub2-tools" not in {u["package"] for u in updates}


def test_parse_dnf_check_update_noise_lines() -> None:
    text = (
        "Last metadata expiration check: 0:12:01 ago on Mon 05 Feb 2024 10:00:00 AM UTC.\n"
        "Security: kernel-core-5.14.0-362.18.1.el9_3.x86_64 is an installed security update\n"
        "\n"
        "bash.x86_64    5.1.8-9.el9    baseos\n"
    )
    assert pp.parse_dnf_check_update(text) == [
        {"package": "bash", "arch": "x86_64", "candidate": "5.1.8-9.el9", "origin": "baseos"}
    ]
    assert pp.parse_dnf_check_update("") == []


# `dnf -q updateinfo list --with-cve` on the same host.
DNF_UPDATEINFO = """\
CVE-2023-0286  Important/Sec. openssl-libs-1:3.0.1-47.el9_1.x86_64
CVE-2023-0286  Important/Sec. openssl-1:3.0.1-47.el9_1.x86_64
CVE-2022-4304  Moderate/Sec.  openssl-libs-1:3.0.1-47.el9_1.x86_64
CVE-2023-5678  Low/Sec.       openssl-libs-1:3.0.7-25.el9_3.x86_64
CVE-2023-3390  Important/Sec. kernel-5.14.0-284.25.1.el9_2.x86_64
CVE-2023-20593 Moderate/Sec.  linux-firmware-20230404-134.el9.noarch
RHSA-2024:0310 Moderate/Sec.  python3-perf-5.14.0-362.18.1.el9_3.x86_64
RHBA-2024:0568 bugfix         tzdata-2024a-1.el9.noarch
RHEA-2024:0100 enhancement    NetworkManager-1:1.42.2-8.el9_3.x86_64
"""


def test_parse_dnf_updateinfo() -> None:
    cves, security = pp.parse_dnf_updateinfo(DNF_UPDATEINFO)
    assert cves == {
        "openssl-libs": {"CVE-2023-0286", "CVE-2022-4304", "CVE-2023-5678"},
        "openssl": {"CVE-2023-0286"},
        "kernel": {"CVE-2023-3390"},
        "linux-firmware": {"CVE-2023-20593"},
    }
    assert security == {"openssl-libs", "openssl", "kernel", "linux-firmware", "python3-perf"}
    assert pp.parse_dnf_updateinfo("") == ({}, set())


# ---- zypper -----------------------------------------------------------------------------
ZYPPER_XML = """\
<?xml version='1.0'?>
<stream>
<message type="info">Loading repository data...</message>
<message type="info">Reading installed packages...</message>
<update-status version="0.6">
<update-list>
<update kind="package" name="libopenssl3" edition="3.1.4-150600.5.15.1" arch="x86_64" \
edition-old="3.1.4-150600.5.7.1" >
<summary>Secure Sockets and Transport Layer Security</summary>
<description>OpenSSL is a software library.</description>
<license></license>
<source url="https://download.opensuse.org/update/leap/15.6/sle" \
alias="repo-sle-update"/>
</update>
<update kind="package" name="kernel-default" edition="6.4.0-150600.23.25.1" arch="x86_64" \
edition-old="6.4.0-150600.23.22.1" >
<summary>The Standard Kernel</summary>
<description>The standard kernel.</description>
<license></license>
<source url="https://download.opensuse.org/update/leap/15.6/sle" \
alias="repo-sle-update"/>
</update>
<update kind="package" name="timezone" edition="2024b-150000.75.31.1" arch="noarch" \
edition-old="2024a-150000.75.28.1" >
<summary>Timezone Descriptions</summary>
<description>Time zone data.</description>
<license></license>
<source url="https://download.opensuse.org/update/leap/15.6/oss" alias="repo-update"/>
</update>
<update kind="patch" name="openSUSE-SLE-15.6-2024-3501" edition="1" arch="noarch" \
status="needed" category="security" severity="important" pkgmanager="false" \
restart="false" interactive="false">
<summary>Security update for openssl-3</summary>
<description>This update fixes CVE-2024-6119.</description>
<license></license>
<source url="https://download.opensuse.org/update/leap/15.6/sle" alias="repo-sle-update"/>
</update>
</update-list>
</update-status>
</stream>
"""


def test_parse_zypper_updates() -> None:
    assert pp.parse_zypper_updates(ZYPPER_XML) == [
        {
            "package": "libopenssl3",
            "arch": "x86_64",
            "candidate": "3.1.4-150600.5.15.1",
            "installed": "3.1.4-150600.5.7.1",
            "origin": "repo-sle-update",
        },
        {
            "package": "kernel-default",
            "arch": "x86_64",
            "candidate": "6.4.0-150600.23.25.1",
            "installed": "6.4.0-150600.23.22.1",
            "origin": "repo-sle-update",
        },
        {
            "package": "timezone",
            "arch": "noarch",
            "candidate": "2024b-150000.75.31.1",
            "installed": "2024a-150000.75.28.1",
            "origin": "repo-update",
        },
    ]


def test_parse_zypper_updates_nothing_pending() -> None:
    text = (
        "<?xml version='1.0'?>\n<stream>\n"
        '<message type="info">Loading repository data...</message>\n'
        '<update-status version="0.6">\n<update-list>\n</update-list>\n</update-status>\n'
        "</stream>\n"
    )
    assert pp.parse_zypper_updates(text) == []


# ---- boot facts -------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/1/stat").exists(), reason="needs Linux /proc")
def test_boot_facts_on_this_machine() -> None:
    before = time.time()
    facts = pp.boot_facts()
    assert set(facts) == {"boot_id", "boot_time", "uptime_seconds"}
    assert isinstance(facts["boot_id"], str)
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", facts["boot_id"]
    )
    assert isinstance(facts["boot_time"], int)
    assert isinstance(facts["uptime_seconds"], int)
    assert facts["boot_time"] <= time.time()
    assert facts["uptime_seconds"] >= 0
    # uptime is measured from boot_time (both rounded down to whole seconds)
    assert abs(before - facts["boot_time"] - facts["uptime_seconds"]) <= 2


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_a_large_package_is_read_as_a_stream(tmp_path: Path) -> None:
    """The changelog of a package with a 300 MiB file in it is found without holding the
    package in memory (it was read whole: 817 MiB peak for a 400 MiB package)."""
    import gzip as gz
    import subprocess
    import sys

    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: big\nVersion: 1.0-1\nArchitecture: all\nMaintainer: x <x@x>\nDescription: big\n"
    )
    doc = root / "usr" / "share" / "doc" / "big"
    doc.mkdir(parents=True)
    with (root / "usr" / "share" / "big.bin").open("wb") as big:
        big.truncate(300 * 1024 * 1024)  # sparse: this process never holds it
    (doc / "changelog.Debian.gz").write_bytes(
        gz.compress(
            b"big (1.0-1) bookworm; urgency=high\n\n  * Fix CVE-2026-0001.\n\n"
            b" -- x <x@x>  Mon, 01 Jun 2026 12:00:00 +0000\n"
        )
    )
    deb = tmp_path / "big.deb"
    subprocess.run(
        ["dpkg-deb", "-Zgzip", "-z1", "--root-owner-group", "--build", str(root), str(deb)],
        check=True,
        capture_output=True,
    )
    # The reader runs with at most 200 MiB of address space: holding the package would fail.
    probe = (
        "import resource, sys; sys.path.insert(0, sys.argv[1]); import patchpilot_pending as m;"
        "resource.setrlimit(resource.RLIMIT_AS, (200 * 2**20, 200 * 2**20));"
        "t = m.read_deb_changelog(sys.argv[2], 'big', 'all');"
        "print(t.splitlines()[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(MODULE_PATH.parent), str(deb)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.startswith("big (1.0-1)")


class _Module:
    """Enough of AnsibleModule for add_apt_changelogs: the commands it runs, its warnings."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.warnings: list[str] = []

    def run_command(self, cmd: list[str], **_kw: Any) -> tuple[int, str, str]:
        self.commands.append(cmd)
        return 0, "", ""

    def warn(self, text: str) -> None:
        self.warnings.append(text)


def _updates(size: int) -> list[dict[str, Any]]:
    return [
        {
            "package": f"lib{i}",
            "arch": "amd64",
            "installed": "1.0-1",
            "candidate": "1.0-2",
            "source": f"lib{i}",
            "size": size,
            "cve_ids": [],
            "security": False,
        }
        for i in range(3)
    ]


@pytest.mark.parametrize(("free_mib", "downloads"), [(10_000, True), (300, False)])
def test_downloads_for_changelogs_only_when_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_mib: int, downloads: bool
) -> None:
    """Three 50 MiB packages need 150 MiB, and 200 MiB must stay free: with 300 MiB free
    nothing is fetched (the updates are reported without their changelog facts)."""
    monkeypatch.setattr(pp, "free_bytes", lambda _path: free_mib * 1024 * 1024)
    module = _Module()
    updates = _updates(50 * 1024 * 1024)
    pp.add_apt_changelogs(module, updates, str(tmp_path / "cache"), debcmp)
    fetched = [c for c in module.commands if c[:2] == ["apt-get", "download"]]
    assert bool(fetched) is downloads
    assert bool(module.warnings) is not downloads
    if not downloads:
        assert "150 MiB needed, 300 MiB free" in module.warnings[0]
    assert all(u["changelog_entries"] is None for u in updates)
