"""`patchpilot metrics`: the store as Prometheus metrics, for node_exporter's textfile
collector, a Pushgateway, or stdout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from patchpilot.cli.context import state
from patchpilot.console import info
from patchpilot.errors import BadInputError


def metrics(
    ctx: typer.Context,
    textfile: Annotated[
        Path | None,
        typer.Option(
            "--textfile",
            help="Directory of node_exporter's textfile collector: writes patchpilot.prom "
            "there atomically \\[setting: metrics_textfile_dir].",
            file_okay=False,
        ),
    ] = None,
    push: Annotated[
        str | None,
        typer.Option("--push", help="Pushgateway URL to push to \\[setting: metrics_pushgateway]."),
    ] = None,
) -> None:
    """Last run state and time per plan, hosts by state, pending security updates per host
    and their age, compliance, rollbacks, time to detect and recover. Without --textfile or
    --push (nor their settings): printed in the exposition format."""
    from prometheus_client import generate_latest, push_to_gateway

    from patchpilot.report.metrics import registry_for, write_textfile

    app = state(ctx)
    directory = textfile or app.settings.metrics_textfile_dir
    gateway = push or app.settings.metrics_pushgateway
    engine = app.engine()
    if directory:
        try:
            path = write_textfile(engine, directory, pushgateway=gateway)
        except OSError as exc:
            raise BadInputError(f"metrics not written: {exc}") from exc
        info(f"metrics written to {path}" + (f" and pushed to {gateway}" if gateway else ""))
        return
    if gateway:
        try:
            push_to_gateway(gateway, job="patchpilot", registry=registry_for(engine), timeout=10)
        except OSError as exc:
            raise BadInputError(f"cannot push to {gateway}: {exc}") from exc
        info(f"metrics pushed to {gateway}")
        return
    sys.stdout.write(generate_latest(registry_for(engine)).decode())
