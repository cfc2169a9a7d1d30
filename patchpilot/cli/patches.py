"""`patchpilot patches` and `patchpilot compliance`: pending updates across the fleet."""

from __future__ import annotations

from typing import Annotated

import typer

from patchpilot.cli.context import state
from patchpilot.cli.inventory import JsonOpt, _cves
from patchpilot.console import info, print_json, print_table

app = typer.Typer(help="Pending updates across the fleet.", no_args_is_help=True)


@app.command("list")
def list_(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("--host", help="Only this host.")] = None,
    security: Annotated[bool, typer.Option("--security", help="Only security updates.")] = False,
    package: Annotated[
        str | None, typer.Option("--package", help="Name or glob, e.g. 'libssl*'.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pending updates with installed and candidate versions, origin and CVE ids."""
    from patchpilot.store.db import session_scope
    from patchpilot.store.queries import pending_updates, update_rows

    with session_scope(state(ctx).engine()) as s:
        rows = update_rows(
            pending_updates(session=s, host=host, security=security or None, package=package)
        )
    if as_json:
        print_json(rows)
        return
    if not rows:
        info("no pending updates match")
        return
    print_table(
        None,
        ["host", "package", "installed", "candidate", "security", "urgency", "CVEs"],
        [
            (
                r["host"],
                r["package"],
                r["installed_version"],
                r["candidate_version"],
                "yes" if r["security"] else "",
                r["urgency"] or "",
                _cves(r["cve_ids"]),
            )
            for r in rows
        ],
    )


def compliance(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Per host: missing security updates and the age of the oldest; the fleet's compliance."""
    from patchpilot.store.db import session_scope
    from patchpilot.store.queries import compliance as compliance_rows

    with session_scope(state(ctx).engine()) as s:
        rows, pct = compliance_rows(session=s)
    if as_json:
        print_json({"compliance_percent": round(pct, 1), "hosts": [r.__dict__ for r in rows]})
        return
    print_table(
        None,
        ["host", "reachable", "missing security", "oldest (days)", "compliant"],
        [
            (
                r.host,
                "yes" if r.reachable else "NO",
                r.missing_security,
                "" if r.oldest_days is None else r.oldest_days,
                "yes" if r.compliant else "NO",
            )
            for r in rows
        ],
    )
    info(f"fleet compliance: {pct:.1f}% of {len(rows)} hosts have no missing security update")
