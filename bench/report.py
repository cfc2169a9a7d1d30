"""`patchpilot report fleet` over a store of 1,000 runs x 100 hosts: each run a frozen plan of
100 hosts with two updates each (one a scored security update), a canary batch and five
more, each batch with its baseline, patch, soak and health steps and a verdict; one run in
eight fails its canary and rolls it back, one in twenty pauses for approval; a patch outcome
per host and update. The store is written directly (bulk inserts), not by runs.
Goal: under 5 s and an HTML file under 5 MB. Prints both, as measured.

    .venv/bin/python bench/report.py [--runs 1000] [--hosts 100] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from patchpilot.run.states import HostState, Outcome, RunState, StepState
from patchpilot.settings import db_url
from patchpilot.store.db import open_store
from patchpilot.store.models import (
    Host,
    PatchOutcome,
    PendingUpdate,
    Run,
    RunHost,
    RunStep,
    RunUpdate,
    RunVerdict,
)


def build(path: Path, runs: int, hosts: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    engine = open_store(db_url(str(path)))
    now = datetime.now(UTC)
    names = [f"host{i:04d}" for i in range(hosts)]
    groups = ["web", "db", "cache", "batch"]
    with engine.begin() as c:
        c.execute(
            insert(Host),
            [
                {
                    "name": n,
                    "groups": [groups[i % 4]],
                    "distribution": "Debian",
                    "distribution_version": "12" if i % 3 else "11",
                    "distribution_release": "bookworm" if i % 3 else "bullseye",
                    "reachable": True,
                    "reboot_required": False,
                    "updated_at": now,
                }
                for i, n in enumerate(names)
            ],
        )
        c.execute(
            insert(PendingUpdate),
            [
                {
                    "host_id": i + 1,
                    "package": "libssl3",
                    "arch": "amd64",
                    "installed_version": "3.0.15-1~deb12u1",
                    "candidate_version": "3.0.17-1~deb12u2",
                    "security": True,
                    "held": False,
                    "reboot_needed": False,
                    "cve_ids": ["CVE-2025-9230"],
                    "first_seen": now - timedelta(days=rng.randint(1, 40)),
                }
                for i in range(0, hosts, 2)
            ],
        )
        for r in range(runs):
            start = now - timedelta(hours=(runs - r) * 8)
            run_id = f"r-bench-{r:05d}"
            broken = r % 8 == 3
            paused = r % 20 == 7
            batches = [names[:5]] + [names[5 + i :: 5] for i in range(5)]
            plan_hosts = [
                {
                    "name": n,
                    "stage": 0 if b == 0 else 1,
                    "batch": 0 if b == 0 else b - 1,
                    "updates": [
                        {
                            "package": "libssl3",
                            "from": "3.0.15-1",
                            "to": f"3.0.{16 + r % 3}-1",
                            "security": True,
                            "probability": round(rng.uniform(0.01, 0.3), 4),
                            "risk": "medium",
                        },
                        {
                            "package": "demoweb",
                            "from": "1.0-1",
                            "to": "1.1-1",
                            "security": False,
                            "probability": round(rng.uniform(0.01, 0.1), 4),
                            "risk": "low",
                        },
                    ],
                }
                for b, batch in enumerate(batches)
                for n in batch
            ]
            planned = {h["name"]: h["updates"] for h in plan_hosts}
            plan = {
                "expansion": {"stages": [{"name": "canary"}, {"name": "rest"}], "hosts": plan_hosts}
            }
            status = RunState.FAILED if broken else RunState.SUCCEEDED
            c.execute(
                insert(Run),
                [
                    {
                        "id": run_id,
                        "plan_name": f"plan-{r % 4}",
                        "plan_sha256": "0" * 64,
                        "plan": plan,
                        "inventory": "inv",
                        "status": status,
                        "check_mode": False,
                        "emergency": False,
                        "shadow": False,
                        "stage_index": 0,
                        "batch_index": 0,
                        "started_at": start,
                        "updated_at": start,
                        "finished_at": start + timedelta(minutes=50),
                    }
                ],
            )
            steps: list[dict[str, Any]] = []
            verdicts: list[dict[str, Any]] = []
            hosts_rows: list[dict[str, Any]] = []
            outcomes: list[dict[str, Any]] = []
            t = start
            order = 0
            for b, batch in enumerate(batches):
                si, bi = (0, 0) if b == 0 else (1, b - 1)
                done = not (broken and b > 0)
                for kind, minutes in (("baseline", 1), ("patch", 3), ("soak", 5), ("health", 1)):
                    if not done:
                        break
                    steps.append(
                        {
                            "run_id": run_id,
                            "stage": si,
                            "batch": bi,
                            "kind": kind,
                            "state": StepState.DONE,
                            "hosts": batch,
                            "detail": {},
                            "started_at": t,
                            "finished_at": t + timedelta(minutes=minutes),
                        }
                    )
                    t += timedelta(minutes=minutes)
                if done:
                    bad = broken and b == 0
                    verdicts.append(
                        {
                            "run_id": run_id,
                            "stage": si,
                            "batch": bi,
                            "verdict": "unhealthy" if bad else "healthy",
                            "action": "rollback failed hosts" if bad else "continue",
                            "shadow": False,
                            "evidence": {},
                            "created_at": t + timedelta(seconds=rng.uniform(1, 20)),
                        }
                    )
                    if bad:
                        for kind, minutes in (("rollback", 2), ("verify", 1)):
                            steps.append(
                                {
                                    "run_id": run_id,
                                    "stage": si,
                                    "batch": bi,
                                    "kind": kind,
                                    "state": StepState.DONE,
                                    "hosts": batch,
                                    "detail": {},
                                    "started_at": t + timedelta(minutes=1),
                                    "finished_at": t + timedelta(minutes=1 + minutes),
                                }
                            )
                            t += timedelta(minutes=minutes)
                    if paused and b == 0:
                        for kind, wait in (("pause", 0), ("approve", rng.randint(5, 600))):
                            t += timedelta(minutes=wait)
                            steps.append(
                                {
                                    "run_id": run_id,
                                    "stage": si,
                                    "batch": bi,
                                    "kind": kind,
                                    "state": StepState.DONE,
                                    "hosts": [],
                                    "detail": {},
                                    "started_at": t,
                                    "finished_at": t,
                                }
                            )
                for n in batch:
                    order += 1
                    state = (
                        HostState.ROLLED_BACK
                        if broken and b == 0
                        else HostState.PENDING
                        if not done
                        else HostState.HEALTHY
                    )
                    hosts_rows.append(
                        {
                            "run_id": run_id,
                            "host": n,
                            "stage": si,
                            "batch": bi,
                            "order": order,
                            "status": state,
                            "updates": planned[n],
                            "snapshot": {},
                            "patched_at": t if done else None,
                            "updated_at": t,
                        }
                    )
                    if done:
                        for pkg in ("libssl3", "demoweb"):
                            outcomes.append(
                                {
                                    "run_id": run_id,
                                    "host": n,
                                    "package": pkg,
                                    "arch": "all",
                                    "from_version": "1",
                                    "to_version": "2",
                                    "outcome": Outcome.ROLLED_BACK
                                    if state == HostState.ROLLED_BACK
                                    else Outcome.HEALTHY,
                                    "recorded_at": t,
                                    "cves": 0,
                                    "reboot_needed": False,
                                }
                            )
            c.execute(insert(RunStep), steps)
            c.execute(insert(RunVerdict), verdicts)
            c.execute(insert(RunHost), hosts_rows)
            # As the journal writes a run: its plan's updates as narrow rows too.
            c.execute(
                insert(RunUpdate),
                [
                    {
                        "run_id": run_id,
                        "host": h["name"],
                        "package": u["package"],
                        "security": u["security"],
                        "probability": u["probability"],
                    }
                    for h in plan_hosts
                    for u in h["updates"]
                ],
            )
            c.execute(insert(PatchOutcome), outcomes)
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--keep", type=Path, help="build the store (and the report) in DIR")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="pp-bench-report-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "bench.db"
    db.unlink(missing_ok=True)
    t = time.perf_counter()
    build(db, args.runs, args.hosts)
    print(f"store: {args.runs} runs x {args.hosts} hosts built in {time.perf_counter() - t:.1f} s")

    # In process: the query and figures, then the HTML (matplotlib's import included).
    from patchpilot.report.fleet import fleet_report
    from patchpilot.store.db import session_scope

    engine = open_store(db_url(str(db)))
    t = time.perf_counter()
    with session_scope(engine) as s:
        data = fleet_report(s)
    figures = time.perf_counter() - t
    t = time.perf_counter()
    from patchpilot.report.html import render_fleet

    html = render_fleet(data)
    render = time.perf_counter() - t
    print(f"in process: figures {figures:.2f} s, HTML {render:.2f} s, {len(html) / 1e6:.2f} MB")

    # What a user waits for: the whole command, interpreter start-up included.
    out = work / "fleet.html"
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "patchpilot", "--db", str(db), "report", "fleet", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - t
    size = out.stat().st_size
    print(
        f"patchpilot report fleet: {wall:.2f} s (goal < 5 s), "
        f"HTML {size / 1e6:.2f} MB (goal < 5 MB)"
    )
    k = data["kpis"]
    print(
        f"figures: {k['runs']} runs, success {k['success_rate']}, rollback {k['rollback_rate']}, "
        f"{k['hosts_patched']} hosts patched, {k['time_to_detect_s']['n']} verdicts"
    )


if __name__ == "__main__":
    main()
