"""`patchpilot inventory`: gather facts from hosts; list and show what the store knows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from patchpilot.cli.access import (
    AcceptNewOpt,
    AskBecomeOpt,
    AskVaultOpt,
    BecomeOpt,
    ForksOpt,
    LimitOpt,
    VaultFileOpt,
    VaultIdOpt,
)
from patchpilot.cli.context import state
from patchpilot.console import HostProgress, console, info, print_json, print_table
from patchpilot.errors import BadInputError, ExitCode

app = typer.Typer(help="Gather facts from hosts; list and show them.", no_args_is_help=True)

InventoryOpt = Annotated[
    Path, typer.Option("--inventory", "-i", help="Ansible inventory: file, directory or script.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.command()
def gather(
    ctx: typer.Context,
    inventory: InventoryOpt,
    limit: LimitOpt = None,
    forks: ForksOpt = None,
    refresh: Annotated[bool, typer.Option(help="Refresh package lists on the hosts first.")] = True,
    become: BecomeOpt = None,
    ask_become_pass: AskBecomeOpt = False,
    vault_id: VaultIdOpt = None,
    vault_password_file: VaultFileOpt = None,
    ask_vault_pass: AskVaultOpt = False,
    accept_new_host_keys: AcceptNewOpt = False,
) -> None:
    """Gather OS facts, packages, services and pending updates (with changelog facts)."""
    from patchpilot.cli.access import setup_access
    from patchpilot.inventory import gather as gather_facts

    setup_access(
        become=become,
        ask_become_pass=ask_become_pass,
        vault_id=vault_id,
        vault_password_file=vault_password_file,
        ask_vault_pass=ask_vault_pass,
        accept_new_host_keys=accept_new_host_keys,
        forks=forks,
    )
    st = state(ctx)
    st.settings  # noqa: B018  (settings errors before anything runs)
    bar = HostProgress("gathering")
    try:
        summary = gather_facts(
            st.engine,
            inventory,
            limit=limit,
            refresh=refresh,
            on_start=bar.start,
            on_host_done=bar.advance,
        )
    finally:
        bar.stop()
    for host, msg in sorted(summary.unreachable.items()):
        info(f"{host}: unreachable: {msg}")
    for host, msg in sorted(summary.failed.items()):
        info(f"{host}: failed: {msg}")
    info(
        f"gather {summary.run_id}: {len(summary.ok)} of {summary.total} hosts gathered, "
        f"{len(summary.unreachable)} unreachable, {len(summary.failed)} failed"
        + _ansible_note(summary.forks)
    )
    if summary.failed or summary.unreachable:
        raise typer.Exit(ExitCode.FAILED if not summary.ok else ExitCode.PARTIAL)


def _ansible_note(forks: int | None) -> str:
    from patchpilot.ops.ansible_setup import current

    config = current().config
    parts = ([f"forks {forks}"] if forks else []) + [
        f"ansible.cfg {config}" if config else "no ansible.cfg"
    ]
    return f" ({', '.join(parts)})"


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Hosts with OS, last seen, and pending and security update counts."""
    from patchpilot.store.db import session_scope
    from patchpilot.store.queries import list_hosts

    with session_scope(state(ctx).engine()) as s:
        rows = list_hosts(session=s)
    if as_json:
        print_json([r.__dict__ for r in rows])
        return
    if not rows:
        info("no hosts yet: run `patchpilot inventory gather -i INVENTORY`")
        return
    print_table(
        None,
        ["host", "os", "kernel", "reachable", "last seen", "pending", "security"],
        [
            (
                r.name,
                r.os,
                r.kernel or "",
                "yes" if r.reachable else "NO",
                r.last_seen.strftime("%Y-%m-%d %H:%M") if r.last_seen else "never",
                r.pending,
                r.security,
            )
            for r in rows
        ],
    )


@app.command()
def show(ctx: typer.Context, host: str, as_json: JsonOpt = False) -> None:
    """Everything the store knows about one host."""
    from patchpilot.store.db import session_scope
    from patchpilot.store.queries import host_detail

    with session_scope(state(ctx).engine()) as s:
        detail = host_detail(session=s, name=host)
    if detail is None:
        raise BadInputError(
            f"no host named {host!r} in the store", hint="see `patchpilot inventory list`"
        )
    if as_json:
        print_json(detail)
        return
    h = detail["host"]
    console.print(f"[bold]{host}[/]  {detail['os']}  kernel {h['kernel']}  {h['architecture']}")
    console.print(
        f"address {h['address']}  groups {', '.join(h['groups']) or '-'}  "
        f"reachable {'yes' if h['reachable'] else 'NO'}  last seen {h['last_seen']}"
    )
    if h["last_error"]:
        console.print(f"[red]last error:[/] {h['last_error']}", markup=True)
    running = sum(1 for s_ in detail["services"] if s_["state"] == "running")
    console.print(
        f"{detail['installed_packages']} packages installed, {running} services running, "
        f"reboot required: {'yes' if h['reboot_required'] else 'no'}"
    )
    print_table(
        "pending updates",
        ["package", "installed", "candidate", "security", "CVEs"],
        [
            (
                u["package"],
                u["installed_version"],
                u["candidate_version"],
                "yes" if u["security"] else "",
                _cves(u["cve_ids"]),
            )
            for u in detail["pending_updates"]
        ],
    )


def _cves(ids: list[str], most: int = 1) -> str:
    return ", ".join(ids[:most]) + (f" +{len(ids) - most}" if len(ids) > most else "")
