"""The `patchpilot` command: Typer app assembly and the one error boundary."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from patchpilot import __version__
from patchpilot.cli import apply as apply_cmd
from patchpilot.cli import config as config_cmd
from patchpilot.cli import inventory as inventory_cmd
from patchpilot.cli import lab as lab_cmd
from patchpilot.cli import locks as locks_cmd
from patchpilot.cli import metrics as metrics_cmd
from patchpilot.cli import patches as patches_cmd
from patchpilot.cli import plans as plans_cmd
from patchpilot.cli import report as report_cmd
from patchpilot.cli import risk as risk_cmd
from patchpilot.cli import runs as runs_cmd
from patchpilot.cli.context import AppState
from patchpilot.console import err_console, print_error
from patchpilot.errors import ExitCode, PatchpilotError

log = logging.getLogger("patchpilot")

app = typer.Typer(
    name="patchpilot",
    help="Agentless fleet patching on top of Ansible: risk-scored waves, health gates, rollback.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(inventory_cmd.app, name="inventory")
app.add_typer(patches_cmd.app, name="patches")
app.add_typer(risk_cmd.app, name="risk")
app.command("plan")(apply_cmd.plan)
app.add_typer(plans_cmd.app, name="plans")
app.command("apply")(apply_cmd.apply)
app.command("approve")(apply_cmd.approve)
app.command("abort")(apply_cmd.abort)
app.command("rollback")(apply_cmd.rollback)
app.add_typer(runs_cmd.app, name="runs")
app.add_typer(locks_cmd.app, name="locks")
app.command("compliance")(patches_cmd.compliance)
app.command("report")(report_cmd.report)
app.command("metrics")(metrics_cmd.metrics)
app.add_typer(lab_cmd.app, name="lab")
app.add_typer(config_cmd.app, name="config")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"patchpilot {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    db: Annotated[
        str | None,
        typer.Option(
            "--db", help="Store: SQLite file path or SQLAlchemy URL \\[env: PATCHPILOT_DB]."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="TOML config file \\[env: PATCHPILOT_CONFIG].", dir_okay=False
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Debug logging and full tracebacks.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Settings resolve lazily, so `--help` works even with a broken config file."""
    ctx.obj = AppState(db=db, config=config, debug=debug)
    _setup_logging(debug)


def _setup_logging(debug: bool) -> None:
    from rich.logging import RichHandler

    root_logger = logging.getLogger()
    for h in list(root_logger.handlers):
        root_logger.removeHandler(h)
    handler = RichHandler(console=err_console, show_path=debug, rich_tracebacks=debug)
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.WARNING)
    logging.getLogger("patchpilot").setLevel(logging.DEBUG if debug else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: runs the app and maps every outcome to an ExitCode."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="patchpilot", standalone_mode=False)
    except PatchpilotError as exc:
        apply_cmd.stop_status()
        if debug:
            log.exception("error")
        print_error(exc.message, exc.hint)
        return int(exc.exit_code)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: Typer prints them with the usage line
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            print_error(exc.format_message())
        return ExitCode.BAD_INPUT if exc.exit_code == 2 else exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        apply_cmd.stop_status()
        print_error("interrupted")
        return ExitCode.INTERRUPTED
    except Exception as exc:  # the boundary: anything else is a bug
        apply_cmd.stop_status()
        if debug:
            raise
        print_error(
            f"internal error: {type(exc).__name__}: {exc}",
            hint="run again with --debug for the traceback, and report it",
        )
        return ExitCode.INTERNAL
    apply_cmd.stop_status()
    return result if isinstance(result, int) else ExitCode.OK


def entrypoint() -> None:
    code = main()
    # Everything is committed and written by now; ending without the interpreter's teardown
    # of some 650 loaded modules saves a third of a second on every command.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe (`patchpilot ... | head`)
        pass
    logging.shutdown()
    os._exit(code)
