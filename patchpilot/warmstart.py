"""Starting a run's Ansible process while the rest of patchpilot loads.

Ansible needs most of a second to start, and patchpilot about as long to load the store and
the engine and to validate the plan. For a frozen plan applied without a question (`--yes`
or `--check`), `apply` starts the patch process from the plan file first, with the standard
library only, and the engine adopts it once the plan is validated and the run recorded, if
it asks for exactly the same batches, versions and settings (fleetops.PatchRequest).

This is safe by construction: the process waits at its gate before the first batch, and only
the engine opens the gate. A plan that fails validation, a run refused by a lock or any
other error before the first batch just ends an idle process.
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from patchpilot.fleetops import (
    LOCK_TIMEOUT,
    AnsibleOps,
    PatchRequest,
    PatchRun,
    on_impossible,
    stage_timeouts,
)

log = logging.getLogger(__name__)


def new_run_id(now: datetime) -> str:
    return f"r-{now.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def frozen_request(data: dict[str, Any], *, run_id: str, check: bool) -> PatchRequest:
    """The patch request a new run of this frozen plan makes (every host pending)."""
    expansion = data["expansion"]
    stage_index = {s["name"]: i for i, s in enumerate(expansion["stages"])}
    return PatchRequest.build(
        [
            (
                (stage_index[h["stage"]], int(h["batch"])),
                h["name"],
                {u["package"]: u["to"] for u in h["updates"]},
            )
            for h in expansion["hosts"]
        ],
        run_id=run_id,
        reboot=str(expansion.get("reboot", "if_needed")),
        lock_timeout=LOCK_TIMEOUT,
        on_impossible=on_impossible(data["spec"]),
        check=check,
        stage_timeouts=stage_timeouts(expansion["stages"]),
    )


def warm_start(
    path: str | Path, inventory: str | Path, *, run_id: str, check: bool
) -> PatchRun | None:
    """The patch process for a new run of the frozen plan at `path`, started now; None when
    the file is not one (the full validation that follows says why)."""
    try:
        data = json.loads(Path(path).read_text())
        request = frozen_request(data, run_id=run_id, check=check)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not request.batches:
        return None
    try:
        return AnsibleOps(inventory).open_patch(request)
    except Exception as exc:  # the engine opens its own, and reports what fails
        log.debug("warm start failed: %s", exc)
        return None
