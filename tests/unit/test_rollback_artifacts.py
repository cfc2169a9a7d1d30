"""Rollback artifacts for packages no repository keeps: the rebuild from the installed
package (its pure parts, and a real rebuild of a package installed on this machine), what a
host may say about them, how a rollback is judged by dpkg --verify, and the plan's warning
for a package that cannot be rolled back."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from patchpilot.ops.fleetops import HostResult, _apply_event, parse_verify
from patchpilot.plan.spec import RollbackSpec
from patchpilot.run.decide import kept_checksums, rollback_damage
from tests.unit.host_modules import load
from tests.unit.test_host_answers import RUN_DIR, answer, folded
from tests.unit.test_plan_expand import expand, fleet, plan, update

pm = load("patchpilot_patch")

STATUS = """Package: libfoo1
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 120
Maintainer: Someone <s@example.org>
Architecture: amd64
Multi-Arch: same
Version: 1.2-3
Depends: libc6 (>= 2.34)
Conffiles:
 /etc/foo.conf 0123456789abcdef0123456789abcdef
 /etc/old.conf 0123456789abcdef0123456789abcdef obsolete
 /etc/gone.conf 0123456789abcdef0123456789abcdef remove-on-upgrade
Description: a library
 It does things.
 .
 Really.
"""


def test_the_rebuilt_control_keeps_the_package_and_drops_the_hosts_installation() -> None:
    fields = pm.parse_stanza(STATUS)
    text = pm.control_text(fields)
    assert "Status:" not in text and "Conffiles:" not in text
    assert "Version: 1.2-3\n" in text and "Multi-Arch: same\n" in text
    assert text.endswith("Description: a library\n It does things.\n .\n Really.\n")


def test_obsolete_and_remove_on_upgrade_conffiles_are_left_out() -> None:
    values = dict((n.lower(), v) for n, v in pm.parse_stanza(STATUS))
    current, gone = pm.parse_conffiles(values["conffiles"])
    assert current == ["/etc/foo.conf"]
    assert gone == ["/etc/old.conf", "/etc/gone.conf"]


def test_a_diverted_file_is_read_where_the_diversion_put_it() -> None:
    listing = "\n".join(
        [
            "/.",
            "/bin",
            "/bin/sh",
            "diverted by dash to: /bin/sh.distrib",
            "/usr/share/doc/x",
            "package diverts others to: /usr/bin/other.real",
            "/etc/x.conf",
            "locally diverted to: /etc/x.conf.local",
        ]
    )
    assert pm.file_entries(listing) == [
        ("/bin", "/bin"),
        ("/bin/sh", "/bin/sh.distrib"),
        ("/usr/share/doc/x", "/usr/share/doc/x"),
        ("/etc/x.conf", "/etc/x.conf.local"),
    ]


def _installed(name: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", name], capture_output=True, text=True
    )
    return out.stdout.strip() == "ii"


@pytest.mark.skipif(not _installed("debianutils"), reason="needs dpkg and debianutils installed")
def test_a_real_installed_package_is_rebuilt_with_its_files_and_scripts(tmp_path: Path) -> None:
    def q(*args: str) -> str:
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout

    version, arch = q("dpkg-query", "-W", "-f", "${Version} ${Architecture}", "debianutils").split()
    out = tmp_path / pm.deb_filename("debianutils", version, arch)
    tool, _note = pm.repack("debianutils", version, arch, str(out), str(tmp_path))
    assert tool in ("rebuilt", "dpkg-repack") and out.is_file()
    assert q("dpkg-deb", "-f", str(out), "Package", "Version").split() == [
        "Package:",
        "debianutils",
        "Version:",
        version,
    ]
    packed = {
        "/" + line.split(None, 5)[-1].split(" -> ")[0].removeprefix("./").rstrip("/")
        for line in q("dpkg-deb", "-c", str(out)).splitlines()
    } - {"/"}
    listed = {p for p in q("dpkg-query", "-L", "debianutils").splitlines() if p.startswith("/")}
    assert packed == listed - {"/."}
    control = q("dpkg-deb", "-I", str(out))
    assert "md5sums" in control and "postinst" in control, control
    assert not list(tmp_path.glob(".repack-*")), "the build tree is removed"
    with pytest.raises(pm.RepackError, match="installed at"):
        pm.repack("debianutils", "0.0-0", arch, str(tmp_path / "x.deb"), str(tmp_path))


def _event(**result: Any) -> Any:
    return folded(answer(**result))


def test_a_hosts_word_on_its_artifacts_is_kept_when_it_is_one() -> None:
    x = _event(
        sources={"demoweb": "rebuilt", "libfoo:amd64": "cache"},
        sha256={"demoweb": "a" * 64},
        rollback_notes={"demoweb": "1 file(s) missing on the host were not packed\x1b[2J"},
        modified_before={"demoweb": ["??5?????? c /etc/demoweb.conf"]},
    )
    assert x.status == "ok"
    assert x.sources == {"demoweb": "rebuilt", "libfoo:amd64": "cache"}
    assert x.sha256 == {"demoweb": "a" * 64}
    assert "\x1b" not in x.notes["demoweb"]
    assert x.modified_before == {"demoweb": ["??5?????? c /etc/demoweb.conf"]}


@pytest.mark.parametrize(
    "hostile",
    [
        {"sources": {"demoweb": "{{ lookup('pipe', 'id') }}"}},
        {"sources": {"demo{{x}}": "cache"}},
        {"sha256": {"demoweb": "not-a-digest"}},
        {"modified_before": {"demoweb": "not a list"}},
        {"rollback_reasons": ["not", "a", "mapping"]},
    ],
)
def test_a_hostile_word_on_artifacts_rejects_the_whole_answer(hostile: dict[str, Any]) -> None:
    out: dict[str, Any] = {}
    _apply_event(out, answer(**hostile), RUN_DIR)
    assert out["web01"].status == "failed"
    assert out["web01"].message.startswith("answer rejected")
    assert out["web01"].sources == {} and out["web01"].artifacts == {}


def test_a_rollback_is_judged_by_what_dpkg_verify_adds_to_the_state_before() -> None:
    recorded = {"modified_before": {"demoweb": ["??5?????? c /etc/demoweb.conf"]}}
    same = HostResult("ok", verify=parse_verify("??5?????? c /etc/demoweb.conf"))
    assert rollback_damage(same, recorded) is None
    worse = replace(same, verify=[*same.verify, "missing /usr/lib/libfoo.so.1"])
    assert "1 file(s) changed" in (rollback_damage(worse, recorded) or "")
    audit = HostResult("ok", audit="The following packages are only half configured")
    assert "dpkg --audit" in (rollback_damage(audit, {}) or "")


def test_the_kept_checksums_go_with_their_paths() -> None:
    recorded = {
        "web01": {"artifacts": {"demoweb": f"{RUN_DIR}/demoweb_1.0-1_all.deb"},
                  "sha256": {"demoweb": "b" * 64}},
    }  # fmt: skip
    assert kept_checksums(recorded, ["web01", "web02"]) == {
        "web01": {f"{RUN_DIR}/demoweb_1.0-1_all.deb": "b" * 64},
        "web02": {},
    }


@pytest.mark.parametrize(("policy", "then"), [("refuse", "refused at its preflight"),
                                              ("proceed", "patched with no way back")])  # fmt: skip
def test_the_plan_names_a_package_that_cannot_be_rolled_back(policy: str, then: str) -> None:
    spec = plan("  - {name: all, hosts: rest}\n", head=f"rollback: {{on_impossible: {policy}}}\n")
    hosts = fleet(2)
    stuck = replace(
        update("linux-image-6.1.0-9-amd64"),
        rollback_source="none",
        rollback_note="the running kernel's own image",
    )
    result = expand(spec, hosts, {hosts[0].name: [stuck, update()], hosts[1].name: [update()]})
    (warning,) = [w for w in result.warnings if "cannot be rolled back" in w]
    assert warning.startswith(f"{hosts[0].name}: cannot be rolled back: linux-image-6.1.0-9")
    assert then in warning


@pytest.mark.parametrize(
    "line",
    [
        "deb http://mirror/debian bookworm main\nrm -rf /",
        "deb-src http://mirror/debian bookworm main",
        "deb ftp://mirror/debian bookworm main",
        "deb http://mirror/debian {{ evil }}",
    ],
)
def test_a_version_source_is_a_one_line_apt_source(line: str) -> None:
    with pytest.raises(ValueError, match="not a one-line apt source"):
        RollbackSpec(version_sources=(line,))
    ok = "deb [trusted=yes] http://10.0.0.1:8800/history ./"
    assert RollbackSpec(version_sources=(ok,)).version_sources == (ok,)


@pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("dpkg-scanpackages") is None,
    reason="needs apt-get and dpkg-scanpackages",
)
def test_a_version_source_serves_a_version_no_repository_of_the_host_has(tmp_path: Path) -> None:
    # A local archive that keeps history (a file: apt source, as a mirror would be).
    history = tmp_path / "history"
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: ppversioned\nVersion: 1.0-1\nArchitecture: all\n"
        "Maintainer: t <t@example.org>\nDescription: kept only by the archive\n"
    )
    history.mkdir()
    subprocess.run(
        ["dpkg-deb", "--build", str(root), str(history / "ppversioned_1.0-1_all.deb")],
        check=True,
        capture_output=True,
    )
    index = subprocess.run(
        ["dpkg-scanpackages", "-m", "."], cwd=history, capture_output=True, check=True
    ).stdout
    (history / "Packages").write_bytes(index)
    source = f"deb [trusted=yes] file:{history} ./"
    RollbackSpec(version_sources=(source,))  # what a plan accepts
    kept = tmp_path / "rollback"
    kept.mkdir()
    target = str(kept / "ppversioned_1.0-1_all.deb")

    nowhere = pm.ArtifactFetcher(str(kept), [], check=False)
    assert nowhere.fetch("ppversioned", "1.0-1", "all", target, rebuild=False) == (
        None,
        "not in apt's cache nor in the host's repositories; not installed, so it cannot be rebuilt",
    )
    would = pm.ArtifactFetcher(str(kept), [source], check=True)
    try:
        assert would.fetch("ppversioned", "1.0-1", "all", target, rebuild=False) == ("archive", "")
    finally:
        would.close()
    assert not Path(target).exists()  # check mode fetches nothing
    fetcher = pm.ArtifactFetcher(str(kept), [source], check=False)
    try:
        assert fetcher.fetch("ppversioned", "1.0-1", "all", target, rebuild=False) == (
            "archive",
            "",
        )
    finally:
        fetcher.close()
    fields = subprocess.run(
        ["dpkg-deb", "-f", target, "Package", "Version"], capture_output=True, text=True
    ).stdout.split()
    assert fields == ["Package:", "ppversioned", "Version:", "1.0-1"]
    assert sorted(p.name for p in kept.iterdir()) == ["ppversioned_1.0-1_all.deb"]
