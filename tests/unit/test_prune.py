"""Old runs' rollback artifacts: which runs and hosts `runs prune` (and apply's retention)
may take them from, that each prune is recorded, and that a rollback of a pruned host is
refused with the reason."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from patchpilot.errors import BadInputError
from patchpilot.ops.fleetops import HostResult
from patchpilot.run.lifecycle import rollback_run, start_run
from patchpilot.run.prune import prunable, prune
from patchpilot.store.db import session_scope
from patchpilot.store.models import RunHost
from tests.unit.test_engine import _fleet, _frozen, _opts, engine  # noqa: F401


class Pruner:
    def __init__(self, down: Sequence[str] = ()) -> None:
        self.calls: list[dict[str, list[str]]] = []
        self.down = set(down)

    def prune(self, runs: Mapping[str, Sequence[str]]) -> dict[str, HostResult]:
        self.calls.append({h: list(r) for h, r in runs.items()})
        return {
            h: HostResult("unreachable", "Connection timed out") if h in self.down
            else HostResult("ok")
            for h in runs
        }  # fmt: skip


def _run(eng) -> str:  # type: ignore[no-untyped-def]
    spec, data = _frozen(3)
    summary = start_run(eng, spec, data, inventory="inv", ops=_fleet(3), opts=_opts())
    assert summary.status == "succeeded"
    return summary.run_id


def test_only_runs_older_than_the_retention_are_pruned_and_each_prune_is_recorded(
    engine,  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    run_id = _run(engine)
    now = datetime.now(UTC)
    assert prunable(engine, older_than=timedelta(days=30), now=now) == []
    (item,) = prunable(engine, older_than=timedelta(days=30), now=now + timedelta(days=31))
    assert item.run_id == run_id and len(item.hosts) == 3 and item.kept == {}
    ops = Pruner(down=[item.hosts[0]])
    done = prune(engine, [item], ops)
    assert ops.calls == [{h: [run_id] for h in item.hosts}]
    assert done[run_id][item.hosts[0]].startswith("not pruned: Connection timed out")
    assert [w for h, w in done[run_id].items() if h != item.hosts[0]] == ["pruned", "pruned"]
    # The host that did not answer is tried again next time; the others are done.
    (again,) = prunable(engine, older_than=None, now=now, run_ids=[run_id])
    assert again.hosts == [item.hosts[0]]
    # A rollback of a pruned host says why it cannot be done.
    with pytest.raises(BadInputError, match="were pruned from"):
        rollback_run(engine, run_id, hosts=[item.hosts[1]], ops=_fleet(3), opts=_opts())


def test_a_host_whose_rollback_failed_keeps_its_artifacts(engine) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    run_id = _run(engine)
    with session_scope(engine) as s:
        row = s.exec(select(RunHost).where(RunHost.run_id == run_id)).first()
        assert row is not None
        row.status = "rollback_failed"
        stuck = row.host
    (item,) = prunable(engine, older_than=None, now=datetime.now(UTC), run_ids=[run_id])
    assert stuck not in item.hosts and "rollback_failed" in item.kept[stuck]
    assert len(item.hosts) == 2
