"""`patchpilot plan`, `apply`, `approve`, `abort` and `rollback`: thin commands over
planning and the engine."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from patchpilot.cli.access import (
    AcceptNewOpt,
    AskBecomeOpt,
    AskVaultOpt,
    BecomeOpt,
    ForksOpt,
    LimitOpt,
    VaultFileOpt,
    VaultIdOpt,
    setup_access,
)
from patchpilot.cli.context import risk_thresholds, state
from patchpilot.cli.inventory import JsonOpt
from patchpilot.console import err_console, info, print_json
from patchpilot.errors import BadInputError, ExitCode

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from patchpilot.ops.fleetops import AnsibleOps, PatchRun
    from patchpilot.run.lifecycle import ApplyOptions, RunSummary

log = logging.getLogger(__name__)

InventoryOpt = Annotated[
    Path, typer.Option("-i", "--inventory", help="Ansible inventory: file, directory or script.")
]


def _next_window(spec: Any, now: datetime) -> str:
    from patchpilot.plan.window import next_window

    if spec.window is None:
        return "none (runs whenever started)"
    start, end = next_window(spec.window, now)
    state_ = "open now" if start <= now else "next"
    return f"{state_}: {start.isoformat()} .. {end.isoformat()} ({spec.window.timezone})"


def plan(
    ctx: typer.Context,
    plan_arg: Annotated[
        str,
        typer.Argument(
            help="A plan file (YAML), or a shipped plan's name (see `patchpilot plans list`).",
            metavar="PLAN",
        ),
    ],
    inventory: InventoryOpt,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the frozen plan that `apply` executes.")
    ] = None,
    as_json: JsonOpt = False,
    limit: LimitOpt = None,
    become: BecomeOpt = None,
    ask_become_pass: AskBecomeOpt = False,
    vault_id: VaultIdOpt = None,
    vault_password_file: VaultFileOpt = None,
    ask_vault_pass: AskVaultOpt = False,
    forks: ForksOpt = None,
) -> None:
    """Show exactly what a plan would do on this fleet, and how it would be undone."""
    from patchpilot.plan.frozen import write_frozen
    from patchpilot.planning import build_plan
    from patchpilot.resources import resolve_plan

    plan_file = resolve_plan(plan_arg)
    setup_access(
        become=become,
        ask_become_pass=ask_become_pass,
        vault_id=vault_id,
        vault_password_file=vault_password_file,
        ask_vault_pass=ask_vault_pass,
        forks=forks,
    )
    now = datetime.now(UTC)
    built = build_plan(
        state(ctx).engine(),
        plan_file,
        inventory,
        thresholds=risk_thresholds(ctx),
        now=now,
        limit=limit,
    )
    if out is not None:
        try:
            from patchpilot.plan.frozen import sign
            from patchpilot.store.secrets import plan_key

            write_frozen(out, sign(built.frozen, plan_key(state(ctx).engine())))
        except OSError as exc:
            raise BadInputError(f"cannot write {out}: {exc.strerror or exc}") from exc
    if as_json:
        print_json(
            {
                "expansion": built.frozen["expansion"],
                "sha256": built.frozen["sha256"],
                "window": _next_window(built.spec, now),
                "not_gathered": built.not_gathered,
                "risk_model": built.model,
                "frozen_plan": str(out) if out else None,
                "limit": limit,
            }
        )
        return
    from patchpilot.cli.render import render_plan

    render_plan(
        built.frozen["expansion"],
        window=_next_window(built.spec, now),
        model=built.model,
        limit=limit,
    )
    for name in built.not_gathered:
        info(f"warning: {name} is in the inventory but was never gathered: not planned")
    if out is not None:
        info(f"frozen plan written to {out} (sha256 {built.frozen['sha256'][:16]}...)")


def _options(ctx: typer.Context, *, check: bool, yes: bool) -> ApplyOptions:
    from rich.prompt import Confirm

    from patchpilot.run.lifecycle import ApplyOptions

    interactive = sys.stdin.isatty() and sys.stderr.isatty()

    def progress(msg: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        err_console.print(f"[dim]{stamp}[/] {msg}", markup=True, highlight=False, soft_wrap=True)

    def confirm(question: str) -> bool:
        return Confirm.ask(question, console=err_console, default=False)

    status = _LiveStatus() if err_console.is_terminal else None
    if status is not None:
        _STATUS.append(status)

    def on_step(stage: str, batch: str, step: str, hosts: Sequence[str]) -> None:
        if status is not None:
            shown = " ".join(hosts[:6]) + (f" +{len(hosts) - 6}" if len(hosts) > 6 else "")
            status.update(f"{stage} {batch} [bold]{step}[/] {shown}".strip())

    def on_state(engine: Any) -> None:
        settings = state(ctx).settings
        if settings.metrics_textfile_dir or settings.metrics_pushgateway:
            from patchpilot.report.metrics import update_if_configured

            update_if_configured(engine, settings)

    return ApplyOptions(
        on_state=on_state,
        check=check,
        interactive=interactive,
        confirm=confirm if interactive and not yes else None,
        progress=progress,
        on_step=on_step,
    )


class _LiveStatus:
    """A spinner line under the log, on a terminal: wave, batch, step and hosts now running."""

    def __init__(self) -> None:
        self._status = err_console.status("starting")
        self._started = False

    def update(self, text: str) -> None:
        if not self._started:
            self._status.start()
            self._started = True
        self._status.update(text)

    def stop(self) -> None:
        if self._started:
            self._status.stop()
            self._started = False


_STATUS: list[_LiveStatus] = []


def stop_status() -> None:
    while _STATUS:
        _STATUS.pop().stop()


def _exit(summary: RunSummary, *, prune_with: tuple[Engine, AnsibleOps, int] | None = None) -> None:
    stop_status()
    if prune_with is not None:
        _auto_prune(summary, *prune_with)
    info(f"run {summary.run_id}: {summary.status}: {summary.message}")
    if summary.exit_code != ExitCode.OK:
        raise typer.Exit(int(summary.exit_code))


def _auto_prune(summary: RunSummary, engine: Engine, ops: AnsibleOps, keep_days: int) -> None:
    """Once a run has ended, the artifacts of runs finished more than `keep_days` ago go from
    the hosts this run reached (rollback_keep_days; 0: never). It never fails the run."""
    from datetime import timedelta

    from patchpilot.run.prune import prunable, prune
    from patchpilot.run.states import RunState

    if keep_days <= 0 or summary.status in (RunState.PAUSED, RunState.CHECK, RunState.CHECK_FAILED):
        return
    try:
        items = prunable(
            engine,
            older_than=timedelta(days=keep_days),
            now=datetime.now(UTC),
            hosts=list(summary.hosts),
        )
        items = [i for i in items if i.run_id != summary.run_id and i.hosts]
        if not items:
            return
        done = prune(engine, items, ops)
        n = sum(1 for hosts in done.values() for w in hosts.values() if w == "pruned")
        info(
            f"pruned the rollback artifacts of {len(done)} run(s) older than {keep_days} days "
            f"({n} host folder(s); rollback_keep_days)"
        )
    except Exception as exc:  # a prune is housekeeping: the run's result stands
        log.warning("pruning old rollback artifacts failed: %s", exc)


def apply(
    ctx: typer.Context,
    plan_arg: Annotated[
        str | None,
        typer.Argument(
            help="A plan file (YAML), a shipped plan's name, or a frozen plan (JSON).",
            metavar="PLAN",
        ),
    ] = None,
    inventory: Annotated[
        Path | None, typer.Option("-i", "--inventory", help="Ansible inventory.")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Ansible check mode: show, change nothing.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Start without asking (needed when unattended).")
    ] = False,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Continue an interrupted run.", metavar="RUN_ID")
    ] = None,
    limit: LimitOpt = None,
    become: BecomeOpt = None,
    ask_become_pass: AskBecomeOpt = False,
    vault_id: VaultIdOpt = None,
    vault_password_file: VaultFileOpt = None,
    ask_vault_pass: AskVaultOpt = False,
    accept_new_host_keys: AcceptNewOpt = False,
    forks: ForksOpt = None,
) -> None:
    """Patch the fleet wave by wave; roll back what breaks; pause when the evidence is unclear."""
    from patchpilot.planfile import is_frozen, read_plan_file
    from patchpilot.resources import resolve_plan

    plan_file = resolve_plan(plan_arg) if plan_arg is not None and resume is None else None
    if plan_arg is not None and resume is not None:
        raise BadInputError("give either a plan or --resume RUN_ID, not both")
    if limit is not None and resume is not None:
        raise BadInputError(
            "--limit cannot change the hosts of a run being resumed",
            hint="resume it as it is, or abort it and start a new run with --limit",
        )
    setup_access(
        become=become,
        ask_become_pass=ask_become_pass,
        vault_id=vault_id,
        vault_password_file=vault_password_file,
        ask_vault_pass=ask_vault_pass,
        accept_new_host_keys=accept_new_host_keys,
        forks=forks,
    )
    # The plan is read once: the warm start and the validation see the same bytes.
    raw = read_plan_file(plan_file) if plan_file is not None and resume is None else None
    warm, run_id = None, None
    if raw is not None and inventory is not None and (yes or check) and is_frozen(raw):
        # Ansible starts while the rest loads; nothing reaches a host until the engine says so.
        from patchpilot.ops.warmstart import warm_start
        from patchpilot.run.ids import new_run_id

        run_id = new_run_id(datetime.now(UTC))
        warm = warm_start(raw, inventory, run_id=run_id, check=check)
    try:
        _apply(
            ctx,
            plan_file,
            inventory,
            limit=limit,
            check=check,
            yes=yes,
            resume=resume,
            run_id=run_id,
            warm=warm,
            raw=raw,
        )
    finally:
        if warm is not None:
            warm.close()


def _apply(
    ctx: typer.Context,
    plan_file: Path | None,
    inventory: Path | None,
    *,
    limit: str | None,
    check: bool,
    yes: bool,
    resume: str | None,
    run_id: str | None,
    warm: PatchRun | None,
    raw: bytes | None,
) -> None:
    from patchpilot.ops.fleetops import AnsibleOps
    from patchpilot.plan.frozen import load_frozen
    from patchpilot.planfile import is_frozen
    from patchpilot.planning import build_plan
    from patchpilot.run.lifecycle import resume_run, start_run

    opts = _options(ctx, check=check, yes=yes)
    engine = state(ctx).engine()
    if resume is not None:
        if plan_file is not None:
            raise BadInputError("give either a plan or --resume RUN_ID, not both")
        from patchpilot.run.lifecycle import load_run

        run = load_run(engine, resume)
        ops = AnsibleOps(inventory or run.inventory)
        keep = state(ctx).settings.rollback_keep_days
        _exit(resume_run(engine, resume, ops=ops, opts=opts), prune_with=(engine, ops, keep))
        return
    if plan_file is None or inventory is None:
        raise BadInputError(
            "apply needs a plan and an inventory",
            hint="patchpilot apply PLAN.yml -i INVENTORY (or --resume RUN_ID)",
        )
    assert raw is not None
    if is_frozen(raw):
        from patchpilot.plan.frozen import verify_signature
        from patchpilot.planning import moved_since_planned
        from patchpilot.store.secrets import plan_key

        frozen = load_frozen(plan_file, raw_bytes=raw)
        verify_signature(plan_file, frozen.data, plan_key(engine))
        if limit is not None and limit != frozen.limit:
            made = f"--limit {frozen.limit!r}" if frozen.limit else "no --limit"
            raise BadInputError(
                f"{plan_file}: a frozen plan's hosts are fixed (it was made with {made})",
                hint=f"freeze it again: patchpilot plan PLAN -i INVENTORY --limit {limit!r} --out",
            )
        moved = moved_since_planned(engine, frozen.plan)
        if moved:
            raise BadInputError(
                f"{plan_file}: the fleet moved since the plan was frozen: {'; '.join(moved[:5])}"
                + (f" (and {len(moved) - 5} more)" if len(moved) > 5 else ""),
                hint="gather, review and freeze the plan again",
            )
        spec, data = frozen.spec, frozen.data
        info(f"frozen plan {spec.name} (sha256 {frozen.sha256[:16]}...), made {frozen.created_at}")
    else:
        built = build_plan(
            engine, plan_file, inventory, thresholds=risk_thresholds(ctx), raw=raw, limit=limit
        )
        spec, data = built.spec, built.frozen
    n_hosts = len(data["expansion"]["hosts"])
    n_updates = sum(len(h["updates"]) for h in data["expansion"]["hosts"])
    stages = ", ".join(
        f"{s['name']} ({sum(len(b) for b in s['batches'])})" for s in data["expansion"]["stages"]
    )
    limited = f" (--limit {data['limit']})" if data.get("limit") else ""
    info(f"plan {spec.name}: {n_hosts} hosts{limited}, {n_updates} updates; stages: {stages}")
    if not check and not yes:
        if opts.confirm is None:
            raise BadInputError(
                "refusing to patch unattended without --yes",
                hint="review with `patchpilot plan` first, then add --yes (or use --check)",
            )
        if not opts.confirm(f"Patch {n_hosts} hosts now?"):
            raise typer.Exit(int(ExitCode.FAILED))
    ops = AnsibleOps(inventory)
    _exit(
        start_run(
            engine,
            spec,
            data,
            inventory=str(inventory),
            ops=ops,
            opts=opts,
            run_id=run_id,
            patching=warm,
        ),
        prune_with=(engine, ops, state(ctx).settings.rollback_keep_days),
    )


def approve(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID")],
    inventory: Annotated[
        Path | None, typer.Option("-i", "--inventory", help="Default: the run's own.")
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why: recorded in the audit log.")
    ] = None,
    become: BecomeOpt = None,
    ask_become_pass: AskBecomeOpt = False,
    vault_id: VaultIdOpt = None,
    vault_password_file: VaultFileOpt = None,
    ask_vault_pass: AskVaultOpt = False,
    accept_new_host_keys: AcceptNewOpt = False,
    forks: ForksOpt = None,
) -> None:
    """Approve a paused run and continue it."""
    from patchpilot.ops.fleetops import AnsibleOps
    from patchpilot.run.lifecycle import load_run, resume_run

    setup_access(
        become=become,
        ask_become_pass=ask_become_pass,
        vault_id=vault_id,
        vault_password_file=vault_password_file,
        ask_vault_pass=ask_vault_pass,
        accept_new_host_keys=accept_new_host_keys,
        forks=forks,
    )
    engine = state(ctx).engine()
    run = load_run(engine, run_id)
    from patchpilot.run.states import RunState

    if run.status != RunState.PAUSED:
        raise BadInputError(
            f"run {run_id} is {run.status}, not paused",
            hint="only a paused run waits for approval",
        )
    opts = _options(ctx, check=False, yes=True)
    _exit(
        resume_run(
            engine,
            run_id,
            ops=AnsibleOps(inventory or run.inventory),
            opts=opts,
            approve=True,
            reason=reason,
        )
    )


def abort(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID")],
    reason: Annotated[
        str | None, typer.Option("--reason", help="Recorded in the audit log.")
    ] = None,
) -> None:
    """Stop a paused (or crashed) run for good; hosts stay as they are (see `rollback`)."""
    from patchpilot.run.lifecycle import abort_run

    summary = abort_run(state(ctx).engine(), run_id, reason=reason)
    info(f"run {summary.run_id}: {summary.message}")


def rollback(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID")],
    hosts: Annotated[
        str | None, typer.Option("--hosts", help="Comma-separated hosts (default: all patched).")
    ] = None,
    inventory: Annotated[
        Path | None, typer.Option("-i", "--inventory", help="Default: the run's own.")
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why: recorded in the audit log.")
    ] = None,
    limit: LimitOpt = None,
    become: BecomeOpt = None,
    ask_become_pass: AskBecomeOpt = False,
    vault_id: VaultIdOpt = None,
    vault_password_file: VaultFileOpt = None,
    ask_vault_pass: AskVaultOpt = False,
    accept_new_host_keys: AcceptNewOpt = False,
    forks: ForksOpt = None,
) -> None:
    """Roll back hosts a run patched, in reverse deploy order, and verify them."""
    from patchpilot.ops.fleetops import AnsibleOps
    from patchpilot.run.lifecycle import load_run, rollback_run

    setup_access(
        become=become,
        ask_become_pass=ask_become_pass,
        vault_id=vault_id,
        vault_password_file=vault_password_file,
        ask_vault_pass=ask_vault_pass,
        accept_new_host_keys=accept_new_host_keys,
        forks=forks,
    )
    engine = state(ctx).engine()
    run = load_run(engine, run_id)
    names = [h.strip() for h in hosts.split(",") if h.strip()] if hosts else None
    if limit is not None:
        from patchpilot.ops.executor import match_hosts

        matched = set(match_hosts(inventory or run.inventory, "all", limit=limit))
        run_hosts = [h["name"] for h in run.plan["expansion"]["hosts"]]
        names = [n for n in (names or run_hosts) if n in matched]
        if not names:
            raise BadInputError(
                f"--limit {limit!r} selects none of the hosts run {run_id} patched",
                hint=f"see them with `patchpilot runs show {run_id}`",
            )
    opts = _options(ctx, check=False, yes=True)
    summary = rollback_run(
        engine,
        run_id,
        hosts=names,
        ops=AnsibleOps(inventory or run.inventory),
        opts=opts,
        reason=reason,
        limit=limit,
    )
    info(summary.message)
    if summary.exit_code != ExitCode.OK:
        raise typer.Exit(int(summary.exit_code))
