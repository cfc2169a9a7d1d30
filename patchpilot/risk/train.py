"""Training: the public prior from advisories, and the fleet model from the prior's data plus
the fleet's own outcomes, where each outcome weighs FLEET_WEIGHT advisories."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from patchpilot.errors import BadInputError
from patchpilot.risk.dataset import TRAIN_FROM, advisory_events, advisory_items, training_rows
from patchpilot.risk.features import HistoryEvent, package_family
from patchpilot.risk.model import (
    C_DEFAULT,
    C_GRID,
    FLEET_WEIGHT,
    N_BOOTSTRAP,
    History,
    RiskModel,
    design_matrix,
    fit_model,
    make_history,
    model_metadata,
)
from patchpilot.run.states import Outcome

VALIDATION_DAYS = 365
FAILED_OUTCOMES = frozenset({Outcome.HEALTH_FAILED, Outcome.INSTALL_FAILED, Outcome.ROLLED_BACK})
OUTCOMES = frozenset(Outcome)


@dataclass(frozen=True)
class FleetOutcome:
    """What happened when a package moved to a new version on one host of the fleet."""

    package: str  # the source package when known: history is kept per source
    when: datetime
    outcome: str  # healthy, health_failed, install_failed, rolled_back
    version: str = ""  # the version it moved to
    cves: int = 0
    upstream_changed: bool | None = None
    urgency: str | None = None
    entries: int | None = None
    reboot: bool = False

    @property
    def failed(self) -> bool:
        return self.outcome in FAILED_OUTCOMES


def fleet_items(outcomes: Sequence[FleetOutcome]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "package": [o.package for o in outcomes],
            "date": [o.when for o in outcomes],
            "version": [o.version for o in outcomes],
            "cves": [o.cves for o in outcomes],
            "upstream_changed": [o.upstream_changed for o in outcomes],
            "urgency": [o.urgency for o in outcomes],
            "entries": [np.nan if o.entries is None else o.entries for o in outcomes],
            "reboot": [o.reboot for o in outcomes],
        }
    )


def fleet_events(outcomes: Sequence[FleetOutcome]) -> list[HistoryEvent]:
    return [
        HistoryEvent(
            package_family(o.package),
            o.when,
            o.failed,
            o.when if o.failed else None,
            weight=FLEET_WEIGHT,
            advisory=False,
        )
        for o in outcomes
    ]


def history_for(
    table: pd.DataFrame,
    *,
    base_rate: float,
    until: date | None = None,
    outcomes: Sequence[FleetOutcome] = (),
) -> History:
    return make_history(
        advisory_events(table, until=until) + fleet_events(outcomes), base_rate=base_rate
    )


def _fit_range(
    table: pd.DataFrame, *, since: date, until: date, c: float, bootstraps: int
) -> tuple[RiskModel, float]:
    rows = training_rows(table, since=since, until=until)
    y = rows["label"].to_numpy()
    base = float(y.mean()) if len(y) else 0.0
    x, _ = design_matrix(advisory_items(rows), history_for(table, base_rate=base, until=until))
    return fit_model(x, y, c=c, bootstraps=bootstraps), base


def choose_regularisation(table: pd.DataFrame, *, since: date, until: date) -> float:
    """C by a split in time inside the training range: fit on all but its last year, pick the
    C with the best PR AUC on that year. The test range is never looked at."""
    cut = until - timedelta(days=VALIDATION_DAYS)
    valid = table[(table["date"] >= cut) & (table["date"] < until)]
    known = [rd is not None and rd < until for rd in valid["regression_date"]]
    y = ((valid["regression"].to_numpy() == 1) & np.array(known, dtype=bool)).astype(int)
    if cut <= since or y.sum() == 0 or y.sum() == len(y):
        return C_DEFAULT
    best, best_ap = C_DEFAULT, -1.0
    for c in C_GRID:
        try:
            model, base = _fit_range(table, since=since, until=cut, c=c, bootstraps=0)
        except BadInputError:
            return C_DEFAULT
        x, _ = design_matrix(advisory_items(valid), history_for(table, base_rate=base))
        p, _, _ = model.predict(x)
        ap = float(average_precision_score(y, p))
        if ap > best_ap + 1e-9:
            best, best_ap = c, ap
    return best


def train_prior(
    table: pd.DataFrame, *, until: date, since: date = TRAIN_FROM, c: float | None = None
) -> RiskModel:
    """The public prior: advisories in [since, until), labels as known on `until`."""
    if c is None:
        c = choose_regularisation(table, since=since, until=until)
    rows = training_rows(table, since=since, until=until)
    full, _ = _fit_range(table, since=since, until=until, c=c, bootstraps=N_BOOTSTRAP)
    full.metadata = model_metadata(
        kind="prior",
        data_from=since,
        data_until=until,
        rows=len(rows),
        positives=int(rows["label"].sum()),
        c=c,
    )
    return full


def train_fleet(
    table: pd.DataFrame,
    outcomes: Sequence[FleetOutcome],
    *,
    until: date,
    since: date = TRAIN_FROM,
    c: float | None = None,
) -> RiskModel:
    """The prior's advisories plus the fleet's outcomes as weighted rows; the fleet's outcomes
    also enter every package's history, so its own packages move most."""
    if c is None:
        c = choose_regularisation(table, since=since, until=until)
    rows = training_rows(table, since=since, until=until)
    y_adv = rows["label"].to_numpy()
    y_fleet = np.array([int(o.failed) for o in outcomes], dtype=int)
    base = float(y_adv.mean())
    history = history_for(table, base_rate=base, until=until, outcomes=outcomes)
    x_adv, _ = design_matrix(advisory_items(rows), history)
    parts_x, parts_y, parts_w = [x_adv], [y_adv], [np.ones(len(y_adv))]
    if outcomes:
        x_fleet, _ = design_matrix(fleet_items(outcomes), history)
        parts_x.append(x_fleet)
        parts_y.append(y_fleet)
        parts_w.append(np.full(len(y_fleet), FLEET_WEIGHT))
    model = fit_model(
        np.vstack(parts_x), np.concatenate(parts_y), weights=np.concatenate(parts_w), c=c
    )
    # Smoothing keeps the advisories' base rate so history features mean the same as in the
    # prior; the fleet's own rate shows through the per-package history.
    model.base_rate = base
    last = max([until, *(o.when.date() + timedelta(days=1) for o in outcomes)])
    model.metadata = model_metadata(
        kind="fleet" if outcomes else "prior",
        data_from=since,
        data_until=last,
        rows=len(rows) + len(outcomes),
        positives=int(y_adv.sum() + y_fleet.sum()),
        fleet_rows=len(outcomes),
        c=c,
    )
    return model
