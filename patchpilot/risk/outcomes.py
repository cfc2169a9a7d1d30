"""The fleet's own evidence for the risk model: one outcome row per patch. Light on purpose
(no pandas, no scikit-learn): a run records outcomes after every batch."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Session

from patchpilot.run.states import Outcome
from patchpilot.store.models import PatchOutcome, PendingUpdate

OUTCOMES = frozenset(Outcome)


def record_outcome(
    session: Session,
    *,
    run_id: str | None,
    host: str,
    update: PendingUpdate,
    outcome: str,
    when: datetime | None = None,
) -> PatchOutcome:
    """One patch's result on one host, as evidence for the next `risk train`."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    row = PatchOutcome(
        run_id=run_id,
        host=host,
        package=update.package,
        source=update.source,
        arch=update.arch,
        from_version=update.installed_version,
        to_version=update.candidate_version,
        outcome=outcome,
        recorded_at=when or datetime.now(UTC),
        cves=len(update.cve_ids or []),
        urgency=update.urgency,
        changelog_entries=update.changelog_entries,
        upstream_changed=update.upstream_changed,
        reboot_needed=update.reboot_needed,
    )
    session.add(row)
    return row
