"""`patchpilot plans list|show`: the ready plans that ship with patchpilot."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from patchpilot.cli.inventory import JsonOpt
from patchpilot.console import print_json, print_table

app = typer.Typer(
    help="The ready plans that ship with patchpilot (give one to plan/apply by name).",
    no_args_is_help=True,
)


def _summary(text: str) -> str:
    """The plan's description, else its first comment line."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict) and data.get("description"):
        return " ".join(str(data["description"]).split())
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    return first.lstrip("# ").strip() if first.startswith("#") else ""


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Every shipped plan: its name, what it is for, and where it lies."""
    from patchpilot.resources import shipped_plans

    rows = [
        {"name": name, "summary": _summary(path.read_text()), "path": str(path)}
        for name, path in shipped_plans().items()
    ]
    if as_json:
        print_json(rows)
        return
    print_table(None, ["name", "what it does"], [(r["name"], r["summary"]) for r in rows])
    from patchpilot.console import info
    from patchpilot.resources import plans_dir

    info(f"files in {plans_dir()}; `patchpilot plans show NAME` prints one")


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="A shipped plan's name.", metavar="NAME")],
) -> None:
    """Print a shipped plan's YAML (copy it to start a plan of your own)."""
    from patchpilot.errors import BadInputError
    from patchpilot.resources import shipped_plans

    plans = shipped_plans()
    if name not in plans:
        raise BadInputError(
            f"no shipped plan named {name!r}", hint=f"shipped plans: {', '.join(plans)}"
        )
    sys.stdout.write(plans[name].read_text())
