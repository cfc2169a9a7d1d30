"""The lab's apt repository: a flat repo (pool/, Packages, Release) served over HTTP on the
bridge address, the only package source the lab hosts have."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from patchpilot.errors import BadInputError, LabError
from patchpilot.lab.system import run

log = logging.getLogger(__name__)

SERVER_MARKER = "http.server"


@dataclass(frozen=True)
class DebInfo:
    package: str
    version: str
    arch: str

    @property
    def filename(self) -> str:
        # The epoch is dropped from file names, as Debian's own pool does.
        upstream = self.version.split(":", 1)[-1]
        return f"{self.package}_{upstream}_{self.arch}.deb"


def read_deb(path: Path) -> DebInfo:
    if not path.is_file():
        raise BadInputError(f"no such package file: {path}", hint="give paths to .deb files")
    proc = run(
        ["dpkg-deb", "--field", str(path), "Package", "Version", "Architecture"],
        check=False,
        what=f"reading {path}",
    )
    fields = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    if proc.returncode != 0 or not {"Package", "Version", "Architecture"} <= fields.keys():
        raise BadInputError(
            f"{path} is not a valid .deb package", hint="build it with dpkg-deb --build"
        )
    return DebInfo(fields["Package"], fields["Version"], fields["Architecture"])


def pool(repo: Path) -> Path:
    return repo / "pool"


def add_packages(repo: Path, debs: list[Path]) -> list[DebInfo]:
    """Copy packages into the pool (replacing a file of the same name) and re-index."""
    infos = [read_deb(p) for p in debs]  # validate all before copying any
    pool(repo).mkdir(parents=True, exist_ok=True)
    for path, info in zip(debs, infos, strict=True):
        dest = pool(repo) / info.filename
        if path.resolve() != dest.resolve():
            shutil.copyfile(path, dest.with_suffix(".tmp"))
            os.replace(dest.with_suffix(".tmp"), dest)
    index(repo)
    return infos


def index(repo: Path) -> None:
    """Write Packages, Packages.gz and Release; `-m` keeps every version of a package."""
    pool(repo).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["dpkg-scanpackages", "-m", "pool", "/dev/null"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if proc.returncode != 0:
        raise LabError(f"indexing the lab repo failed: {proc.stderr.strip()[-300:]}")
    packages = proc.stdout.encode()
    _write_atomic(repo / "Packages", packages)
    _write_atomic(repo / "Packages.gz", gzip.compress(packages, mtime=0))
    lines = [
        "Origin: patchpilot-lab",
        "Label: patchpilot-lab",
        "Suite: lab",
        "Codename: lab",
        f"Date: {formatdate(time.time(), usegmt=True)}",
        "SHA256:",
    ]
    for name in ("Packages", "Packages.gz"):
        data = (repo / name).read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}")
    _write_atomic(repo / "Release", ("\n".join(lines) + "\n").encode())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def packages_in(repo: Path) -> list[DebInfo]:
    text = (repo / "Packages").read_text() if (repo / "Packages").exists() else ""
    out: list[DebInfo] = []
    for stanza in text.split("\n\n"):
        fields = dict(
            ln.split(": ", 1) for ln in stanza.splitlines() if ": " in ln and not ln.startswith(" ")
        )
        if "Package" in fields:
            out.append(
                DebInfo(fields["Package"], fields["Version"], fields.get("Architecture", ""))
            )
    return out


def start_server(repo: Path, address: str, port: int, log_path: Path) -> int:
    """Serve the repo detached from this process; returns its pid."""
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                SERVER_MARKER,
                "--bind",
                address,
                "--directory",
                str(repo),
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            start_new_session=True,
        )
    _wait_for_port(address, port, proc)
    return proc.pid


def _wait_for_port(
    address: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 10
) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(
                f"the lab repo server exited at once (port {port} on {address} in use?)",
                hint="set another lab_repo_port or run `patchpilot lab down` first",
            )
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise LabError(f"the lab repo server did not listen on {address}:{port} within {timeout:.0f}s")
