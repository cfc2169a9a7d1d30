"""The options of every command that reaches hosts through Ansible: become, vault, host keys,
forks and --limit, as `ansible-playbook` spells them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from patchpilot.errors import BadInputError
from patchpilot.ops.ansible_setup import Access, Setup, configure

_P = "Ansible access"

BecomeOpt = Annotated[
    bool | None,
    typer.Option(
        "--become/--no-become",
        "-b",
        help="Become root (sudo) on the hosts, or not; default: as the inventory says.",
        rich_help_panel=_P,
    ),
]
AskBecomeOpt = Annotated[
    bool,
    typer.Option(
        "--ask-become-pass",
        "-K",
        help="Ask for the become (sudo) password once, for every host.",
        rich_help_panel=_P,
    ),
]
VaultIdOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--vault-id", help="Ansible vault identity (LABEL@SOURCE), repeatable.", rich_help_panel=_P
    ),
]
VaultFileOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--vault-password-file",
        help="File (or script) with the vault password, repeatable.",
        rich_help_panel=_P,
        dir_okay=False,
    ),
]
AskVaultOpt = Annotated[
    bool,
    typer.Option(
        "--ask-vault-pass", "-J", help="Ask for the vault password once.", rich_help_panel=_P
    ),
]
AcceptNewOpt = Annotated[
    bool,
    typer.Option(
        "--accept-new-host-keys",
        help="Trust the SSH host key of a host seen for the first time (ssh's accept-new); "
        "a changed key is still refused.",
        rich_help_panel=_P,
    ),
]
ForksOpt = Annotated[
    int | None,
    typer.Option(
        "--forks",
        "-f",
        min=1,
        help="Hosts Ansible works on in parallel; default: ansible.cfg's forks, else 20.",
        rich_help_panel=_P,
    ),
]
LimitOpt = Annotated[
    str | None,
    typer.Option(
        "--limit",
        "-l",
        help="Only the hosts this Ansible host pattern selects (e.g. 'web:&prod:!web03').",
        rich_help_panel=_P,
    ),
]


def _ask(prompt: str) -> str:
    if not sys.stdin.isatty():
        raise BadInputError(
            f"{prompt.rstrip(': ')} needs a terminal to ask on",
            hint="unattended, give it in a vaulted inventory variable and --vault-password-file",
        )
    import getpass

    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise BadInputError(f"no {prompt.rstrip(': ').lower()} given") from None


def _vault_id(vid: str) -> str:
    """`[LABEL@]SOURCE`, with a file SOURCE made absolute: Ansible runs its playbooks from a
    folder of its own, where a path relative to the user's directory would not be found."""
    if not vid or vid.startswith("-"):
        raise BadInputError(f"invalid --vault-id {vid!r}", hint="e.g. --vault-id prod@~/.vp")
    label, sep, source = vid.rpartition("@")
    if source in ("prompt", "prompt_ask_vault_pass"):
        return vid
    path = Path(source).expanduser()
    if not path.is_file():
        raise BadInputError(
            f"vault password file not found: {source} (in --vault-id {vid})",
            hint="give an existing file or script, or LABEL@prompt to be asked",
        )
    return f"{label}{sep}{path.resolve()}"


def setup_access(
    *,
    become: bool | None = None,
    ask_become_pass: bool = False,
    vault_id: list[str] | None = None,
    vault_password_file: list[Path] | None = None,
    ask_vault_pass: bool = False,
    accept_new_host_keys: bool = False,
    forks: int | None = None,
) -> Setup:
    """Check the access options, ask for what must be asked, and set up every Ansible
    process of this command (ops.ansible_setup)."""
    files = []
    for f in vault_password_file or []:
        if not f.is_file():
            raise BadInputError(
                f"vault password file not found: {f}",
                hint="give an existing file (or an executable script) with --vault-password-file",
            )
        files.append(str(f.resolve()))
    ids = [_vault_id(vid) for vid in vault_id or []]
    become_password = _ask("BECOME password: ") if ask_become_pass else None
    vault_password = _ask("Vault password: ") if ask_vault_pass else None
    return configure(
        Access(
            become=become,
            become_password=become_password,
            vault_ids=tuple(ids),
            vault_password_files=tuple(files),
            vault_password=vault_password,
            accept_new_host_keys=accept_new_host_keys,
            forks=forks,
        )
    )
