"""What the CLI shows a person: the plan view and the run views, from plain data (an
expansion's JSON form, `store.runs`' records). Text that hosts, apt or operators wrote is
printed as text, never read as Rich markup."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from patchpilot.console import console, print_table
from patchpilot.health.types import Verdict


def render_plan(
    expansion: dict[str, Any], *, window: str, model: str, limit: str | None = None
) -> None:
    """stages -> batches -> hosts, their updates with versions and risk, what is left out,
    the failure budget, the window, and the rollback sequence."""
    from rich.tree import Tree

    hosts = {h["name"]: h for h in expansion["hosts"]}
    title = f"plan {expansion['plan']}" + (
        "  [bold red]EMERGENCY[/]" if expansion["emergency"] else ""
    )
    if limit is not None:
        title += f"  --limit {escape(limit)}"
    tree = Tree(title)
    for st in expansion["stages"]:
        s = st["settings"]
        label = (
            f"[bold]{st['name']}[/]  hosts={s['hosts']} parallel={s['parallel']} "
            f"soak={s['soak']} on_failure={s['on_failure']}"
            + (" approval" if s.get("approval") else "")
            + (
                f"  checks: {', '.join(h['check'] for h in s.get('health') or [])}"
                if s.get("health")
                else ""
            )
        )
        node = tree.add(label)
        if not st["batches"]:
            node.add(f"[dim]empty: {st.get('note') or 'no hosts left'}[/]")
        for bi, batch in enumerate(st["batches"]):
            bnode = node.add(f"batch {bi + 1}: {len(batch)} host(s)")
            for name in batch:
                h = hosts[name]
                reboot = "  [bold]reboots[/]" if h.get("reboot") else ""
                hnode = bnode.add(
                    f"{name}{reboot}  [dim]{h['os_release']} {','.join(h['groups'])} - "
                    f"{h['reason']}[/]"
                )
                for u in h["updates"]:
                    risk = f"{u['risk']} {u['probability']:.1%}" if u.get("risk") else "unscored"
                    hnode.add(
                        f"{escape(u['package'])} {escape(u['from'])} -> {escape(u['to'])}  "
                        f"[dim]risk {risk}[/]{_rollback_mark(u)}"
                    )
    console.print(tree)
    fb = expansion["failure_budget"]
    basis = f"{fb['percent']}%" if fb.get("percent") is not None else f"{fb.get('hosts', 0)} hosts"
    console.print(
        f"failure budget: {fb['allowed']} failed host(s) allowed ({basis}); the run halts "
        f"when failures exceed it; unreachable hosts "
        f"{'count' if fb.get('unreachable_counts', True) else 'do not count'}"
    )
    reboots = sum(1 for h in expansion["hosts"] if h.get("reboot"))
    console.print(
        f"reboot: {expansion.get('reboot', 'if_needed')}; {reboots} of "
        f"{len(expansion['hosts'])} host(s) will reboot after their patch"
    )
    console.print(f"window: {window}")
    console.print(f"risk model: {model}")
    if expansion["excluded"]:
        console.print(f"excluded updates ({len(expansion['excluded'])}):")
        for e in expansion["excluded"][:50]:
            console.print(
                f"  {e['host']}: {e['package']} {e['version']} - {e['reason']}", markup=False
            )
        if len(expansion["excluded"]) > 50:
            console.print(f"  ... and {len(expansion['excluded']) - 50} more (--json shows all)")
    for sk in expansion["skipped"]:
        console.print(f"skipped host {sk['host']}: {sk['reason']}", markup=False)
    for w in expansion.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(w)}")
    console.print("rollback sequence (reverse deploy order):")
    for r in expansion["rollback"]:
        pk = ", ".join(f"{p['package']} -> {p['to_version']}" for p in r["packages"])
        console.print(f"  {r['host']} ({r['stage']} batch {r['batch'] + 1}): {pk}", markup=False)
    counts: dict[str, int] = {}
    for h in expansion["hosts"]:
        for u in h["updates"]:
            key = u.get("rollback_source") or "unknown"
            counts[key] = counts.get(key, 0) + 1
    if counts:
        words = {
            "cache": "from apt's cache",
            "repository": "from the hosts' repositories",
            "rebuild": "rebuilt from the installed package",
            "none": "CANNOT be rolled back",
            "unknown": "source not reported (gather again)",
        }
        console.print(
            "rollback artifacts: "
            + ", ".join(f"{n} {words.get(k, k)}" for k, n in sorted(counts.items())),
            markup=False,
        )


def _rollback_mark(u: dict[str, Any]) -> str:
    """The plan view's word on where an update's rollback artifact will come from, where it
    is not simply apt's cache or a repository."""
    source = u.get("rollback_source")
    if source == "rebuild":
        return "  [cyan]rollback: rebuilt from the installed package[/]"
    if source == "none":
        note = escape(u.get("rollback_note") or "no artifact")
        return f"  [bold red]cannot be rolled back: {note}[/]"
    return ""


def render_runs(rows: list[dict[str, Any]]) -> None:
    """`runs list`: one line per run."""
    print_table(
        None,
        ["run", "plan", "status", "started", "hosts", "states", "message"],
        [
            (
                r["id"],
                r["plan"] + (" (EMERGENCY)" if r["emergency"] else ""),
                r["status"],
                r["started_at"],
                r["hosts"],
                ", ".join(f"{k} {v}" for k, v in sorted(r["host_states"].items())),
                r["message"] or "",
            )
            for r in rows
        ],
    )


def render_run(d: dict[str, Any]) -> None:
    """`runs show`: a run's record as `store.runs.run_detail` gives it."""
    console.print(
        f"[bold]run {d['id']}[/]  plan {escape(d['plan'])}  status [bold]{d['status']}[/]"
        + ("  [bold red]EMERGENCY[/]" if d["emergency"] else "")
        + ("  (check mode)" if d["check_mode"] else "")
        + ("  (shadow mode)" if d["shadow"] else "")
    )
    # What hosts, apt and operators wrote is printed as text, never read as Rich markup.
    console.print(
        f"started {d['started_at']} by {d['user']}; finished {d['finished_at'] or '-'}; "
        f"inventory {d['inventory']}" + (f" --limit {d['limit']}" if d.get("limit") else ""),
        markup=False,
    )
    if d["message"]:
        console.print(d["message"], markup=False)
    print_table(
        "timeline",
        ["at", "stage", "batch", "step", "state", "hosts"],
        [
            (
                t["at"],
                t["stage"] or "",
                t["batch"] or "",
                t["step"],
                t["state"],
                " ".join(t["hosts"]),
            )
            for t in d["timeline"]
        ],
    )
    print_table(
        "hosts",
        ["host", "stage", "batch", "status", "updates", "message"],
        [
            (
                h["host"],
                h["stage"],
                h["batch"],
                h["status"],
                "; ".join(h["updates"]),
                h["message"] or "",
            )
            for h in d["hosts"]
        ],
    )
    for h in d["hosts"]:
        if h.get("artifacts"):
            console.print(f"rollback artifacts of {h['host']}: {artifact_sources(h)}", markup=False)
    for v in d["verdicts"]:
        console.print(
            f"verdict stage {v['stage']} batch {v['batch']}: [bold]{v['verdict']}[/] -> "
            f"{v['action']}: {escape(v['evidence'].get('reason', ''))}"
        )
        for hv in v["evidence"].get("hosts", []):
            console.print(f"  {hv['host']}: {hv['verdict']} - {hv['reason']}", markup=False)
            for m in hv.get("metrics", []):
                if m["verdict"] != Verdict.HEALTHY.label:
                    console.print(
                        f"    {m['check']}.{m['metric']}: {m['verdict']}: {m['reason']}",
                        markup=False,
                    )
                    for line in m.get("lines") or []:
                        console.print(f"      | {line}", markup=False)
    for i in d["incidents"]:
        console.print(f"incident {i['at']}: {i['reason']} ({', '.join(i['hosts'])})", markup=False)
    for a in d["audit"]:
        why = ", ".join(
            f"{k}={_short(v)}" for k, v in sorted(a["detail"].items()) if v not in (None, "", [])
        )
        console.print(
            f"audit {a['at']} {a['user']}@{a['controller']}: {a['action']}"
            + (f" ({why})" if why else ""),
            markup=False,
        )


SOURCE_WORDS = {
    "cache": "from apt's cache",
    "repository": "from the host's repositories",
    "archive": "from a version source",
    "dpkg-repack": "rebuilt by dpkg-repack",
    "rebuilt": "rebuilt from the installed package",
    "kept": "kept by an earlier pass",
}


def artifact_sources(host: dict[str, Any]) -> str:
    """`runs show`'s line on a host's rollback artifacts: packages grouped by where their
    .deb came from."""
    by_source: dict[str, list[str]] = {}
    for pkg, a in host["artifacts"].items():
        words = SOURCE_WORDS.get(a.get("source") or "", "source not recorded")
        by_source.setdefault(words, []).append(f"{pkg} {a.get('version') or ''}".strip())
    text = "; ".join(f"{words}: {', '.join(pkgs)}" for words, pkgs in sorted(by_source.items()))
    if host.get("artifacts_pruned"):
        text += f" (pruned {host['artifacts_pruned']})"
    return text


def _short(value: Any, limit: int = 80) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
