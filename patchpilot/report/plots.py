"""The report's charts: matplotlib figures written as SVG, inlined in the HTML.

No pyplot (no global state, no GUI backend): each chart is its own Figure. Text stays text in
the SVG (`svg.fonttype: none`), so the browser renders and searches it; `$` is never read as
mathtext, since package names and host names come from hosts. Every figure gets its own
hash salt, so the ids of two inlined SVGs never collide."""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import matplotlib

from patchpilot.health.types import Verdict
from patchpilot.run.states import RunState

matplotlib.use("svg")

from matplotlib import rcParams
from matplotlib.dates import AutoDateFormatter, AutoDateLocator, date2num
from matplotlib.figure import Figure
from matplotlib.patches import Patch

rcParams.update(
    {
        "svg.fonttype": "none",
        "text.parse_math": False,
        "font.family": "sans-serif",
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
)

VERDICT_COLOURS: dict[str | None, str] = {
    Verdict.HEALTHY.label: "#2e7d32",
    Verdict.INCONCLUSIVE.label: "#f9a825",
    Verdict.DEGRADED.label: "#ef6c00",
    Verdict.UNHEALTHY.label: "#c62828",
    None: "#90a4ae",
}
STATUS_COLOURS: dict[str, str] = {
    RunState.SUCCEEDED: "#2e7d32",
    RunState.PARTIAL: "#f9a825",
    RunState.FAILED: "#c62828",
    RunState.ABORTED: "#6d4c41",
    RunState.PAUSED: "#1565c0",
    RunState.RUNNING: "#90a4ae",
    RunState.CHECK: "#b0bec5",
    RunState.CHECK_FAILED: "#78909c",
    RunState.REFUSED: "#cfd8dc",
}
MARK_COLOURS = {
    "pause": "#1565c0",
    "approve": "#6a1b9a",
    "rollback": "#ad1457",
    "verify": "#00838f",
}
_counter = itertools.count(1)
_HEAD = re.compile(r"^.*?(?=<svg)", re.S)


def _svg(fig: Figure) -> str:
    rcParams["svg.hashsalt"] = f"pp-{next(_counter)}"
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    return _HEAD.sub("", buf.getvalue(), count=1)  # no XML declaration or DOCTYPE inline


def _label(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- the run report ---------------------------------------------------------------------------


def timeline(report: dict[str, Any]) -> str:
    """Each step a bar on its stage/batch row, coloured by its batch's verdict; pauses,
    approvals, rollbacks and verifications drawn in their own colours and named."""
    items = report["timeline"]
    lanes: list[str] = []
    for it in items:
        if it["lane"] not in lanes:
            lanes.append(it["lane"])
    total = max(
        [report["duration_s"]] + [it["end_s"] or it["start_s"] or 0 for it in items] + [1e-3]
    )
    fig = Figure(figsize=(10, 0.9 + 0.42 * max(len(lanes), 1)))
    ax = fig.add_subplot()
    for it in items:
        y = lanes.index(it["lane"])
        start = it["start_s"] or 0.0
        end = it["end_s"] if it["end_s"] is not None else total
        width = max(end - start, total / 400)
        if it["marked"]:
            colour, hatch = MARK_COLOURS[it["step"]], None
        else:
            colour, hatch = VERDICT_COLOURS.get(it["verdict"], VERDICT_COLOURS[None]), None
        if it["failed"]:
            hatch = "///"
        bars = ax.barh(
            y, width, left=start, height=0.6, color=colour, edgecolor="white", hatch=hatch
        )
        for bar in bars:
            bar.set_gid(f"tl-{it['step']}-{y}-{round(start, 3)}")
        if width > total / 12:
            ax.text(
                start + width / 2,
                y,
                it["step"],
                ha="center",
                va="center",
                fontsize=7,
                color="white",
                clip_on=True,
            )
    for b in report["batches"]:
        if b["lane"] in lanes and b["at_s"] is not None:
            y = lanes.index(b["lane"])
            ax.plot(
                [b["at_s"]],
                [y + 0.42],
                marker="v",
                color=VERDICT_COLOURS.get(b["verdict"], "#000"),
                markersize=7,
                gid=f"tl-verdict-{y}",
            )
    ax.set_yticks(range(len(lanes)), [_label(x) for x in lanes])
    ax.invert_yaxis()
    ax.set_xlim(0, total * 1.02)
    ax.set_xlabel(f"seconds since the run started ({report['started_at']})")
    handles = [Patch(color=c, label=k) for k, c in VERDICT_COLOURS.items() if k] + [
        Patch(color=c, label=k) for k, c in MARK_COLOURS.items()
    ]
    ax.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=8,
        fontsize=7,
        frameon=False,
    )
    return _svg(fig)


def evidence(batch: dict[str, Any]) -> list[tuple[str, str]]:
    """Per metric of a batch: each patched host before (its baseline) and after, and the
    control hosts, as distributions with the medians; the thresholds drawn in."""
    out = []
    for m in batch["metrics"]:
        hosts = m["hosts"]
        pooled = len(hosts) > 6
        groups: list[tuple[str, list[float], str]] = []
        if pooled:
            groups.append(("patched: before", [x for h in hosts for x in h["baseline"]], "#78909c"))
            groups.append(
                (
                    f"patched ({len(hosts)}): after",
                    [x for h in hosts for x in h["after"]],
                    VERDICT_COLOURS.get(m["verdict"], "#000"),
                )
            )
        else:
            for h in hosts:
                groups.append((f"{_label(h['host'], 18)}: before", h["baseline"], "#78909c"))
                groups.append(
                    (
                        f"{_label(h['host'], 18)}: after",
                        h["after"],
                        VERDICT_COLOURS.get(h["verdict"], "#000"),
                    )
                )
        groups.append((f"controls ({len(batch['controls'])})", m["control"], "#5c6bc0"))
        fig = Figure(figsize=(max(3.6, 0.9 * len(groups) + 1.2), 3.0))
        ax = fig.add_subplot()
        for i, (_name, values, colour) in enumerate(groups):
            if not values:
                ax.text(i, 0, "no samples", ha="center", va="bottom", fontsize=7, color="#777")
                continue
            if len(values) >= 3:
                bp = ax.boxplot(
                    [values],
                    positions=[i],
                    widths=0.5,
                    patch_artist=True,
                    showfliers=False,
                    medianprops={"color": "black"},
                )
                for box in bp["boxes"]:
                    box.set_facecolor(colour)
                    box.set_alpha(0.45)
            xs = [i + 0.18 * ((k % 7) - 3) / 3 for k in range(len(values))]
            ax.scatter(xs, values, s=9, color=colour, zorder=3, gid=f"ev-{m['key']}-{i}")
        t = m["threshold"] or {}
        drawn = []
        if t.get("max") is not None:
            ax.axhline(t["max"], color="#c62828", linestyle="--", linewidth=1)
            drawn.append(f"max {t['max']:g}")
        if t.get("min") is not None:
            ax.axhline(t["min"], color="#c62828", linestyle="--", linewidth=1)
            drawn.append(f"min {t['min']:g}")
        refs = [h["baseline_median"] for h in hosts if h["baseline_median"] is not None]
        if refs and t.get("max_ratio") is not None and refs[0] > 0:
            ax.axhline(refs[0] * t["max_ratio"], color="#ef6c00", linestyle=":", linewidth=1)
            drawn.append(f"baseline x{t['max_ratio']:g}")
        if refs and t.get("max_increase") is not None:
            ax.axhline(refs[0] + t["max_increase"], color="#ef6c00", linestyle="-.", linewidth=1)
            drawn.append(f"baseline +{t['max_increase']:g}")
        ax.set_xticks(
            range(len(groups)), [g[0] for g in groups], rotation=20, ha="right", fontsize=7
        )
        ax.set_ylabel(m["unit"] or "")
        ax.set_title(
            f"{m['key']}: {m['verdict']}" + (f"  (lines: {', '.join(drawn)})" if drawn else ""),
            fontsize=8,
            color=VERDICT_COLOURS.get(m["verdict"], "#000"),
        )
        out.append((m["key"], _svg(fig)))
    return out


# --- the fleet report -------------------------------------------------------------------------


def runs_over_time(runs: Sequence[dict[str, Any]]) -> str:
    """Runs per day, stacked by how they ended."""
    days: dict[str, dict[str, int]] = {}
    for r in runs:
        day = r["started_at"][:10]
        days.setdefault(day, {})[r["status"]] = days.setdefault(day, {}).get(r["status"], 0) + 1
    order = sorted(days)
    fig = Figure(figsize=(10, 2.8))
    ax = fig.add_subplot()
    # One filled step outline per state, not a bar per day and state: a year of daily runs
    # draws (and weighs in the SVG) as a handful of paths.
    edges = [i - 0.5 for i in range(len(order) + 1)]
    bottom = [0] * len(order)
    for status, colour in STATUS_COLOURS.items():
        values = [days[d].get(status, 0) for d in order]
        if any(values):
            top = [b + v for b, v in zip(bottom, values, strict=True)]
            ax.stairs(
                top,
                edges,
                baseline=bottom,
                fill=True,
                color=colour,
                label=status,
                gid=f"runs-{status}",
            )
            bottom = top
    ax.set_ylim(bottom=0)
    step = max(1, len(order) // 12)
    ax.set_xticks(range(0, len(order), step), order[::step], rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("runs")
    if order:  # no runs yet: an empty chart without a legend of nothing
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig)


def durations(ttd: Sequence[float], ttr: Sequence[float], waits: Sequence[float]) -> str:
    """Distributions of time to detect, time to recover and pause waits (seconds)."""
    fig = Figure(figsize=(10, 2.8))
    for i, (name, values, colour) in enumerate(
        [
            ("time to detect", ttd, "#1565c0"),
            ("time to recover", ttr, "#ad1457"),
            ("pause wait", waits, "#6a1b9a"),
        ]
    ):
        ax = fig.add_subplot(1, 3, i + 1)
        if values:
            ax.hist(
                values,
                bins=min(30, max(5, len(values) // 5)),
                histtype="stepfilled",  # one path, not a patch per bin
                color=colour,
                gid=f"hist-{i}",
            )
        else:
            ax.text(
                0.5, 0.5, "none yet", ha="center", va="center", transform=ax.transAxes, color="#777"
            )
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("seconds")
    return _svg(fig)


def compliance(comp: dict[str, Any]) -> str:
    """Security updates outstanding, and the oldest one's age, per group and OS release;
    with a note of how many hosts cannot be judged now, when any."""
    at = date2num([datetime.fromisoformat(t) for t in comp["at"]])
    fig = Figure(figsize=(10, 3.2))
    ax1 = fig.add_subplot(1, 2, 1)
    ax2 = fig.add_subplot(1, 2, 2)
    for s in comp["series"][:12]:
        ax1.plot(at, s["outstanding"], label=_label(s["key"], 36), gid=f"comp-{s['key']}")
        ax2.plot(at, s["oldest_days"], label=_label(s["key"], 36))
    ax1.set_title("security updates outstanding", fontsize=8)
    ax2.set_title("oldest outstanding (days)", fontsize=8)
    for ax in (ax1, ax2):
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(AutoDateFormatter(locator))
        ax.tick_params(axis="x", labelsize=7, rotation=20)
    if comp["series"]:
        ax1.legend(fontsize=6, frameon=False)
    else:
        ax1.text(0.5, 0.5, "no hosts gathered", ha="center", va="center", transform=ax1.transAxes)
    now = comp.get("now") or {}
    if now.get("unknown"):
        fig.text(
            0.5,
            1.0,
            f"{now['unknown']} of {now['hosts']} hosts unknown now (never gathered, or "
            "unreachable or failed at their last gather): counted as last gathered",
            ha="center",
            va="bottom",
            fontsize=8,
            color="#b71c1c",
            gid="compliance-unknown",
        )
    return _svg(fig)


def calibration(cal: dict[str, Any]) -> str:
    """Mean predicted regression probability per bin against the share that went wrong."""
    fig = Figure(figsize=(4.6, 3.4))
    ax = fig.add_subplot()
    pts = [b for b in cal["bins"] if b["n"]]
    top = max([0.3] + [max(b["predicted"], b["observed"]) for b in pts])
    ax.plot([0, top], [0, top], color="#999", linestyle="--", linewidth=1, label="perfect")
    if pts:
        ax.scatter(
            [b["predicted"] for b in pts],
            [b["observed"] for b in pts],
            s=[20 + 200 * b["n"] / max(p["n"] for p in pts) for b in pts],
            color="#1565c0",
            zorder=3,
            label="bins (size: patches)",
            gid="calibration-points",
        )
        for b in pts:
            ax.annotate(
                f"n={b['n']}",
                (b["predicted"], b["observed"]),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
    else:
        ax.text(0.5, 0.5, "no scored patches yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("predicted regression probability")
    ax.set_ylabel("observed failure share")
    ax.legend(fontsize=7, frameon=False)
    return _svg(fig)
