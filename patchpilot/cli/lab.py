"""`patchpilot lab`: a real local fleet of Debian hosts to patch, break and restore."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from patchpilot.cli.context import state
from patchpilot.console import console, info, print_json, print_table
from patchpilot.lab import faults
from patchpilot.lab import offer as offer_
from patchpilot.lab.fleet import DEFAULT_GROUPS, DEFAULT_RELEASE, Lab, parse_fleet

app = typer.Typer(
    help="A local lab fleet: systemd-nspawn hosts with sshd and apt (needs root).",
    no_args_is_help=True,
)
fault = typer.Typer(help="Break lab hosts on purpose, and mend them.", no_args_is_help=True)
app.add_typer(fault, name="fault")

DEFAULT_INVENTORY = Path("inventory/lab.yml")


def _lab(ctx: typer.Context) -> Lab:
    return Lab(state(ctx).settings, progress=info)


@app.command()
def up(
    ctx: typer.Context,
    hosts: Annotated[
        int | None, typer.Option("--hosts", min=1, help="Number of hosts (group `lab`).")
    ] = None,
    groups: Annotated[
        str | None,
        typer.Option(
            "--groups",
            help=f"Hosts per group, NAME=COUNT[:RELEASE],... \\[default: {DEFAULT_GROUPS}]",
        ),
    ] = None,
    release: Annotated[
        str, typer.Option("--release", help="Debian release of the hosts.")
    ] = DEFAULT_RELEASE,
    inventory: Annotated[
        Path, typer.Option("--inventory", "-i", help="Where to write the Ansible inventory.")
    ] = DEFAULT_INVENTORY,
    with_debian_updates: Annotated[
        bool,
        typer.Option(
            "--with-debian-updates",
            help="Also publish real newer Debian versions of the hosts' packages.",
        ),
    ] = False,
) -> None:
    """Boot the fleet (build the base image once), publish the demo packages, write the inventory.

    Safe to run again: running hosts that still match are kept, others are added or removed.
    """
    specs = parse_fleet(hosts, groups, release)
    result = _lab(ctx).up(
        specs, inventory=inventory.absolute(), with_debian_updates=with_debian_updates
    )
    t = result.timings
    info(
        f"lab up: {len(result.hosts)} hosts in {t['total']:.1f}s "
        f"(boot {t['boot']:.1f}s, repo {t['repo']:.1f}s, apt update {t['apt_update']:.1f}s)"
    )
    if result.published:
        info(f"published {len(result.published)} new packages")
    console.print(f"inventory: {_rel(result.inventory)}")


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop every host; remove mounts, namespaces, links and the repo server, leftovers too."""
    report = _lab(ctx).down()
    info(
        "lab down: stopped {hosts} hosts, {servers} repo servers; removed {mounts} mounts, "
        "{namespaces} namespaces, {links} links".format(**report)
    )


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """One row per host: address, state (running, stopped, cut) and whether SSH answers."""
    rows = _lab(ctx).status()
    if as_json:
        print_json([r.__dict__ for r in rows])
        return
    if not rows:
        info("the lab is down (run `patchpilot lab up`)")
        return
    print_table(
        None,
        ["host", "group", "address", "state", "ssh ok"],
        [(r.name, r.group, r.address, r.state, "yes" if r.ssh_ok else "no") for r in rows],
    )


@app.command(context_settings={"allow_interspersed_args": False})
def ssh(
    ctx: typer.Context,
    host: Annotated[str, typer.Argument(help="Lab host name.")],
    command: Annotated[
        list[str] | None, typer.Argument(help="Command to run; a shell if omitted.")
    ] = None,
) -> None:
    """Open a shell on a lab host, or run a command there (its exit code is passed on)."""
    lab = _lab(ctx)
    argv = lab.ssh_argv(lab.host(host), " ".join(command) if command else None, tty=not command)
    os.execvp(argv[0], argv)


@app.command()
def publish(
    ctx: typer.Context,
    debs: Annotated[list[Path], typer.Argument(help=".deb files to add to the lab repository.")],
    refresh: Annotated[
        bool, typer.Option(help="Run apt-get update on the hosts afterwards.")
    ] = True,
) -> None:
    """Add packages to the lab's apt repository and re-index it; the hosts' apt sees them."""
    for info_ in offer_.publish(_lab(ctx), debs, refresh=refresh):
        console.print(f"published {info_.package} {info_.version} ({info_.arch})")


@app.command("demo")
def demo_cmd(
    ctx: typer.Context,
    offer: Annotated[
        str | None,
        typer.Option("--offer", help="Offer demoweb up to this version (newer ones are hidden)."),
    ] = None,
    install: Annotated[
        str | None, typer.Option("--install", help="Install this demoweb version on every host.")
    ] = None,
) -> None:
    """Stage the demo service: which version hosts run, and which one they are offered."""
    offered, newest = offer_.demo_offer(_lab(ctx), offer=offer, install=install)
    info(f"demoweb versions offered: {', '.join(offered)} (candidate {newest})")
    if install:
        info(f"demoweb {install} installed and active on every running host")


@app.command("demo-deb")
def demo_deb(
    spec: Annotated[
        str, typer.Argument(help="VERSION[:ok|http500|install-fails|slow=MS], e.g. 1.4-1:slow=300")
    ],
    out: Annotated[Path, typer.Option("--out", help="Directory for the .deb.")] = Path("."),
) -> None:
    """Build a version of the demo service package (publish it with `lab publish`)."""
    from patchpilot.lab.demo import build_demo_deb, parse_demo_spec

    console.print(str(build_demo_deb(parse_demo_spec(spec), out)), soft_wrap=True)


@fault.command("stop")
def fault_stop(ctx: typer.Context, host: str) -> None:
    """Shut a host down cleanly (it stays down until `fault restore` or `lab up`)."""
    faults.stop_host(_lab(ctx), host)
    info(f"{host}: stopped")


@fault.command("cut")
def fault_cut(ctx: typer.Context, host: str) -> None:
    """Cut a host's network: it keeps running but nothing reaches it."""
    faults.cut_host(_lab(ctx), host)
    info(f"{host}: network cut")


@fault.command("dpkg-lock")
def fault_dpkg_lock(
    ctx: typer.Context,
    host: str,
    seconds: Annotated[
        int, typer.Option("--seconds", min=1, help="Release the lock after this long.")
    ] = 600,
) -> None:
    """Hold the dpkg/apt lock on a host, as a stuck package run would."""
    faults.hold_dpkg_lock(_lab(ctx), host, seconds)
    info(f"{host}: dpkg lock held for up to {seconds}s")


@fault.command("restore")
def fault_restore(ctx: typer.Context, host: str) -> None:
    """Undo every fault on a host: reconnect, boot if stopped, release the dpkg lock."""
    faults.restore_host(_lab(ctx), host)
    info(f"{host}: restored")


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
