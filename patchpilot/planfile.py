"""Reading a plan file (a YAML plan or a frozen plan's JSON) once, with nothing but the
standard library: `apply` hands the same bytes to the warm start (ops.warmstart) and to the
validation that follows, so what starts is what was checked."""

from __future__ import annotations

from pathlib import Path

from patchpilot.errors import BadInputError


def read_plan_file(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BadInputError(
            f"cannot read plan {path}: {exc.strerror or exc}",
            hint="give the path of a plan file, e.g. plans/canary.yml",
        ) from None


def is_frozen(raw: bytes) -> bool:
    """A frozen plan is a JSON object; a plan file is YAML (which never starts with '{' in
    practice, and load_frozen's errors are the clearer ones for a JSON file)."""
    return raw[:256].lstrip().startswith(b"{")
