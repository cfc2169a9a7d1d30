"""Expansion of a wave plan over 100,000 hosts x 20 pending updates each, with risk scores.

Hosts are in several groups (web, db, cache, queue and one of four data centres) on three
OS releases. Every host has its own update objects and its own first_seen times, as rows
read from the store would be. Package names, versions and architectures repeat across the
fleet; by default they are shared string objects, as a loader that interns them (sys.intern)
gives them, which also saves about half a gigabyte at this size. `--strings distinct` gives
every row its own string objects instead, the worst case. The plan is plans/canary.yml
(max_risk: medium) with an exclude glob, max_probability and a minimum age added, so every
selection rule does real work. Goal: expand_plan under 2 s.

    .venv/bin/python bench/plan_expand.py [--hosts 100000] [--updates 20] [--strings distinct]
        [--freeze]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from patchpilot.plan import PlanHost, PlanUpdate, expand_plan, load_plan
from patchpilot.plan.frozen import canonical_json, freeze, inventory_snapshot
from patchpilot.risk.types import RiskLevel, RiskScore

PLAN = Path(__file__).resolve().parents[1] / "plans" / "canary.yml"
RELEASES = ("debian 12 bookworm", "debian 11 bullseye", "ubuntu 24.04 noble")
ROLES = ("web", "web", "web", "db", "cache", "queue")
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(
    n_hosts: int, n_updates: int, shared: bool
) -> tuple[list[PlanHost], dict[str, list[PlanUpdate]], dict[str, dict[str, RiskScore]]]:
    packages = [
        (f"lib{name}{i}".encode(), f"{i}.2.{i % 7}-1".encode(), f"{i}.2.{i % 7}-1+deb12u1".encode())
        for i, name in enumerate(["ssl", "curl", "xml", "z", "systemd", "pam", "krb"] * 5)
    ][:n_updates]
    # Decoding per row makes a new str object each time, as a database driver does.
    text = (lambda b: sys.intern(b.decode())) if shared else (lambda b: b.decode())
    scores = [
        RiskScore(p, max(0.0, p - 0.05), min(1.0, p + 0.05), level, ("bench",))
        for p, level in ((0.02, RiskLevel.LOW), (0.12, RiskLevel.MEDIUM), (0.4, RiskLevel.HIGH))
    ]
    hosts: list[PlanHost] = []
    updates: dict[str, list[PlanUpdate]] = {}
    risk: dict[str, dict[str, RiskScore]] = {}
    for h in range(n_hosts):
        name = f"host{h:06d}.example.net"
        release = RELEASES[h % 3]
        hosts.append(
            PlanHost(
                name=name,
                groups=(ROLES[h % len(ROLES)], f"dc{h % 4}"),
                os_release=release,
                facts={"distribution_release": release.split()[-1]},
                reachable=h % 997 != 0,
            )
        )
        ups = []
        host_risk = risk[name] = {}
        for u, (pkg, old, new) in enumerate(packages):
            package = text(pkg)
            recent = (h + u) % 11 == 0
            ups.append(
                PlanUpdate(
                    package=package,
                    arch=text(b"amd64"),
                    installed_version=text(old),
                    candidate_version=text(new),
                    source=None,
                    security=u % 3 == 0,
                    held=(h + u) % 503 == 0,
                    reboot_needed=u == 4,
                    first_seen=NOW - timedelta(hours=3 if recent else 240, seconds=h % 3600),
                )
            )
            if (h + u) % 50:
                host_risk[package] = scores[(h * 7 + u) % 3]
        updates[name] = ups
    return hosts, updates, risk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strings", choices=("shared", "distinct"), default="shared")
    parser.add_argument(
        "--freeze",
        action="store_true",
        help="also time writing it down as `plan --out` does (to_dict, freeze)",
    )
    args = parser.parse_args()

    base = load_plan(PLAN)
    select = base.select.model_copy(
        update={"exclude": ("libkrb*",), "max_probability": 0.3, "min_age_days": 1}
    )
    spec = base.model_copy(update={"select": select})

    started = time.perf_counter()
    hosts, updates, scores = build(args.hosts, args.updates, args.strings == "shared")
    print(
        f"inputs built in {time.perf_counter() - started:.1f} s; peak RSS {peak_rss_mib():.0f} MiB"
    )

    best = float("inf")
    plan = None
    for _ in range(args.rounds):
        plan = None  # let the previous result go before the next round
        t0 = time.perf_counter()
        plan = expand_plan(spec, hosts, updates, scores, now=NOW)
        best = min(best, time.perf_counter() - t0)
    assert plan is not None
    selected = sum(len(h.updates) for h in plan.hosts.values())
    print(
        f"expand_plan: {args.hosts} hosts x {args.updates} updates: {best:.2f} s (goal < 2 s),"
        f" best of {args.rounds}, {args.strings} strings"
    )
    print(
        f"  {plan.total_hosts} hosts planned in {len(plan.stages)} stages, {selected} updates"
        f" selected, {len(plan.excluded)} excluded, {len(plan.skipped)} hosts skipped"
    )
    # What no expansion can go below here: visiting every update and looking up its score.
    host_scores = scores.get
    t0 = time.perf_counter()
    for host in hosts:
        name = host.name
        lookup = host_scores(name, {}).get
        for u in updates[name]:
            lookup(u.package)
    floor = time.perf_counter() - t0
    print(f"  floor on this machine (visit every update, look up its score): {floor:.2f} s")
    print(f"  peak RSS: {peak_rss_mib():.0f} MiB (inputs and the last expansion)")
    if args.freeze:
        t0 = time.perf_counter()
        expansion = plan.to_dict()
        t_dict = time.perf_counter() - t0
        del expansion
        t0 = time.perf_counter()
        snapshot = inventory_snapshot(hosts, plan)
        frozen = freeze(plan, spec, inventory_snapshot=snapshot, created_at=NOW)
        t_freeze = time.perf_counter() - t0
        size = len(canonical_json(frozen)) / 2**20
        print(
            f"  plan --out: to_dict {t_dict:.1f} s, inventory snapshot and freeze"
            f" {t_freeze:.1f} s, {size:.0f} MiB of canonical JSON"
        )


if __name__ == "__main__":
    main()
