"""patchpilot's overhead over plain Ansible, and how fast it reacts, on the lab fleet.

1. The same waves (one canary host, then the rest in two batches) patched by `patchpilot
   apply` with health checks off, and by plain `ansible-playbook` with the equivalent
   `serial: [1, N, M]`, each from the same starting point (demoweb 1.0-1 -> 1.1-1), in
   alternating rounds. Prints each round and the ratio of the medians (goal: at most 1.15).
2. A broken version (1.2-1, HTTP 500) with the lab demo plan's health checks: prints the
   time from the end of the canary batch's patch to its verdict, and from the failing
   verdict to the start of the rollback (goal under 5 s).

Needs root and a running lab (`patchpilot lab up --hosts 8` first, or --up to boot one).

    .venv/bin/python bench/overhead.py [--inventory inventory/lab.yml] [--up] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def pp(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "patchpilot", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode not in (0, 1):
        raise SystemExit(f"patchpilot {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inventory", type=Path, default=ROOT / "inventory" / "lab.yml")
    parser.add_argument("--up", action="store_true", help="boot an 8-host lab first")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    args = parser.parse_args()
    if args.up:
        pp("lab", "up", "--hosts", "8", "-i", str(args.inventory))
    inv = str(args.inventory)
    hosts = sorted(
        h
        for g in yaml.safe_load(args.inventory.read_text())["all"]["children"].values()
        for h in g["hosts"]
    )
    n = len(hosts)
    rest = n - 1
    serial = [1, (rest + 1) // 2, rest // 2]
    tmp = Path(tempfile.mkdtemp(prefix="pp-bench-"))
    db = str(tmp / "pp.db")
    plan = yaml.safe_load((ROOT / "plans" / "lab-demo.yml").read_text())
    plan["name"] = "bench"
    for st in plan["stages"]:
        st["health"] = []
        st["soak"] = "0s"
    plan["stages"][0]["parallel"] = 1
    plan_path = tmp / "bench.yml"
    plan_path.write_text(yaml.safe_dump(plan))

    # 1a. patchpilot apply of the frozen plan (planned beforehand, as the playbook is written
    # beforehand), health checks off.
    pp("lab", "demo", "--offer", "1.1-1", "--install", "1.0-1")
    pp("--db", db, "inventory", "gather", "-i", inv, "--no-refresh")
    frozen = tmp / "bench.json"
    pp("--db", db, "plan", str(plan_path), "-i", inv, "--out", str(frozen))

    # 1b. plain ansible-playbook with the same serial batches.
    book = tmp / "plain.yml"
    book.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "plain serial patch",
                    "hosts": "all",
                    "gather_facts": False,
                    "serial": serial,
                    "tasks": [
                        {
                            "name": "install",
                            "ansible.builtin.apt": {
                                "name": ["demoweb=1.1-1"],
                                "state": "present",
                                "lock_timeout": 120,
                            },
                        }
                    ],
                }
            ]
        )
    )
    # The same Ansible settings patchpilot's executor uses (SSH multiplexing, pipelining).
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_PIPELINING="True")
    env.setdefault(
        "ANSIBLE_SSH_ARGS",
        "-C -o ControlMaster=auto -o ControlPersist=60s -o ServerAliveInterval=5 "
        "-o ServerAliveCountMax=3",
    )

    # Alternating rounds, each from the same starting point, so load on the machine hits
    # both sides alike; the medians are compared.
    t_pps: list[float] = []
    t_anss: list[float] = []
    for i in range(args.rounds):
        pp("lab", "demo", "--offer", "1.1-1", "--install", "1.0-1")
        t0 = time.perf_counter()
        proc = pp("--db", db, "apply", str(frozen), "-i", inv, "--yes")
        t_pps.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"apply failed:\n{proc.stderr}")
        pp("lab", "demo", "--offer", "1.1-1", "--install", "1.0-1")
        t0 = time.perf_counter()
        subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", inv, str(book)],
            check=True,
            capture_output=True,
            env=env,
        )
        t_anss.append(time.perf_counter() - t0)
        print(
            f"  round {i + 1}: patchpilot apply {t_pps[-1]:.1f} s, ansible-playbook "
            f"{t_anss[-1]:.1f} s, ratio {t_pps[-1] / t_anss[-1]:.2f}"
        )
    t_pp, t_ans = statistics.median(t_pps), statistics.median(t_anss)
    print(
        f"waves {serial} on {n} hosts, health checks off, median of {args.rounds} rounds: "
        f"patchpilot apply {t_pp:.1f} s, ansible-playbook serial {t_ans:.1f} s, "
        f"ratio {t_pp / t_ans:.2f} (goal <= 1.15)"
    )

    # 2. A failing verdict and the rollback it starts.
    pp("lab", "demo", "--offer", "1.2-1", "--install", "1.1-1")
    pp("--db", db, "inventory", "gather", "-i", inv, "--no-refresh")
    proc = pp("--db", db, "apply", str(ROOT / "plans" / "lab-demo.yml"), "-i", inv, "--yes")
    runs = json.loads(pp("--db", db, "runs", "list", "--json").stdout)
    run = json.loads(pp("--db", db, "runs", "show", runs[0]["id"], "--json").stdout)

    def at(text: str) -> datetime:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")

    steps = run["timeline"]
    patch = next(s for s in steps if s["step"] == "patch")
    health = next(s for s in steps if s["step"] == "health")
    rollback = next(s for s in steps if s["step"] == "rollback")
    verdict_at = at(run["verdicts"][0]["at"])
    print(
        f"broken canary (exit {proc.returncode}): batch end to verdict "
        f"{(verdict_at - at(patch['finished'])).total_seconds():.0f} s (the plan's 3 s soak and "
        f"{health['detail'].get('seconds', 0):.1f} s of health checks included); failing "
        f"verdict to rollback "
        f"start {(at(rollback['at']) - verdict_at).total_seconds():.0f} s (goal < 5 s)"
    )
    pp("lab", "demo")


if __name__ == "__main__":
    main()
