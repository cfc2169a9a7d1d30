"""Run ids. Kept apart from the rest of `run` on purpose: `apply` mints the id of a new run
before it loads the store and the engine, so its Ansible process can start meanwhile
(ops.warmstart); importing this loads nothing else."""

from __future__ import annotations

import secrets
from datetime import datetime


def new_run_id(now: datetime) -> str:
    """r-YYYYMMDD-HHMMSS-xxxx: sortable by start time, unique across controllers."""
    return f"r-{now.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
