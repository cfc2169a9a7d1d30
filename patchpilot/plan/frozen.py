"""Frozen plans: an expansion written down with everything it was made from, so a run
executes exactly what was reviewed, and a file changed after review is refused.

The file is JSON. Its `sha256` covers the canonical JSON (sorted keys, no whitespace, UTF-8)
of every other field, so the pretty-printed layout on disk does not matter but any change
to a value does. The hash detects edits; a forgery is caught by the `signature`, an HMAC
with a key kept in the store that made the plan, which `apply` requires. Everything in the
file is checked again when it is read, the expansion too, with the rules of plan files.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from patchpilot.errors import BadInputError
from patchpilot.patches import validate_package_name, validate_version
from patchpilot.plan.load import check_strings, plan_from_dict
from patchpilot.plan.model import ExpandedPlan, PlanHost
from patchpilot.plan.spec import PlanSpec

FORMAT = "patchpilot-frozen-plan/1"
_FIELDS = ("format", "created_at", "spec", "expansion", "inventory", "sha256")
# signature: HMAC-SHA256 with the store's key (sign / verify_signature); limit: the --limit
# host pattern the plan was made with.
_OPTIONAL = ("signature", "limit")


@dataclass(frozen=True)
class FrozenPlan:
    format: str
    created_at: datetime
    spec: PlanSpec
    expansion: dict[str, Any]  # ExpandedPlan.to_dict() as written
    inventory: dict[str, Any]
    sha256: str
    # The whole document as verified, what a run records and executes: taken from this
    # object, never read from the file again (it may have changed since it was checked).
    data: dict[str, Any]
    plan: ExpandedPlan  # the expansion, typed and checked
    limit: str | None = None  # the --limit it was made with

    def host_updates(self, host: str) -> list[dict[str, Any]]:
        """The exact updates (package, arch, from, to) frozen for one host."""
        for entry in self.expansion["hosts"]:
            if entry["name"] == host:
                return list(entry["updates"])
        raise KeyError(host)


def canonical_json(data: Any) -> bytes:
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def content_hash(data: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of every field but `sha256` and `signature`."""
    return hashlib.sha256(
        canonical_json({k: v for k, v in data.items() if k not in ("sha256", "signature")})
    ).hexdigest()


def signature(data: Mapping[str, Any], key: bytes) -> str:
    """HMAC-SHA256 over the content hash: only a holder of the store's key can make it."""
    return hmac.new(key, content_hash(data).encode(), hashlib.sha256).hexdigest()


def sign(data: dict[str, Any], key: bytes) -> dict[str, Any]:
    return {**data, "signature": signature(data, key)}


def verify_signature(path: str | Path, data: Mapping[str, Any], key: bytes) -> None:
    """A frozen plan is executed only if this store's key signed it: the sha256 inside
    catches edits, the signature catches a forgery (whoever rewrites the file can
    recompute a hash, not the HMAC)."""
    given = data.get("signature")
    if not isinstance(given, str) or not hmac.compare_digest(given, signature(data, key)):
        raise BadInputError(
            f"{path}: frozen plan is not signed by this store",
            hint="freeze it again with `patchpilot plan PLAN -i INVENTORY --out FILE` against "
            "the store you apply with",
        )


def inventory_snapshot(hosts: Iterable[PlanHost], expanded: ExpandedPlan) -> dict[str, Any]:
    """What the fleet looked like when the plan was frozen: every host given to the
    expansion (OS release, groups, reachable) and, for planned hosts, the installed version
    of every package the plan updates."""
    snapshot: dict[str, Any] = {}
    for host in sorted(hosts, key=lambda h: h.name):
        entry: dict[str, Any] = {
            "os_release": host.os_release,
            "groups": list(host.groups),
            "reachable": host.reachable,
        }
        planned = expanded.hosts.get(host.name)
        if planned is not None:
            entry["installed"] = {
                f"{u.package}:{u.arch}": u.installed_version for u in planned.updates
            }
        snapshot[host.name] = entry
    return snapshot


def freeze(
    expanded: ExpandedPlan,
    spec: PlanSpec,
    *,
    inventory_snapshot: dict[str, Any],
    created_at: datetime,
    limit: str | None = None,
) -> dict[str, Any]:
    """The frozen plan as data, hash included; write it with write_frozen."""
    if created_at.tzinfo is None or created_at.utcoffset() is None:
        raise ValueError("created_at must be an aware datetime")
    if spec.name != expanded.plan:
        raise ValueError(f"expansion of plan {expanded.plan!r} frozen with spec {spec.name!r}")
    data: dict[str, Any] = {
        "format": FORMAT,
        "created_at": created_at.isoformat(),
        "spec": spec.model_dump(mode="json"),
        "expansion": expanded.to_dict(),
        "inventory": inventory_snapshot,
    }
    if limit is not None:
        data["limit"] = limit
    # Round-trip through JSON so the hash covers what the file will hold (tuples -> lists).
    # Those canonical bytes are what content_hash would encode again: hash them directly.
    encoded = canonical_json(data)
    data = json.loads(encoded)
    data["sha256"] = hashlib.sha256(encoded).hexdigest()
    return data


def write_frozen(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write atomically (temporary file, then rename), refusing data whose hash is off."""
    if data.get("format") != FORMAT or data.get("sha256") != content_hash(data):
        raise ValueError("not a frozen plan from freeze(), or changed since")
    path = Path(path)
    text = json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_frozen(path: str | Path, *, raw_bytes: bytes | None = None) -> FrozenPlan:
    """Read (or take, as `raw_bytes`, what was read from `path`) a frozen plan, verifying
    its format and hash and re-validating its plan and every package name and version."""
    path = Path(path)
    hint = "freeze the plan again from its plan file"
    try:
        if raw_bytes is None:
            raw_bytes = path.read_bytes()
        raw = raw_bytes.decode("utf-8")
    except OSError as exc:
        raise BadInputError(f"cannot read frozen plan {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: not UTF-8 text", hint=hint) from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}", hint=hint) from None
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: not a frozen plan (expected a JSON object)", hint=hint)
    fmt = data.get("format")
    if fmt != FORMAT:
        raise BadInputError(
            f"{path}: format {fmt!r} is not {FORMAT}",
            hint="this version of patchpilot reads " + FORMAT,
        )
    missing = [k for k in _FIELDS if k not in data]
    extra = sorted(set(data) - set(_FIELDS) - set(_OPTIONAL))
    if missing or extra:
        what = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(extra)}"
        raise BadInputError(f"{path}: not a frozen plan ({what})", hint=hint)
    if data["sha256"] != content_hash(data):
        raise BadInputError(
            f"{path}: frozen plan was modified after it was written",
            hint="review and freeze the plan again; never edit a frozen plan by hand",
        )
    try:
        created_at = datetime.fromisoformat(data["created_at"])
    except (TypeError, ValueError):
        raise BadInputError(f"{path} created_at: not an ISO 8601 time", hint=hint) from None
    if not isinstance(data["spec"], dict) or not isinstance(data["expansion"], dict):
        raise BadInputError(f"{path}: spec and expansion must be JSON objects", hint=hint)
    limit = data.get("limit")
    if limit is not None and (not isinstance(limit, str) or not limit.strip()):
        raise BadInputError(f"{path} limit: must be a host pattern (text)", hint=hint)
    spec = plan_from_dict(data["spec"], f"{path} spec")
    _check_packages(path, data["expansion"])
    check_strings(data["expansion"], ("expansion",), str(path))
    plan = ExpandedPlan.from_dict(data["expansion"], where=f"{path} expansion")
    _check_stages(path, spec, plan)
    return FrozenPlan(
        format=fmt,
        created_at=created_at,
        spec=spec,
        expansion=data["expansion"],
        inventory=data["inventory"],
        sha256=data["sha256"],
        data=data,
        plan=plan,
        limit=limit,
    )


def _check_stages(path: Path, spec: PlanSpec, plan: ExpandedPlan) -> None:
    """The expansion's stages are the plan's own, settings and all (its health checks are
    the commands that will run on the hosts)."""
    own = {s.name: s for s in spec.stages}
    for st in plan.stages:
        if own.get(st.name) != st.settings:
            raise BadInputError(
                f"{path}: stage {st.name} of the expansion is not the plan's",
                hint="freeze the plan again from its plan file",
            )
    if plan.plan != spec.name:
        raise BadInputError(f"{path}: expansion of plan {plan.plan!r}, spec {spec.name!r}")


def _check_packages(path: Path, expansion: dict[str, Any]) -> None:
    """Names and versions are checked again here, since they go to commands from this file."""
    try:
        for i, host in enumerate(expansion["hosts"]):
            for j, u in enumerate(host["updates"]):
                where = f"{path} expansion.hosts[{i}].updates[{j}]"
                validate_package_name(u["package"], where=where)
                validate_version(u["from"], where=where)
                validate_version(u["to"], where=where)
        for i, step in enumerate(expansion["rollback"]):
            for j, u in enumerate(step["packages"]):
                where = f"{path} expansion.rollback[{i}].packages[{j}]"
                validate_package_name(u["package"], where=where)
                validate_version(u["to_version"], where=where)
    except (KeyError, TypeError) as exc:
        raise BadInputError(
            f"{path}: expansion is incomplete ({exc!r})",
            hint="freeze the plan again from its plan file",
        ) from None
