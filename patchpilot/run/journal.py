"""Every store session of a run: its row and its hosts' rows, the step journal, verdicts,
incidents, audit events, risk outcomes and host locks.

A run's hosts are read once, when the journal opens, and kept: the process that holds the
run's locks is the only writer of its host rows, so each change is written to the store
(one transaction, committed before the run goes on) and to the kept row at the same time,
and no step reads the rows back. Host and run states change only through the tables of
`run.states`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from patchpilot.errors import BadInputError, ExitCode
from patchpilot.health.types import Measurement
from patchpilot.run.locks import _release, audit
from patchpilot.run.states import (
    HostEvent,
    HostState,
    RunEvent,
    RunState,
    StepState,
    host_after,
    run_after,
)
from patchpilot.store.db import session_scope
from patchpilot.store.models import (
    Incident,
    PatchOutcome,
    PendingUpdate,
    Run,
    RunHost,
    RunStep,
    RunUpdate,
    RunVerdict,
)

log = logging.getLogger(__name__)


def load_run(engine: Engine, run_id: str) -> Run:
    with session_scope(engine) as s:
        run = s.get(Run, run_id)
        if run is None:
            raise BadInputError(
                f"no run {run_id!r} in this store", hint="`patchpilot runs list` shows the runs"
            )
        s.expunge(run)
        return run


def create_run(
    engine: Engine, run: Run, rows: Sequence[RunHost], action: str, **detail: Any
) -> None:
    """The run's row, its hosts' rows (and their planned updates as `RunUpdate` rows) and the
    audit of its start, in one transaction."""
    with session_scope(engine) as s:
        s.add(run)
        for h in rows:
            s.add(h)
        s.flush()
        updates = [
            {
                "run_id": run.id,
                "host": h.host,
                "package": str(u.get("package", "")),
                "security": bool(u.get("security")),
                "probability": u.get("probability"),
            }
            for h in rows
            for u in h.updates
        ]
        if updates:
            s.execute(insert(RunUpdate), updates)
        audit(s, action, run_id=run.id, **detail)


# --- one run ---------------------------------------------------------------------------------


def measurements_to_json(data: Mapping[str, Sequence[Measurement]]) -> dict[str, Any]:
    return {h: [m.to_dict() for m in ms] for h, ms in data.items()}


def measurements_from_json(data: Mapping[str, Any]) -> dict[str, list[Measurement]]:
    return {h: [Measurement.from_dict(m) for m in ms] for h, ms in data.items()}


class Journal:
    """One run's rows, read once, and every write of the run."""

    def __init__(
        self,
        engine: Engine,
        run_id: str,
        *,
        on_step: Callable[[int | None, int | None, str, Sequence[str]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.run_id = run_id
        self._on_step = on_step or (lambda _s, _b, _k, _h: None)
        with session_scope(engine) as s:
            run = s.get(Run, run_id)
            if run is None:
                raise BadInputError(f"no run {run_id!r} in this store")
            rows = s.exec(
                select(RunHost).where(RunHost.run_id == run_id).order_by(col(RunHost.order))
            ).all()
            for r in (run, *rows):
                s.expunge(r)
        self.run: Run = run
        self.hosts: dict[str, RunHost] = {r.host: r for r in rows}

    # -- reading (from what was read once) --

    def rows(self, *, stage: int | None = None, batch: int | None = None) -> list[RunHost]:
        return [
            r
            for r in self.hosts.values()
            if (stage is None or r.stage == stage) and (batch is None or r.batch == batch)
        ]

    def states(self) -> dict[str, str]:
        return {h: r.status for h, r in self.hosts.items()}

    # -- host and run rows --

    def move(self, host: str, event: HostEvent, **values: Any) -> HostState:
        """The host's next state by the table, written with `values` in one transaction."""
        state = host_after(self.hosts[host].status, event)
        self.note(host, status=state, **values)
        return state

    def note(self, host: str, **values: Any) -> None:
        """Fields of a host's row other than its state (message, snapshot)."""
        row = self.hosts[host]
        now = datetime.now(UTC)
        with session_scope(self.engine) as s:
            stored = s.get(RunHost, row.id)
            assert stored is not None
            for k, v in values.items():
                setattr(stored, k, v)
                setattr(row, k, v)
            stored.updated_at = row.updated_at = now
            s.add(stored)

    def set_run(self, *, event: RunEvent | None = None, **values: Any) -> None:
        """The run's row; with `event`, its next state by the table."""
        if event is not None:
            values["status"] = run_after(self.run.status, event)
        with session_scope(self.engine) as s:
            self._write_run(s, values)

    def _write_run(self, s: Session, values: Mapping[str, Any]) -> None:
        stored = s.get(Run, self.run_id)
        assert stored is not None
        now = datetime.now(UTC)
        for k, v in values.items():
            setattr(stored, k, v)
            setattr(self.run, k, v)
        stored.updated_at = self.run.updated_at = now
        s.add(stored)

    def end(self, event: RunEvent, *, message: str, exit_code: ExitCode) -> RunState:
        """The run's last state, its locks freed and the audit of its end: one transaction."""
        status = run_after(self.run.status, event)
        with session_scope(self.engine) as s:
            self._write_run(
                s,
                {
                    "status": status,
                    "message": message,
                    "exit_code": int(exit_code),
                    "finished_at": datetime.now(UTC),
                },
            )
            _release(s, self.run_id, keep_paused=False)
            audit(s, f"run {status}", run_id=self.run_id, message=message)
        return status

    def pause(self, reason: str, *, stage: int, batch: int) -> None:
        """Paused for `approve`: the run's state and its locks held for it, in one go."""
        status = run_after(self.run.status, RunEvent.PAUSE)
        with session_scope(self.engine) as s:
            self._write_run(
                s,
                {
                    "status": status,
                    "pause_reason": reason,
                    "stage_index": stage,
                    "batch_index": batch,
                },
            )
            _release(s, self.run_id, keep_paused=True)

    # -- the step journal --

    @contextmanager
    def step(
        self,
        kind: str,
        *,
        stage: int | None,
        batch: int | None,
        hosts: Sequence[str] = (),
        **detail: Any,
    ) -> Iterator[dict[str, Any]]:
        """A journal entry: written (committed) before the step, then again after it."""
        self._on_step(stage, batch, kind, list(hosts))
        with session_scope(self.engine) as s:
            row = RunStep(
                run_id=self.run_id,
                stage=stage,
                batch=batch,
                kind=kind,
                hosts=list(hosts),
                detail=detail,
            )
            s.add(row)
            s.flush()
            step_id = row.id
        out: dict[str, Any] = dict(detail)
        state = StepState.FAILED
        try:
            yield out
            state = StepState.DONE
        finally:
            with session_scope(self.engine) as s:
                done = s.get(RunStep, step_id)
                if done is not None:
                    done.state = state
                    done.detail = out
                    done.finished_at = datetime.now(UTC)
                    s.add(done)

    def record(
        self, kind: str, *, stage: int, batch: int, hosts: Sequence[str], **detail: Any
    ) -> None:
        """A step that is over as it is written (a host's snapshot)."""
        with session_scope(self.engine) as s:
            s.add(
                RunStep(
                    run_id=self.run_id,
                    stage=stage,
                    batch=batch,
                    kind=kind,
                    state=StepState.DONE,
                    hosts=list(hosts),
                    detail=detail,
                    finished_at=datetime.now(UTC),
                )
            )

    def _done_steps(self, kind: str, **where: Any) -> list[RunStep]:
        with session_scope(self.engine) as s:
            stmt = select(RunStep).where(
                RunStep.run_id == self.run_id, RunStep.kind == kind, RunStep.state == StepState.DONE
            )
            for k, v in where.items():
                stmt = stmt.where(getattr(RunStep, k) == v)
            rows = s.exec(stmt.order_by(col(RunStep.id))).all()
            for r in rows:
                s.expunge(r)
            return list(rows)

    def approved(self, stage: int) -> bool:
        return bool(self._done_steps("approve", stage=stage))

    def saved_baseline(self, stage: int, batch: int) -> dict[str, Any] | None:
        """The batch's baseline as recorded (the newest, after a crash)."""
        rows = self._done_steps("baseline", stage=stage, batch=batch)
        return dict(rows[-1].detail) if rows else None

    def baseline_of(self, row: RunHost) -> list[Measurement]:
        """The host's own measurements from before its patch."""
        saved = self.saved_baseline(row.stage, row.batch) or {}
        return measurements_from_json(saved.get("measurements", {})).get(row.host, [])

    def artifacts(self) -> dict[str, dict[str, str]]:
        """Per host, the .debs kept at its first preflight in this run."""
        return {h: dict(d.get("artifacts") or {}) for h, d in self.snapshots().items()}

    def pruned(self) -> dict[str, datetime | None]:
        """Hosts whose rollback artifacts for this run were pruned, and when."""
        return {h: row.finished_at for row in self._done_steps("prune") for h in row.hosts}

    def snapshots(self) -> dict[str, dict[str, Any]]:
        """Per host, what its first preflight in this run recorded: versions, the kept .debs
        with their sources and sha256, and what dpkg --verify found changed before."""
        out: dict[str, dict[str, Any]] = {}
        for row in self._done_steps("snapshot"):
            for host in row.hosts:
                out.setdefault(host, dict(row.detail or {}))
        return out

    # -- evidence --

    def verdict(self, *, stage: int, batch: int, **values: Any) -> None:
        with session_scope(self.engine) as s:
            s.add(RunVerdict(run_id=self.run_id, stage=stage, batch=batch, **values))

    def incident(
        self,
        *,
        stage: int | None,
        batch: int | None,
        hosts: Sequence[str],
        reason: str,
        evidence: Mapping[str, Any],
        audited: tuple[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """An incident, and (`audited`: action, detail) its audit event, in one transaction."""
        with session_scope(self.engine) as s:
            s.add(
                Incident(
                    run_id=self.run_id,
                    stage=stage,
                    batch=batch,
                    hosts=list(hosts),
                    reason=reason,
                    evidence=dict(evidence),
                )
            )
            if audited is not None:
                audit(s, audited[0], run_id=self.run_id, **audited[1])

    def audit(self, action: str, **detail: Any) -> None:
        with session_scope(self.engine) as s:
            audit(s, action, run_id=self.run_id, **detail)

    def outcomes(self, outcomes: Mapping[str, str]) -> None:
        """The fleet's evidence for `risk train`: one outcome per host and package, with
        the changelog facts gathered for each (package, version), through the risk model's
        own `record_outcome`."""
        from patchpilot.risk.outcomes import record_outcome

        rows = [self.hosts[h] for h in outcomes]
        with session_scope(self.engine) as s:
            packages = sorted({u["package"] for r in rows for u in r.updates})
            facts_of: dict[tuple[str, str], PendingUpdate] = {}
            for pu in s.exec(select(PendingUpdate).where(col(PendingUpdate.package).in_(packages))):
                facts_of.setdefault((pu.package, pu.candidate_version), pu)
            # A batch walked again after a crash records nothing twice (one row per run,
            # host and package, as the table's unique key also holds).
            recorded = {
                (o.host, o.package, o.arch)
                for o in s.exec(
                    select(PatchOutcome).where(
                        PatchOutcome.run_id == self.run_id,
                        col(PatchOutcome.host).in_([r.host for r in rows]),
                    )
                )
            }
            for r in rows:
                for u in r.updates:
                    if (r.host, u["package"], u.get("arch", "")) in recorded:
                        continue
                    facts = facts_of.get((u["package"], u["to"]))
                    # The plan's own update, with the facts gathered for its version.
                    update = PendingUpdate(
                        host_id=0,
                        package=u["package"],
                        source=u.get("source"),
                        arch=u.get("arch", ""),
                        installed_version=u["from"],
                        candidate_version=u["to"],
                        cve_ids=list(facts.cve_ids) if facts else [],
                        urgency=facts.urgency if facts else None,
                        changelog_entries=facts.changelog_entries if facts else None,
                        upstream_changed=facts.upstream_changed if facts else None,
                        reboot_needed=bool(u.get("reboot_needed")),
                    )
                    record_outcome(
                        s, run_id=self.run_id, host=r.host, update=update, outcome=outcomes[r.host]
                    )
