"""Plan files: the schema, its defaults, and hostile or broken plans refused with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchpilot.errors import BadInputError, ExitCode
from patchpilot.plan import (
    KNOWN_CHECKS,
    format_duration,
    load_plan,
    parse_duration,
    parse_plan,
    plan_from_dict,
    resolve_count,
)

PLANS = Path(__file__).resolve().parents[2] / "plans"
SOURCE = "plans/x.yml"
ONE = "stages: [{name: a, hosts: 1}]\n"

MINIMAL = """\
name: minimal
stages:
  - name: all
    hosts: rest
"""

THREE_STAGES = """\
name: three
stages:
  - name: first
    hosts: 1
  - name: second
    hosts: 10%
  - name: third
    hosts: rest
    parallel: {parallel}
"""


def reject(text: str, source: str = SOURCE) -> BadInputError:
    with pytest.raises(BadInputError) as info:
        parse_plan(text, source=source)
    err = info.value
    assert err.exit_code == ExitCode.BAD_INPUT
    assert "\n" not in err.message, "one line"
    assert err.hint
    return err


# --- the plans shipped in plans/ -------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(PLANS.glob("*.yml")), ids=lambda p: p.name)
def test_shipped_plans_are_valid(path: Path) -> None:
    spec = load_plan(path)
    assert spec.name == path.stem
    assert spec.description
    assert spec.stages[-1].hosts == "rest", "every shipped plan covers every host"
    for stage in spec.stages:
        for check in stage.health:
            assert check.check in KNOWN_CHECKS


def test_shipped_plan_set() -> None:
    names = {p.stem for p in PLANS.glob("*.yml")}
    assert names >= {"canary", "security-only", "kernel-reboot", "one-at-a-time", "emergency"}
    assert load_plan(PLANS / "emergency.yml").emergency
    assert load_plan(PLANS / "security-only.yml").select.security_only
    assert load_plan(PLANS / "kernel-reboot.yml").reboot == "always"
    one = load_plan(PLANS / "one-at-a-time.yml")
    assert all(s.parallel == 1 for s in one.stages)
    canary = load_plan(PLANS / "canary.yml")
    assert [s.hosts for s in canary.stages] == [1, "3%", "20%", "40%", "rest"]
    assert canary.stages[0].validation


# --- defaults and values ---------------------------------------------------------------------


def test_defaults() -> None:
    spec = parse_plan(MINIMAL)
    assert spec.description == "" and not spec.emergency
    assert spec.select.include == ("*",) and spec.select.exclude == ()
    assert spec.select.max_risk is None and spec.select.max_probability is None
    assert spec.select.min_age_days == 0 and spec.select.held == "respect"
    assert spec.select.unscored == "exclude"
    assert spec.targets.pattern == "all" and spec.targets.groups == () and spec.targets.facts == {}
    stage = spec.stages[0]
    assert stage.parallel == 1 and stage.soak == 0 and stage.timeout == 1800
    assert stage.on_failure == "rollback_wave" and not stage.approval and not stage.validation
    assert stage.group is None and stage.after == () and stage.health == ()
    assert spec.failure_budget.hosts == 0 and spec.failure_budget.percent is None
    assert spec.failure_budget.unreachable_counts
    assert spec.reboot == "if_needed" and spec.window is None
    assert spec.rollback.on_impossible == "refuse"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("1h30m", 5400), ("2d", 172800), ("1d2h3m4s", 93784), ("0s", 0)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "10", "10 minutes", "1m1h", "-5s", "1.5h", "1w", "h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "base", "count"),
    [
        (5, 100, 5),
        ("rest", 42, 42),
        ("3%", 100, 3),
        ("7%", 100, 7),  # exact: never 8 from 0.07 * 100 = 7.000000000000001
        ("3%", 7, 1),  # ceil(0.21)
        ("20%", 7, 2),  # ceil(1.4)
        ("40%", 7, 3),  # ceil(2.8)
        ("0.5%", 1000, 5),
        ("33.3%", 10, 4),
        ("100%", 9, 9),
    ],
)
def test_resolve_count(value: int | str, base: int, count: int) -> None:
    assert resolve_count(value, base) == count


def test_full_plan_fields() -> None:
    spec = parse_plan(
        """\
name: full
description: every field
emergency: true
select:
  security_only: true
  include: ["lib*", "openssl"]
  exclude: ["*-dbg"]
  max_risk: medium
  max_probability: 0.25
  min_age_days: 2.5
  held: respect
  unscored: include
targets:
  pattern: "web:&prod"
  groups: [web, db]
  facts:
    distribution_release: [bookworm, trixie]
    distribution_major_version: 12
stages:
  - name: web-first
    group: web
    hosts: 1
    validation: true
    health:
      - {check: http, params: {url: "http://localhost/"}, critical: true}
  - name: db
    group: db
    after: [web-first]
    hosts: 50%
    parallel: 25%
    soak: 1h30m
    timeout: 2h
    on_failure: pause
    approval: true
failure_budget: {percent: 2.5, unreachable_counts: false}
reboot: always
window: {cron: "0 2 * * 6", duration: 4h, timezone: Europe/Berlin}
rollback: {on_impossible: proceed}
"""
    )
    assert spec.targets.facts == {
        "distribution_release": ("bookworm", "trixie"),
        "distribution_major_version": "12",
    }
    assert spec.stages[1].soak == 5400 and spec.stages[1].parallel == "25%"
    assert spec.window is not None and spec.window.duration == 14400
    assert spec.failure_budget.percent == 2.5
    # A dumped plan reads in again, unchanged (frozen plans rely on it).
    dumped = spec.model_dump(mode="json")
    assert dumped["stages"][1]["soak"] == "1h30m"
    assert plan_from_dict(dumped, "frozen") == spec


def test_check_criticality_defaults_to_the_check() -> None:
    text = MINIMAL + "    health: [{check: ssh}, {check: load, critical: true}]\n"
    checks = parse_plan(text).stages[0].health
    assert [(c.check, c.critical, c.params) for c in checks] == [
        ("ssh", None, {}),
        ("load", True, {}),
    ]


def test_custom_check_names() -> None:
    text = MINIMAL + "    health: [{check: my_probe}]\n"
    assert parse_plan(text, checks={"my_probe"}).stages[0].health[0].check == "my_probe"
    assert "unknown health check 'my_probe'" in reject(text).message


# --- hostile and broken plans ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'name: x\nstages: !!python/object/apply:os.system ["id"]\n',
            f"{SOURCE}:2 stages: unsupported YAML tag"
            " 'tag:yaml.org,2002:python/object/apply:os.system'",
        ),
        (
            "name: !!python/object:os.system {}\nstages: []\n",
            f"{SOURCE}:1 name: unsupported YAML tag",
        ),
        (
            "name: x\nstages:\n  - name: a\n    hosts: !!python/name:os.system\n",
            f"{SOURCE}:4 stages[0].hosts: unsupported YAML tag",
        ),
        ("name: !custom x\nstages: []\n", f"{SOURCE}:1 name: unsupported YAML tag '!custom'"),
        ("name: !!binary e3s=\nstages: []\n", f"{SOURCE}:1 name: unsupported YAML tag"),
        (
            "name: x\nselect:\n  include: ['foo;rm -rf /']\nstages: [{name: a, hosts: rest}]\n",
            f"{SOURCE}:3 select.include[0]: invalid package pattern 'foo;rm -rf /'",
        ),
        (
            "name: x\nselect:\n  exclude: [libc6, '-rf']\nstages: [{name: a, hosts: rest}]\n",
            f"{SOURCE}:3 select.exclude[1]: invalid package pattern '-rf'",
        ),
        (
            "name: x\nselect:\n  include: ['$(id)']\nstages: [{name: a, hosts: rest}]\n",
            f"{SOURCE}:3 select.include[0]: invalid package pattern",
        ),
        (
            "name: x\ndescription: \"{{ lookup('pipe','id') }}\"\nstages: [{name: a, hosts: 1}]\n",
            f"{SOURCE}:2 description: template expressions are not allowed in plans",
        ),
        (
            "name: x\nstages:\n  - name: a\n    hosts: 1\n    health:\n"
            '      - check: command\n        params: {cmd: "{% raw %}id"}\n',
            f"{SOURCE}:7 stages[0].health[0].params.cmd: template expressions are not allowed",
        ),
        (
            "name: x\ntargets:\n  pattern: 'web{# x #}'\nstages: [{name: a, hosts: 1}]\n",
            f"{SOURCE}:3 targets.pattern: template expressions are not allowed",
        ),
        (
            "name: x\n'{{ k }}': 1\nstages: [{name: a, hosts: 1}]\n",
            f"{SOURCE}:2 {{{{ k }}}}: template expressions are not allowed",
        ),
        (
            THREE_STAGES.format(parallel=0),
            f"{SOURCE}:9 stages[2].parallel: must be at least 1",
        ),
        (
            THREE_STAGES.format(parallel="'0%'"),
            f"{SOURCE}:9 stages[2].parallel: percentage '0%' must be above 0%",
        ),
        (
            THREE_STAGES.format(parallel="rest"),
            f"{SOURCE}:9 stages[2].parallel: must be a batch size",
        ),
        (
            "name: x\nstages:\n  - name: a\n    hosts: 0\n",
            f"{SOURCE}:4 stages[0].hosts: must be at least 1",
        ),
        (
            "name: x\nstages:\n  - name: a\n    hosts: 150%\n",
            f"{SOURCE}:4 stages[0].hosts: percentage '150%' must be above 0% and at most 100%",
        ),
        (
            "name: x\nstages:\n  - name: a\n    hosts: true\n",
            f"{SOURCE}:4 stages[0].hosts: must be a host count",
        ),
        (
            "name: x\nstages:\n  - name: a\n    hosts: 1\n    soak: 10 minutes\n",
            f"{SOURCE}:5 stages[0].soak: invalid duration '10 minutes'",
        ),
        (
            "name: x\nstages:\n  - name: a\n    hosts: 1\n    soak: 1:30\n",
            f"{SOURCE}:5 stages[0].soak: '1:30' reads as a base-60 number in YAML",
        ),
        (
            "name: x\nstages:\n  - name: a\n    hosts: 1\n    timeout: 0s\n",
            f"{SOURCE}:5 stages[0].timeout: must be at least 1s",
        ),
        (
            "name: x\nstages:\n  - name: a\n    hosts: 1\n    health:\n"
            "      - {check: http, params: {url: 'http://a/'}}\n"
            "      - {check: http, params: {url: 'http://b/'}}\n",
            f"{SOURCE}:5 stages[0].health: health[1] and health[0] are both 'http': give each"
            " an `id`",
        ),
        (
            "name: x\nstages:\n  - name: a\n    hosts: 1\n    health:\n"
            "      - {check: load, thresholds: {load1: {max: 1}}}\n",
            f"{SOURCE}:6 stages[0].health[0]: check 'load' measures no 'load1'",
        ),
        (
            "name: x\nstages:\n  - name: a\n    hosts: 1\n    paralel: 2\n",
            f"{SOURCE}:5 stages[0].paralel: unknown field",
        ),
        ("name: x\nstages:\n  - name: a\n", f"{SOURCE}:3 stages[0].hosts: is required"),
        ("stages: [{name: a, hosts: 1}]\n", f"{SOURCE}:1 name: is required"),
        ("name: x\nstages: []\n", f"{SOURCE}:2 stages: Tuple should have at least 1 item"),
        ("name: x y\nstages: [{name: a, hosts: 1}]\n", f"{SOURCE}:1 name: invalid name 'x y'"),
        (
            "name: x\nname: y\nstages: [{name: a, hosts: 1}]\n",
            f"{SOURCE}:2 name: duplicate key 'name'",
        ),
        (
            "name: x\ndescription: 2026-01-01\nstages: [{name: a, hosts: 1}]\n",
            f"{SOURCE}:2 description: '2026-01-01' reads as a date in YAML",
        ),
        (
            "name: x\nreboot: yes\nstages: [{name: a, hosts: 1}]\n",
            f"{SOURCE}:2 reboot: Input should be 'never', 'if_needed' or 'always'",
        ),
        (
            "name: x\nstages:\n  - {name: a, hosts: 1, on_failure: explode}\n",
            f"{SOURCE}:3 stages[0].on_failure: Input should be",
        ),
        (
            "name: x\nstages:\n  - {name: a, hosts: 1, approval: 'no'}\n",
            f"{SOURCE}:3 stages[0].approval: Input should be a valid boolean",
        ),
        (
            "name: x\nselect: {max_probability: 1.5}\nstages: [{name: a, hosts: 1}]\n",
            f"{SOURCE}:2 select.max_probability: Input should be less than or equal to 1",
        ),
        (
            "name: x\nselect: {max_risk: extreme}\nstages: [{name: a, hosts: 1}]\n",
            f"{SOURCE}:2 select.max_risk: Input should be 'low', 'medium' or 'high'",
        ),
        (
            "name: x\nselect: {held: ignore}\nstages: [{name: a, hosts: 1}]\n",
            f"{SOURCE}:2 select.held: Input should be 'respect'",
        ),
        (
            "name: x\nfailure_budget: {hosts: 1, percent: 5}\nstages: [{name: a, hosts: 1}]\n",
            f"{SOURCE}:2 failure_budget: give either hosts or percent, not both",
        ),
        (
            "name: x\nfailure_budget:\n  hosts: -1\nstages: [{name: a, hosts: 1}]\n",
            f"{SOURCE}:3 failure_budget.hosts: Input should be greater than or equal to 0",
        ),
        (
            "name: x\nwindow: {cron: '0 2 * * 6', duration: 4h, timezone: Mars/Base}\n"
            "stages: [{name: a, hosts: 1}]\n",
            f"{SOURCE}:2 window.timezone: unknown time zone 'Mars/Base'",
        ),
        (
            "name: x\nwindow:\n  cron: '0 25 * * 6'\n  duration: 4h\n" + ONE,
            f"{SOURCE}:3 window.cron: invalid cron expression '0 25 * * 6'",
        ),
        (
            "name: x\nwindow:\n  cron: '0 0 2 * * 6'\n  duration: 4h\n" + ONE,
            f"{SOURCE}:3 window.cron: invalid cron expression '0 0 2 * * 6': give 5 fields",
        ),
        (
            "name: x\nwindow: {cron: '0 2 * * 6'}\nstages: [{name: a, hosts: 1}]\n",
            f"{SOURCE}:2 window.duration: is required",
        ),
        (
            "name: x\ntargets:\n  facts: {distribution_release: 3.5}\n" + ONE,
            f"{SOURCE}:3 targets.facts.distribution_release: fact values are strings",
        ),
        (
            "name: x\ntargets:\n  pattern: '--limit all'\nstages: [{name: a, hosts: 1}]\n",
            f"{SOURCE}:3 targets.pattern: invalid host pattern",
        ),
        (
            "name: x\nstages:\n  - name: a\n    hosts: 1\n    health:\n      - check: ping\n",
            f"{SOURCE}:6 stages[0].health[0].check: unknown health check 'ping'",
        ),
        ("- name: x\n", f"{SOURCE}:1: a plan is a mapping of fields"),
        ("name: x\n  stages: [\n", f"{SOURCE}:2: not valid YAML"),
        ("", f"{SOURCE}: plan is empty"),
    ],
)
def test_rejected(text: str, expected: str) -> None:
    assert reject(text).message.startswith(expected)


def test_alias_bomb_rejected() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    text = "name: x\n" + "\n".join(lines) + "\nstages: [{name: a, hosts: 1}]\n"
    assert "plan is too large" in reject(text).message


def test_recursive_alias_rejected() -> None:
    assert "recursive YAML alias" in reject("name: x\nloop: &l [*l]\nstages: []\n").message


def test_anchors_for_shared_health_checks() -> None:
    spec = parse_plan(
        "name: x\nstages:\n"
        "  - {name: a, hosts: 1, health: &c [{check: ssh, critical: true}]}\n"
        "  - {name: b, hosts: rest, health: *c}\n"
    )
    assert spec.stages[0].health == spec.stages[1].health


# --- stage ordering --------------------------------------------------------------------------


ORDERED = """\
name: ordered
stages:
{stages}
"""


def stages(*rows: str) -> str:
    return ORDERED.format(stages="\n".join(f"  - {r}" for r in rows))


@pytest.mark.parametrize(
    "rows",
    [
        (
            "{name: web-canary, group: web, hosts: 1}",
            "{name: web-rest, group: web, hosts: rest, after: [web-canary]}",
            "{name: db, group: db, hosts: rest, after: [web-rest]}",
        ),
        (
            "{name: a, hosts: 1}",
            "{name: b, hosts: 1, after: [a]}",
            "{name: c, hosts: rest, after: [a, b]}",
        ),
        ("{name: a, hosts: 1}", "{name: b, hosts: rest}"),
    ],
)
def test_after_accepted(rows: tuple[str, ...]) -> None:
    spec = parse_plan(stages(*rows))
    index = {s.name: i for i, s in enumerate(spec.stages)}
    for i, stage in enumerate(spec.stages):
        assert all(index[name] < i for name in stage.after)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (
            ("{name: a, hosts: 1, after: [b]}", "{name: b, hosts: rest, after: [a]}"),
            f"{SOURCE}:3 stages[0].after: stages wait for each other in a cycle: a -> b -> a",
        ),
        (
            ("{name: a, hosts: 1, after: [a]}",),
            f"{SOURCE}:3 stages[0].after: stages wait for each other in a cycle: a -> a",
        ),
        (
            (
                "{name: a, hosts: 1}",
                "{name: b, hosts: 1, after: [c]}",
                "{name: c, hosts: 1, after: [d]}",
                "{name: d, hosts: rest, after: [b]}",
            ),
            "cycle: b -> c -> d -> b",
        ),
        (
            ("{name: a, hosts: 1}", "{name: b, hosts: rest, after: [a, web]}"),
            f"{SOURCE}:4 stages[1].after[1]: unknown stage 'web'",
        ),
        (
            ("{name: a, hosts: 1, after: [b]}", "{name: b, hosts: rest}"),
            f"{SOURCE}:3 stages[0].after[0]: stage 'b' comes later in the plan (stages[1])",
        ),
        (
            ("{name: a, hosts: 1}", "{name: a, hosts: rest}"),
            f"{SOURCE}:4 stages[1].name: duplicate stage name 'a' (also stages[0])",
        ),
        (
            ("{name: a, hosts: 1}", "{name: b, hosts: 1, validation: true}"),
            f"{SOURCE}:4 stages[1].validation: only the first stage can be the validation stage",
        ),
    ],
)
def test_after_rejected(rows: tuple[str, ...], expected: str) -> None:
    assert expected in reject(stages(*rows)).message


def test_stage_group_must_be_targeted() -> None:
    text = "name: x\ntargets: {groups: [web]}\nstages:\n  - {name: a, group: db, hosts: rest}\n"
    assert reject(text).message.startswith(
        f"{SOURCE}:4 stages[0].group: group 'db' is not in targets.groups"
    )


# --- files -----------------------------------------------------------------------------------


def test_load_plan_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(THREE_STAGES.format(parallel=0))
    with pytest.raises(BadInputError) as info:
        load_plan(path)
    assert info.value.message.startswith(f"{path}:9 stages[2].parallel: must be at least 1")


def test_load_plan_missing_and_binary(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="cannot read plan"):
        load_plan(tmp_path / "nope.yml")
    path = tmp_path / "bin.yml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(BadInputError, match="not UTF-8"):
        load_plan(path)


def test_plan_from_dict_checks_templates() -> None:
    data = parse_plan(MINIMAL).model_dump(mode="json")
    data["stages"][0]["health"] = [{"check": "command", "params": {"cmd": "{{ x }}"}}]
    with pytest.raises(BadInputError) as info:
        plan_from_dict(data, "frozen.json spec")
    assert info.value.message == (
        "frozen.json spec stages[0].health[0].params.cmd:"
        " template expressions are not allowed in plans"
    )
