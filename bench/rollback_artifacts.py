"""Time and disk to make the rollback artifacts of every pending real Debian update on one
lab host, the way the preflight does when no repository keeps the installed versions:
each installed package rebuilt into a .deb by patchpilot_patch's own rebuild (the host has
no dpkg-repack). Prints the packages, their installed size, the seconds and the bytes the
.debs take; nothing is installed and the scratch folder is removed afterwards.

Needs root and a lab started with Debian updates (`patchpilot lab up --with-debian-updates`,
or --up to boot a one-host one).

    .venv/bin/python bench/rollback_artifacts.py [--inventory INV] [--host web01] [--up]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODULE = ROOT / "playbooks" / "library" / "patchpilot_patch.py"
SCRATCH = "/var/cache/patchpilot/bench-artifacts"

# Runs on the host with its python3: every upgradable package rebuilt, timed as a whole.
ON_HOST = r"""
import json, os, shutil, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
import patchpilot_patch as m
out = os.path.join(sys.argv[1], "out")
os.makedirs(out, 0o700, exist_ok=True)
lines = subprocess.run(["apt", "list", "--upgradable"], capture_output=True, text=True).stdout
names = sorted({ln.split("/")[0] for ln in lines.splitlines() if "/" in ln})
pkgs = []
for name in names:
    v, arch, size = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version} ${Architecture} ${Installed-Size}", name],
        capture_output=True, text=True).stdout.split()
    pkgs.append((name, v, arch, int(size)))
t0 = time.monotonic()
for name, v, arch, _ in pkgs:
    m.repack(name, v, arch, os.path.join(out, m.deb_filename(name, v, arch)), out)
seconds = time.monotonic() - t0
size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
print(json.dumps({"packages": len(pkgs), "installed_kib": sum(p[3] for p in pkgs),
                  "seconds": round(seconds, 2), "bytes": size,
                  "largest": sorted(((os.path.getsize(os.path.join(out, f)), f)
                                     for f in os.listdir(out)), reverse=True)[:3]}))
shutil.rmtree(sys.argv[1])
"""


def ansible(inventory: Path, host: str, module: str, args: str) -> str:
    proc = subprocess.run(
        [str(BIN / "ansible"), "-i", str(inventory), host, "-m", module, "-a", args, "-o"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"ansible {module} on {host} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inventory", type=Path, default=ROOT / "inventory" / "lab.yml")
    parser.add_argument("--host", default=None, help="default: the inventory's first host")
    parser.add_argument("--up", action="store_true", help="boot a one-host lab first")
    args = parser.parse_args()
    if args.up:
        subprocess.run(
            [sys.executable, "-m", "patchpilot", "lab", "up", "--hosts", "1",
             "--with-debian-updates", "-i", str(args.inventory)],
            check=True,
        )  # fmt: skip
    data = yaml.safe_load(args.inventory.read_text())
    names = [h for g in data["all"]["children"].values() for h in g["hosts"]]
    host = args.host or names[0]
    if host not in names:
        raise SystemExit(f"{host} is not in {args.inventory} (its hosts: {', '.join(names)})")
    ansible(
        args.inventory, host, "ansible.builtin.file", f"path={SCRATCH} state=directory mode=0700"
    )
    ansible(args.inventory, host, "ansible.builtin.copy", f"src={MODULE} dest={SCRATCH}/")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "bench.py"
        local.write_text(ON_HOST)
        ansible(args.inventory, host, "ansible.builtin.copy", f"src={local} dest={SCRATCH}/")
    out = ansible(
        args.inventory, host, "ansible.builtin.command", f"python3 {SCRATCH}/bench.py {SCRATCH}"
    )
    result = json.loads(out[out.index("{") : out.rindex("}") + 1])
    mb = result["bytes"] / 1e6
    print(f"host {host}: {result['packages']} pending real Debian updates")
    print(f"installed size of the current versions: {result['installed_kib'] / 1024:.1f} MiB")
    print(f"rebuild time (all): {result['seconds']:.1f} s")
    print(f"disk for the artifacts: {mb:.1f} MB")
    for size, name in result["largest"]:
        print(f"  {name}: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
