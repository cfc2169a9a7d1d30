"""Packages for the lab: publishing .debs into its repository, and staging the demo service
(which version the hosts are offered, which one they run)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from patchpilot.errors import LabError
from patchpilot.lab import network, repo
from patchpilot.lab.hosts import LabHost
from patchpilot.lab.procs import _parallel
from patchpilot.lab.system import require_lab_prerequisites

if TYPE_CHECKING:
    from patchpilot.lab.fleet import Lab


def publish(lab: Lab, debs: list[Path], *, refresh: bool = True) -> list[repo.DebInfo]:
    require_lab_prerequisites()
    if not lab.state_file.exists():
        raise LabError("the lab is not up", hint="run `patchpilot lab up` first")
    infos = repo.add_packages(lab.repo_dir, debs)
    lab._ensure_repo_server()
    if refresh:
        lab.refresh_apt(lab.hosts())
    return infos


def demo_offer(lab: Lab, *, offer: str | None, install: str | None) -> tuple[list[str], str | None]:
    """Stage the demo service: the repo offers demoweb versions up to `offer` (newer ones
    wait in attic/, so `offer` is every host's candidate while older versions stay
    downloadable for rollbacks), and `install` is installed on every running host."""
    from patchpilot.lab import demo
    from patchpilot.patches import compare_versions, validate_version

    require_lab_prerequisites()
    if not lab.state_file.exists():
        raise LabError("the lab is not up", hint="run `patchpilot lab up` first")
    attic = lab.repo_dir / "attic"
    attic.mkdir(parents=True, exist_ok=True)
    # A version may be in both places (`lab up` publishes every demo version into the pool
    # again): each ends up in exactly one.
    debs: dict[str, list[Path]] = {}
    for d in list(repo.pool(lab.repo_dir).glob(f"{demo.DEMO_PACKAGE}_*.deb")) + list(
        attic.glob(f"{demo.DEMO_PACKAGE}_*.deb")
    ):
        debs.setdefault(repo.read_deb(d).version, []).append(d)
    for version in (offer, install):
        if version is not None:
            validate_version(version, where="demo version")
            if version not in debs:
                raise LabError(
                    f"demoweb {version} is not in the lab repo",
                    hint=f"known: {', '.join(sorted(debs))}; build one with "
                    "`lab demo-deb VERSION[:BEHAVIOUR]` and `lab publish` it",
                )
    offered = []
    for version, paths in debs.items():
        keep = offer is None or compare_versions(version, offer) <= 0
        target = (repo.pool(lab.repo_dir) if keep else attic) / paths[0].name
        for path in paths:
            if path == target:
                continue
            if target.exists():
                path.unlink()
            else:
                os.replace(path, target)
        if keep:
            offered.append(version)
    repo.index(lab.repo_dir)
    hosts = lab.hosts()
    lab.refresh_apt(hosts)
    if install is not None:
        cmd = (
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "
            f"{demo.DEMO_PACKAGE}={install} >/dev/null && systemctl is-active -q "
            f"{demo.DEMO_PACKAGE}"
        )
        targets = [h for h in hosts if lab.is_running(h) and network.link_is_up(h.index)]

        def one(h: LabHost) -> str | None:
            proc = lab.ssh(h, cmd, check=False, timeout=300)
            return None if proc.returncode == 0 else f"{h.name}: {proc.stderr.strip()[-200:]}"

        errors = [e for e in _parallel(one, targets) if e]
        if errors:
            raise LabError(f"installing demoweb {install} failed on {errors[0]}")
    newest = max(offered, key=functools.cmp_to_key(compare_versions)) if offered else None
    return sorted(offered, key=functools.cmp_to_key(compare_versions)), newest
