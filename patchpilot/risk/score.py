"""Scoring pending updates on hosts, with reasons in words, and the fleet's models and outcomes
in the store."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlmodel import Session, col, select

from patchpilot.errors import BadInputError
from patchpilot.patches import upstream_version
from patchpilot.risk.dataset import shipped_table
from patchpilot.risk.features import normalize_urgency, release_update_number
from patchpilot.risk.model import (
    FLEET_WEIGHT,
    OFFSET,
    RiskModel,
    design_matrix,
    shipped_model,
)
from patchpilot.risk.outcomes import record_outcome as record_outcome  # its home before
from patchpilot.risk.train import FleetOutcome, history_for, train_fleet
from patchpilot.risk.types import RiskLevel, RiskScore
from patchpilot.store.models import Host, PatchOutcome, PendingUpdate, RiskModelRecord

log = logging.getLogger(__name__)

REASON_MIN_LOGIT = 0.05  # a push smaller than this (about 5% relative) is not worth a line
MAX_REASONS = 3


@dataclass(frozen=True)
class Thresholds:
    """Probability cut-offs for the levels: below `medium` is low, at or above `high` high."""

    medium: float = 0.05
    high: float = 0.10

    def __post_init__(self) -> None:
        if not 0 < self.medium < self.high < 1:
            raise BadInputError(
                f"risk thresholds must satisfy 0 < medium < high < 1 "
                f"(got medium={self.medium}, high={self.high})",
                hint="set risk_medium and risk_high in the config file or PATCHPILOT_RISK_*",
            )

    def level(self, p: float) -> RiskLevel:
        if p >= self.high:
            return RiskLevel.HIGH
        if p >= self.medium:
            return RiskLevel.MEDIUM
        return RiskLevel.LOW


@dataclass(frozen=True)
class ScoredUpdate:
    host: str
    package: str
    arch: str
    installed_version: str
    candidate_version: str
    source: str | None
    security: bool
    score: RiskScore


@dataclass(frozen=True)
class ModelInfo:
    version: str  # "prior" for the shipped model, else the store's number
    kind: str
    created_at: str
    data_until: str
    rows: int
    fleet_rows: int
    active: bool
    metadata: dict[str, Any]


def _upstream_changed(installed: str, candidate: str, known: bool | None) -> bool | None:
    if known is not None:
        return known
    try:
        return upstream_version(installed) != upstream_version(candidate)
    except ValueError:
        return None


def update_items(rows: Sequence[PendingUpdate], *, now: datetime) -> pd.DataFrame:
    """Pending updates as model items, dated `now`: history counts what came before it."""
    return pd.DataFrame(
        {
            "package": [r.source or r.package for r in rows],
            "date": [now] * len(rows),
            "version": [r.candidate_version for r in rows],
            "cves": [len(r.cve_ids or []) for r in rows],
            "upstream_changed": [
                _upstream_changed(r.installed_version, r.candidate_version, r.upstream_changed)
                for r in rows
            ],
            "urgency": [r.urgency for r in rows],
            "entries": [
                np.nan if r.changelog_entries is None else r.changelog_entries for r in rows
            ],
            "reboot": [bool(r.reboot_needed) for r in rows],
        }
    )


def _plural(n: float, word: str, plural: str | None = None) -> str:
    k = round(n)
    return f"{k} {word}" if k == 1 else f"{k} {plural or word + 's'}"


class _Row:
    """Attribute access to row i of a few columns (itertuples drops '_'-prefixed names)."""

    def __init__(self, columns: dict[str, np.ndarray], i: int):
        self._columns = columns
        self._i = i

    def __getattr__(self, name: str) -> Any:
        return self._columns[name][self._i]


def _reason(feature: str, item: Any, ctx: Any) -> str | None:
    """Words for one feature's push, from the item's raw values and its history context."""
    family = ctx.family
    if feature.startswith("cat_"):
        return f"{feature[4:].replace('-', '/')} package"
    if feature == "cves_log":
        return f"fixes {_plural(item.cves, 'CVE')}"
    if feature == "upstream_change":
        return "new upstream version, not a backported fix"
    if feature == "upstream_unknown":
        return "whether upstream changed is unknown"
    if feature.startswith("urgency_"):
        return f"changelog urgency {feature[8:]}"
    if feature == "entries_log":
        entries = _plural(item.entries, "changelog entry", "changelog entries")
        return f"{entries} since the installed version"
    if feature == "release_updates_log":
        return f"update #{release_update_number(item.version)} of {family} in its release"
    if feature in ("days_prev_log", "first_update"):
        if np.isnan(ctx.days_prev):
            return f"no earlier update of {family} on record"
        return f"previous update of {family} {int(ctx.days_prev)} days earlier"
    if feature in (OFFSET, "prior_regressions_log", "history_log"):
        parts = []
        if ctx.fleet_n:
            parts.append(
                f"{int(ctx.fleet_k)} of {int(ctx.fleet_n)} updates of {family} failed on this fleet"
            )
        adv_total = ctx.history_n - ctx.fleet_n * FLEET_WEIGHT
        adv_k = ctx.history_k - ctx.fleet_k * FLEET_WEIGHT
        if adv_total > 0.5:
            parts.append(
                f"{round(adv_k)} of {round(adv_total)} earlier Debian updates of "
                f"{family} needed a regression fix"
            )
        if not parts:
            return f"no update history for {family}"
        return "; ".join(parts)
    if feature == "reboot":
        return "needs a reboot"
    return None


def score_items(
    model: RiskModel,
    items: pd.DataFrame,
    *,
    table: pd.DataFrame,
    outcomes: Sequence[FleetOutcome],
    thresholds: Thresholds,
) -> list[RiskScore]:
    """Scores in the items' order. A fleet has many hosts and few distinct updates: each
    distinct item is scored once."""
    if items.empty:
        return []
    keys = pd.util.hash_pandas_object(items.astype(object).map(str), index=False)
    codes, _ = pd.factorize(keys)
    first = pd.Series(range(len(items))).groupby(codes).first().to_numpy()
    distinct = items.iloc[first].reset_index(drop=True)
    scored = _score_distinct(model, distinct, table=table, outcomes=outcomes, thresholds=thresholds)
    return [scored[c] for c in codes]


def _score_distinct(
    model: RiskModel,
    items: pd.DataFrame,
    *,
    table: pd.DataFrame,
    outcomes: Sequence[FleetOutcome],
    thresholds: Thresholds,
) -> list[RiskScore]:
    history = history_for(table, base_rate=model.base_rate, outcomes=outcomes)
    x, cols = design_matrix(items, history)
    p, lo, hi = model.predict(x)
    contrib = model.contributions(x)
    # History features describe one fact; name it once, with their summed push.
    hist = contrib.pop(OFFSET) + contrib.pop("prior_regressions_log") + contrib.pop("history_log")
    contrib[OFFSET] = hist
    days = contrib.pop("days_prev_log") + contrib.pop("first_update")
    contrib["days_prev_log"] = days
    up = contrib.pop("upstream_change") + contrib.pop("upstream_unknown")
    contrib["upstream_change"] = up
    names = list(contrib)
    matrix = np.column_stack([contrib[n] for n in names])
    order = np.argsort(-matrix, axis=1)[:, :MAX_REASONS]
    out: list[RiskScore] = []
    item_cols = {c: items[c].to_numpy() for c in items.columns}
    ctx_cols = {c[1:]: cols[c].to_numpy() for c in cols.columns if c.startswith("_")}
    for i in range(len(items)):
        reasons: list[str] = []
        for j in order[i]:
            if matrix[i, j] < REASON_MIN_LOGIT:
                break
            name = names[j]
            if name == "upstream_change" and items["upstream_changed"].iat[i] is None:
                name = "upstream_unknown"
            if name == "upstream_change" and not items["upstream_changed"].iat[i]:
                continue
            text = _reason(name, _Row(item_cols, i), _Row(ctx_cols, i))
            if text:
                reasons.append(f"{text} (x{np.exp(matrix[i, j]):.1f})")
        if not reasons:
            # Nothing raises it: say what lowers it most, so the number is still explained.
            j = int(np.argmin(matrix[i]))
            text = _reason(names[j], _Row(item_cols, i), _Row(ctx_cols, i))
            if matrix[i, j] <= -REASON_MIN_LOGIT and text and names[j] != "upstream_change":
                reasons.append(f"lower than average: {text} (x{np.exp(matrix[i, j]):.1f})")
            else:
                reasons.append("no risk factor above an average update")
        prob = float(p[i])
        out.append(
            RiskScore(
                probability=prob,
                low=float(lo[i]),
                high=float(hi[i]),
                level=thresholds.level(prob),
                reasons=tuple(reasons),
            )
        )
    return out


def fleet_outcomes(session: Session) -> list[FleetOutcome]:
    rows = session.exec(select(PatchOutcome).order_by(col(PatchOutcome.recorded_at))).all()
    return [
        FleetOutcome(
            package=r.source or r.package,
            when=_aware(r.recorded_at),
            outcome=r.outcome,
            version=r.to_version,
            cves=r.cves,
            upstream_changed=r.upstream_changed,
            urgency=normalize_urgency(r.urgency),
            entries=r.changelog_entries,
            reboot=r.reboot_needed,
        )
        for r in rows
    ]


def _aware(d: datetime) -> datetime:
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def active_model(session: Session) -> tuple[RiskModel, str]:
    """The newest trained model in the store, else the prior shipped with patchpilot."""
    rec = session.exec(select(RiskModelRecord).order_by(col(RiskModelRecord.id).desc())).first()
    if rec is None:
        return shipped_model(), "prior"
    return RiskModel.from_json(rec.model, source=f"risk model {rec.id}"), str(rec.id)


def score_pending(
    session: Session,
    *,
    thresholds: Thresholds,
    host: str | None = None,
    now: datetime | None = None,
) -> tuple[list[ScoredUpdate], str]:
    """Every pending update (of one host, or all) with its score; and the model version."""
    stmt = select(PendingUpdate, Host.name).join(Host, col(Host.id) == PendingUpdate.host_id)
    if host is not None:
        if session.exec(select(Host.id).where(Host.name == host)).first() is None:
            raise BadInputError(
                f"unknown host {host!r}", hint="`patchpilot inventory list` shows known hosts"
            )
        stmt = stmt.where(Host.name == host)
    stmt = stmt.order_by(col(Host.name), col(PendingUpdate.package))
    rows = session.exec(stmt).all()
    model, version = active_model(session)
    if not rows:
        return [], version
    updates = [u for u, _ in rows]
    items = update_items(updates, now=now or datetime.now(UTC))
    scores = score_items(
        model,
        items,
        table=shipped_table(),
        outcomes=fleet_outcomes(session),
        thresholds=thresholds,
    )
    return [
        ScoredUpdate(
            host=name,
            package=u.package,
            arch=u.arch,
            installed_version=u.installed_version,
            candidate_version=u.candidate_version,
            source=u.source,
            security=u.security,
            score=s,
        )
        for (u, name), s in zip(rows, scores, strict=True)
    ], version


def train_and_store(session: Session, *, until: date | None = None) -> RiskModelRecord:
    """Retrain from the shipped advisories plus every fleet outcome; keep it as a new version."""
    table = shipped_table()
    prior = shipped_model()
    data_until = until or date.fromisoformat(prior.metadata["data_until"])
    outcomes = fleet_outcomes(session)
    c = float(prior.metadata.get("c", 0.01))
    model = train_fleet(table, outcomes, until=data_until, c=c)
    rec = RiskModelRecord(
        kind=str(model.metadata["kind"]),
        data_until=str(model.metadata["data_until"]),
        rows=int(model.metadata["rows"]),
        fleet_rows=int(model.metadata["fleet_rows"]),
        model=model.to_json(),
    )
    session.add(rec)
    session.flush()
    return rec


def list_models(session: Session) -> list[ModelInfo]:
    prior = shipped_model()
    recs = session.exec(select(RiskModelRecord).order_by(col(RiskModelRecord.id))).all()
    out = [
        ModelInfo(
            version="prior",
            kind="prior (shipped)",
            created_at=str(prior.metadata.get("created_at", "")),
            data_until=str(prior.metadata.get("data_until", "")),
            rows=int(prior.metadata.get("rows", 0)),
            fleet_rows=0,
            active=not recs,
            metadata=prior.metadata,
        )
    ]
    for i, r in enumerate(recs):
        out.append(
            ModelInfo(
                version=str(r.id),
                kind=r.kind,
                created_at=_aware(r.created_at).isoformat(timespec="seconds"),
                data_until=r.data_until,
                rows=r.rows,
                fleet_rows=r.fleet_rows,
                active=i == len(recs) - 1,
                metadata=dict(r.model.get("metadata", {})),
            )
        )
    return out
