"""The local lab fleet: Debian hosts with systemd, sshd and apt, each a systemd-nspawn machine
with its own overlay root and network namespace, reachable over SSH on a bridge.

Everything the lab creates is named so that `down` can find it again without the state file:
network namespaces ``pp-*``, veths ``ppvN``, the bridge ``ppbr0``, mounts and processes under
the lab directory.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from patchpilot.errors import BadInputError, LabError
from patchpilot.lab import access, image, network, repo
from patchpilot.lab.hosts import (
    DEFAULT_GROUPS,
    DEFAULT_RELEASE,
    INVENTORY_HEADER,
    LOCK_UNIT,
    RESERVED_GROUPS,
    HostSpec,
    HostStatus,
    LabHost,
    Progress,
    UpResult,
    _written_by_lab,
    cli_ssh_options,
    parse_fleet,
    write_inventory,
)
from patchpilot.lab.procs import (
    _host_release,
    _mounts,
    _parallel,
    _processes,
    _remove_cgroups,
    _ssh_keygen,
    _terminate,
)
from patchpilot.lab.supervisor import MARKER
from patchpilot.lab.system import ensure_kernel_limits, require_lab_prerequisites, run

if TYPE_CHECKING:
    from patchpilot.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_GROUPS",
    "DEFAULT_RELEASE",
    "INVENTORY_HEADER",
    "LOCK_UNIT",
    "RESERVED_GROUPS",
    "HostSpec",
    "HostStatus",
    "Lab",
    "LabHost",
    "UpResult",
    "parse_fleet",
    "write_inventory",
]


class Lab:
    """One lab per machine, rooted at ``settings.lab_dir``."""

    def __init__(self, settings: Settings, progress: Progress | None = None):
        self.settings = settings
        self.dir = settings.lab_dir
        self.cache = settings.lab_cache
        self.net = network.parse_subnet(settings.lab_subnet)
        self.bridge_ip = str(network.bridge_address(self.net))
        self.repo_dir = self.dir / "repo"
        self.key = self.dir / "ssh" / "id_ed25519"
        # The hosts' SSH keys, as `up` made them: what every connection to a host checks.
        self.known_hosts = self.dir / "ssh" / "known_hosts"
        # The lab user's sudo password (image.LAB_USER), made once per lab.
        self.user_password_file = self.dir / "ssh" / f"{image.LAB_USER}.password"
        self.progress: Progress = progress or (lambda msg: log.info("%s", msg))

    # ---- state --------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def load_state(self) -> dict[str, object]:
        try:
            data: dict[str, object] = json.loads(self.state_file.read_text())
            return data
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable lab state %s: %s", self.state_file, exc)
            return {}

    def hosts(self) -> list[LabHost]:
        raw = self.load_state().get("hosts", [])
        return [LabHost(**h) for h in raw] if isinstance(raw, list) else []

    def host(self, name: str) -> LabHost:
        for h in self.hosts():
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.hosts()) or "none: run `patchpilot lab up`"
        raise BadInputError(f"no lab host named {name!r}", hint=f"lab hosts: {known}")

    def _save_state(self, hosts: list[LabHost], inventory: Path | None) -> None:
        data = {
            "subnet": str(self.net),
            "bridge": self.bridge_ip,
            "repo_port": self.settings.lab_repo_port,
            "inventory": str(inventory) if inventory else None,
            "key": str(self.key),
            "hosts": [asdict(h) for h in hosts],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.state_file)

    def host_dir(self, name: str) -> Path:
        return self.dir / "hosts" / name

    # ---- up -----------------------------------------------------------------------------
    def up(
        self, specs: list[HostSpec], *, inventory: Path, with_debian_updates: bool = False
    ) -> UpResult:
        require_lab_prerequisites()
        if len(specs) > network.capacity(self.net):
            raise BadInputError(
                f"{len(specs)} hosts do not fit in the lab subnet {self.net}",
                hint="ask for fewer hosts or set a larger lab_subnet",
            )
        t0 = time.monotonic()
        timings: dict[str, float] = {}
        self.dir.mkdir(parents=True, exist_ok=True)
        wanted = [
            LabHost(
                s.name, s.group, s.release, s.index, str(network.host_address(self.net, s.index))
            )
            for s in specs
        ]
        keep = {h.name for h in wanted}
        for old in self.hosts():
            if old.name not in keep or old not in wanted:
                self.progress(f"removing host {old.name}")
                self._remove_host(old)
        self._clean_orphans(keep)

        bases = {}
        for release in sorted({h.release for h in wanted}):
            if not image.is_ready(self.cache, release):
                self.progress(f"building the {release} base image (once; about a minute)")
            bases[release] = image.ensure_base_image(self.cache, release)
        timings["image"] = time.monotonic() - t0

        t = time.monotonic()
        self._ensure_key()
        network.ensure_bridge(self.net)
        published = self._ensure_repo(bases, with_debian_updates)
        timings["repo"] = time.monotonic() - t

        t = time.monotonic()
        for change in ensure_kernel_limits():
            self.progress(f"raised kernel limit {change}")
        self.progress(f"booting {len(wanted)} hosts")
        host_keys = [self._prepare_host(h, bases[h.release]) for h in wanted]
        self._write_known_hosts(wanted, host_keys)
        self._save_state(wanted, inventory)
        for h in wanted:
            if not self.is_running(h):
                self._start_supervisor(h)
        self.wait_for_ssh(wanted)
        timings["boot"] = time.monotonic() - t

        t = time.monotonic()
        self.refresh_apt(wanted)
        timings["apt_update"] = time.monotonic() - t
        write_inventory(inventory, wanted, self.key, self.known_hosts)
        self._save_state(wanted, inventory)
        timings["total"] = time.monotonic() - t0
        return UpResult(wanted, inventory, timings, published)

    def _ensure_key(self) -> None:
        access.ensure_key(self.key, self.user_password_file)

    @property
    def user_password(self) -> str:
        """The sudo password of the lab's non-root user."""
        return self.user_password_file.read_text().strip()

    def _write_known_hosts(self, hosts: list[LabHost], keys: list[str]) -> None:
        access.write_known_hosts(self.known_hosts, [h.address for h in hosts], keys)

    def _ensure_repo(self, bases: dict[str, Path], with_debian_updates: bool) -> list[str]:
        from patchpilot.lab import demo

        self.repo_dir.mkdir(parents=True, exist_ok=True)
        new: list[Path] = []
        for d in demo.DEFAULT_DEMO_VERSIONS:
            path = (
                repo.pool(self.repo_dir) / f"{demo.DEMO_PACKAGE}_{d.version.split(':')[-1]}_all.deb"
            )
            if not path.exists():
                new.append(demo.build_demo_deb(d, repo.pool(self.repo_dir)))
        if with_debian_updates:
            from patchpilot.lab import debian_updates

            for release, base in bases.items():
                if release != _host_release():
                    self.progress(
                        f"skipping Debian updates for {release}: "
                        f"this machine runs {_host_release()}"
                    )
                    continue
                updates = debian_updates.find_debian_updates(base)
                self.progress(f"publishing {len(updates)} real Debian updates for {release}")
                new += debian_updates.download_debian_updates(updates, repo.pool(self.repo_dir))
        if new or not (self.repo_dir / "Packages").exists():
            repo.index(self.repo_dir)
        self._ensure_repo_server()
        return sorted(p.name for p in new)

    def _ensure_repo_server(self) -> None:
        if self._repo_server_pids():
            return
        pid = repo.start_server(
            self.repo_dir, self.bridge_ip, self.settings.lab_repo_port, self.dir / "repo-server.log"
        )
        log.debug("repo server pid %s", pid)

    def _prepare_host(self, h: LabHost, base: Path) -> str:
        """Mount and set up a host's root; returns its SSH host key (public, one line)."""
        d = self.host_dir(h.name)
        root = d / "root"
        for sub in ("upper", "work", "root"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(root):
            run(
                [
                    "mount",
                    "-t",
                    "overlay",
                    "overlay",
                    "-o",
                    f"lowerdir={base},upperdir={d / 'upper'},workdir={d / 'work'}",
                    str(root),
                ],
                what=f"mounting the root of {h.name}",
            )
        (root / "etc" / "hostname").write_text(f"{h.name}\n")
        (root / "etc" / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{h.name}\n{self.bridge_ip}\tpatchpilot-lab-repo\n"
        )
        machine_id = root / "etc" / "machine-id"
        if not machine_id.read_text().strip():
            machine_id.write_text(uuid.uuid4().hex + "\n")
        ssh_dir = root / "root" / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        auth = ssh_dir / "authorized_keys"
        auth.write_text(self.key.with_suffix(".pub").read_text())
        auth.chmod(0o600)
        access.prepare_user(root, self.key.with_suffix(".pub"), self.user_password)
        host_key = root / "etc" / "ssh" / "ssh_host_ed25519_key"
        if not host_key.exists():
            _ssh_keygen(host_key, f"root@{h.name}")
        public = host_key.with_suffix(".pub").read_text().split()
        (root / "etc" / "ssh" / "sshd_config.d" / "patchpilot-lab.conf").write_text(
            "HostKey /etc/ssh/ssh_host_ed25519_key\nUseDNS no\nMaxStartups 100:30:200\n"
        )
        # sshd's pam_env logs an error at every login without this file; the health checks
        # count error-level journal lines, so the lab starts with none.
        locale = root / "etc" / "default" / "locale"
        if not locale.exists():
            locale.write_text('LANG="C.UTF-8"\n')
        # Hosts have no route to Debian: apt's daily timers could only fail, and at random
        # moments would take the dpkg lock in the middle of a test.
        for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
            masked = root / "etc" / "systemd" / "system" / timer
            if not masked.is_symlink():
                masked.symlink_to("/dev/null")
        (root / "etc" / "apt" / "sources.list.d" / "patchpilot-lab.list").write_text(
            f"deb [trusted=yes] http://{self.bridge_ip}:{self.settings.lab_repo_port} ./\n"
        )
        network.ensure_host_network(
            h.name, h.index, ipaddress.IPv4Address(h.address), self.net.prefixlen
        )
        return " ".join(public[:2])

    def _start_supervisor(self, h: LabHost) -> None:
        d = self.host_dir(h.name)
        with open(d / "console.log", "ab") as logf:
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    MARKER,
                    "--name",
                    h.name,
                    "--root",
                    str(d / "root"),
                    "--netns",
                    network.netns_name(h.name),
                ],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
            )

    # ---- processes ----------------------------------------------------------------------
    def _supervisor_pids(self) -> dict[str, int]:
        """host name -> pid of its supervisor, found in /proc (the truth, not the state file)."""
        found: dict[str, int] = {}
        hosts_dir = str(self.dir / "hosts") + "/"
        for pid, argv in _processes():
            if MARKER in argv and "--root" in argv:
                root = argv[argv.index("--root") + 1]
                if root.startswith(hosts_dir):
                    found[argv[argv.index("--name") + 1]] = pid
        return found

    def _nspawn_pids(self) -> list[int]:
        hosts_dir = str(self.dir / "hosts") + "/"
        return [
            pid
            for pid, argv in _processes()
            if argv
            and argv[0].endswith("systemd-nspawn")
            and any(a.startswith(hosts_dir) for a in argv)
        ]

    def _repo_server_pids(self) -> list[int]:
        return [
            pid
            for pid, argv in _processes()
            if repo.SERVER_MARKER in argv and str(self.repo_dir) in argv
        ]

    def is_running(self, h: LabHost) -> bool:
        return h.name in self._supervisor_pids()

    # ---- waiting and talking to hosts ----------------------------------------------------
    def ssh_argv(self, h: LabHost, command: str | None = None, *, tty: bool = False) -> list[str]:
        argv = ["ssh", "-i", str(self.key), *cli_ssh_options(self.known_hosts)]
        if tty:
            argv.append("-t")
        argv.append(f"root@{h.address}")
        if command:
            argv.append(command)
        return argv

    def ssh(
        self, h: LabHost, command: str, *, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(
            self.ssh_argv(h, command), timeout=timeout, check=check, what=f"`{command}` on {h.name}"
        )

    def ssh_ok(self, h: LabHost, timeout: float = 8) -> bool:
        try:
            return self.ssh(h, "true", timeout=timeout, check=False).returncode == 0
        except LabError:
            return False

    def wait_for_ssh(self, hosts: list[LabHost], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout

        def wait(h: LabHost) -> str | None:
            while time.monotonic() < deadline:
                if self.ssh_ok(h, timeout=6):
                    return None
                if not self.is_running(h):
                    log_file = self.host_dir(h.name) / "console.log"
                    return f"{h.name} stopped while booting (see {log_file})"
                time.sleep(0.3)
            return f"{h.name} did not answer SSH within {timeout:.0f}s"

        errors = [e for e in _parallel(wait, hosts) if e]
        if errors:
            raise LabError(
                errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
                hint="see the host's console.log; `patchpilot lab down` cleans up",
            )

    def refresh_apt(self, hosts: Iterable[LabHost]) -> None:
        """`apt-get update` on every running host, so its apt sees the lab repo as it is now."""
        targets = [h for h in hosts if self.is_running(h) and network.link_is_up(h.index)]

        def update(h: LabHost) -> str | None:
            proc = self.ssh(h, "apt-get update -q -o APT::Update::Error-Mode=any", check=False)
            return (
                None
                if proc.returncode == 0
                else f"{h.name}: {(proc.stderr or proc.stdout).strip()[-200:]}"
            )

        errors = [e for e in _parallel(update, targets) if e]
        if errors:
            raise LabError(f"apt-get update failed on {errors[0]}")

    def status(self) -> list[HostStatus]:
        hosts = self.hosts()
        running = self._supervisor_pids()

        def one(h: LabHost) -> HostStatus:
            up = h.name in running
            linked = network.link_is_up(h.index)
            state = "stopped" if not up else ("cut" if not linked else "running")
            ok = up and linked and self.ssh_ok(h, timeout=6)
            return HostStatus(h.name, h.group, h.address, state, ok)

        return list(_parallel(one, hosts))

    # ---- down ---------------------------------------------------------------------------
    def _remove_host(self, h: LabHost) -> None:
        pid = self._supervisor_pids().get(h.name)
        if pid:
            _terminate([pid])
        self._unmount_under(self.host_dir(h.name))
        network.remove_host_network(h.name, h.index)
        shutil.rmtree(self.host_dir(h.name), ignore_errors=True)

    def _clean_orphans(self, keep: set[str]) -> None:
        """Remove hosts an earlier run left behind that the state file does not know about."""
        known = {h.name for h in self.hosts()}
        for name, pid in self._supervisor_pids().items():
            if name not in keep and name not in known:
                _terminate([pid])
        hosts_dir = self.dir / "hosts"
        if hosts_dir.exists():
            for d in hosts_dir.iterdir():
                if d.name not in keep:
                    self._unmount_under(d)
                    shutil.rmtree(d, ignore_errors=True)
        for ns in network.leftover_netns():
            if ns[len(network.NETNS_PREFIX) :] not in keep:
                run(["ip", "netns", "del", ns], check=False)

    def _unmount_under(self, path: Path) -> None:
        prefix = str(path)
        for mnt in sorted(_mounts(), reverse=True):
            inside = mnt == prefix or mnt.startswith(prefix + "/")
            if inside and run(["umount", mnt], check=False).returncode != 0:
                run(["umount", "-l", mnt], check=False)

    def down(self) -> dict[str, int]:
        """Stop everything and remove every trace, including an earlier run's leftovers."""
        require_lab_prerequisites()
        state = self.load_state()
        report = {"hosts": 0, "mounts": 0, "namespaces": 0, "links": 0, "servers": 0}
        sups = list(self._supervisor_pids().values())
        report["hosts"] = len(sups)
        _terminate(sups)
        _terminate(self._nspawn_pids(), wait=10)  # nspawns whose supervisor died
        servers = self._repo_server_pids()
        report["servers"] = len(servers)
        _terminate(servers, wait=5)
        mounts = [m for m in _mounts() if m.startswith(str(self.dir) + "/")]
        report["mounts"] = len(mounts)
        self._unmount_under(self.dir)
        report["namespaces"] = len(network.leftover_netns())
        links = network.leftover_links()
        report["links"] = len(links)
        network.remove_all(links)
        _remove_cgroups()
        inv = state.get("inventory")
        if isinstance(inv, str) and Path(inv).is_file() and _written_by_lab(Path(inv)):
            Path(inv).unlink()
        for sub in ("hosts", "repo"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        for f in ("state.json", "repo-server.log"):
            (self.dir / f).unlink(missing_ok=True)
        return report

    def leftovers(self) -> dict[str, list[str]]:
        """What of a lab exists on this machine now (used by tests and `lab status`)."""
        return {
            "processes": [
                str(p)
                for p in [
                    *self._supervisor_pids().values(),
                    *self._nspawn_pids(),
                    *self._repo_server_pids(),
                ]
            ],
            "mounts": [m for m in _mounts() if m.startswith(str(self.dir) + "/")],
            "namespaces": network.leftover_netns(),
            "links": network.leftover_links(),
        }
