"""Expansion: selection, stage sizes and rounding, canary coverage, batches, rollback order,
failure budget, determinism and bad input."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from patchpilot.errors import BadInputError
from patchpilot.plan import (
    ExpandedPlan,
    FailureBudget,
    PlanHost,
    PlanSpec,
    PlanUpdate,
    budget_allowed,
    budget_exceeded,
    expand_plan,
    parse_plan,
)
from patchpilot.risk.types import RiskLevel, RiskScore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
BOOKWORM = "debian 12 bookworm"
BULLSEYE = "debian 11 bullseye"


def update(
    package: str = "libssl3",
    *,
    installed: str = "3.0.11-1~deb12u1",
    candidate: str = "3.0.11-1~deb12u2",
    arch: str = "amd64",
    security: bool = False,
    held: bool = False,
    reboot: bool = False,
    age_days: float = 30,
) -> PlanUpdate:
    return PlanUpdate(
        package=package,
        arch=arch,
        installed_version=installed,
        candidate_version=candidate,
        source=None,
        security=security,
        held=held,
        reboot_needed=reboot,
        first_seen=NOW - timedelta(days=age_days),
    )


def fleet(
    n: int, groups: Sequence[tuple[str, ...]] = (("web",),), releases: Sequence[str] = (BOOKWORM,)
) -> list[PlanHost]:
    return [
        PlanHost(f"h{i:05d}", groups[i % len(groups)], releases[i % len(releases)])
        for i in range(n)
    ]


def plan(stages: str, *, head: str = "") -> PlanSpec:
    return parse_plan(f"name: test\n{head}stages:\n{stages}")


def expand(
    spec: PlanSpec,
    hosts: list[PlanHost],
    updates: dict[str, list[PlanUpdate]] | None = None,
    scores: dict[str, dict[str, RiskScore]] | None = None,
) -> ExpandedPlan:
    if updates is None:
        updates = {h.name: [update()] for h in hosts}
    return expand_plan(spec, hosts, updates, scores or {}, now=NOW)


def check_invariants(result: ExpandedPlan, selected: set[str]) -> None:
    """Every selected host in exactly one batch or skipped as uncovered, no empty batch."""
    seen = Counter(h for s in result.stages for b in s.batches for h in b)
    assert all(n == 1 for n in seen.values()), "no host twice"
    assert all(b for s in result.stages for b in s.batches), "no empty batch"
    uncovered = {s.host for s in result.skipped if s.reason == "not covered by any stage"}
    assert set(seen) | uncovered == selected, "no host lost"
    assert not set(seen) & uncovered
    assert list(result.hosts) == [h for s in result.stages for b in s.batches for h in b]
    for name, host in result.hosts.items():
        stage = next(s for s in result.stages if s.name == host.stage)
        assert name in stage.batches[host.batch]
        assert stage.reasons[name] == host.reason


def stage_rows(*specs: tuple[object, object]) -> str:
    return "".join(
        f"  - name: s{i}\n    hosts: {hosts}\n    parallel: {parallel}\n"
        for i, (hosts, parallel) in enumerate(specs)
    )


# --- stage sizes, rounding and batches -------------------------------------------------------

CANARY = (("1", "1"), ("3%", "1"), ("20%", "25%"), ("40%", "25%"), ("rest", "25%"))
COUNTS = (("2", "1"), ("5", "2"), ("rest", "10"))
HALVES = (("50%", "1"), ("50%", "50%"))
NO_REST = (("1", "1"), ("2", "1"))


@pytest.mark.parametrize(
    ("rows", "n", "sizes"),
    [
        (CANARY, 1, [1, 0, 0, 0, 0]),
        (CANARY, 2, [1, 1, 0, 0, 0]),  # 3% of 2 rounds up to 1
        (CANARY, 7, [1, 1, 2, 3, 0]),  # ceil(0.21), ceil(1.4), ceil(2.8): nothing left
        (CANARY, 100, [1, 3, 20, 40, 36]),
        (CANARY, 10_000, [1, 300, 2000, 4000, 3699]),
        (COUNTS, 1, [1, 0, 0]),
        (COUNTS, 2, [2, 0, 0]),
        (COUNTS, 7, [2, 5, 0]),
        (COUNTS, 100, [2, 5, 93]),
        (COUNTS, 10_000, [2, 5, 9993]),
        (HALVES, 1, [1, 0]),
        (HALVES, 2, [1, 1]),
        (HALVES, 7, [4, 3]),  # ceil(3.5) = 4, then 4 capped at the 3 left
        (HALVES, 100, [50, 50]),
        (HALVES, 10_000, [5000, 5000]),
        (NO_REST, 1, [1, 0]),
        (NO_REST, 2, [1, 1]),
        (NO_REST, 7, [1, 2]),
        (NO_REST, 100, [1, 2]),
        (NO_REST, 10_000, [1, 2]),
    ],
)
def test_stage_sizes(rows: tuple[tuple[str, str], ...], n: int, sizes: list[int]) -> None:
    hosts = fleet(n)
    result = expand(plan(stage_rows(*rows)), hosts)
    assert [len(s.hosts) for s in result.stages] == sizes
    check_invariants(result, {h.name for h in hosts})
    uncovered = n - sum(sizes)
    assert sum(s.reason == "not covered by any stage" for s in result.skipped) == uncovered
    assert any("not covered by any stage" in w for w in result.warnings) == (uncovered > 0)
    for stage, size in zip(result.stages, sizes, strict=True):
        if size == 0:
            assert stage.batches == () and stage.note.startswith("empty: ")
            assert any(w.startswith(f"stage {stage.name} is empty") for w in result.warnings)


@pytest.mark.parametrize(
    ("hosts", "parallel", "batches"),
    [
        (36, "25%", [9, 9, 9, 9]),
        (36, "10", [10, 10, 10, 6]),
        (7, "1", [1] * 7),
        (7, "50%", [4, 3]),  # ceil(3.5)
        (7, "100%", [7]),
        (3, "10%", [1, 1, 1]),  # at least 1
        (1, "5", [1]),
    ],
)
def test_batch_sizes(hosts: int, parallel: str, batches: list[int]) -> None:
    result = expand(plan(stage_rows(("rest", parallel))), fleet(hosts))
    assert [len(b) for b in result.stages[0].batches] == batches


def test_percent_counts_whole_selector_not_what_is_left() -> None:
    # 20% then 20% of 100 hosts: 20 + 20, not 20 + 16.
    result = expand(plan(stage_rows(("20%", "1"), ("20%", "1"), ("rest", "1"))), fleet(100))
    assert [len(s.hosts) for s in result.stages] == [20, 20, 60]
    assert result.hosts[result.stages[1].hosts[0]].reason == (
        "s1: 20% of the plan's hosts (100 hosts)"
    )


# --- groups and after ------------------------------------------------------------------------

GROUPED = """\
  - {name: web-canary, group: web, hosts: 10%}
  - {name: web-rest, group: web, hosts: rest, after: [web-canary], parallel: 25%}
  - {name: db-one, group: db, hosts: 1, after: [web-rest]}
  - {name: db-rest, group: db, hosts: rest, after: [db-one]}
"""


@pytest.mark.parametrize("n", [2, 7, 100, 1000])
def test_group_stages_take_only_their_group(n: int) -> None:
    hosts = fleet(n, groups=[("web",), ("web",), ("web",), ("db",)])
    result = expand(plan(GROUPED), hosts)
    check_invariants(result, {h.name for h in hosts})
    group_of = {h.name: h.groups[0] for h in hosts}
    for stage in result.stages:
        want = stage.settings.group
        assert all(group_of[h] == want for h in stage.hosts)
    web = sum(g == "web" for g in group_of.values())
    # 10% of the web hosts (rounded up), never of the whole fleet.
    assert len(result.stages[0].hosts) == -(-web // 10)
    assert [s.name for s in result.stages] == ["web-canary", "web-rest", "db-one", "db-rest"]
    assert result.stages[3].settings.after == ("db-one",)


def test_group_stage_without_hosts_is_empty() -> None:
    result = expand(plan(GROUPED), fleet(5, groups=[("web",)]))
    assert [s.batches for s in result.stages[2:]] == [(), ()]
    assert result.stages[2].note == "empty: no host with updates is in group db"


# --- canary coverage -------------------------------------------------------------------------

VALIDATED = """\
  - {name: validation, hosts: 1, validation: true}
  - {name: canary, hosts: COUNT, parallel: 1}
  - {name: rest, hosts: rest, parallel: 10%}
"""


def pairs_of(host: PlanHost) -> set[tuple[str, str]]:
    return {(host.os_release, g) for g in host.groups} or {(host.os_release, "ungrouped")}


@pytest.mark.parametrize(
    ("n", "groups", "releases", "count"),
    [
        (10, [("web",), ("db",)], [BOOKWORM, BULLSEYE], "1"),
        (100, [("web",), ("web",), ("db",), ("cache",)], [BOOKWORM, BULLSEYE], "3%"),
        (100, [("web", "dc1"), ("db", "dc2"), ("web", "dc2")], [BOOKWORM], "1"),
        (500, [("web",), ("db",), ()], [BOOKWORM, BULLSEYE, "ubuntu 24.04 noble"], "10%"),
        (7, [("a",), ("b",), ("c",), ("d",), ("e",), ("f",), ("g",)], [BOOKWORM], "2"),
        (1000, [("web",)], [BOOKWORM], "5"),
    ],
)
def test_canary_covers_every_pair(
    n: int, groups: list[tuple[str, ...]], releases: list[str], count: str
) -> None:
    hosts = fleet(n, groups=groups, releases=releases)
    result = expand(plan(VALIDATED.replace("COUNT", count)), hosts)
    check_invariants(result, {h.name for h in hosts})
    by_name = {h.name: h for h in hosts}
    validation, canary = result.stages[0], result.stages[1]
    assert len(validation.hosts) == 1
    assert result.hosts[validation.hosts[0]].reason == "validation: validation host"
    left = [h for h in hosts if h.name not in validation.hosts]
    wanted = set().union(*(pairs_of(h) for h in left))
    got = set().union(*(pairs_of(by_name[h]) for h in canary.hosts))
    assert wanted <= got
    reasons = [canary.reasons[h] for h in canary.hosts]
    assert sum(r.startswith("canary: first host of ") for r in reasons) >= 1
    grew = any("grew" in w for w in result.warnings)
    assert grew == any("added to cover" in r for r in reasons)


def test_canary_reasons_name_the_pair() -> None:
    hosts = fleet(6, groups=[("web",), ("db",), ("web",)], releases=[BOOKWORM, BULLSEYE])
    result = expand(plan("  - {name: canary, hosts: 1}\n  - {name: rest, hosts: rest}\n"), hosts)
    reasons = sorted(result.stages[0].reasons.values())
    assert reasons[0].startswith("canary: added to cover ")
    assert {r.split(" of ")[-1].split(" cover ")[-1] for r in reasons} == {
        f"{BULLSEYE} / db",
        f"{BULLSEYE} / web",
        f"{BOOKWORM} / db",
        f"{BOOKWORM} / web",
    }
    assert result.warnings == (
        "stage canary grew from 1 to 4 host(s) to cover every OS release / group pair",
    )


# --- selection -------------------------------------------------------------------------------


def score(p: float, level: RiskLevel) -> RiskScore:
    return RiskScore(p, max(0.0, p - 0.1), min(1.0, p + 0.1), level, ("test",))


UPDATES = [
    update("libssl3", security=True),
    update("curl"),
    update("linux-image-amd64", reboot=True),
    update("vim", held=True),
    update("nginx", age_days=0.5),
    update("libxml2", security=True, age_days=3),
    update("openssh-server", security=True),
]
SCORES = {
    "h00000": {
        "libssl3": score(0.05, RiskLevel.LOW),
        "curl": score(0.2, RiskLevel.MEDIUM),
        "linux-image-amd64": score(0.6, RiskLevel.HIGH),
        "nginx": score(0.1, RiskLevel.LOW),
        "libxml2": score(0.35, RiskLevel.MEDIUM),
        # openssh-server is not scored
    }
}
ALL = ["libssl3", "curl", "linux-image-amd64", "nginx", "libxml2", "openssh-server"]


@pytest.mark.parametrize(
    ("select", "selected", "reasons"),
    [
        ("{}", ALL, {"vim": "held on the host"}),
        (
            "{security_only: true}",
            ["libssl3", "libxml2", "openssh-server"],
            {"curl": "not a security update (select.security_only)"},
        ),
        (
            "{include: ['lib*', 'curl']}",
            ["libssl3", "curl", "libxml2"],
            {"nginx": "not matched by select.include"},
        ),
        (
            "{exclude: ['linux-*', '*ssh*']}",
            ["libssl3", "curl", "nginx", "libxml2"],
            {
                "linux-image-amd64": "matched select.exclude 'linux-*'",
                "openssh-server": "matched select.exclude '*ssh*'",
            },
        ),
        (
            "{include: ['vim']}",
            [],
            {"vim": "held on the host"},  # held wins over any other rule
        ),
        (
            "{min_age_days: 1}",
            ["libssl3", "curl", "linux-image-amd64", "libxml2", "openssh-server"],
            {"nginx": "first seen less than 1 days ago (select.min_age_days)"},
        ),
        (
            "{min_age_days: 7}",
            ["libssl3", "curl", "linux-image-amd64", "openssh-server"],
            {"libxml2": "first seen less than 7 days ago (select.min_age_days)"},
        ),
        (
            "{max_risk: medium}",
            ["libssl3", "curl", "nginx", "libxml2"],
            {
                "linux-image-amd64": "risk high is above select.max_risk medium",
                "openssh-server": "no risk score",
            },
        ),
        (
            "{max_risk: low, unscored: include}",
            ["libssl3", "nginx", "openssh-server"],
            {"curl": "risk medium is above select.max_risk low"},
        ),
        (
            "{max_probability: 0.2}",
            ["libssl3", "curl", "nginx"],
            {
                "libxml2": "regression probability 0.35 is above select.max_probability 0.2",
                "openssh-server": "no risk score",
            },
        ),
        (
            "{max_probability: 0.2, unscored: include}",
            ["libssl3", "curl", "nginx", "openssh-server"],
            {
                "linux-image-amd64": (
                    "regression probability 0.60 is above select.max_probability 0.2"
                )
            },
        ),
        ("{unscored: exclude}", ALL, {}),  # only matters with a risk threshold
    ],
)
def test_selection(select: str, selected: list[str], reasons: dict[str, str]) -> None:
    hosts = fleet(1)
    spec = plan("  - {name: all, hosts: rest}\n", head=f"select: {select}\n")
    result = expand(spec, hosts, {"h00000": list(UPDATES)}, SCORES)
    chosen = result.hosts["h00000"].updates if "h00000" in result.hosts else ()
    assert [u.package for u in chosen] == selected
    excluded = {e.update.package: e.reason for e in result.excluded}
    assert set(excluded) | set(selected) == {u.package for u in UPDATES}
    for package, reason in reasons.items():
        assert excluded[package] == reason
    if not selected:
        assert result.skipped[0].reason == "nothing to patch"


def test_selected_updates_carry_scores() -> None:
    result = expand(plan("  - {name: all, hosts: rest}\n"), fleet(1), {"h00000": UPDATES}, SCORES)
    host = result.hosts["h00000"]
    risks = {u.package: r for u, r in zip(host.updates, host.risks, strict=True)}
    assert risks["curl"] == SCORES["h00000"]["curl"]
    assert risks["openssh-server"] is None
    entry = result.to_dict()["hosts"][0]["updates"]
    assert {u["package"]: (u["risk"], u["probability"]) for u in entry}["curl"] == ("medium", 0.2)


@pytest.mark.parametrize(
    ("targets", "host", "reason"),
    [
        ("{groups: [db]}", PlanHost("a", ("web",), BOOKWORM), "not in targets.groups (db)"),
        ("{groups: [db, web]}", PlanHost("a", ("web",), BOOKWORM), None),
        (
            "{facts: {distribution_release: bookworm}}",
            PlanHost("a", ("web",), BULLSEYE, {"distribution_release": "bullseye"}),
            "fact distribution_release is 'bullseye', targets.facts wants bookworm",
        ),
        (
            "{facts: {distribution_release: [bookworm, trixie]}}",
            PlanHost("a", ("web",), BOOKWORM, {"distribution_release": "trixie"}),
            None,
        ),
        (
            "{facts: {virtualization_role: guest}}",
            PlanHost("a", ("web",), BOOKWORM),
            "fact virtualization_role was not gathered (targets.facts)",
        ),
        ("{}", PlanHost("a", ("web",), BOOKWORM, reachable=False), "unreachable at last gather"),
    ],
)
def test_targets(targets: str, host: PlanHost, reason: str | None) -> None:
    spec = plan("  - {name: all, hosts: rest}\n", head=f"targets: {targets}\n")
    result = expand(spec, [host])
    if reason is None:
        assert list(result.hosts) == ["a"]
    else:
        assert [(s.host, s.reason) for s in result.skipped] == [("a", reason)]
        assert not result.hosts


def test_host_without_updates_is_skipped() -> None:
    hosts = fleet(2)
    result = expand(plan("  - {name: all, hosts: rest}\n"), hosts, {"h00000": [update()]})
    assert [(s.host, s.reason) for s in result.skipped] == [("h00001", "nothing to patch")]


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (update("foo;rm -rf /"), "pending update on h00000: invalid package name 'foo;rm -rf /'"),
        (update("-rf"), "pending update on h00000: invalid package name '-rf'"),
        (
            update(candidate="1.0; reboot"),
            "pending update 'libssl3' on h00000, candidate version: invalid package version",
        ),
        (
            update(installed="$(id)"),
            "pending update 'libssl3' on h00000, installed version: invalid package version",
        ),
        (update(arch="amd64 --force"), "pending update 'libssl3' on h00000: invalid architecture"),
    ],
)
def test_invalid_update_rejected(bad: PlanUpdate, message: str) -> None:
    with pytest.raises(BadInputError) as info:
        expand(plan("  - {name: all, hosts: rest}\n"), fleet(1), {"h00000": [update("curl"), bad]})
    assert info.value.message.startswith(message)


def test_invalid_update_that_is_not_selected_is_harmless() -> None:
    bad = update("foo;rm -rf /", held=True)
    result = expand(plan("  - {name: all, hosts: rest}\n"), fleet(1), {"h00000": [update(), bad]})
    assert [u.package for u in result.hosts["h00000"].updates] == ["libssl3"]


def test_duplicate_host_and_naive_now() -> None:
    hosts = fleet(1) * 2
    with pytest.raises(BadInputError, match="listed twice"):
        expand(plan("  - {name: all, hosts: rest}\n"), hosts)
    with pytest.raises(ValueError, match="aware"):
        expand_plan(plan("  - {name: all, hosts: rest}\n"), [], {}, {}, now=datetime(2026, 1, 1))


# --- reboot and rollback ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reboot", "needs", "expected"),
    [
        ("never", True, False),
        ("if_needed", True, True),
        ("if_needed", False, False),
        ("always", False, True),
    ],
)
def test_reboot(reboot: str, needs: bool, expected: bool) -> None:
    spec = plan("  - {name: all, hosts: rest}\n", head=f"reboot: {reboot}\n")
    updates = {"h00000": [update(), update("linux-image-amd64", reboot=needs)]}
    assert expand(spec, fleet(1), updates).hosts["h00000"].reboot is expected


def test_rollback_is_reverse_deploy_order() -> None:
    hosts = fleet(10)
    updates = {
        h.name: [update("a", installed="1.0-1"), update("b", installed="2.0-1")] for h in hosts
    }
    result = expand(plan(stage_rows(("1", "1"), ("rest", "3"))), hosts, updates)
    deploy = list(result.hosts)
    assert [r.host for r in result.rollback] == deploy[::-1]
    first = result.rollback[0]
    assert (first.stage, first.batch) == ("s1", 2)
    assert [(u.package, u.installed_version) for u in first.packages] == [
        ("b", "2.0-1"),
        ("a", "1.0-1"),
    ]
    entry = result.to_dict()["rollback"][0]
    assert entry["packages"] == [
        {"package": "b", "arch": "amd64", "to_version": "2.0-1"},
        {"package": "a", "arch": "amd64", "to_version": "1.0-1"},
    ]


# --- failure budget --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "total", "failed", "unreachable", "allowed", "exceeded"),
    [
        (FailureBudget(), 100, 0, 0, 0, False),  # default: no failure allowed ...
        (FailureBudget(), 100, 1, 0, 0, True),  # ... the first one halts
        (FailureBudget(hosts=3), 100, 3, 0, 3, False),  # == allowed goes on
        (FailureBudget(hosts=3), 100, 4, 0, 3, True),  # allowed + 1 halts
        (FailureBudget(hosts=3), 100, 2, 1, 3, False),
        (FailureBudget(hosts=3), 100, 2, 2, 3, True),  # unreachable counts by default
        (FailureBudget(hosts=3, unreachable_counts=False), 100, 2, 9, 3, False),
        (FailureBudget(hosts=3, unreachable_counts=False), 100, 4, 0, 3, True),
        (FailureBudget(percent=5), 100, 5, 0, 5, False),
        (FailureBudget(percent=5), 100, 6, 0, 5, True),
        (FailureBudget(percent=5), 39, 1, 0, 1, False),  # floor(1.95) = 1
        (FailureBudget(percent=5), 39, 2, 0, 1, True),
        (FailureBudget(percent=5), 19, 1, 0, 0, True),  # floor(0.95) = 0
        (FailureBudget(percent=2.5), 200, 5, 0, 5, False),
        (FailureBudget(percent=0.1), 1000, 1, 0, 1, False),  # exact: 0.1% of 1000 is 1
        (FailureBudget(percent=10, unreachable_counts=False), 10, 1, 5, 1, False),
        (FailureBudget(percent=10), 10, 1, 1, 1, True),
        (FailureBudget(percent=100), 3, 3, 0, 3, False),
    ],
)
def test_failure_budget(
    budget: FailureBudget,
    total: int,
    failed: int,
    unreachable: int,
    allowed: int,
    exceeded: bool,
) -> None:
    assert budget_allowed(total, budget) == allowed
    assert budget_exceeded(failed, unreachable, total, budget) is exceeded


def test_expansion_reports_budget() -> None:
    spec = plan("  - {name: all, hosts: rest}\n", head="failure_budget: {percent: 10}\n")
    result = expand(spec, fleet(25))
    assert result.failure_budget == 2
    assert result.to_dict()["failure_budget"] == {
        "allowed": 2,
        "percent": 10.0,
        "unreachable_counts": True,
    }


# --- determinism -----------------------------------------------------------------------------


def test_deterministic_and_independent_of_input_order() -> None:
    hosts = fleet(300, groups=[("web",), ("db",), ("web", "dc1")], releases=[BOOKWORM, BULLSEYE])
    updates = {h.name: [update(), update("curl", security=True)] for h in hosts}
    spec = plan(VALIDATED.replace("COUNT", "3%"))
    first = expand(spec, hosts, updates).to_dict()
    assert expand(spec, hosts, updates).to_dict() == first
    shuffled = list(hosts)
    random.Random(7).shuffle(shuffled)
    reordered = dict(reversed(list(updates.items())))
    again = expand(spec, shuffled, reordered).to_dict()
    assert json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True)


def test_order_is_spread_and_depends_on_plan_name() -> None:
    hosts = fleet(50)
    spec = plan(stage_rows(("5", "1"), ("rest", "10")))
    order = list(expand(spec, hosts).hosts)
    assert order != sorted(order), "not simply by name"
    other = spec.model_copy(update={"name": "other"})
    assert list(expand(other, hosts).hosts) != order


def test_to_dict_is_json() -> None:
    hosts = [replace(h, facts={"distribution_release": "bookworm"}) for h in fleet(5)]
    result = expand(plan(VALIDATED.replace("COUNT", "1")), hosts, None, {})
    data = result.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["total_hosts"] == 5 and data["plan"] == "test"
    assert [s["name"] for s in data["stages"]] == ["validation", "canary", "rest"]
    assert data["stages"][0]["settings"]["soak"] == "0s"
