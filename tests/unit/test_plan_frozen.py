"""Frozen plans: written, read back unchanged, and refused once edited or malformed."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from patchpilot.errors import BadInputError
from patchpilot.plan import (
    FORMAT,
    ExpandedPlan,
    PlanHost,
    PlanSpec,
    PlanUpdate,
    content_hash,
    expand_plan,
    freeze,
    inventory_snapshot,
    load_frozen,
    load_plan,
    write_frozen,
)
from patchpilot.risk.types import RiskLevel, RiskScore

PLANS = Path(__file__).resolve().parents[2] / "plans"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def update(package: str, installed: str, candidate: str) -> PlanUpdate:
    return PlanUpdate(
        package=package,
        arch="amd64",
        installed_version=installed,
        candidate_version=candidate,
        source=package,
        security=True,
        held=False,
        reboot_needed=False,
        first_seen=NOW - timedelta(days=10),
    )


HOSTS = [
    PlanHost(f"web{i:02d}", ("web",), "debian 12 bookworm" if i % 2 else "debian 11 bullseye")
    for i in range(12)
] + [
    PlanHost("db01", ("db",), "debian 12 bookworm"),
    PlanHost("down", ("db",), "x", reachable=False),
]
UPDATES = {
    h.name: [
        update("libssl3", "3.0.11-1~deb12u1", "3.0.11-1~deb12u2"),
        update("curl", "7.88.1-10", "7.88.1-10+deb12u5"),
    ]
    for h in HOSTS
}
SCORES = {h.name: {"libssl3": RiskScore(0.1, 0.05, 0.2, RiskLevel.LOW, ("ok",))} for h in HOSTS}


@pytest.fixture
def spec() -> PlanSpec:
    return load_plan(PLANS / "canary.yml")


@pytest.fixture
def expanded(spec: PlanSpec) -> ExpandedPlan:
    return expand_plan(spec, HOSTS, UPDATES, SCORES, now=NOW)


@pytest.fixture
def frozen_file(tmp_path: Path, spec: PlanSpec, expanded: ExpandedPlan) -> Path:
    data = freeze(
        expanded,
        spec,
        inventory_snapshot=inventory_snapshot(HOSTS, expanded),
        created_at=NOW,
    )
    path = tmp_path / "plan.frozen.json"
    write_frozen(path, data)
    return path


def test_round_trip(frozen_file: Path, spec: PlanSpec, expanded: ExpandedPlan) -> None:
    frozen = load_frozen(frozen_file)
    assert frozen.format == FORMAT == "patchpilot-frozen-plan/1"
    assert frozen.created_at == NOW
    assert frozen.spec == spec
    assert frozen.expansion == json.loads(json.dumps(expanded.to_dict()))
    assert frozen.host_updates("web03") == [
        {
            "package": "libssl3",
            "arch": "amd64",
            "from": "3.0.11-1~deb12u1",
            "to": "3.0.11-1~deb12u2",
            "source": "libssl3",
            "security": True,
            "reboot_needed": False,
            "rollback_source": None,
            "rollback_note": None,
            "risk": "low",
            "probability": 0.1,
        },
        {
            "package": "curl",
            "arch": "amd64",
            "from": "7.88.1-10",
            "to": "7.88.1-10+deb12u5",
            "source": "curl",
            "security": True,
            "reboot_needed": False,
            "rollback_source": None,
            "rollback_note": None,
            "risk": None,
            "probability": None,
        },
    ]
    assert frozen.inventory["web03"]["installed"] == {
        "libssl3:amd64": "3.0.11-1~deb12u1",
        "curl:amd64": "7.88.1-10",
    }
    assert frozen.inventory["down"] == {"os_release": "x", "groups": ["db"], "reachable": False}
    raw = json.loads(frozen_file.read_text())
    assert raw["sha256"] == content_hash(raw) == frozen.sha256
    # What a run executes is the document that was verified, not a second read of the file.
    assert frozen.data == raw
    frozen_file.write_text("{}")
    assert frozen.data == raw and frozen.data["sha256"] == frozen.sha256


def test_layout_does_not_matter(frozen_file: Path) -> None:
    data = json.loads(frozen_file.read_text())
    frozen_file.write_text(json.dumps(data, indent=None, sort_keys=False))
    assert load_frozen(frozen_file).sha256 == data["sha256"]


def edit(path: Path, change: Callable[[dict[str, Any]], None], *, rehash: bool = False) -> None:
    data = json.loads(path.read_text())
    change(data)
    if rehash:
        data["sha256"] = content_hash(data)
    path.write_text(json.dumps(data))


def set_to(data: dict[str, Any], version: str) -> None:
    data["expansion"]["hosts"][0]["updates"][0]["to"] = version


@pytest.mark.parametrize(
    "change",
    [
        lambda d: set_to(d, "3.0.11-1~deb12u3"),
        lambda d: d["expansion"]["stages"][1]["batches"].append(["evil"]),
        lambda d: d["spec"]["stages"][0].update(hosts="rest"),
        lambda d: d["inventory"].pop("web03"),
        lambda d: d.update(created_at="2026-06-02T00:00:00+00:00"),
        lambda d: d.update(sha256="0" * 64),
    ],
)
def test_tampering_detected(frozen_file: Path, change: Callable[[dict[str, Any]], None]) -> None:
    edit(frozen_file, change)
    with pytest.raises(BadInputError) as info:
        load_frozen(frozen_file)
    assert info.value.message == f"{frozen_file}: frozen plan was modified after it was written"
    assert info.value.hint


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: set_to(d, "1.0; reboot"),
            "expansion.hosts[0].updates[0]: invalid package version",
        ),
        (
            lambda d: d["expansion"]["hosts"][0]["updates"][0].update(package="$(id)"),
            "expansion.hosts[0].updates[0]: invalid package name '$(id)'",
        ),
        (
            lambda d: d["expansion"]["rollback"][0]["packages"][0].update(to_version="`id`"),
            "expansion.rollback[0].packages[0]: invalid package version",
        ),
        (
            lambda d: d["spec"].update(description="{{ lookup('pipe', 'id') }}"),
            "spec description: template expressions are not allowed in plans",
        ),
        (
            lambda d: d["spec"]["stages"][2].update(parallel=0),
            "spec stages[2].parallel: must be at least 1",
        ),
        (lambda d: d["expansion"].pop("rollback"), "expansion is incomplete"),
        (lambda d: d.update(created_at="yesterday"), "created_at: not an ISO 8601 time"),
    ],
)
def test_revalidated_even_with_a_matching_hash(
    frozen_file: Path, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    edit(frozen_file, change, rehash=True)
    with pytest.raises(BadInputError) as info:
        load_frozen(frozen_file)
    assert message in info.value.message
    assert info.value.message.startswith(str(frozen_file))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"format": "patchpilot-frozen-plan/2"}', "format 'patchpilot-frozen-plan/2' is not"),
        ('{"sha256": "x"}', "format None is not patchpilot-frozen-plan/1"),
        (f'{{"format": "{FORMAT}"}}', "not a frozen plan (missing created_at"),
        ("[1, 2]", "not a frozen plan (expected a JSON object)"),
        ("{not json", ":1: not valid JSON"),
    ],
)
def test_wrong_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(BadInputError) as info:
        load_frozen(path)
    assert message in info.value.message


def test_unknown_field_refused(frozen_file: Path) -> None:
    edit(frozen_file, lambda d: d.update(extra=1), rehash=True)
    with pytest.raises(BadInputError, match=r"not a frozen plan \(unknown extra\)"):
        load_frozen(frozen_file)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="cannot read frozen plan"):
        load_frozen(tmp_path / "nope.json")


def test_freeze_checks_its_arguments(
    spec: PlanSpec, expanded: ExpandedPlan, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="aware"):
        freeze(expanded, spec, inventory_snapshot={}, created_at=datetime(2026, 1, 1))
    other = spec.model_copy(update={"name": "other"})
    with pytest.raises(ValueError, match="frozen with spec 'other'"):
        freeze(expanded, other, inventory_snapshot={}, created_at=NOW)
    data = freeze(expanded, spec, inventory_snapshot={}, created_at=NOW)
    data["inventory"] = {"changed": True}
    with pytest.raises(ValueError, match="changed since"):
        write_frozen(tmp_path / "x.json", data)
    assert not list(tmp_path.iterdir())


def test_freeze_is_deterministic(spec: PlanSpec, expanded: ExpandedPlan) -> None:
    snapshot = inventory_snapshot(HOSTS, expanded)
    again = expand_plan(spec, list(reversed(HOSTS)), UPDATES, SCORES, now=NOW)
    first = freeze(expanded, spec, inventory_snapshot=snapshot, created_at=NOW)
    second = freeze(again, spec, inventory_snapshot=snapshot, created_at=NOW)
    assert first["sha256"] == second["sha256"]


def _rename_host(d: dict[str, Any], new: str) -> None:
    old = d["expansion"]["hosts"][0]["name"]
    d["expansion"]["hosts"][0]["name"] = new
    for st in d["expansion"]["stages"]:
        st["batches"] = [[new if h == old else h for h in b] for b in st["batches"]]
    for r in d["expansion"]["rollback"]:
        if r["host"] == old:
            r["host"] = new


def _all_arches(d: dict[str, Any], arch: str) -> None:
    for h in d["expansion"]["hosts"][:1]:
        h["updates"][0]["arch"] = arch
    for r in d["expansion"]["rollback"]:
        if r["host"] == d["expansion"]["hosts"][0]["name"]:
            for p in r["packages"]:
                if p["package"] == d["expansion"]["hosts"][0]["updates"][0]["package"]:
                    p["arch"] = arch


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: _rename_host(d, "all"), "'all' is not an inventory host name"),
        (lambda d: _rename_host(d, "web*,db"), "is not an inventory host name"),
        (lambda d: _all_arches(d, "x/../../../../tmp/evil"), "invalid architecture"),
        (
            lambda d: d["expansion"]["stages"][0]["settings"]["health"].append(
                {"check": "command", "params": {"argv": ["sh", "-c", "{{ lookup('pipe','id') }}"]}}
            ),
            "template expressions are not allowed in plans",
        ),
        (
            lambda d: d["expansion"]["stages"][0]["settings"].update(soak="1s"),
            "of the expansion is not the plan's",
        ),
        (
            lambda d: d["expansion"]["rollback"].reverse(),
            "rollback sequence is not the reverse of the deploy order",
        ),
        (
            lambda d: d["expansion"]["failure_budget"].update(allowed=99),
            "failure_budget.allowed is 99",
        ),
    ],
)
def test_a_forged_expansion_is_refused(
    frozen_file: Path, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    """The expansion is checked with the same rules as a plan file: a forgery whose hash was
    recomputed cannot name a group, a path or a template, or change what was reviewed."""
    edit(frozen_file, change, rehash=True)
    with pytest.raises(BadInputError) as info:
        load_frozen(frozen_file)
    assert message in info.value.message


def test_only_a_plan_signed_by_this_store_is_accepted(frozen_file: Path, tmp_path: Path) -> None:
    from patchpilot.plan.frozen import sign, verify_signature
    from patchpilot.settings import db_url
    from patchpilot.store.db import open_store
    from patchpilot.store.secrets import plan_key

    engine = open_store(db_url(str(tmp_path / "pp.db")))
    key = plan_key(engine)
    assert plan_key(engine) == key and len(key) == 32
    data = json.loads(frozen_file.read_text())
    with pytest.raises(BadInputError, match="not signed by this store"):
        verify_signature(frozen_file, data, key)
    signed = sign(data, key)
    write_frozen(frozen_file, signed)
    frozen = load_frozen(frozen_file)
    verify_signature(frozen_file, frozen.data, key)
    # A forger rewrites a version and recomputes the hash: the signature no longer holds.
    edit(frozen_file, lambda d: set_to(d, "3.0.11-1~deb12u3"), rehash=True)
    forged = load_frozen(frozen_file)
    with pytest.raises(BadInputError, match="not signed by this store"):
        verify_signature(frozen_file, forged.data, key)
    other = plan_key(open_store(db_url(str(tmp_path / "other.db"))))
    with pytest.raises(BadInputError, match="not signed by this store"):
        verify_signature(frozen_file, frozen.data, other)


def test_apply_refuses_a_plan_whose_from_versions_moved(
    expanded: ExpandedPlan, tmp_path: Path
) -> None:
    from patchpilot.planning import moved_since_planned
    from patchpilot.settings import db_url
    from patchpilot.store.db import open_store, session_scope
    from patchpilot.store.models import Host, InstalledPackage

    engine = open_store(db_url(str(tmp_path / "pp.db")))
    with session_scope(engine) as s:
        for name, h in expanded.hosts.items():
            row = Host(name=name)
            s.add(row)
            s.flush()
            for u in h.updates:
                s.add(
                    InstalledPackage(
                        host_id=row.id, name=u.package, arch=u.arch, version=u.installed_version
                    )
                )
    assert moved_since_planned(engine, expanded) == []
    first = next(iter(expanded.hosts))
    with session_scope(engine) as s:
        host = s.exec(select(Host).where(Host.name == first)).one()
        pkg = s.exec(select(InstalledPackage).where(InstalledPackage.host_id == host.id)).first()
        assert pkg is not None
        pkg.version = "9.9-9"
        s.add(pkg)
    (moved,) = moved_since_planned(engine, expanded)
    assert moved.startswith(f"{first}: ") and "9.9-9 now" in moved
