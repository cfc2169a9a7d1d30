"""The lab's pure parts: fleet specs, addressing, the inventory, the apt repository index.

Nothing here needs root, the network, or a running lab.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from patchpilot.errors import BadInputError, ExitCode
from patchpilot.lab import network, repo
from patchpilot.lab.fleet import (
    DEFAULT_GROUPS,
    INVENTORY_HEADER,
    HostSpec,
    LabHost,
    parse_fleet,
    write_inventory,
)
from patchpilot.lab.supervisor import nspawn_command

needs_dpkg = pytest.mark.skipif(
    shutil.which("dpkg-deb") is None or shutil.which("dpkg-scanpackages") is None,
    reason="needs dpkg-deb and dpkg-scanpackages (apt-get install -y dpkg-dev)",
)
NET = network.parse_subnet("10.213.0.0/24")


def lab_hosts(specs: list[HostSpec]) -> list[LabHost]:
    return [
        LabHost(s.name, s.group, s.release, s.index, str(network.host_address(NET, s.index)))
        for s in specs
    ]


# ---- parse_fleet ---------------------------------------------------------------------------
def test_hosts_alone_makes_a_lab_group() -> None:
    specs = parse_fleet(8, None)
    assert [s.name for s in specs] == [f"lab{i:02d}" for i in range(1, 9)]
    assert {s.group for s in specs} == {"lab"}
    assert [s.index for s in specs] == list(range(1, 9))
    assert {s.release for s in specs} == {"bookworm"}


def test_groups_name_hosts_by_group_with_indexes_across_groups() -> None:
    specs = parse_fleet(None, "web=4,db=2")
    assert [(s.name, s.group, s.index) for s in specs] == [
        ("web01", "web", 1),
        ("web02", "web", 2),
        ("web03", "web", 3),
        ("web04", "web", 4),
        ("db01", "db", 5),
        ("db02", "db", 6),
    ]


def test_default_groups() -> None:
    assert DEFAULT_GROUPS == "web=6,db=2"
    specs = parse_fleet(None, None)
    assert [s.name for s in specs] == [
        *(f"web{i:02d}" for i in range(1, 7)),
        "db01",
        "db02",
    ]
    assert [s.index for s in specs] == list(range(1, 9))


def test_release_per_group() -> None:
    specs = parse_fleet(None, "web=2,db=2:trixie", release="bookworm")
    assert {s.name: s.release for s in specs} == {
        "web01": "bookworm",
        "web02": "bookworm",
        "db01": "trixie",
        "db02": "trixie",
    }
    assert {s.release for s in parse_fleet(None, "web=1", release="trixie")} == {"trixie"}


def test_hosts_that_agree_with_groups_and_spaces_are_fine() -> None:
    specs = parse_fleet(3, " web=2 , db=1 ")
    assert [s.name for s in specs] == ["web01", "web02", "db01"]
    assert parse_fleet(None, "abcdefghijkl=1")[0].name == "abcdefghijkl01"  # 12 chars: the max


@pytest.mark.parametrize(
    ("hosts", "groups", "release", "says"),
    [
        (None, "web=0", "bookworm", "at least 1"),
        (0, None, "bookworm", "at least 1"),
        (None, "web=2,web=1", "bookworm", "twice"),
        (None, "Web=2", "bookworm", "invalid group name"),
        (None, "1web=2", "bookworm", "invalid group name"),
        (None, "web-a=2", "bookworm", "invalid group name"),
        (None, "abcdefghijklm=1", "bookworm", "invalid group name"),
        (None, "web=2:../x", "bookworm", "invalid Debian release"),
        (None, "web=2:Bookworm", "bookworm", "invalid Debian release"),
        (None, "web=2", "../x", "invalid Debian release"),
        (None, "web", "bookworm", "invalid group spec"),
        (None, "web=two", "bookworm", "invalid group spec"),
        (None, "web=2,", "bookworm", "invalid group spec"),
        (None, "", "bookworm", "invalid group spec"),
        (2, "web=3", "bookworm", "disagrees"),
    ],
)
def test_bad_fleets_are_bad_input(
    hosts: int | None, groups: str | None, release: str, says: str
) -> None:
    with pytest.raises(BadInputError) as info:
        parse_fleet(hosts, groups, release)
    assert says in info.value.message
    assert info.value.hint
    assert info.value.exit_code == ExitCode.BAD_INPUT


def test_reserved_ansible_group_all_is_refused() -> None:
    with pytest.raises(BadInputError):
        parse_fleet(None, "all=2")


def test_host_names_are_unique() -> None:
    try:
        specs = parse_fleet(None, "lab=101,lab1=1")
    except BadInputError:
        return  # refusing is fine too
    names = [s.name for s in specs]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(("groups", "release"), [("web\n=1", "bookworm"), ("web=1", "bookworm\n")])
def test_a_trailing_newline_is_not_a_valid_name(groups: str, release: str) -> None:
    with pytest.raises(BadInputError):
        parse_fleet(None, groups, release)


# ---- network -------------------------------------------------------------------------------
@pytest.mark.parametrize("subnet", ["10.213.0.0/24", "192.168.50.0/28", "172.16.0.0/16"])
def test_parse_subnet_accepts_private_networks(subnet: str) -> None:
    assert str(network.parse_subnet(subnet)) == subnet


@pytest.mark.parametrize(
    "subnet",
    [
        "8.8.8.0/24",  # public
        "10.213.0.0/30",  # too small
        "10.213.0.0/29",
        "10.213.0.5/24",  # host bits set
        "garbage",
        "",
        "fd00::/64",  # not IPv4
    ],
)
def test_parse_subnet_rejects(subnet: str) -> None:
    with pytest.raises(BadInputError) as info:
        network.parse_subnet(subnet)
    assert info.value.hint and "10.213.0.0/24" in info.value.hint


def test_host_addresses_start_at_11() -> None:
    assert str(network.bridge_address(NET)) == "10.213.0.1"
    assert str(network.host_address(NET, 1)) == "10.213.0.11"
    assert str(network.host_address(NET, 8)) == "10.213.0.18"
    assert str(network.host_address(NET, 244)) == "10.213.0.254"


def test_host_address_overflow_is_bad_input() -> None:
    with pytest.raises(BadInputError) as info:
        network.host_address(NET, 245)
    assert "244" in info.value.message
    assert info.value.hint


@pytest.mark.parametrize(
    ("subnet", "room"), [("10.213.0.0/24", 244), ("10.0.0.0/28", 4), ("10.1.0.0/23", 500)]
)
def test_capacity_matches_host_address(subnet: str, room: int) -> None:
    net = network.parse_subnet(subnet)
    assert network.capacity(net) == room
    addresses = [network.host_address(net, i) for i in range(1, room + 1)]
    assert len(set(addresses)) == room
    assert all(
        a in net and a not in (net.broadcast_address, network.bridge_address(net))
        for a in addresses
    )
    with pytest.raises(BadInputError):
        network.host_address(net, room + 1)


# ---- inventory -----------------------------------------------------------------------------
def _fleet(tmp_path: Path) -> tuple[Path, list[LabHost], Path]:
    hosts = lab_hosts(parse_fleet(None, "web=3,db=2:trixie"))
    key = tmp_path / "lab" / "ssh" / "id_ed25519"
    path = tmp_path / "inv" / "sub" / "lab.yml"  # parents missing on purpose
    write_inventory(path, hosts, key, tmp_path / "lab" / "ssh" / "known_hosts")
    return path, hosts, key


def test_inventory_yaml(tmp_path: Path) -> None:
    path, hosts, key = _fleet(tmp_path)
    text = path.read_text()
    assert text.startswith(INVENTORY_HEADER)
    assert text.splitlines()[0].startswith("# Written by `patchpilot lab up`")
    assert [p.name for p in path.parent.iterdir()] == ["lab.yml"]  # no temp file left
    data = yaml.safe_load(text)
    all_ = data["all"]
    assert all_["vars"]["ansible_ssh_private_key_file"] == str(key)
    assert all_["vars"]["ansible_user"] == "root"
    # Host keys are checked, against the lab's own known_hosts.
    ssh_args = all_["vars"]["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in ssh_args
    assert f"UserKnownHostsFile={tmp_path / 'lab' / 'ssh' / 'known_hosts'}" in ssh_args
    assert "StrictHostKeyChecking=no" not in ssh_args and "/dev/null" not in ssh_args
    assert set(all_["children"]) == {"web", "db"}
    for h in hosts:
        entry = all_["children"][h.group]["hosts"][h.name]
        assert entry["ansible_host"] == h.address
        assert entry["lab_release"] == h.release


def test_ansible_reads_the_inventory(tmp_path: Path) -> None:
    path, hosts, key = _fleet(tmp_path)
    tool = Path(sys.executable).parent / "ansible-inventory"
    if not tool.exists():
        pytest.skip(f"no {tool}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(HOME=str(tmp_path), ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"))
    proc = subprocess.run(
        [str(tool), "-i", str(path), "--list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Unable to parse" not in proc.stderr, proc.stderr
    inv = json.loads(proc.stdout)
    assert set(inv["all"]["children"]) >= {"web", "db"}
    for group in ("web", "db"):
        assert inv[group]["hosts"] == [h.name for h in hosts if h.group == group]
    hostvars = inv["_meta"]["hostvars"]
    assert set(hostvars) == {h.name for h in hosts}
    for h in hosts:
        assert hostvars[h.name]["ansible_host"] == h.address
        assert hostvars[h.name]["ansible_user"] == "root"
        assert hostvars[h.name]["ansible_ssh_private_key_file"] == str(key)


# ---- repository ----------------------------------------------------------------------------
def test_debinfo_filename_drops_the_epoch() -> None:
    assert repo.DebInfo("demoweb", "2:1.4-1", "all").filename == "demoweb_1.4-1_all.deb"
    assert repo.DebInfo("libfoo", "1.0-1+deb12u1", "amd64").filename == (
        "libfoo_1.0-1+deb12u1_amd64.deb"
    )


@pytest.fixture(scope="module")
def demo_debs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb")
    from patchpilot.lab.demo import DemoVersion, build_demo_deb

    out = tmp_path_factory.mktemp("demo-debs")
    return [build_demo_deb(DemoVersion(v), out) for v in ("1.0-1", "1.1-1")]


@needs_dpkg
def test_read_deb(demo_debs: list[Path]) -> None:
    assert repo.read_deb(demo_debs[0]) == repo.DebInfo("demoweb", "1.0-1", "all")
    assert repo.read_deb(demo_debs[0]).filename == demo_debs[0].name


@needs_dpkg
def test_read_deb_refuses_what_is_not_a_deb(tmp_path: Path) -> None:
    fake = tmp_path / "fake_1.0_all.deb"
    fake.write_text("not a package\n")
    with pytest.raises(BadInputError, match=r"not a valid \.deb"):
        repo.read_deb(fake)
    with pytest.raises(BadInputError, match="no such package file"):
        repo.read_deb(tmp_path / "missing.deb")


def _release_sha256(repo_dir: Path) -> dict[str, tuple[str, int]]:
    lines = (repo_dir / "Release").read_text().splitlines()
    start = lines.index("SHA256:") + 1
    out = {}
    for line in lines[start:]:
        m = re.fullmatch(r" ([0-9a-f]{64}) (\d+) (\S+)", line)
        if not m:
            break
        out[m.group(3)] = (m.group(1), int(m.group(2)))
    return out


@needs_dpkg
def test_index_lists_every_version_and_release_hashes_match(
    tmp_path: Path, demo_debs: list[Path]
) -> None:
    repo_dir = tmp_path / "repo"
    repo.pool(repo_dir).mkdir(parents=True)
    for deb in demo_debs:
        shutil.copyfile(deb, repo.pool(repo_dir) / deb.name)

    repo.index(repo_dir)

    assert sorted(repo.packages_in(repo_dir), key=lambda d: d.version) == [
        repo.DebInfo("demoweb", "1.0-1", "all"),
        repo.DebInfo("demoweb", "1.1-1", "all"),
    ]
    packages = (repo_dir / "Packages").read_bytes()
    for deb in demo_debs:
        assert f"Filename: pool/{deb.name}\n".encode() in packages
    assert gzip.decompress((repo_dir / "Packages.gz").read_bytes()) == packages

    release = (repo_dir / "Release").read_text()
    assert "Suite: lab" in release and "Codename: lab" in release
    sums = _release_sha256(repo_dir)
    assert set(sums) == {"Packages", "Packages.gz"}
    for name, (digest, size) in sums.items():
        data = (repo_dir / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
        assert len(data) == size


@needs_dpkg
def test_empty_repo_indexes_to_nothing(tmp_path: Path) -> None:
    repo.index(tmp_path / "repo")
    assert repo.packages_in(tmp_path / "repo") == []
    assert repo.packages_in(tmp_path / "never-indexed") == []


@needs_dpkg
def test_add_packages_copies_under_the_pool_name_and_reindexes(
    tmp_path: Path, demo_debs: list[Path]
) -> None:
    repo_dir = tmp_path / "repo"
    infos = repo.add_packages(repo_dir, demo_debs)
    assert [i.version for i in infos] == ["1.0-1", "1.1-1"]
    assert sorted(p.name for p in repo.pool(repo_dir).iterdir()) == sorted(
        i.filename for i in infos
    )
    assert {d.version for d in repo.packages_in(repo_dir)} == {"1.0-1", "1.1-1"}


@needs_dpkg
def test_add_packages_checks_every_file_before_copying_any(
    tmp_path: Path, demo_debs: list[Path]
) -> None:
    bad = tmp_path / "bad.deb"
    bad.write_text("nope\n")
    repo_dir = tmp_path / "repo"
    with pytest.raises(BadInputError):
        repo.add_packages(repo_dir, [demo_debs[0], bad])
    assert not repo.pool(repo_dir).exists() or not any(repo.pool(repo_dir).iterdir())


# ---- supervisor ----------------------------------------------------------------------------
def test_nspawn_command() -> None:
    cmd = nspawn_command("web01", "/var/lib/patchpilot/lab/hosts/web01/root", "pp-web01")
    assert cmd[0] == "systemd-nspawn"
    for flag in ("--register=no", "--keep-unit", "--boot", "--machine=web01"):
        assert flag in cmd
    assert "--network-namespace-path=/run/netns/pp-web01" in cmd
    i = cmd.index("--directory")
    assert cmd[i + 1] == "/var/lib/patchpilot/lab/hosts/web01/root"


def test_known_hosts_keeps_other_addresses_and_replaces_ours(tmp_path: Path) -> None:
    from patchpilot.lab.access import write_known_hosts

    path = tmp_path / "known_hosts"
    path.write_text("10.213.0.11 ssh-ed25519 OLD\n192.0.2.9 ssh-ed25519 OTHER\n")
    write_known_hosts(path, ["10.213.0.11", "10.213.0.12"], ["ssh-ed25519 A", "ssh-ed25519 B"])
    assert path.read_text().splitlines() == [
        "192.0.2.9 ssh-ed25519 OTHER",
        "10.213.0.11 ssh-ed25519 A",
        "10.213.0.12 ssh-ed25519 B",
    ]
