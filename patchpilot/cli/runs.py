"""`patchpilot runs list|show`: what runs did, with their evidence and audit log."""

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
    VaultFileOpt,
    VaultIdOpt,
    setup_access,
)
from patchpilot.cli.context import state
from patchpilot.cli.inventory import JsonOpt
from patchpilot.console import info, print_json
from patchpilot.errors import BadInputError

app = typer.Typer(
    help="Runs: what happened, host by host, with the evidence.", no_args_is_help=True
)


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every run, newest first."""
    from patchpilot.cli.render import render_runs
    from patchpilot.store.db import session_scope
    from patchpilot.store.runs import list_runs

    with session_scope(state(ctx).engine()) as s:
        rows = list_runs(s)
    if as_json:
        print_json(rows)
    elif not rows:
        info("no runs yet")
    else:
        render_runs(rows)


@app.command()
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="A run id, or `last`.")],
    as_json: JsonOpt = False,
) -> None:
    """A run's timeline, per-host results, verdicts with their evidence, incidents, audit."""
    from patchpilot.cli.render import render_run
    from patchpilot.store.db import session_scope
    from patchpilot.store.runs import run_detail

    with session_scope(state(ctx).engine()) as s:
        d = run_detail(s, run_id)
    if as_json:
        print_json(d)
    else:
        render_run(d)


@app.command("prune")
def prune_(
    ctx: typer.Context,
    run_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="[RUN_ID]...", help="Runs to prune (default: by --older-than)."),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Runs finished longer ago than this (e.g. 30d); default: the "
            "rollback_keep_days setting.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")
    ] = False,
    inventory: Annotated[
        Path | None, typer.Option("-i", "--inventory", help="Default: each run's own.")
    ] = None,
    become: BecomeOpt = None,
    ask_become_pass: AskBecomeOpt = False,
    vault_id: VaultIdOpt = None,
    vault_password_file: VaultFileOpt = None,
    ask_vault_pass: AskVaultOpt = False,
    accept_new_host_keys: AcceptNewOpt = False,
    forks: ForksOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove old runs' rollback artifacts from their hosts (never a running or paused run's,
    nor a host whose rollback failed or whose state is unknown)."""
    from datetime import UTC, datetime, timedelta

    from patchpilot.durations import parse_duration
    from patchpilot.ops.fleetops import AnsibleOps
    from patchpilot.run.prune import prunable, prune

    st = state(ctx)
    if run_ids and older_than:
        raise BadInputError(
            "give run ids or --older-than, not both",
            hint="`patchpilot runs prune --older-than 30d` or `patchpilot runs prune RUN_ID`",
        )
    if not run_ids and not older_than and st.settings.rollback_keep_days == 0:
        raise BadInputError(
            "no retention is set (rollback_keep_days is 0): say which runs to prune",
            hint="`patchpilot runs prune --older-than 30d` or `patchpilot runs prune RUN_ID`",
        )
    try:
        age = timedelta(
            seconds=parse_duration(older_than)
            if older_than
            else st.settings.rollback_keep_days * 86400
        )
    except ValueError as exc:
        raise BadInputError(f"--older-than: {exc}", hint="e.g. 30d, 12h, 90m") from None
    engine = st.engine()
    items = prunable(
        engine, older_than=None if run_ids else age, now=datetime.now(UTC), run_ids=run_ids or ()
    )
    unknown = sorted(set(run_ids or ()) - {i.run_id for i in items})
    if not items:
        if as_json:
            print_json({})
        else:
            info(
                "nothing to prune"
                + (f" (no finished run with artifacts: {', '.join(unknown)})" if unknown else "")
            )
        return
    if dry_run:
        plan = {
            i.run_id: {
                **{h: "would be pruned" for h in i.hosts},
                **{h: f"kept ({w})" for h, w in i.kept.items()},
            }
            for i in items
        }
        if as_json:
            print_json(plan)
        else:
            for run_id, hosts in plan.items():
                info(f"{run_id}: " + ", ".join(f"{h} {w}" for h, w in sorted(hosts.items())))
        return
    setup_access(
        become=become,
        ask_become_pass=ask_become_pass,
        vault_id=vault_id,
        vault_password_file=vault_password_file,
        ask_vault_pass=ask_vault_pass,
        accept_new_host_keys=accept_new_host_keys,
        forks=forks,
    )
    by_inventory: dict[str, list] = {}
    for it in items:
        by_inventory.setdefault(str(inventory or it.inventory), []).append(it)
    done: dict[str, dict[str, str]] = {}
    for inv, group in by_inventory.items():
        done.update(prune(engine, group, AnsibleOps(inv)))
    if as_json:
        print_json(done)
        return
    for run_id, hosts in done.items():
        info(f"{run_id}: " + ", ".join(f"{h} {w}" for h, w in sorted(hosts.items())))
    failed = [h for hosts in done.values() for h, w in hosts.items() if w.startswith("not ")]
    if failed:
        raise typer.Exit(1)
