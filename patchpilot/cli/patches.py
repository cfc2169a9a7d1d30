"""`patchpilot patches` and `patchpilot compliance`: pending updates across the fleet."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from patchpilot.cli.context import state
from patchpilot.cli.inventory import JsonOpt, _cves
from patchpilot.console import info, print_json, print_table

if TYPE_CHECKING:
    from patchpilot.store.queries import ComplianceRow, FleetCompliance

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
    "status",
    "reason",
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


def _status_cell(row: ComplianceRow) -> str:
    if row.compliant is None:
        return f"unknown ({row.reason})"
    return "compliant" if row.compliant else "NO"


def _hosts(n: int) -> str:
    return f"{n} host" if n == 1 else f"{n} hosts"


def compliance_summary(fleet: FleetCompliance) -> str:
    """The fleet's compliance in one line: the share over the hosts that could be judged, and
    how many could not be and why."""
    counts = fleet.unknown_by_reason()
    why = ", ".join(f"{n} {reason.label}" for reason, n in counts.items() if n)
    if fleet.percent is None:
        if not fleet.rows:
            return (
                "fleet compliance: unknown — no host could be judged (no host in the store: "
                "run `patchpilot inventory gather -i INVENTORY`)"
            )
        return f"fleet compliance: unknown — no host could be judged ({why})"
    judged = f"{fleet.judged} judged host" + (" has" if fleet.judged == 1 else "s have")
    line = f"fleet compliance: {fleet.percent:.1f}% of {judged} no missing security update"
    if fleet.unknown:
        line += f"; {_hosts(fleet.unknown)} unknown ({why})"
    return line


def compliance(ctx: typer.Context, as_json: JsonOpt = False, as_csv: CsvOpt = False) -> None:
    """Per host: missing security updates, the age of the oldest, and its status: compliant,
    non-compliant, or unknown (never gathered, unreachable or failed at its last gather: its
    data is stale); the fleet's compliance over the hosts that could be judged. With --csv:
    one row per host and missing security update, with CVE ids, urgency, origin, age and the
    host's last boot, and every unknown host with its status and reason."""
    from patchpilot.store.db import session_scope
    from patchpilot.store.queries import compliance as compliance_rows
    from patchpilot.store.queries import compliance_export

    if as_csv:
        with session_scope(state(ctx).engine()) as s:
            write_csv(COMPLIANCE_COLUMNS, compliance_export(session=s))
        return
    with session_scope(state(ctx).engine()) as s:
        fleet = compliance_rows(session=s)
    if as_json:
        pct = fleet.percent
        print_json(
            {
                "compliance_percent": None if pct is None else round(pct, 1),
                "judged": fleet.judged,
                "unknown": fleet.unknown,
                "unknown_by_reason": {k.value: n for k, n in fleet.unknown_by_reason().items()},
                "hosts": [r.__dict__ for r in fleet.rows],
            }
        )
        return
    print_table(
        None,
        ["host", "reachable", "missing security", "oldest (days)", "status"],
        [
            (
                r.host,
                "yes" if r.reachable else "NO",
                "" if r.last_seen is None else r.missing_security,
                "" if r.oldest_days is None else r.oldest_days,
                _status_cell(r),
            )
            for r in fleet.rows
        ],
    )
    info(compliance_summary(fleet))
