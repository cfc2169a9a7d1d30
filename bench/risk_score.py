"""Scoring 100,000 host x pending-update pairs with the shipped prior: features (with the
full advisory history), probability, bootstrap interval, level and reasons in words, as
`patchpilot risk score` does. The pairs share 1,000 distinct updates (source packages drawn
from the real advisory table, with real-looking versions and changelog facts), as hosts of a
fleet share their pending updates; `--distinct 100000` makes every pair different.
Goal: under 5 s.

    .venv/bin/python bench/risk_score.py [--pairs 100000] [--distinct 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from patchpilot.risk.dataset import shipped_table
from patchpilot.risk.model import shipped_model
from patchpilot.risk.score import Thresholds, score_items


def make_items(pairs: int, distinct: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    table = shipped_table()
    packages = table["package"].drop_duplicates().to_numpy()
    pkg = rng.choice(packages, size=distinct)
    base = pd.DataFrame(
        {
            "package": pkg,
            "version": [f"1.{i % 40}.{i % 7}-1+deb12u{1 + i % 9}" for i in range(distinct)],
            "cves": rng.poisson(3, size=distinct),
            "upstream_changed": rng.choice([True, False, None], size=distinct),
            "urgency": rng.choice(["low", "medium", "high", "critical", None], size=distinct),
            "entries": rng.integers(1, 20, size=distinct).astype(float),
            "reboot": rng.random(distinct) < 0.05,
        }
    )
    idx = rng.integers(0, distinct, size=pairs)
    items = base.iloc[idx].reset_index(drop=True)
    items.insert(1, "date", [datetime.now(UTC)] * pairs)
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--distinct",
        type=int,
        default=1000,
        help="distinct updates among the pairs (a fleet shares them; --distinct 100000 is the "
        "worst case, every pair different)",
    )
    args = parser.parse_args()
    model = shipped_model()
    table = shipped_table()
    items = make_items(args.pairs, args.distinct)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        scores = score_items(model, items, table=table, outcomes=(), thresholds=Thresholds())
        times.append(time.perf_counter() - t0)
    assert len(scores) == args.pairs and all(s.reasons for s in scores)
    levels = pd.Series([s.level.value for s in scores]).value_counts().to_dict()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"risk score: {args.pairs} host x update pairs ({args.distinct} distinct): "
        f"best {min(times):.2f} s of {args.repeat} (goal < 5 s); levels {levels}; "
        f"peak RSS {peak:.0f} MiB"
    )


if __name__ == "__main__":
    main()
