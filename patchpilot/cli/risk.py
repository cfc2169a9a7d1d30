"""`patchpilot risk`: score pending updates, evaluate and (re)train the risk model."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from patchpilot.cli.context import risk_thresholds, state
from patchpilot.cli.inventory import JsonOpt
from patchpilot.console import info, print_json, print_table
from patchpilot.errors import BadInputError

if TYPE_CHECKING:  # heavy imports (scikit-learn, pandas) wait until a command needs them
    import pandas as pd


app = typer.Typer(help="Patch risk: scores, evaluation, training.", no_args_is_help=True)


def _date(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise BadInputError(
            f"{option}: not a date: {value!r}", hint="dates are YYYY-MM-DD, e.g. 2018-07-01"
        ) from exc


@app.command()
def score(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("--host", help="Only this host.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Per pending update: probability of a regression, interval, level, strategy, reasons."""
    from patchpilot.risk.score import score_pending
    from patchpilot.store.db import session_scope

    thresholds = risk_thresholds(ctx)
    with session_scope(state(ctx).engine()) as s:
        scored, version = score_pending(s, thresholds=thresholds, host=host)
    if as_json:
        print_json(
            {
                "model": version,
                "thresholds": {"medium": thresholds.medium, "high": thresholds.high},
                "updates": [
                    {
                        "host": u.host,
                        "package": u.package,
                        "installed_version": u.installed_version,
                        "candidate_version": u.candidate_version,
                        "security": u.security,
                        "probability": round(u.score.probability, 4),
                        "interval": [round(u.score.low, 4), round(u.score.high, 4)],
                        "level": u.score.level.value,
                        "strategy": u.score.strategy,
                        "reasons": list(u.score.reasons),
                    }
                    for u in scored
                ],
            }
        )
        return
    if not scored:
        info("no pending updates: run `patchpilot inventory gather` first")
        return
    print_table(
        None,
        ["host", "package", "candidate", "risk", "interval", "level", "strategy", "reasons"],
        [
            (
                u.host,
                u.package,
                u.candidate_version,
                f"{u.score.probability:.1%}",
                f"{u.score.low:.1%}-{u.score.high:.1%}",
                u.score.level.value,
                u.score.strategy,
                "; ".join(u.score.reasons),
            )
            for u in scored
        ],
    )
    info(
        f"model {version}; levels: low < {thresholds.medium:.0%} <= medium < "
        f"{thresholds.high:.0%} <= high"
    )


@app.command()
def evaluate(
    train_until: Annotated[str, typer.Option("--train-until", help="Train on items before.")],
    test_from: Annotated[str, typer.Option("--test-from", help="First day of the test range.")],
    test_until: Annotated[str, typer.Option("--test-until", help="Last day of the test range.")],
    dsa: Annotated[
        Path | None, typer.Option("--dsa", help="A DSA list (data/DSA/list); else shipped data.")
    ] = None,
    dla: Annotated[Path | None, typer.Option("--dla", help="A DLA list (data/DLA/list).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train on the earlier part, test on a later range: the model against two baselines."""
    from patchpilot.risk.evaluate import evaluate as run_evaluation

    table = _table(dsa, dla)
    results = run_evaluation(
        table,
        train_until=_date(train_until, "--train-until"),
        test_from=_date(test_from, "--test-from"),
        test_until=_date(test_until, "--test-until"),
    )
    if as_json:
        print_json([r.__dict__ for r in results])
        return
    print_table(
        f"test {test_from} .. {test_until}, trained before {train_until}",
        ["method", "count", "positives", "ROC AUC", "PR AUC", "Brier", "top 10%", "top 20%"],
        [
            (
                r.method,
                r.count,
                r.positives,
                f"{r.roc_auc:.3f}",
                f"{r.pr_auc:.3f}",
                f"{r.brier:.4f}",
                f"{r.top10:.1%}",
                f"{r.top20:.1%}",
            )
            for r in results
        ],
    )


@app.command()
def backtest(
    first_year: Annotated[
        int, typer.Option("--from", metavar="YEAR", help="The first yearly origin (1 July).")
    ] = 2016,
    dsa: Annotated[
        Path | None, typer.Option("--dsa", help="A DSA list (data/DSA/list); else shipped data.")
    ] = None,
    dla: Annotated[Path | None, typer.Option("--dla", help="A DLA list (data/DLA/list).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rolling-origin backtest: per yearly origin, train on what was known before it and
    score the year after; per fold and pooled, the model against the base rate and the
    rule, with the model's reliability in deciles."""
    from patchpilot.risk.backtest import backtest as run_backtest

    if not 1990 <= first_year <= 2100:
        raise BadInputError(f"--from {first_year}: not a plausible year", hint="e.g. --from 2016")
    folds, pooled = run_backtest(_table(dsa, dla), first_year=first_year)
    if as_json:
        print_json({"folds": [f.to_dict() for f in folds], "pooled": pooled.to_dict()})
        return
    rows = []
    for f, label in [*((f, f"{f.origin:%Y-%m}") for f in folds), (pooled, "pooled")]:
        for r in f.results:
            rows.append(
                (
                    label,
                    r.method,
                    r.count,
                    r.positives,
                    f"{r.roc_auc:.3f}",
                    f"{r.pr_auc:.3f}",
                    f"{r.brier:.4f}",
                    f"{r.log_loss:.4f}",
                    f"{r.top10:.1%}",
                    f"{r.top20:.1%}",
                )
            )
    print_table(
        f"rolling-origin backtest, origins 1 July {folds[0].origin.year}..{folds[-1].origin.year}",
        ["fold", "method", "count", "regr.", "ROC AUC", "PR AUC", "Brier", "log loss",
         "top 10%", "top 20%"],
        rows,
    )  # fmt: skip
    print_table(
        "model reliability, all folds pooled (deciles of the prediction)",
        ["count", "predicted", "observed", "95% interval", "within"],
        [
            (b.count, f"{b.predicted:.2%}", f"{b.observed:.2%}",
             f"{b.low:.2%}..{b.high:.2%}", "yes" if b.within else "NO")
            for b in pooled.reliability
        ],
    )  # fmt: skip


def _table(dsa: Path | None, dla: Path | None) -> pd.DataFrame:
    from patchpilot.risk.advisories import read_advisory_list
    from patchpilot.risk.dataset import build_table_from_lists, shipped_table

    if dsa is None and dla is None:
        return shipped_table()
    return build_table_from_lists([read_advisory_list(p) for p in (dsa, dla) if p is not None])


@app.command()
def train(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Retrain from the shipped advisories plus the fleet's outcomes; keep a new version."""
    from patchpilot.risk.score import train_and_store
    from patchpilot.store.db import session_scope

    with session_scope(state(ctx).engine()) as s:
        rec = train_and_store(s)
        out = {
            "version": rec.id,
            "kind": rec.kind,
            "rows": rec.rows,
            "fleet_rows": rec.fleet_rows,
            "data_until": rec.data_until,
        }
    if as_json:
        print_json(out)
        return
    info(
        f"risk model {out['version']} trained ({out['kind']}): {out['rows']} rows, of which "
        f"{out['fleet_rows']} fleet outcomes; it now scores"
    )


@app.command()
def models(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The shipped prior and every trained model, newest last; the active one is marked."""
    from patchpilot.risk.score import list_models
    from patchpilot.store.db import session_scope

    with session_scope(state(ctx).engine()) as s:
        rows = list_models(s)
    if as_json:
        print_json([r.__dict__ for r in rows])
        return
    print_table(
        None,
        ["version", "kind", "created", "data until", "rows", "fleet rows", "active"],
        [
            (
                r.version,
                r.kind,
                r.created_at,
                r.data_until,
                r.rows,
                r.fleet_rows,
                "*" if r.active else "",
            )
            for r in rows
        ],
    )


@app.command("build-prior")
def build_prior(
    dsa: Annotated[Path, typer.Option("--dsa", help="The tracker's data/DSA/list.")],
    dla: Annotated[Path, typer.Option("--dla", help="The tracker's data/DLA/list.")],
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Where advisories.csv.gz and prior-model.json go.")
    ] = Path("patchpilot/risk/data"),
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            help="Train on advisories before this date (default: 60 days before the newest "
            "entry, whose labels are still incomplete).",
        ),
    ] = None,
) -> None:
    """Build the training table and the prior model from the tracker's lists, reproducibly."""
    from patchpilot.risk.prior import build_prior as run_build

    table_path, model_path, model = run_build(
        dsa=dsa, dla=dla, out_dir=out_dir, until=None if until is None else _date(until, "--until")
    )
    md = model.metadata
    info(
        f"wrote {table_path} and {model_path}: {md['rows']} advisories "
        f"{md['data_from']}..{md['data_until']}, {md['positives']} regressions, C={md['c']}"
    )
