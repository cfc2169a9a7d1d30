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
from pathlib import Path

from patchpilot.ops.fleetops import AnsibleOps, PatchRun, plan_request

log = logging.getLogger(__name__)


def warm_start(raw: bytes, inventory: str | Path, *, run_id: str, check: bool) -> PatchRun | None:
    """The patch process for a new run of the frozen plan read as `raw`, started now; None
    when it is not one (the full validation that follows, of the same bytes, says why)."""
    try:
        data = json.loads(raw)
        request = plan_request(data, run_id=run_id, check=check)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not request.batches:
        return None
    try:
        return AnsibleOps(inventory).open_patch(request)
    except Exception as exc:  # the engine opens its own, and reports what fails
        log.debug("warm start failed: %s", exc)
        return None
