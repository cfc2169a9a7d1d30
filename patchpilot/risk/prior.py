"""`patchpilot risk build-prior`: the shipped training table and prior model, rebuilt from
the security tracker's lists. Same lists in, same files out (the model's creation time aside)."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

from patchpilot.errors import BadInputError
from patchpilot.risk.advisories import read_advisory_list
from patchpilot.risk.dataset import build_table_from_lists, write_table
from patchpilot.risk.evaluate import evaluate
from patchpilot.risk.model import RiskModel
from patchpilot.risk.train import train_prior

LABEL_DELAY_DAYS = 60  # regression fixes come within weeks: newer advisories lack labels
# The published evaluation split (docs/risk-model.md).
EVAL_SPLIT = (date(2018, 7, 1), date(2018, 7, 1), date(2020, 4, 30))


def build_prior(
    *, dsa: Path, dla: Path, out_dir: Path, until: date | None = None
) -> tuple[Path, Path, RiskModel]:
    table = build_table_from_lists([read_advisory_list(dsa), read_advisory_list(dla)])
    newest = max(table["date"])
    if until is None:
        until = newest - timedelta(days=LABEL_DELAY_DAYS)
    if until > newest + timedelta(days=1):
        raise BadInputError(
            f"--until {until} is after the newest advisory ({newest})",
            hint="leave --until out to use the newest entry minus 60 days",
        )
    model = train_prior(table, until=until)
    train_until, test_from, test_until = EVAL_SPLIT
    if test_until < until:
        results = evaluate(
            table, train_until=train_until, test_from=test_from, test_until=test_until
        )
        model.metadata["metrics"] = {
            "split": {
                "train_until": train_until.isoformat(),
                "test_from": test_from.isoformat(),
                "test_until": test_until.isoformat(),
            },
            "results": [r.__dict__ for r in results],
        }
    model.metadata["source"] = {
        "dsa": dsa.name,
        "dla": dla.name,
        "newest_entry": newest.isoformat(),
        "advisories": len(table),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = out_dir / "advisories.csv.gz"
    model_path = out_dir / "prior-model.json"
    write_table(table, table_path)
    model_path.write_text(json.dumps(model.to_json(), indent=1, sort_keys=True) + "\n")
    return table_path, model_path, model
