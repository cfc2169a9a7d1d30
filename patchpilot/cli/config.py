"""`patchpilot config`: show the settings in force and where each came from."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from patchpilot.cli.context import state
from patchpilot.console import print_json, print_table

app = typer.Typer(help="Show the settings in force.", no_args_is_help=True)


@app.command("show")
def show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print each setting, its value and its source (default, file, env or flag)."""
    from patchpilot.settings import ENV_PREFIX, Settings, find_config_file, read_config_file

    st = state(ctx)
    settings = st.settings
    path = find_config_file(st.config)
    in_file = read_config_file(path) if path else {}
    flags = {"db": st.db}
    rows = []
    for name in Settings.model_fields:
        if flags.get(name) is not None:
            source = "flag"
        elif f"{ENV_PREFIX}{name.upper()}" in os.environ:
            source = "env"
        elif name in in_file:
            source = f"file {path}"
        else:
            source = "default"
        rows.append((name, str(getattr(settings, name)), source))
    if as_json:
        print_json(
            {
                "config_file": str(path) if path else None,
                "settings": {n: {"value": v, "source": s} for n, v, s in rows},
            }
        )
    else:
        print_table(f"config file: {path or 'none'}", ["setting", "value", "source"], rows)


@app.command("collections-path")
def collections_path() -> None:
    """Print the folder holding the Ansible collection patchpilot.fleet (patchpilot's
    host-side modules), to add to ANSIBLE_COLLECTIONS_PATH for your own playbooks."""
    from patchpilot.resources import collections_dir

    typer.echo(str(collections_dir()))
