"""Ingest of 10,000 hosts' facts into SQLite, one transaction per host as `inventory gather`
does. The facts are a real lab host's gather results (tests/fixtures), replicated with varied
host names. Goal: under 60 s and under 1 GB peak memory.

    .venv/bin/python bench/ingest.py [--hosts 10000] [--db PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import tempfile
import time
from pathlib import Path

from sqlalchemy import func
from sqlmodel import select

from patchpilot.inventory import ingest_host, normalize_host
from patchpilot.settings import db_url
from patchpilot.store.db import open_store, session_scope
from patchpilot.store.models import InstalledPackage, PendingUpdate

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "lab_host_results.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    db = args.db or Path(tempfile.mkdtemp()) / "ingest.db"
    results = json.loads(FIXTURE.read_text())
    engine = open_store(db_url(str(db)))
    template = normalize_host("template", results)
    started = time.monotonic()
    for i in range(args.hosts):
        facts = copy.copy(template)
        facts.name = f"host{i:05d}.example.net"
        facts.address = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        facts.groups = ["web" if i % 3 else "db", f"dc{i % 4}"]
        with session_scope(engine) as s:
            ingest_host(s, facts)
    elapsed = time.monotonic() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with session_scope(engine) as s:
        packages = s.exec(select(func.count()).select_from(InstalledPackage)).one()
        updates = s.exec(select(func.count()).select_from(PendingUpdate)).one()
    size_mib = sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 2**20
    print(f"hosts ingested:     {args.hosts}")
    print(f"rows:               {packages} packages, {updates} pending updates")
    print(f"wall time:          {elapsed:.1f} s ({args.hosts / elapsed:.0f} hosts/s)")
    print(f"peak memory (RSS):  {peak_mib:.0f} MiB")
    print(f"database size:      {size_mib:.0f} MiB ({db})")


if __name__ == "__main__":
    main()
