"""The files patchpilot ships beside its code: the playbooks with their host-side modules and
lookup plugins, and the ready plans.

An installed patchpilot (a wheel, from pip or pipx) holds them inside the package, as
``patchpilot/playbooks`` and ``patchpilot/plans``. A source checkout (an editable install)
keeps them in the checkout's top-level ``playbooks/`` and ``plans/``, the very files the wheel
ships. Nothing else is searched: not the working directory, not the environment. Standard
library only: `apply` resolves its plan before anything heavy loads.
"""

from __future__ import annotations

from pathlib import Path

from patchpilot.errors import BadInputError, PatchpilotError

_PACKAGE = Path(__file__).resolve().parent


def _shipped(folder: str, marker: str) -> Path:
    for candidate in (_PACKAGE / folder, _PACKAGE.parent / folder):
        if (candidate / marker).is_file():
            return candidate
    raise PatchpilotError(
        f"the {folder} that ship with patchpilot are missing from this installation "
        f"(looked in {_PACKAGE / folder})",
        hint="reinstall patchpilot from its wheel: pipx install --force patchpilot-*.whl",
    )


def playbooks_dir() -> Path:
    """The folder of patchpilot's own playbooks (with library/ and lookup_plugins/)."""
    return _shipped("playbooks", "patch.yml")


def playbook(name: str) -> Path:
    book = playbooks_dir() / name
    if not book.is_file():
        raise PatchpilotError(f"playbook missing from this installation: {book}")
    return book


def collections_dir() -> Path:
    """The folder to add to Ansible's collections_path for the collection patchpilot.fleet
    (the host-side modules and the gate lookup), in an installed patchpilot."""
    folder = _PACKAGE / "collections"
    if not (folder / "ansible_collections" / "patchpilot" / "fleet" / "meta").is_dir():
        raise BadInputError(
            "the collection patchpilot.fleet is assembled in an installed patchpilot only",
            hint="install the wheel; from a source checkout, point ANSIBLE_LIBRARY at "
            f"{playbooks_dir() / 'library'}",
        )
    return folder


def plans_dir() -> Path:
    return _shipped("plans", "canary.yml")


def shipped_plans() -> dict[str, Path]:
    """The ready plans by name (the file name without .yml), in name order."""
    return {p.stem: p for p in sorted(plans_dir().glob("*.yml"))}


def resolve_plan(arg: str | Path) -> Path:
    """A plan argument is a path to a plan file, or the name of a shipped plan (`canary`).

    A path that exists wins over a shipped plan of the same name; an argument with a slash
    or a .yml/.json ending is always a path."""
    path = Path(arg)
    if path.exists():
        return path
    text = str(arg)
    looks_like_path = "/" in text or text.endswith((".yml", ".yaml", ".json"))
    plans = shipped_plans()
    if not looks_like_path and text in plans:
        return plans[text]
    names = ", ".join(plans)
    if looks_like_path:
        stem = path.stem
        hint = (
            f"a plan named {stem!r} ships with patchpilot: give just `{stem}`"
            if stem in plans
            else f"give a plan file, or a shipped plan by name ({names})"
        )
        raise BadInputError(f"cannot read plan {text}: no such file", hint=hint)
    raise BadInputError(
        f"no plan file {text!r} here and no shipped plan of that name",
        hint=f"shipped plans: {names} (see `patchpilot plans list`)",
    )
