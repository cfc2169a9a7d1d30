#!/usr/bin/python
"""Ansible module: run patchpilot's health checks on a host and return numbers with units.

Runs on the managed host (Python 3.8+, standard library only). Checks never change the host.
The pure helpers are module-level so patchpilot's unit tests can import them.
"""

DOCUMENTATION = r"""
module: patchpilot_health
short_description: Measure a host's health for patchpilot's gates
description:
  - Runs each requested check and returns its metrics as numbers with units, several samples
    where a metric is a distribution (HTTP latency). A check that cannot measure returns an
    error for its metrics instead of failing the task, so one broken check does not hide the
    others.
options:
  checks:
    description: List of {id, check, params}. Checks are ssh, systemd_units, failed_units,
      http, tcp, command, journal_errors, load, memory, disk, kernel.
    type: list
    elements: dict
    required: true
  since:
    description: Epoch seconds; journal_errors counts lines at priority err or worse from then.
    type: float
"""

import contextlib
import os
import re
import shlex
import socket
import subprocess
import time
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

HIGHER = "higher_is_worse"
LOWER = "lower_is_worse"
MAX_LINES = 5


def metric(name, unit, samples, direction=HIGHER, error=None, lines=None):
    return {
        "metric": name,
        "unit": unit,
        "samples": [float(s) for s in samples],
        "direction": direction,
        "error": error,
        "lines": list(lines or [])[:MAX_LINES],
    }


def run(argv, timeout=30):
    env = dict(os.environ, LC_ALL="C", SYSTEMD_PAGER="", PAGER="cat")
    p = subprocess.run(argv, capture_output=True, timeout=timeout, env=env)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


# ---- pure helpers (unit-tested) ---------------------------------------------------------
def parse_loadavg(text, cpus):
    return float(text.split()[0]) / max(1, cpus)


def parse_meminfo(text):
    """MemAvailable as a percentage of MemTotal."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            values[key] = float(parts[0])
    return 100.0 * values["MemAvailable"] / values["MemTotal"]


def parse_failed_units(text):
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def kernel_version_key(version):
    """Sort key for kernel release strings such as 6.1.0-28-amd64."""
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\-+~]", version)]


def newest_installed_kernel(names):
    versions = [n[len("vmlinuz-") :] for n in names if n.startswith("vmlinuz-")]
    return max(versions, key=kernel_version_key) if versions else None


# ---- checks -----------------------------------------------------------------------------
def check_ssh(params, since):
    # The module runs, so the host answered over SSH; the controller maps unreachable hosts.
    return [metric("reachable", "bool", [1], LOWER)]


def check_systemd_units(params, since):
    units = params.get("units") or []
    inactive, restarts, lines = 0, 0, []
    for unit in units:
        _rc, out, _ = run(["systemctl", "is-active", unit])
        state = out.strip() or "unknown"
        if state != "active":
            inactive += 1
            lines.append(f"{unit} is {state}")
        _rc, out, _ = run(["systemctl", "show", "-p", "NRestarts", "--value", unit])
        with contextlib.suppress(ValueError):
            restarts += int(out.strip() or 0)
    return [
        metric("inactive_units", "count", [inactive], lines=lines),
        metric("restarts", "count", [restarts]),
    ]


def check_failed_units(params, since):
    rc, out, err = run(["systemctl", "list-units", "--state=failed", "--plain", "--no-legend"])
    if rc not in (0, 1):
        return [metric("failed_units", "count", [], error=err.strip() or "systemctl failed")]
    failed = parse_failed_units(out)
    return [metric("failed_units", "count", [len(failed)], lines=failed)]


def check_http(params, since):
    url = params["url"]
    samples = int(params.get("samples", 20))
    timeout = float(params.get("timeout", 5))
    interval = float(params.get("interval", 0.05))
    expect = params.get("expect_status", [200])
    if not isinstance(expect, list):
        expect = [expect]
    expect = [int(e) for e in expect]
    latencies, bad, lines = [], 0, []
    for i in range(samples):
        t0 = time.time()
        status = None
        try:
            resp = urlopen(
                Request(url, headers={"User-Agent": "patchpilot-health"}), timeout=timeout
            )
            status = resp.getcode()
            resp.read(65536)
        except HTTPError as exc:
            status = exc.code
        except (URLError, socket.timeout, OSError) as exc:
            lines.append("{}: {}".format(url, getattr(exc, "reason", exc)))
        elapsed = (time.time() - t0) * 1000.0
        if status is not None:
            latencies.append(elapsed)
        if status not in expect:
            bad += 1
            if status is not None:
                lines.append(f"{url} answered {status}")
        if i + 1 < samples and interval > 0:
            time.sleep(interval)
    return [
        metric("error_rate", "%", [100.0 * bad / max(1, samples)], lines=lines),
        metric("latency_ms", "ms", latencies, error=None if latencies else f"no answer from {url}"),
    ]


def check_tcp(params, since):
    host = params.get("host", "127.0.0.1")
    port = int(params["port"])
    timeout = float(params.get("timeout", 3))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return [metric("open", "bool", [1], LOWER)]
    except OSError as exc:
        return [metric("open", "bool", [0], LOWER, lines=[f"{host}:{int(port)}: {exc}"])]


def check_command(params, since):
    argv = params["argv"] if "argv" in params else shlex.split(params["cmd"])
    expect_rc = int(params.get("expect_rc", 0))
    pattern = params.get("expect_output")
    try:
        rc, out, err = run(argv, timeout=float(params.get("timeout", 30)))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [metric("ok", "bool", [0], LOWER, lines=[str(exc)])]
    ok = rc == expect_rc and (not pattern or re.search(pattern, out) is not None)
    tail = (out + err).strip().splitlines()[-MAX_LINES:]
    return [
        metric(
            "ok",
            "bool",
            [1 if ok else 0],
            LOWER,
            lines=[] if ok else [f"exit {rc} (expected {int(expect_rc)})", *tail],
        )
    ]


def check_journal_errors(params, since):
    argv = ["journalctl", "-p", "err", "-o", "short-iso", "--no-pager", "-q"]
    if since:
        argv += ["--since", f"@{int(since)}"]
    else:
        argv += ["--since", f"-{int(params.get('window', 300))}s"]
    rc, out, err = run(argv)
    if rc != 0:
        return [metric("journal_errors", "count", [], error=err.strip() or "journalctl failed")]
    lines = [line for line in out.splitlines() if line.strip()]
    return [metric("journal_errors", "count", [len(lines)], lines=lines[-MAX_LINES:])]


def check_load(params, since):
    with open("/proc/loadavg") as fh:
        return [metric("load_per_cpu", "ratio", [parse_loadavg(fh.read(), os.cpu_count() or 1)])]


def check_memory(params, since):
    with open("/proc/meminfo") as fh:
        return [metric("memory_available", "%", [parse_meminfo(fh.read())], LOWER)]


def check_disk(params, since):
    path = params.get("path", "/")
    st = os.statvfs(path)
    free = 100.0 * st.f_bavail / max(1, st.f_blocks)
    return [metric("disk_free", "%", [free], LOWER)]


def check_kernel(params, since):
    running = os.uname()[2]
    expected = params.get("expect") or newest_installed_kernel(os.listdir("/boot"))
    if expected is None:  # no kernel image on this host (containers): nothing to expect
        return [metric("kernel_expected", "bool", [1], LOWER, lines=[f"running {running}"])]
    ok = running == expected
    return [
        metric(
            "kernel_expected",
            "bool",
            [1 if ok else 0],
            LOWER,
            lines=[] if ok else [f"running {running}, expected {expected}"],
        )
    ]


CHECKS = {
    "ssh": check_ssh,
    "systemd_units": check_systemd_units,
    "failed_units": check_failed_units,
    "http": check_http,
    "tcp": check_tcp,
    "command": check_command,
    "journal_errors": check_journal_errors,
    "load": check_load,
    "memory": check_memory,
    "disk": check_disk,
    "kernel": check_kernel,
}


def run_checks(checks, since):
    results = []
    for item in checks:
        name = item["check"]
        fn = CHECKS.get(name)
        try:
            if fn is None:
                raise ValueError(f"unknown check {name!r}")
            metrics = fn(item.get("params") or {}, since)
        except Exception as exc:  # one broken check must not hide the others
            metrics = [metric("error", "bool", [], error=f"{type(exc).__name__}: {exc}")]
        results.append({"id": item.get("id", name), "check": name, "metrics": metrics})
    return results


def main():
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "checks": {"type": "list", "elements": "dict", "required": True},
            "since": {"type": "float", "required": False, "default": None},
        },
        supports_check_mode=True,
    )
    t0 = time.time()
    results = run_checks(module.params["checks"], module.params["since"])
    with open("/proc/sys/kernel/random/boot_id") as fh:
        boot_id = fh.read().strip()
    module.exit_json(
        changed=False,
        checks=results,
        boot_id=boot_id,
        measured_at=time.time(),
        duration=time.time() - t0,
    )


if __name__ == "__main__":
    main()
