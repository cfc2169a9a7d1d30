"""`patchpilot runs list|show`: what runs did, with their evidence and audit log."""

from __future__ import annotations

from typing import Annotated

import typer

from patchpilot.cli.context import state
from patchpilot.cli.inventory import JsonOpt
from patchpilot.console import info, print_json

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
