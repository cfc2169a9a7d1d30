"""Time to boot the lab fleet from the cached base image, and the memory the hosts use.

Run as root: `.venv/bin/python bench/lab_boot.py [--sizes 8,32]`. It takes the lab over (it
runs `lab down` first and last). Goal: 32 hosts up, SSH answering, in under 15 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from patchpilot.lab import image
from patchpilot.lab.fleet import Lab, parse_fleet
from patchpilot.settings import load_settings


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="8,32", help="fleet sizes to boot, comma-separated")
    args = parser.parse_args()
    settings = load_settings()
    lab = Lab(settings, progress=lambda msg: None)
    lab.down()
    image.ensure_base_image(settings.lab_cache, "bookworm")  # build outside the timing
    inventory = Path(tempfile.mkdtemp()) / "lab.yml"
    header = ("hosts", "boot to ssh", "lab up total", "memory used", "per host")
    print(f"{header[0]:>5} {header[1]:>12} {header[2]:>13} {header[3]:>12} {header[4]:>9}")
    for size in (int(s) for s in args.sizes.split(",")):
        before = mem_available_kib()
        started = time.monotonic()
        result = lab.up(parse_fleet(size, None), inventory=inventory)
        total = time.monotonic() - started
        time.sleep(2)  # let first-boot services settle before reading memory
        used_mib = (before - mem_available_kib()) / 1024
        print(
            f"{size:>5} {result.timings['boot']:>11.1f}s {total:>12.1f}s "
            f"{used_mib:>9.0f} MiB {used_mib / size:>5.1f} MiB"
        )
        lab.down()


if __name__ == "__main__":
    main()
