"""The lab fleet as users and later tests rely on it: real hosts, real SSH, real apt."""

from __future__ import annotations

import gzip
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from patchpilot.lab.demo import DEMO_PORT, build_demo_deb, parse_demo_spec
from patchpilot.lab.network import BRIDGE, leftover_links, leftover_netns
from tests.e2e.helpers import BIN, LabFleet, ansible, http_get, pp

pytestmark = pytest.mark.e2e
LAB_DIR = Path("/var/lib/patchpilot/lab")


def test_ansible_ping_answers_from_every_host(lab: LabFleet) -> None:
    proc = ansible("all", "-m", "ansible.builtin.ping", inventory=lab.inventory)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answered = set(re.findall(r"^(\S+) \| SUCCESS", proc.stdout, re.M))
    assert answered == set(lab.hosts) and len(answered) == 8


def test_inventory_is_read_by_ansible_itself(lab: LabFleet) -> None:
    proc = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(lab.inventory), "--list"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(proc.stdout)
    assert sorted(data["web"]["hosts"]) == [f"web0{i}" for i in range(1, 7)]
    assert sorted(data["db"]["hosts"]) == ["db01", "db02"]
    assert data["_meta"]["hostvars"]["db02"]["ansible_host"] == lab.hosts["db02"]


def test_status_shows_every_host_running_with_ssh(lab: LabFleet) -> None:
    status = lab.status()
    assert set(status) == set(lab.hosts)
    assert all(row["state"] == "running" and row["ssh_ok"] for row in status.values())
    assert {row["address"] for row in status.values()} == set(lab.hosts.values())


def test_hosts_are_distinct_debian_machines_with_systemd(lab: LabFleet) -> None:
    ids = set()
    for host in ("web01", "db01"):
        out = lab.ssh(
            host,
            "hostname; cat /etc/machine-id; systemctl is-system-running; "
            ". /etc/os-release; echo $VERSION_CODENAME",
        ).stdout.split()
        assert out[0] == host
        if out[2] != "running":
            failed = lab.ssh(
                host,
                "systemctl --failed --no-legend; journalctl -p err -b --no-pager | tail -20",
                check=False,
            ).stdout
            raise AssertionError(f"{host}: systemd is {out[2]}:\n{failed}")
        assert out[3] == "bookworm"
        ids.add(out[1])
    assert len(ids) == 2


def test_lab_ssh_passes_the_exit_code_on(lab: LabFleet) -> None:
    assert lab.ssh("web02", "exit 7", check=False).returncode == 7


def test_demo_service_good_then_broken_then_rolled_back(lab: LabFleet) -> None:
    host, url = "web01", f"http://{lab.hosts['web01']}:{DEMO_PORT}/"
    lab.ssh(host, "apt-get install -y -q demoweb=1.1-1")
    status, body = http_get(url)
    assert status == 200 and json.loads(body)["version"] == "1.1-1"

    lab.ssh(host, "apt-get install -y -q demoweb=1.2-1")
    status, body = http_get(url)
    assert status == 500 and json.loads(body)["version"] == "1.2-1"

    lab.ssh(host, "apt-get install -y -q --allow-downgrades demoweb=1.1-1")
    status, body = http_get(url)
    assert status == 200 and json.loads(body)["version"] == "1.1-1"


def test_failing_install_leaves_the_package_broken_until_downgraded(lab: LabFleet) -> None:
    host = "web02"
    lab.ssh(host, "apt-get install -y -q demoweb=1.0-1")
    failed = lab.ssh(host, "apt-get install -y -q demoweb=1.3-1", check=False)
    assert failed.returncode != 0
    assert "simulated configuration failure" in failed.stdout + failed.stderr
    state = lab.ssh(host, "dpkg-query -W -f='${db:Status-Abbrev} ${Version}' demoweb").stdout
    assert state.split() == ["iF", "1.3-1"]

    lab.ssh(host, "apt-get install -y -q --allow-downgrades demoweb=1.0-1")
    state = lab.ssh(host, "dpkg-query -W -f='${db:Status-Abbrev} ${Version}' demoweb").stdout
    assert state.split() == ["ii", "1.0-1"]
    assert http_get(f"http://{lab.hosts[host]}:{DEMO_PORT}/")[0] == 200


def test_hosts_see_real_debian_security_updates_with_changelogs(lab: LabFleet) -> None:
    pool = LAB_DIR / "repo" / "pool"
    debian_debs = [p for p in pool.glob("*.deb") if not p.name.startswith("demoweb_")]
    assert debian_debs, "lab up --with-debian-updates published no Debian update"
    upgradable = lab.ssh("db01", "apt list --upgradable 2>/dev/null").stdout
    for deb in debian_debs:
        name = deb.name.split("_", 1)[0]
        assert re.search(rf"^{re.escape(name)}/", upgradable, re.M), f"{name} not pending on db01"
    # At least one is a security update whose changelog (inside the .deb) names CVEs.
    cves = set()
    for deb in debian_debs:
        cves |= set(re.findall(r"CVE-\d{4}-\d+", _changelog(deb)))
    assert cves, "no CVE id in the changelogs of the published Debian updates"


def _changelog(deb: Path) -> str:
    tar_bytes = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar.getmembers():
            if member.name.endswith("/changelog.Debian.gz") and member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                return gzip.decompress(f.read()).decode(errors="replace")
    return ""


def test_published_package_is_seen_by_every_host(lab: LabFleet, tmp_path: Path) -> None:
    deb = build_demo_deb(parse_demo_spec("1.4-1:slow=150"), tmp_path)
    out = pp("lab", "publish", str(deb)).stdout
    assert "demoweb 1.4-1" in out
    proc = ansible(
        "all",
        "-m",
        "ansible.builtin.command",
        "-a",
        "apt-cache madison demoweb",
        inventory=lab.inventory,
    )
    assert proc.returncode == 0, proc.stdout
    assert len(re.findall(r"demoweb \|\s+1\.4-1 \|", proc.stdout)) == len(lab.hosts)


def test_reboot_through_ansible_comes_back(lab: LabFleet) -> None:
    before = lab.ssh("db01", "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    proc = ansible("db01", "-m", "ansible.builtin.reboot", inventory=lab.inventory)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = lab.ssh("db01", "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    assert after and after != before
    assert lab.status()["db01"]["state"] == "running"


def test_fault_stop_then_restore(lab: LabFleet) -> None:
    try:
        pp("lab", "fault", "stop", "db02")
        assert lab.status()["db02"] == {**lab.status()["db02"], "state": "stopped", "ssh_ok": False}
        proc = ansible("db02", "-m", "ansible.builtin.ping", inventory=lab.inventory, timeout=120)
        assert proc.returncode != 0 and "UNREACHABLE" in proc.stdout
    finally:
        pp("lab", "fault", "restore", "db02")
    assert lab.status()["db02"]["state"] == "running"
    assert ansible("db02", "-m", "ansible.builtin.ping", inventory=lab.inventory).returncode == 0


def test_fault_cut_network_then_restore(lab: LabFleet) -> None:
    before = lab.ssh("web03", "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    try:
        pp("lab", "fault", "cut", "web03")
        row = lab.status()["web03"]
        assert row["state"] == "cut" and row["ssh_ok"] is False
        proc = ansible("web03", "-m", "ansible.builtin.ping", inventory=lab.inventory, timeout=120)
        assert "UNREACHABLE" in proc.stdout
    finally:
        pp("lab", "fault", "restore", "web03")
    # The host kept running while cut off: same boot.
    assert lab.ssh("web03", "cat /proc/sys/kernel/random/boot_id").stdout.strip() == before


def test_fault_dpkg_lock_blocks_apt_until_restored(lab: LabFleet) -> None:
    try:
        pp("lab", "fault", "dpkg-lock", "web04", "--seconds", "120")
        blocked = lab.ssh(
            "web04", "apt-get install -y -o DPkg::Lock::Timeout=1 demoweb=1.0-1", check=False
        )
        assert blocked.returncode != 0
        assert "lock" in (blocked.stdout + blocked.stderr).lower()
    finally:
        pp("lab", "fault", "restore", "web04")
    lab.ssh("web04", "apt-get install -y -o DPkg::Lock::Timeout=5 demoweb=1.0-1")


def test_up_again_is_safe_and_keeps_running_hosts(lab: LabFleet) -> None:
    boot = lab.ssh("web05", "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    pp("lab", "up", "--groups", "web=6,db=2", "-i", str(lab.inventory))
    assert lab.ssh("web05", "cat /proc/sys/kernel/random/boot_id").stdout.strip() == boot
    assert set(lab.status()) == set(lab.hosts)


def test_unknown_host_is_one_clear_error(lab: LabFleet) -> None:
    proc = pp("lab", "fault", "stop", "nosuchhost", check=False)
    assert proc.returncode == 2
    assert "no lab host named 'nosuchhost'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.lab_teardown
def test_down_removes_everything_even_after_a_crash(lab: LabFleet) -> None:
    # Simulate a crashed earlier run: its state file is gone and one supervisor was killed,
    # leaving its systemd-nspawn orphaned.
    status = pp("lab", "status", "--json")
    assert status.returncode == 0
    sup = subprocess.run(
        ["pgrep", "-f", "patchpilot.lab.supervisor --name web06"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    subprocess.run(["kill", "-9", sup], check=True)
    (LAB_DIR / "state.json").unlink()

    pp("lab", "down")

    # Zombies (state Z) are only waiting for init to reap them; anything else is a leftover.
    ps = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True)
    procs = "\n".join(ln for ln in ps.stdout.splitlines() if not ln.strip().startswith("Z"))
    assert "systemd-nspawn" not in procs and "patchpilot.lab" not in procs
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(LAB_DIR) not in mounts
    assert leftover_netns() == []
    assert leftover_links() == []
    assert not Path(f"/sys/class/net/{BRIDGE}").exists()
    # A second down on a clean machine is a no-op, not an error.
    assert pp("lab", "down").returncode == 0
