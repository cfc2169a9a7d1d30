"""Every task a shipped playbook runs on a host is bounded in time: a unit that hangs on
restart, or a host that stops answering mid-task, cannot stall a run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

PLAYBOOKS = sorted((Path(__file__).parents[2] / "playbooks").glob("*.yml"))
# Run on the controller only: nothing to wait for on a host.
CONTROLLER_ONLY = {
    "ansible.builtin.set_fact",
    "ansible.builtin.meta",
    "ansible.builtin.debug",
    "ansible.builtin.fail",
}
KEYWORDS = {
    "name", "when", "register", "timeout", "vars", "tags", "become", "changed_when",
    "failed_when", "no_log", "loop", "run_once", "delegate_to", "ignore_errors", "environment",
    "async", "poll", "until", "retries", "delay", "check_mode", "any_errors_fatal", "throttle",
    "listen", "notify", "ignore_unreachable", "loop_control", "args",
}  # fmt: skip


def _tasks(tasks: list[dict[str, Any]] | None) -> Iterator[dict[str, Any]]:
    for t in tasks or []:
        blocks = [t[k] for k in ("block", "rescue", "always") if k in t]
        if blocks:
            for b in blocks:
                yield from _tasks(b)
        else:
            yield t


def _host_tasks(book: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for play in yaml.safe_load(book.read_text()):
        for section in ("pre_tasks", "tasks", "post_tasks", "handlers"):
            for t in _tasks(play.get(section)):
                (action,) = [k for k in t if k not in KEYWORDS]
                if action not in CONTROLLER_ONLY:
                    yield action, t


@pytest.mark.parametrize("book", PLAYBOOKS, ids=[p.name for p in PLAYBOOKS])
def test_every_host_task_has_a_timeout(book: Path) -> None:
    tasks = list(_host_tasks(book))
    assert tasks, f"{book.name} runs nothing on hosts?"
    for action, t in tasks:
        if action == "ansible.builtin.reboot":
            assert t[action].get("reboot_timeout"), t["name"]
        else:
            assert t.get("timeout") not in (None, "", 0), f"{book.name}: {t['name']}"
