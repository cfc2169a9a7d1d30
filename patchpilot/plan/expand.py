"""From a plan and what the fleet needs, the exact waves: which host gets which versions in
which batch, why, and the order to undo it in.

Expansion is pure and deterministic: the same plan, hosts, updates, scores and `now` give
the same result, so a plan can be reviewed, frozen and later executed exactly as reviewed.
Every host and every pending update that is left out carries a reason in words.
"""

from __future__ import annotations

import fnmatch
import gc
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import filterfalse, repeat
from operator import attrgetter

from patchpilot.errors import BadInputError
from patchpilot.patches import validate_package_name, validate_version
from patchpilot.plan.model import (
    ARCH_RE,
    ExcludedUpdate,
    ExpandedPlan,
    HostPlan,
    PlanHost,
    PlanUpdate,
    RollbackStep,
    SkippedHost,
    StagePlan,
    budget_allowed,
    budget_exceeded,
)
from patchpilot.plan.spec import PlanSpec, Select, Stage, resolve_count
from patchpilot.risk.types import RiskLevel, RiskScore

__all__ = [
    "ExcludedUpdate",
    "ExpandedPlan",
    "HostPlan",
    "PlanHost",
    "PlanUpdate",
    "RollbackStep",
    "SkippedHost",
    "StagePlan",
    "budget_allowed",
    "budget_exceeded",
    "expand_plan",
]

R_UNREACHABLE = "unreachable at last gather"
R_NOTHING = "nothing to patch"
R_UNCOVERED = "not covered by any stage"
R_HELD = "held on the host"
R_NOT_SECURITY = "not a security update (select.security_only)"
R_NOT_INCLUDED = "not matched by select.include"
R_NO_SCORE = "no risk score"
NO_GROUP = "ungrouped"


# --- expansion -------------------------------------------------------------------------------


def expand_plan(
    spec: PlanSpec,
    hosts: Sequence[PlanHost],
    updates: Mapping[str, Sequence[PlanUpdate]],
    scores: Mapping[str, Mapping[str, RiskScore]],
    *,
    now: datetime,
) -> ExpandedPlan:
    """The waves this plan makes of this fleet, as of `now` (aware). `hosts` are the hosts
    the targets pattern resolved to; `updates` their pending updates by host name; `scores`
    the risk of each pending update by host name, then package name (a host or package
    missing from it is unscored). Raises BadInputError for an unusable update."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    # Expansion builds only acyclic data. On a large fleet the cyclic collector would
    # otherwise re-scan the caller's millions of input objects several times over.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _expand(spec, hosts, updates, scores, now)
    finally:
        if collecting:
            gc.enable()


Signature = tuple[str, tuple[str, ...]]  # (os_release, groups)


@dataclass(slots=True)
class _Selection:
    """The hosts selection keeps, in name order, one list per field. The lists are filled
    while each host and its updates are still in the CPU cache; the passes after selection
    then walk lists of pointers instead of going back to host objects, which on a large
    fleet lie far apart in memory."""

    names: list[str] = field(default_factory=list)
    os_releases: list[str] = field(default_factory=list)
    groups: list[tuple[str, ...]] = field(default_factory=list)
    updates: list[tuple[PlanUpdate, ...]] = field(default_factory=list)
    risks: list[tuple[RiskScore | None, ...]] = field(default_factory=list)
    reboot_needed: list[bool] = field(default_factory=list)
    signatures: list[int] = field(default_factory=list)  # index into `distinct`
    # Each (os_release, groups) signature, in the order of its first host.
    distinct: dict[Signature, int] = field(default_factory=dict)


_new = tuple.__new__
_needs_reboot = attrgetter("reboot_needed")
_arch = attrgetter("arch")
_installed = attrgetter("installed_version")
_candidate = attrgetter("candidate_version")


def _expand(
    spec: PlanSpec,
    hosts: Sequence[PlanHost],
    updates: Mapping[str, Sequence[PlanUpdate]],
    scores: Mapping[str, Mapping[str, RiskScore]],
    now: datetime,
) -> ExpandedPlan:
    skipped: list[SkippedHost] = []
    excluded: list[ExcludedUpdate] = []
    chosen = _select(spec, hosts, updates, scores, now, skipped, excluded)
    warnings: list[str] = []
    if not chosen.names:
        warnings.append("no host has anything to patch: the plan is empty")

    order = _stable_order(spec.name, chosen.names)
    stages, placement, deploy, uncovered = _assign(spec, chosen, order, warnings)

    # Built in name order, the order the columns and the objects they point to are in, and
    # only then keyed in deploy order. A host no stage took gets a plan without a stage,
    # which is dropped: it is not in `deploy`.
    reboot = chosen.reboot_needed
    if spec.reboot != "if_needed":
        reboot = [spec.reboot == "always"] * len(reboot)
    rows = zip(
        chosen.names,
        chosen.os_releases,
        chosen.groups,
        placement.stages,
        placement.batches,
        placement.reasons,
        reboot,
        chosen.updates,
        chosen.risks,
        strict=True,
    )
    plans: list[HostPlan] = list(map(_new, repeat(HostPlan), rows))
    host_plans = {p.name: p for p in map(plans.__getitem__, deploy)}
    if uncovered:
        skipped.extend(SkippedHost(chosen.names[j], R_UNCOVERED) for j in sorted(uncovered))
        warnings.append(
            f"{len(uncovered)} host(s) with updates are not covered by any stage and are"
            " skipped; end the plan with a stage of hosts: rest to patch them"
        )
        skipped.sort()

    warnings.extend(_no_rollback(spec, host_plans.values()))

    return ExpandedPlan(
        plan=spec.name,
        emergency=spec.emergency,
        reboot=spec.reboot,
        evaluated_at=now,
        stages=tuple(stages),
        hosts=host_plans,
        skipped=tuple(skipped),
        excluded=tuple(excluded),
        failure_budget=budget_allowed(len(host_plans), spec.failure_budget),
        budget=spec.failure_budget,
        warnings=tuple(warnings),
    )


def _no_rollback(spec: PlanSpec, plans: Iterable[HostPlan]) -> list[str]:
    """Each planned host with an update that cannot be rolled back, named before anything
    runs with what the plan's rollback.on_impossible will do about it."""
    out = []
    for h in plans:
        stuck = [u for u in h.updates if u.rollback_source == "none"]
        if not stuck:
            continue
        what = ", ".join(
            f"{u.package} {u.installed_version} ({u.rollback_note or 'no artifact'})" for u in stuck
        )
        if spec.rollback.on_impossible == "refuse":
            then = f"rollback.on_impossible is refuse: {h.name} will be refused at its preflight"
        else:
            then = f"rollback.on_impossible is proceed: {h.name} is patched with no way back"
        out.append(f"{h.name}: cannot be rolled back: {what}; {then}")
    return out


def _target_reason(spec: PlanSpec, host: PlanHost) -> str | None:
    targets = spec.targets
    if targets.groups and not any(g in host.groups for g in targets.groups):
        return f"not in targets.groups ({', '.join(targets.groups)})"
    for key, want in targets.facts.items():
        have = host.facts.get(key)
        wanted = (want,) if isinstance(want, str) else want
        if have is None:
            return f"fact {key} was not gathered (targets.facts)"
        if have not in wanted:
            return f"fact {key} is {have!r}, targets.facts wants {' or '.join(wanted)}"
    if not host.reachable:
        return R_UNREACHABLE
    return None


class _PackageRules(dict[str, str | None]):
    """Package name -> why select.include / select.exclude leave it out (None: kept). Names
    repeat across a fleet, so the globs run once per distinct name, on its first lookup."""

    def __init__(self, select: Select) -> None:
        super().__init__()
        self._include = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in select.include))
        self._exclude = select.exclude

    def __missing__(self, package: str) -> str | None:
        why = _glob_reason(self._include, self._exclude, package)
        self[package] = why
        return why


def _glob_reason(include: re.Pattern[str], exclude: Sequence[str], package: str) -> str | None:
    if not include.match(package):
        return R_NOT_INCLUDED
    for pattern in exclude:
        if fnmatch.fnmatchcase(package, pattern):
            return f"matched select.exclude {pattern!r}"
    return None


def _select(
    spec: PlanSpec,
    hosts: Sequence[PlanHost],
    updates: Mapping[str, Sequence[PlanUpdate]],
    scores: Mapping[str, Mapping[str, RiskScore]],
    now: datetime,
    skipped: list[SkippedHost],
    excluded: list[ExcludedUpdate],
) -> _Selection:
    """Hosts the targets keep and, on each, the updates the select rules keep; everything
    left out is recorded with the first rule that excluded it. Hosts come out by name.

    This loop visits every pending update of the fleet, so everything that does not depend
    on the update itself is worked out before it: the age cutoff, the reason each risk level
    gives, and (cached by name) the glob decision for each package."""
    sel = spec.select
    security_only = sel.security_only
    package_reason = _PackageRules(sel)
    check_age = sel.min_age_days > 0
    cutoff = (now - timedelta(days=sel.min_age_days)).astimezone(UTC)
    r_too_new = f"first seen less than {sel.min_age_days:g} days ago (select.min_age_days)"
    max_p = sel.max_probability
    max_risk = sel.max_risk
    # Risk level -> why it is left out (None: allowed).
    level_reason: dict[RiskLevel, str | None] = {
        lv: (
            f"risk {lv.value} is above select.max_risk {max_risk.value}"
            if max_risk is not None and lv.rank > max_risk.rank
            else None
        )
        for lv in RiskLevel
    }
    risk_filter = max_risk is not None or max_p is not None
    exclude_unscored = risk_filter and sel.unscored == "exclude"
    scores_get = scores.get
    updates_get = updates.get
    no_scores: Mapping[str, RiskScore] = {}
    # Architectures and versions of the selected updates, to validate each distinct one.
    arches: set[str] = set()
    versions: set[str] = set()
    exclude = excluded.append

    filtered = bool(spec.targets.groups or spec.targets.facts)
    chosen = _Selection()
    signature_ids = chosen.distinct
    previous = None  # in name order, a host listed twice comes right after itself
    for host in sorted(hosts, key=attrgetter("name")):
        name = host.name
        if name == previous:
            raise BadInputError(
                f"host {name} is listed twice", hint="host names must be unique in a fleet"
            )
        previous = name
        reason = (
            _target_reason(spec, host) if filtered else (None if host.reachable else R_UNREACHABLE)
        )
        if reason:
            skipped.append(SkippedHost(name, reason))
            continue
        score_of = scores_get(name, no_scores).get
        picked: list[PlanUpdate] = []
        risks: list[RiskScore | None] = []
        for u in updates_get(name, ()):
            # The rules in the documented order; the first that applies is the reason.
            if u.held:
                exclude(_new(ExcludedUpdate, (name, u, R_HELD)))
                continue
            if security_only and not u.security:
                exclude(_new(ExcludedUpdate, (name, u, R_NOT_SECURITY)))
                continue
            pkg = u.package
            if (why := package_reason[pkg]) is not None:
                exclude(_new(ExcludedUpdate, (name, u, why)))
                continue
            if check_age and u.first_seen > cutoff:
                exclude(_new(ExcludedUpdate, (name, u, r_too_new)))
                continue
            score = score_of(pkg)
            if score is None:
                if exclude_unscored:
                    exclude(_new(ExcludedUpdate, (name, u, R_NO_SCORE)))
                    continue
            elif risk_filter:
                why = level_reason[score.level]
                if why is None and max_p is not None and score.probability > max_p:
                    why = (
                        f"regression probability {score.probability:.2f} is above"
                        f" select.max_probability {max_p:g}"
                    )
                if why is not None:
                    exclude(_new(ExcludedUpdate, (name, u, why)))
                    continue
            picked.append(u)
            risks.append(score)
        if picked:
            chosen.names.append(name)
            chosen.os_releases.append(host.os_release)
            chosen.groups.append(host.groups)
            chosen.updates.append(tuple(picked))
            chosen.risks.append(tuple(risks))
            chosen.reboot_needed.append(any(map(_needs_reboot, picked)))
            signature = (host.os_release, host.groups)
            chosen.signatures.append(signature_ids.setdefault(signature, len(signature_ids)))
            # Collected now, while this host's updates are still in the CPU cache.
            arches.update(map(_arch, picked))
            versions.update(map(_installed, picked))
            versions.update(map(_candidate, picked))
        else:
            skipped.append(SkippedHost(name, R_NOTHING))
    _validate_selected(chosen, package_reason, arches, versions)
    return chosen


def _validate_selected(
    chosen: _Selection, package_reason: _PackageRules, arches: set[str], versions: set[str]
) -> None:
    """Every package name, version and architecture that would reach a command; each
    distinct value is checked once. Names are taken from the glob cache: every package the
    globs kept, a superset of the selected ones, so a bad name on an update that was not
    selected only costs the slow search below, which raises for selected updates alone."""
    names = [name for name, why in package_reason.items() if why is None]
    bad_names = {n for n in names if not _valid(validate_package_name, n)}
    bad_versions = {v for v in versions if not _valid(validate_version, v)}
    bad_arches = {a for a in arches if not ARCH_RE.fullmatch(a)}
    if not (bad_names or bad_versions or bad_arches):
        return
    for name, host_updates in zip(chosen.names, chosen.updates, strict=True):
        for u in host_updates:  # name the first host and update with a bad value
            where = f"pending update {u.package!r} on {name}"
            if u.package in bad_names:
                validate_package_name(u.package, where=f"pending update on {name}")
            if u.installed_version in bad_versions:
                validate_version(u.installed_version, where=f"{where}, installed version")
            if u.candidate_version in bad_versions:
                validate_version(u.candidate_version, where=f"{where}, candidate version")
            if u.arch in bad_arches:
                raise BadInputError(
                    f"{where}: invalid architecture {u.arch!r}",
                    hint="architectures are letters, digits and _ (amd64, x86_64, noarch)",
                )


def _valid(check: Callable[..., str], value: str) -> bool:
    try:
        check(value)
    except BadInputError:
        return False
    return True


def _stable_order(plan_name: str, names: list[str]) -> list[int]:
    """Indices of `names` in an order that is fixed for a plan but spread across the fleet:
    by sha256 of plan name and host name (then the name), so web01..web03 do not share a
    wave."""
    prefix = plan_name.encode() + b"\0"
    sha = hashlib.sha256
    keys = [sha(prefix + (n := name.encode())).digest() + n for name in names]
    return sorted(range(len(names)), key=keys.__getitem__)


def _pairs(signature: Signature) -> list[tuple[str, str]]:
    os_release, groups = signature
    return [(os_release, g) for g in groups] or [(os_release, NO_GROUP)]


def _describe(stage: Stage, base: int) -> str:
    selector = f"group {stage.group}" if stage.group else "the plan's hosts"
    if stage.hosts == "rest":
        return f"the rest of {selector}"
    if isinstance(stage.hosts, int):
        return f"{stage.hosts} of {selector}"
    return f"{stage.hosts} of {selector} ({base} hosts)"


@dataclass(slots=True)
class _Placement:
    """Stage, batch and reason of each selected host, by index into the selection; None
    where no stage took the host."""

    stages: list[str | None]
    batches: list[int | None]
    reasons: list[str | None]


def _assign(
    spec: PlanSpec, chosen: _Selection, order: list[int], warnings: list[str]
) -> tuple[list[StagePlan], _Placement, list[int], list[int]]:
    """Stages take hosts in plan order from those no earlier stage took. Works on indices
    into `chosen` and on (OS release, groups) signatures, which hosts share: the hosts
    themselves are visited once, in name order."""
    names = chosen.names
    sigs = chosen.signatures
    signatures = list(chosen.distinct)
    sig_counts = Counter(sigs)
    canary = next((i for i, s in enumerate(spec.stages) if not s.validation), None)
    remaining = order
    stages: list[StagePlan] = []
    n = len(names)
    placement = _Placement([None] * n, [None] * n, [None] * n)
    deploy: list[int] = []
    for i, stage in enumerate(spec.stages):
        group = stage.group
        if group is None:
            available = remaining
            base = len(order)
        else:
            ok = [group in groups for _os, groups in signatures]
            available = [j for j in remaining if ok[sigs[j]]]
            base = sum(n for sig, n in sig_counts.items() if ok[sig])
        if not available:
            if not order:
                why = "no host has anything to patch"
            elif base == 0:
                why = f"no host with updates is in group {group}"
            else:
                why = "every host it may take is already in an earlier stage"
            stages.append(StagePlan(stage.name, stage, (), {}, f"empty: {why}"))
            warnings.append(f"stage {stage.name} is empty: {why}")
            continue
        take = min(max(1, resolve_count(stage.hosts, base)), len(available))
        why = (
            f"{stage.name}: validation host"
            if stage.validation
            else f"{stage.name}: {_describe(stage, base)}"
        )
        special: dict[int, str] = {}  # index -> reason, where not `why`
        if i == canary:
            picked, special = _cover(stage, available, take, sigs, signatures)
            if len(picked) > take:
                warnings.append(
                    f"stage {stage.name} grew from {take} to {len(picked)} host(s) to cover"
                    " every OS release / group pair"
                )
            remaining = list(filterfalse(set(picked).__contains__, remaining))
        else:
            picked = available[:take]
            if group is None:
                remaining = remaining[take:]  # took a prefix of what was left
            else:
                remaining = list(filterfalse(set(picked).__contains__, remaining))
        # Host names are fetched once per stage, in deploy order: each is a separate object
        # somewhere in memory, and the dict and the batches below both read it.
        picked_names = list(map(names.__getitem__, picked))
        reasons = dict.fromkeys(picked_names, why)
        reasons.update((names[j], text) for j, text in special.items())
        size = max(1, resolve_count(stage.parallel, len(picked)))
        batches = [picked[k : k + size] for k in range(0, len(picked), size)]
        named = tuple(tuple(picked_names[k : k + size]) for k in range(0, len(picked), size))
        for b, batch in enumerate(batches):
            for j in batch:
                placement.stages[j] = stage.name
                placement.batches[j] = b
                placement.reasons[j] = special.get(j, why)
        deploy.extend(picked)
        note = f"{len(picked)} host(s) in {len(batches)} batch(es) of up to {size}"
        stages.append(StagePlan(stage.name, stage, named, reasons, note))
    return stages, placement, deploy, remaining


def _cover(
    stage: Stage,
    available: list[int],
    take: int,
    sigs: list[int],
    signatures: list[Signature],
) -> tuple[list[int], dict[int, str]]:
    """The canary: first one host of every (OS release, group) pair among the hosts it may
    take, in sorted pair order, then more hosts in stable order up to its count. Returns the
    hosts and the reasons of the covering ones."""
    first_of_sig: dict[int, int] = {}  # signature -> first position in `available`
    for pos, j in enumerate(available):
        if sigs[j] not in first_of_sig:
            first_of_sig[sigs[j]] = pos
            if len(first_of_sig) == len(signatures):
                break
    first: dict[tuple[str, str], int] = {}  # pair -> first position
    for pos in sorted(first_of_sig.values()):
        for pair in _pairs(signatures[sigs[available[pos]]]):
            first.setdefault(pair, pos)
    covered: set[tuple[str, str]] = set()
    positions: list[int] = []
    special: dict[int, str] = {}
    for pair in sorted(first):
        if pair in covered:
            continue
        pos = first[pair]
        verb = "first host of" if len(positions) < take else "added to cover"
        special[available[pos]] = f"{stage.name}: {verb} {pair[0]} / {pair[1]}"
        positions.append(pos)
        covered.update(_pairs(signatures[sigs[available[pos]]]))
    picked = [available[pos] for pos in positions]
    if len(picked) < take:
        taken = set(positions)
        more = [j for pos, j in enumerate(available[: take + len(taken)]) if pos not in taken]
        picked += more[: take - len(picked)]
    return picked, special
