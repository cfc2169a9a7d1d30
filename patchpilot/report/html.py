"""The reports as one self-contained HTML file each: inline CSS and SVG, no script, no link
to anything outside the file (its Content-Security-Policy forbids loading any).

Every value comes through Jinja2 with autoescaping: what hosts, apt and operators wrote is
text in the page, never markup. The only markup not escaped is the SVG matplotlib writes
(which escapes the text it draws)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from patchpilot import __version__

MAX_RUNS_SHOWN = 500


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 10:
        return f"{v:.2f} s"
    if v < 600:
        return f"{v:.0f} s"
    if v < 36_000:
        return f"{v / 60:.0f} min"
    return f"{v / 3600:.1f} h"


def _short(value: Any, limit: int = 80) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("patchpilot.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["short"] = _short
    env.globals.update(pct=_pct, secs=_secs, version=__version__)
    return env


def render_run(data: dict[str, Any]) -> str:
    from patchpilot.report import plots

    charts = {
        "timeline": Markup(plots.timeline(data)),
        "evidence": [[(k, Markup(svg)) for k, svg in plots.evidence(b)] for b in data["batches"]],
    }
    return _env().get_template("run.html.j2").render(data=data, plots=charts)


def render_fleet(data: dict[str, Any]) -> str:
    from patchpilot.report import plots

    k = data["kpis"]
    charts = {
        "runs": Markup(plots.runs_over_time(data["runs"])),
        "durations": Markup(
            plots.durations(
                data["durations"]["time_to_detect_s"],
                data["durations"]["time_to_recover_s"],
                [p["wait_s"] for p in data["pauses"]],
            )
        ),
        "compliance": Markup(plots.compliance(data["compliance"])),
        "calibration": Markup(plots.calibration(data["calibration"])),
    }
    outstanding = sum(s["outstanding_now"] for s in data["compliance"]["series"])
    return (
        _env()
        .get_template("fleet.html.j2")
        .render(data=data, k=k, plots=charts, outstanding=outstanding, max_runs=MAX_RUNS_SHOWN)
    )


def write_atomic(path: Path, text: str) -> None:
    """Write the whole file or nothing: a reader (a mailer, a CI artifact upload) never sees
    half a report."""
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
