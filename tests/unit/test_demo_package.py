"""The demo .debs must be real packages: the lab's patches are only as honest as these."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from debian.changelog import Changelog
from debian.debian_support import Version

from patchpilot.errors import BadInputError
from patchpilot.lab.demo import (
    DEFAULT_DEMO_VERSIONS,
    DEMO_PACKAGE,
    DEMO_PORT,
    Behaviour,
    DemoVersion,
    build_demo_deb,
    parse_demo_spec,
)

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")

SLOW = DemoVersion("1.5-1", Behaviour.SLOW, latency_ms=300)
ALL_VERSIONS = [*DEFAULT_DEMO_VERSIONS, SLOW]
SERVER = f"./usr/lib/{DEMO_PACKAGE}/server.py"
UNIT = f"./lib/systemd/system/{DEMO_PACKAGE}.service"
CHANGELOG = f"./usr/share/doc/{DEMO_PACKAGE}/changelog.Debian.gz"


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build every version once; dpkg-deb is the slow part of this module."""
    outdir = tmp_path_factory.mktemp("debs") / "repo"  # missing on purpose: must be created
    return {demo.version: build_demo_deb(demo, outdir) for demo in ALL_VERSIONS}


def dpkg_deb(*args: str) -> str:
    return subprocess.run(
        ["dpkg-deb", *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def member(deb: Path, name: str) -> bytes:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(data.stdout)) as tar:
        extracted = tar.extractfile(name)
        assert extracted is not None, f"{name} is not a regular file in {deb.name}"
        return extracted.read()


def control_member(deb: Path, name: str) -> str:
    return dpkg_deb("--info", str(deb), name)


# --- package layout -------------------------------------------------------------------------


@pytest.mark.parametrize("demo", ALL_VERSIONS, ids=lambda d: f"{d.version}-{d.behaviour}")
def test_control_fields(debs: dict[str, Path], demo: DemoVersion) -> None:
    deb = debs[demo.version]
    assert deb.name == f"demoweb_{demo.version}_all.deb"
    assert dpkg_deb("--field", str(deb), "Package") == DEMO_PACKAGE
    assert dpkg_deb("--field", str(deb), "Version") == demo.version
    assert dpkg_deb("--field", str(deb), "Architecture") == "all"
    assert dpkg_deb("--field", str(deb), "Depends") == "python3"
    description = dpkg_deb("--field", str(deb), "Description")
    assert demo.behaviour.value in description.splitlines()[0]


@pytest.mark.parametrize("demo", ALL_VERSIONS, ids=lambda d: f"{d.version}-{d.behaviour}")
def test_contents_and_permissions(debs: dict[str, Path], demo: DemoVersion) -> None:
    listing = dpkg_deb("--contents", str(debs[demo.version]))
    entries = {line.split()[-1]: line.split()[:2] for line in listing.splitlines()}
    for path in (SERVER, UNIT, CHANGELOG):
        assert entries[path] == ["-rw-r--r--", "root/root"], path
    for path, (mode, owner) in entries.items():
        assert owner == "root/root", path
        if path.endswith("/"):
            assert mode == "drwxr-xr-x", path


@pytest.mark.parametrize("demo", ALL_VERSIONS, ids=lambda d: f"{d.version}-{d.behaviour}")
def test_changelog_is_valid_and_ends_at_this_version(
    debs: dict[str, Path], demo: DemoVersion
) -> None:
    text = gzip.decompress(member(debs[demo.version], CHANGELOG)).decode()
    changelog = Changelog(text, strict=True)
    blocks = list(changelog)
    assert str(blocks[0].version) == demo.version
    assert blocks[0].package == DEMO_PACKAGE
    assert blocks[0].distributions == "bookworm"
    assert demo.behaviour.value in "\n".join(blocks[0].changes())
    # Newest first, one entry per older default version plus this one.
    versions = [str(b.version) for b in blocks]
    this = Version(demo.version)
    older = [d.version for d in DEFAULT_DEMO_VERSIONS if Version(d.version) < this]
    assert versions == [demo.version, *reversed(older)]
    for block in blocks:
        assert block.urgency in {"low", "medium", "high"}


def test_changelog_of_ok_version_has_medium_urgency(debs: dict[str, Path]) -> None:
    text = gzip.decompress(member(debs["1.1-1"], CHANGELOG)).decode()
    assert text.splitlines()[0] == "demoweb (1.1-1) bookworm; urgency=medium"
    assert text.splitlines()[1] == ""
    assert text.splitlines()[2].startswith("  * ")
    assert " -- patchpilot lab <lab@patchpilot.invalid>  " in text


@pytest.mark.parametrize("demo", ALL_VERSIONS, ids=lambda d: f"{d.version}-{d.behaviour}")
def test_maintainer_scripts(debs: dict[str, Path], demo: DemoVersion) -> None:
    deb = debs[demo.version]
    postinst = control_member(deb, "postinst")
    if demo.behaviour is Behaviour.INSTALL_FAILS:
        assert "exit 1" in postinst
        assert "systemctl" not in postinst
    else:
        assert "systemctl restart demoweb.service" in postinst
    prerm = control_member(deb, "prerm")
    assert "systemctl stop demoweb.service || true" in prerm
    assert "upgrade" not in prerm
    postrm = control_member(deb, "postrm")
    assert "systemctl disable demoweb.service || true" in postrm
    assert "/etc/demoweb" in postrm
    for name, script in (("postinst", postinst), ("prerm", prerm), ("postrm", postrm)):
        assert script.startswith("#!/bin/sh\n"), name
        assert "\nset -e\n" in script, name
        subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    listing = subprocess.run(
        ["dpkg-deb", "--ctrl-tarfile", str(deb)], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(listing)) as tar:
        modes = {m.name.removeprefix("./"): m.mode for m in tar.getmembers()}
    assert modes["postinst"] == modes["prerm"] == modes["postrm"] == 0o755
    assert modes["control"] == 0o644


def _run_postinst(deb: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run postinst with a fake systemctl first on PATH, so nothing on this host changes."""
    script = tmp_path / "postinst"
    script.write_text(control_member(deb, "postinst") + "\n")
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    calls = tmp_path / "calls"
    fake = fakebin / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fakebin}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    proc = subprocess.run(
        ["sh", str(script), "configure", ""], env=env, capture_output=True, text=True
    )
    return proc, calls.read_text() if calls.exists() else ""


def test_postinst_of_ok_version_drives_systemctl(debs: dict[str, Path], tmp_path: Path) -> None:
    proc, calls = _run_postinst(debs["1.1-1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    if Path("/run/systemd/system").is_dir():
        assert calls.splitlines() == [
            "daemon-reload",
            "enable demoweb.service",
            "restart demoweb.service",
        ]
    else:
        # Not booted with systemd (a chroot, or this CI box): only the offline-safe enable.
        assert calls.splitlines() == ["enable demoweb.service"]


def test_postinst_of_install_fails_version_fails_loudly(
    debs: dict[str, Path], tmp_path: Path
) -> None:
    proc, calls = _run_postinst(debs["1.3-1"], tmp_path)
    assert proc.returncode == 1
    assert "demoweb 1.3-1: simulated configuration failure" in proc.stderr
    assert calls == ""


def test_postinst_of_install_hangs_version_sleeps_then_configures(tmp_path: Path) -> None:
    out = tmp_path / "debs"
    out.mkdir()
    deb = build_demo_deb(DemoVersion("1.7-1", Behaviour.INSTALL_HANGS, hang_s=1), out)
    t0 = time.monotonic()
    proc, calls = _run_postinst(deb, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 >= 1
    assert "enable demoweb.service" in calls  # configured as usual once the wait is over


def test_build_is_reproducible(debs: dict[str, Path], tmp_path: Path) -> None:
    again = build_demo_deb(DemoVersion("1.1-1"), tmp_path)
    assert again.read_bytes() == debs["1.1-1"].read_bytes()


def test_invalid_version_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    for bad in ("foo;rm -rf /", "-1.0", "1.0-", "../1.0", "1.0 1", "a1.0", ""):
        with pytest.raises(BadInputError):
            build_demo_deb(DemoVersion(bad), outdir)
    assert not outdir.exists()


def test_epoch_is_kept_out_of_the_file_name(tmp_path: Path) -> None:
    deb = build_demo_deb(DemoVersion("2:1.0-1"), tmp_path)
    assert deb.name == "demoweb_1.0-1_all.deb"
    assert dpkg_deb("--field", str(deb), "Version") == "2:1.0-1"


def test_demo_version_checks_latency() -> None:
    with pytest.raises(ValueError):
        DemoVersion("1.0-1", Behaviour.SLOW)
    with pytest.raises(ValueError):
        DemoVersion("1.0-1", Behaviour.OK, latency_ms=5)
    assert DemoVersion("1.0-1", "slow", 10).behaviour is Behaviour.SLOW  # type: ignore[arg-type]


# --- running the packaged server ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(url: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def serve(debs: dict[str, Path], tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Start packaged server.py files on loopback ports; always stop them afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(version: str) -> str:
        script = tmp_path / version / "server.py"
        script.parent.mkdir()
        script.write_bytes(member(debs[version], SERVER))
        port = free_port()
        env = {**os.environ, "DEMOWEB_PORT": str(port), "DEMOWEB_BIND": "127.0.0.1"}
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}/health"
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, f"server.py of {version} exited with {proc.returncode}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return url
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_servers_behave_as_packaged(serve: Callable[[str], str]) -> None:
    ok_url, broken_url, slow_url = serve("1.1-1"), serve("1.2-1"), serve(SLOW.version)

    status, body = fetch(ok_url)
    assert status == 200
    assert json.loads(body) == {"service": "demoweb", "version": "1.1-1", "status": "ok"}
    status, body = fetch(ok_url, method="HEAD")
    assert (status, body) == (200, b"")

    status, body = fetch(broken_url)
    assert status == 500
    doc = json.loads(body)
    assert doc["status"] == "error"
    assert doc["version"] == "1.2-1"

    started = time.monotonic()
    status, body = fetch(slow_url)
    elapsed_ms = (time.monotonic() - started) * 1000
    assert status == 200
    assert json.loads(body)["version"] == SLOW.version
    assert elapsed_ms >= SLOW.latency_ms


def test_server_defaults_to_the_demo_port(debs: dict[str, Path]) -> None:
    source = member(debs["1.0-1"], SERVER).decode()
    assert f"DEFAULT_PORT = {DEMO_PORT}" in source
    assert 'DEFAULT_BIND = "0.0.0.0"' in source
    compile(source, "server.py", "exec")


# --- parse_demo_spec ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1.4-1", DemoVersion("1.4-1")),
        ("1.4-1:ok", DemoVersion("1.4-1")),
        ("1.4-1:http500", DemoVersion("1.4-1", Behaviour.HTTP500)),
        ("1.4-1:install-fails", DemoVersion("1.4-1", Behaviour.INSTALL_FAILS)),
        ("1.5-1:slow=300", DemoVersion("1.5-1", Behaviour.SLOW, 300)),
        ("1:1.4-1", DemoVersion("1:1.4-1")),
        ("1:1.4-1:slow=5", DemoVersion("1:1.4-1", Behaviour.SLOW, 5)),
        ("1.7-1:install-hangs=30", DemoVersion("1.7-1", Behaviour.INSTALL_HANGS, hang_s=30)),
        ("2.0~rc1+lab1-1", DemoVersion("2.0~rc1+lab1-1")),
        ("  1.4-1  ", DemoVersion("1.4-1")),
    ],
)
def test_parse_demo_spec(spec: str, expected: DemoVersion) -> None:
    assert parse_demo_spec(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "   ",
        "1.0-1:weird",
        "1.0-1:slow",
        "1.0-1:slow=",
        "1.0-1:slow=0",
        "1.0-1:slow=-5",
        "1.0-1:slow=abc",
        "1.0-1:slow=99999999",
        "1.0-1:http500=3",
        "1.0-1:install-hangs",
        "1.0-1:install-hangs=0",
        "1.0-1:install-hangs=601",
        "1.0-1:install-hangs=1;reboot",
        "foo;rm -rf /",
        "-1.0",
        "1.0-1:",
        "1.0/../../x",
    ],
)
def test_parse_demo_spec_rejects(spec: str) -> None:
    with pytest.raises(BadInputError) as info:
        parse_demo_spec(spec)
    assert "\n" not in info.value.message
    assert info.value.hint
