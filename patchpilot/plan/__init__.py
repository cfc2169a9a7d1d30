"""Wave plans: the plan file (spec), its expansion over a fleet, maintenance windows and
frozen plans. Pure library code: nothing here runs anything on a host."""

from __future__ import annotations

from patchpilot.plan.expand import expand_plan
from patchpilot.plan.frozen import (
    FORMAT,
    FrozenPlan,
    content_hash,
    freeze,
    inventory_snapshot,
    load_frozen,
    write_frozen,
)
from patchpilot.plan.load import format_loc, load_plan, parse_plan, plan_from_dict
from patchpilot.plan.model import (
    ExcludedUpdate,
    ExpandedPlan,
    HostPlan,
    PlanHost,
    PlanUpdate,
    RollbackStep,
    SkippedHost,
    StagePlan,
    budget_allowed,
    budget_exceeded,
)
from patchpilot.plan.spec import (
    KNOWN_CHECKS,
    FailureBudget,
    PlanSpec,
    RollbackSpec,
    Select,
    Stage,
    Targets,
    Window,
    format_duration,
    parse_duration,
    resolve_count,
)
from patchpilot.plan.window import in_window, next_window

__all__ = [
    "FORMAT",
    "KNOWN_CHECKS",
    "ExcludedUpdate",
    "ExpandedPlan",
    "FailureBudget",
    "FrozenPlan",
    "HostPlan",
    "PlanHost",
    "PlanSpec",
    "PlanUpdate",
    "RollbackSpec",
    "RollbackStep",
    "Select",
    "SkippedHost",
    "Stage",
    "StagePlan",
    "Targets",
    "Window",
    "budget_allowed",
    "budget_exceeded",
    "content_hash",
    "expand_plan",
    "format_duration",
    "format_loc",
    "freeze",
    "in_window",
    "inventory_snapshot",
    "load_frozen",
    "load_plan",
    "next_window",
    "parse_duration",
    "parse_plan",
    "plan_from_dict",
    "resolve_count",
    "write_frozen",
]
