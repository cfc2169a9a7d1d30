"""`patchpilot patches` and `patchpilot compliance`: pending updates across the fleet."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from patchpilot.cli.context import state
from patchpilot.cli.inventory import JsonOpt, _cves
from patchpilot.console import info, print_json, print_table

app = typer.Typer(help="Pending updates across the fleet.", no_args_is_help=True)

CsvOpt = Annotated[
    bool, typer.Option("--csv", help="CSV on stdout (CVE ids space-separated in one column).")
]
UPDATE_COLUMNS = (
    "host",
    "package",
    "arch",
    "source",
    "installed_version",
    "candidate_version",
    "security",
    "origin",
    "urgency",
    "cve_ids",
    "cves",
    "age_days",
    "first_seen",
    "changelog_date",
    "reboot_needed",
    "held",
)
COMPLIANCE_COLUMNS = (
    "host",
    "groups",
    "os",
    "reachable",
    "last_seen",
    "last_boot",
    "reboot_required",
    "compliant",
    "package",
    "source",
    "installed_version",
    "candidate_version",
    "origin",
    "urgency",
    "cve_ids",
    "age_days",
    "first_seen",
    "changelog_date",
)


def _cell(value: Any) -> str:
    """A CSV cell. Text from hosts that a spreadsheet would run as a formula is quoted."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        d = value if value.tzinfo else value.replace(tzinfo=UTC)
        return d.astimezone(UTC).isoformat(timespec="seconds")
    if isinstance(value, list):
        return " ".join(map(str, value))
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write_csv(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(columns)
    for r in rows:
        out.writerow([_cell(r.get(c)) for c in columns])


@app.command("list")
def list_(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("--host", help="Only this host.")] = None,
    security: Annotated[bool, typer.Option("--security", help="Only security updates.")] = False,
    package: Annotated[
        str | None, typer.Option("--package", help="Name or glob, e.g. 'libssl*'.")
    ] = None,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
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
    if as_csv:
        now = datetime.now(UTC)
        for r in rows:
            r["cves"] = len(r["cve_ids"])
            since = r["changelog_date"] or r["first_seen"]
            since = since if since.tzinfo else since.replace(tzinfo=UTC)
            r["age_days"] = (now - since).days
        write_csv(UPDATE_COLUMNS, rows)
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


def compliance(ctx: typer.Context, as_json: JsonOpt = False, as_csv: CsvOpt = False) -> None:
    """Per host: missing security updates and the age of the oldest; the fleet's compliance.
    With --csv: one row per host and missing security update, with CVE ids, urgency, origin,
    age and the host's last boot."""
    from patchpilot.store.db import session_scope
    from patchpilot.store.queries import compliance as compliance_rows
    from patchpilot.store.queries import compliance_export

    if as_csv:
        with session_scope(state(ctx).engine()) as s:
            write_csv(COMPLIANCE_COLUMNS, compliance_export(session=s))
        return
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
