"""`patchpilot report RUN_ID|last|fleet`: one self-contained HTML file (or --json)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from patchpilot.cli.context import risk_thresholds, state
from patchpilot.cli.inventory import JsonOpt
from patchpilot.console import info, print_json
from patchpilot.errors import BadInputError

OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out", "-o", help="HTML file to write (default: report-<run id>.html).", dir_okay=False
    ),
]


def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        d = datetime.fromisoformat(text)
    except ValueError:
        raise BadInputError(
            f"--since {text!r} is not a date", hint="e.g. 2026-11-01 or 2026-11-01T00:00"
        ) from None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def report(
    ctx: typer.Context,
    what: Annotated[
        str,
        typer.Argument(
            metavar="RUN_ID|last|fleet",
            help="A run id or `last` for a run's report; `fleet` for the KPIs over all runs.",
        ),
    ],
    out: OutOpt = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Fleet report: only runs started on or after this date."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """A run's timeline, health evidence plots, hosts, incidents, audit and risks; or the
    fleet's KPIs, compliance over time and the risk model's calibration."""
    from patchpilot.store.db import session_scope

    with session_scope(state(ctx).engine()) as s:
        if what == "fleet":
            from patchpilot.report.fleet import fleet_report

            data = fleet_report(s, since=_since(since))
            name = "report-fleet.html"
        else:
            if since:
                raise BadInputError("--since is for `report fleet`")
            from patchpilot.report.run import run_report

            data = run_report(s, what, thresholds=risk_thresholds(ctx))
            name = f"report-{data['run']['id']}.html"
    if as_json:
        print_json(data)
        return
    from patchpilot.report.html import render_fleet, render_run, write_atomic

    html = render_fleet(data) if what == "fleet" else render_run(data)
    path = out or Path(name)
    write_atomic(path, html)
    info(f"report written to {path} ({len(html.encode()) / 1024:.0f} KiB)")
