"""Old runs' rollback artifacts: which runs may lose them, and removing them from the hosts.

A run's artifacts (its snapshot and kept .debs under /var/cache/patchpilot/rollback/RUN on
each host) are what `patchpilot rollback RUN` installs. They are pruned only from finished
runs (never a running or paused one), and never from a host whose state is still in doubt
(a rollback that failed or did not finish, a patch that stopped answering): those keep
theirs until a person looks. Each prune is recorded as a step of the run it pruned, so
`runs show` says when, and a later `rollback` of that run knows the artifacts are gone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import Engine
from sqlmodel import col, select

from patchpilot.ops.fleetops import HostResult
from patchpilot.run.states import HostState, RunState, StepState
from patchpilot.store.db import session_scope
from patchpilot.store.models import Run, RunHost, RunStep

log = logging.getLogger(__name__)

# Host states whose artifacts may still be needed: a person decides, not the retention.
KEEP = frozenset({HostState.PATCHING, HostState.ROLLING_BACK, HostState.ROLLBACK_FAILED})
OPEN = frozenset({RunState.RUNNING, RunState.PAUSED})


class Pruner(Protocol):
    def prune(self, runs: Mapping[str, Sequence[str]]) -> dict[str, HostResult]: ...


@dataclass
class Prunable:
    """One run whose artifacts may go: on `hosts`; `kept` are the hosts left alone, why."""

    run_id: str
    inventory: str
    finished_at: datetime
    hosts: list[str]
    kept: dict[str, str] = field(default_factory=dict)


def _aware(d: datetime) -> datetime:
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def prunable(
    engine: Engine,
    *,
    older_than: timedelta | None,
    now: datetime,
    run_ids: Sequence[str] = (),
    hosts: Sequence[str] | None = None,
) -> list[Prunable]:
    """The finished runs (those named, else those finished before now - older_than) with
    artifacts still on some host, oldest first; only `hosts` where given."""
    out: list[Prunable] = []
    with session_scope(engine) as s:
        q = select(Run).where(col(Run.finished_at).is_not(None), col(Run.check_mode).is_(False))
        if run_ids:
            q = q.where(col(Run.id).in_(list(run_ids)))
        elif older_than is not None:
            q = q.where(col(Run.finished_at) < now - older_than)
        for run in s.exec(q.order_by(col(Run.finished_at))).all():
            if run.status in OPEN or run.finished_at is None:
                continue
            steps = s.exec(
                select(RunStep).where(
                    RunStep.run_id == run.id,
                    col(RunStep.kind).in_(["snapshot", "prune"]),
                    RunStep.state == StepState.DONE,
                )
            ).all()
            kept_on = {h for st in steps if st.kind == "snapshot" for h in st.hosts}
            kept_on -= {h for st in steps if st.kind == "prune" for h in st.hosts}
            if hosts is not None:
                kept_on &= set(hosts)
            if not kept_on:
                continue
            states = {
                r.host: r.status
                for r in s.exec(select(RunHost).where(RunHost.run_id == run.id)).all()
            }
            item = Prunable(run.id, run.inventory, _aware(run.finished_at), [])
            for h in sorted(kept_on):
                if states.get(h) in KEEP:
                    item.kept[h] = f"{states[h]}: its artifacts may still be needed"
                else:
                    item.hosts.append(h)
            out.append(item)
    return out


def prune(engine: Engine, items: Sequence[Prunable], ops: Pruner) -> dict[str, dict[str, str]]:
    """Remove the artifacts of `items` (all from one inventory, `ops`'), one playbook run
    for all of them; a host that answered is recorded as pruned for each run. Returns
    {run id: {host: "pruned" | why not}}."""
    by_host: dict[str, list[str]] = {}
    for it in items:
        for h in it.hosts:
            by_host.setdefault(h, []).append(it.run_id)
    results = ops.prune(by_host) if by_host else {}
    out: dict[str, dict[str, str]] = {}
    now = datetime.now(UTC)
    with session_scope(engine) as s:
        for it in items:
            done = [h for h in it.hosts if results.get(h, HostResult("unreachable")).status == "ok"]
            out[it.run_id] = {h: "pruned" for h in done}
            for h in it.hosts:
                if h not in done:
                    r = results.get(h)
                    out[it.run_id][h] = f"not pruned: {(r.message if r else None) or 'no answer'}"
            out[it.run_id].update({h: f"kept ({why})" for h, why in it.kept.items()})
            if done:
                s.add(
                    RunStep(
                        run_id=it.run_id,
                        kind="prune",
                        state=StepState.DONE,
                        hosts=done,
                        detail={"removed": f"/var/cache/patchpilot/rollback/{it.run_id}"},
                        started_at=now,
                        finished_at=now,
                    )
                )
    return out
