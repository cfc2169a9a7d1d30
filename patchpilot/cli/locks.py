"""`patchpilot locks list|release`: the host locks runs hold, for operators."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from patchpilot.cli.context import state
from patchpilot.cli.inventory import JsonOpt
from patchpilot.console import info, print_json, print_table

app = typer.Typer(help="Host locks: which run holds which host.", no_args_is_help=True)


def _t(d: datetime | None) -> str:
    return "" if d is None else d.astimezone().strftime("%Y-%m-%d %H:%M:%S")


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every host lock: its run, process, controller, lease and whether it is live."""
    from patchpilot.run.locks import list_locks

    rows = list_locks(state(ctx).engine())
    if as_json:
        print_json(
            [
                {**r, "acquired_at": _t(r["acquired_at"]), "expires_at": _t(r["expires_at"])}
                for r in rows
            ]
        )
    elif not rows:
        info("no host is locked")
    else:
        print_table(
            None,
            ["host", "run", "state", "pid", "controller", "acquired", "lease until"],
            [
                (
                    r["host"],
                    r["run"],
                    r["state"],
                    r["pid"],
                    r["controller"],
                    _t(r["acquired_at"]),
                    _t(r["expires_at"]),
                )
                for r in rows
            ],
        )


@app.command()
def release(
    ctx: typer.Context,
    hosts: Annotated[list[str] | None, typer.Argument(metavar="[HOST]...")] = None,
    run_id: Annotated[
        str | None, typer.Option("--run", metavar="RUN_ID", help="Every lock of this run.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Release locks that look live (their run is gone for sure)."),
    ] = False,
) -> None:
    """Release host locks left behind; live ones only with --force. Audited."""
    from patchpilot.run.locks import release_locks_by_hand

    released = release_locks_by_hand(
        state(ctx).engine(), hosts=hosts or [], run_id=run_id, force=force
    )
    info(f"released {len(released)} lock(s): {', '.join(released)}")
