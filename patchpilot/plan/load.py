"""Reading plan files: a loader that treats every plan as untrusted input.

A plan decides which packages reach which hosts, so a plan file must not be able to do more
than describe that: only plain YAML (no object tags), no template expressions anywhere (a
plan is never rendered, so ``{{ ... }}`` could only be a mistake or an injection), package
patterns and names restricted to characters that cannot reach a shell as anything but a
literal. Every error names the file, the line and the field, so it can be fixed in place.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, NoReturn, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from patchpilot.errors import BadInputError
from patchpilot.plan.spec import KNOWN_CHECKS, PlanSpec
from patchpilot.planfile import read_plan_file

MAX_PLAN_BYTES = 1_000_000
# Counted with aliases expanded, so a "billion laughs" plan is refused before it is built.
MAX_PLAN_NODES = 200_000

_TEMPLATE_MARKERS = ("{{", "{%", "{#")
_T = "tag:yaml.org,2002:"
# Plain data only: no !!binary (bytes would pass as str), no !!set/!!omap, no timestamps,
# and certainly no python/* or application tags.
_ALLOWED_TAGS = frozenset(
    _T + t for t in ("null", "bool", "int", "float", "str", "seq", "map", "merge", "value")
)

Loc = tuple[str | int, ...]


def format_loc(loc: Loc) -> str:
    """('stages', 2, 'parallel') -> 'stages[2].parallel'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def load_plan(
    path: str | Path, *, checks: Collection[str] = KNOWN_CHECKS, raw: bytes | None = None
) -> PlanSpec:
    """Read (or take, as `raw`, the bytes already read from `path`) and validate a plan
    file; every problem is a BadInputError naming file:line."""
    path = Path(path)
    if raw is None:
        raw = read_plan_file(path)
    if len(raw) > MAX_PLAN_BYTES:
        raise BadInputError(f"{path}: plan is larger than {MAX_PLAN_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_plan(text, source=str(path), checks=checks)


def parse_plan(
    text: str, source: str = "<plan>", *, checks: Collection[str] = KNOWN_CHECKS
) -> PlanSpec:
    """Validate plan text. YAML is read with SafeLoader semantics, restricted further to
    plain data tags, with duplicate keys, template expressions and base-60 numbers refused."""
    if len(text) > MAX_PLAN_BYTES:
        raise BadInputError(f"{source}: plan is larger than {MAX_PLAN_BYTES} bytes")
    root = _compose(text, source)
    try:
        _check_tree(root, source)
    except RecursionError:
        raise BadInputError(f"{source}: plan is nested too deeply") from None
    data = _construct(root, source)
    if not isinstance(data, dict):
        raise BadInputError(
            f"{source}:{root.start_mark.line + 1}: a plan is a mapping of fields"
            " (name, stages, ...)",
            hint="see docs/plan-reference.md for the fields and an example",
        )
    return _validate(data, source, lambda loc: _line_of(root, loc), checks)


def plan_from_dict(
    data: Mapping[str, Any], source: str, *, checks: Collection[str] = KNOWN_CHECKS
) -> PlanSpec:
    """Validate a plan that is already data (the spec stored in a frozen plan): the same
    rules as a plan file, without line numbers."""
    check_strings(data, (), source)
    return _validate(dict(data), source, lambda loc: None, checks)


def _compose(text: str, source: str) -> Node:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise BadInputError(
            f"{source}{line}: not valid YAML: {exc.problem or exc.context}",
            hint="check indentation and quoting on that line",
        ) from None
    except yaml.YAMLError as exc:
        raise BadInputError(f"{source}: not valid YAML: {exc}") from None
    except RecursionError:
        raise BadInputError(f"{source}: plan is nested too deeply") from None
    finally:
        loader.dispose()
    if node is None:
        raise BadInputError(
            f"{source}: plan is empty", hint="see docs/plan-reference.md for an example"
        )
    return node


def _construct(root: Node, source: str) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:  # ConstructorError: kept as a safety net
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise BadInputError(
            f"{source}{line}: unsupported YAML: {exc.problem}",
            hint="plans are plain YAML data: no tags, no objects",
        ) from None
    finally:
        loader.dispose()


def _check_tree(root: Node, source: str) -> None:
    """One pass over the composed nodes, before anything is constructed."""
    sizes: dict[int, int] = {}
    seen: set[int] = set()
    stack: set[int] = set()

    def fail(node: Node, loc: Loc, message: str, hint: str) -> NoReturn:
        where = f" {format_loc(loc)}" if loc else ""
        raise BadInputError(f"{source}:{node.start_mark.line + 1}{where}: {message}", hint=hint)

    def walk(node: Node, loc: Loc) -> int:
        key = id(node)
        if key in stack:
            fail(node, loc, "recursive YAML alias", "plans cannot refer to themselves")
        if key in sizes:
            return sizes[key]
        stack.add(key)
        first_visit = key not in seen
        seen.add(key)
        if node.tag == _T + "timestamp":
            fail(node, loc, f"{node.value!r} reads as a date in YAML", "quote the value")
        if node.tag not in _ALLOWED_TAGS:
            fail(
                node,
                loc,
                f"unsupported YAML tag {node.tag!r}",
                "plans are plain YAML data: strings, numbers, booleans, lists and mappings",
            )
        size = 1
        if isinstance(node, ScalarNode):
            if first_visit and any(m in node.value for m in _TEMPLATE_MARKERS):
                fail(
                    node,
                    loc,
                    "template expressions are not allowed in plans",
                    "plans are never rendered: write the literal value",
                )
            if node.tag in (_T + "int", _T + "float") and ":" in node.value:
                fail(
                    node,
                    loc,
                    f"{node.value!r} reads as a base-60 number in YAML",
                    "write a duration like 1m30s, or quote the value",
                )
        elif isinstance(node, SequenceNode):
            for i, child in enumerate(node.value):
                size += walk(child, (*loc, i))
        elif isinstance(node, MappingNode):
            keys: set[str] = set()
            for k, v in node.value:
                label = k.value if isinstance(k, ScalarNode) else "?"
                if isinstance(k, ScalarNode) and k.tag != _T + "merge":
                    if k.value in keys:
                        fail(
                            k,
                            (*loc, label),
                            f"duplicate key {label!r}",
                            "each field may appear once",
                        )
                    keys.add(k.value)
                size += walk(k, (*loc, label)) + walk(v, (*loc, label))
        stack.discard(key)
        sizes[key] = size
        if size > MAX_PLAN_NODES:
            fail(
                node,
                loc,
                "plan is too large (too many values, aliases included)",
                f"a plan holds at most {MAX_PLAN_NODES} values once its aliases are expanded",
            )
        return size

    walk(root, ())


def check_strings(data: Any, loc: Loc, source: str) -> None:
    if isinstance(data, str):
        if any(m in data for m in _TEMPLATE_MARKERS):
            raise BadInputError(
                f"{source} {format_loc(loc)}: template expressions are not allowed in plans",
                hint="plans are never rendered: write the literal value",
            )
    elif isinstance(data, Mapping):
        for k, v in data.items():
            check_strings(k, (*loc, str(k)), source)
            check_strings(v, (*loc, str(k)), source)
    elif isinstance(data, list | tuple):
        for i, v in enumerate(data):
            check_strings(v, (*loc, i), source)


def _line_of(root: Node, loc: Loc) -> int | None:
    """The line of the node at `loc`, or of its nearest ancestor present in the file."""
    node = root
    line = root.start_mark.line + 1
    for part in loc:
        if isinstance(node, MappingNode) and isinstance(part, str):
            for k, v in node.value:
                if isinstance(k, ScalarNode) and k.value == part:
                    line = k.start_mark.line + 1
                    node = v
                    break
            else:
                return line
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


_FIELD_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "unexpected_keyword_argument": "unknown field",
}


def _validate(
    data: dict[str, Any],
    source: str,
    locate: Callable[[Loc], int | None],
    checks: Collection[str],
) -> PlanSpec:
    try:
        spec = PlanSpec.model_validate(data, context={"checks": frozenset(checks)})
    except ValidationError as exc:
        raw = exc.errors(include_url=False)
        locs = [tuple(e["loc"]) for e in raw]
        # A list with a bad item also reports "too short": keep the item's error only.
        errors = [
            e
            for e, loc in zip(raw, locs, strict=True)
            if not any(len(o) > len(loc) and o[: len(loc)] == loc for o in locs)
        ] or raw
        first = errors[0]
        loc = _clean_loc(data, tuple(first["loc"]))
        message = _FIELD_MESSAGES.get(first["type"]) or first["msg"].removeprefix("Value error, ")
        hint = "see docs/plan-reference.md for every field, its type and default"
        if first["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            allowed = _allowed_fields(loc[:-1])
            if allowed:
                hint = f"fields allowed here: {', '.join(allowed)}"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise _located(source, locate(loc), loc, message + more, hint) from None
    problem = _semantic_problem(spec)
    if problem:
        loc, message, hint = problem
        raise _located(source, locate(loc), loc, message, hint)
    return spec


def _located(source: str, line: int | None, loc: Loc, message: str, hint: str) -> BadInputError:
    where = f"{source}:{line}" if line else source
    field = f" {format_loc(loc)}" if loc else ""
    return BadInputError(f"{where}{field}: {message}", hint=hint)


def _clean_loc(data: Any, loc: Loc) -> Loc:
    """Drop pydantic's union/validator tags ('int', 'function-before[...]') from a loc."""
    out: list[str | int] = []
    node = data
    for part in loc:
        present = (isinstance(node, Mapping) and part in node) or (
            isinstance(node, list | tuple) and isinstance(part, int) and part < len(node)
        )
        if present:
            out.append(part)
            node = node[part]
        elif isinstance(node, Mapping) and isinstance(part, str) and not _is_tag(part):
            out.append(part)  # a missing field
            node = None
        else:
            node = None
    return tuple(out)


def _is_tag(part: str) -> bool:
    return "[" in part or part in {"int", "str", "float", "bool", "none", "list", "dict", "tuple"}


def _fields_of(model: Any) -> list[str]:
    """The fields of a plan model (pydantic) or of a dataclass it holds (health checks)."""
    fields = getattr(model, "model_fields", None) or getattr(model, "__dataclass_fields__", None)
    return list(fields) if fields else []


def _allowed_fields(loc: Loc) -> list[str]:
    model: Any = PlanSpec
    for part in loc:
        if isinstance(part, int):
            continue
        if part not in _fields_of(model):
            return []
        model = _model_in(typing.get_type_hints(model, include_extras=False)[part])
    return _fields_of(model)


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and (
        issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)
    ):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _semantic_problem(spec: PlanSpec) -> tuple[Loc, str, str] | None:
    """Rules across fields: unique stage names, the validation stage, `after` references."""
    index: dict[str, int] = {}
    for i, stage in enumerate(spec.stages):
        if stage.name in index:
            return (
                ("stages", i, "name"),
                f"duplicate stage name {stage.name!r} (also stages[{index[stage.name]}])",
                "give every stage its own name",
            )
        index[stage.name] = i
    for i, stage in enumerate(spec.stages):
        if stage.validation and i != 0:
            return (
                ("stages", i, "validation"),
                "only the first stage can be the validation stage",
                "move the validation stage to the top of stages",
            )
        if stage.group and spec.targets.groups and stage.group not in spec.targets.groups:
            return (
                ("stages", i, "group"),
                f"group {stage.group!r} is not in targets.groups, so the stage would be empty",
                f"targets.groups is {', '.join(spec.targets.groups)}",
            )
        for j, name in enumerate(stage.after):
            if name not in index:
                return (
                    ("stages", i, "after", j),
                    f"unknown stage {name!r}",
                    f"after names stages of this plan: {', '.join(index)}",
                )
    cycle = _find_cycle(spec)
    if cycle:
        first = index[cycle[0]]
        return (
            ("stages", first, "after"),
            f"stages wait for each other in a cycle: {' -> '.join(cycle)}",
            "remove one of the after entries of that cycle",
        )
    for i, stage in enumerate(spec.stages):
        for j, name in enumerate(stage.after):
            if index[name] > i:
                return (
                    ("stages", i, "after", j),
                    f"stage {name!r} comes later in the plan (stages[{index[name]}])",
                    "list stages in the order they run: a stage after another one below it",
                )
    return None


def _find_cycle(spec: PlanSpec) -> list[str] | None:
    graph = {stage.name: stage.after for stage in spec.stages}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for nxt in graph[name]:
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt, path)
                if found:
                    return found
        path.pop()
        state[name] = 2
        return None

    for name in graph:
        if name not in state:
            found = visit(name, [])
            if found:
                return found
    return None
