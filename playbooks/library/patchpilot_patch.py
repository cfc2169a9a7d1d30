#!/usr/bin/python
"""Ansible module: patch one apt/dpkg host in one round trip.

1. Preflight: enough disk, dpkg not left interrupted, the apt/dpkg locks free (waited for),
   none of the packages held.
2. Snapshot: the exact versions installed before, persisted in the rollback directory before
   anything changes (the first snapshot for a given target is kept, so a run resumed after a
   crash still knows what the host had), and a .deb of each kept there for a rollback.
3. Install exactly the given versions with apt-get (never a newer one, never a downgrade,
   never a held package), waiting for the dpkg lock.
4. Read back the installed versions and whether the host asks for a reboot.

Runs on the managed host (Python 3.8+, standard library only). In check mode it runs the
preflight and asks apt-get to simulate the install; nothing changes.
"""

DOCUMENTATION = r"""
module: patchpilot_patch
short_description: Preflight, snapshot, rollback artifacts and exact-version install
description:
  - Patches one apt/dpkg host in one round trip - preflight (disk space, dpkg not left
    interrupted, locks free, nothing held), a snapshot of the versions installed before with
    a .deb of each kept for a rollback, an install of exactly the given versions (never a
    newer one, never a downgrade), and a read-back of the versions and of a pending reboot.
  - In check mode it runs the preflight and simulates the install.
author: patchpilot
options:
  install:
    description: Exact versions to install, as name=version.
    type: list
    elements: str
    required: true
  rollback_dir:
    description: Where the snapshot and the current versions' packages are kept.
    type: path
    required: true
  min_free_mb:
    description: Free space needed on / and /var.
    type: int
    default: 200
  lock_timeout:
    description: Seconds to wait for the dpkg/apt locks to be free.
    type: int
    default: 120
  refuse_without_rollback:
    description: Fail before installing when a current version cannot be kept for a rollback.
    type: bool
    default: true
  version_sources:
    description:
      - One-line apt sources (C(deb [options] URI SUITE [COMPONENT...])) of archives that keep
        old versions (a local aptly or reprepro mirror, snapshot.debian.org), read only when
        a previous version is neither in apt's cache nor in the host's repositories.
    type: list
    elements: str
    default: []
  expect:
    description:
      - The version of each package the plan was made from (empty when it was not installed).
      - A host where one has moved since is refused at the preflight, naming the package; a
        package this run already touched through I(rollback_dir) (a resume) is not compared.
    type: dict
    default: {}
"""

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time

LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock")
SNAPSHOT = "snapshot.json"


def run(argv, cwd=None, timeout=None):
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    p = subprocess.run(argv, capture_output=True, cwd=cwd, timeout=timeout, env=env)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def query(names):
    """{name: (version, architecture, held, installed size in KiB)} of the installed
    packages among `names`."""
    if not names:
        return {}
    _rc, out, _err = run(
        [
            "dpkg-query",
            "-W",
            "-f",
            "${Package} ${Version} ${db:Status-Abbrev} ${Architecture} ${db:Status-Want} "
            "${Installed-Size}\n",
            *list(names),
        ]
    )
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[2].startswith("i"):
            size = int(parts[5]) if len(parts) > 5 and parts[5].isdigit() else 0
            found[parts[0]] = (parts[1], parts[3], parts[4] == "hold", size)
    return found


def moved_since_planned(expect, before, saved, targets):
    """The packages whose installed version is no longer the one the plan was made from, in
    words; those this run touched before (its snapshot has them) are skipped: after a crash
    mid-install the host may rightly be on the target already."""
    out = []
    for name, planned in sorted(expect.items()):
        old = saved.get(name)
        if isinstance(old, dict) and old.get("to") == targets.get(name):
            continue
        now = before[name][0] if name in before else ""
        if now != (planned or ""):
            out.append(
                "{} is {} now, the plan was made for {} (gather and plan again)".format(
                    name, now or "not installed", planned or "not installed"
                )
            )
    return out


def deb_filename(name, version, arch):
    """apt's archive file name: the epoch's ':' is written %3a."""
    return "{}_{}_{}.deb".format(name, version.replace(":", "%3a"), arch)


# ---- rollback artifacts rebuilt from the installed package (as dpkg-repack does) ----------
# dpkg's database fields that describe this host's installation, not the package.
STATUS_ONLY_FIELDS = frozenset(
    ("status", "conffiles", "config-version", "triggers-pending", "triggers-awaited")
)
DIVERTED_RE = re.compile(r"^(?:locally diverted|diverted by .*?) to: (/.*)$")
DIVERTS_OTHERS_RE = re.compile(r"^package diverts others to: ")


class RepackError(Exception):
    """The installed package cannot be rebuilt into a .deb (the reason, in words)."""


def parse_stanza(text):
    """`dpkg-query -s` output -> [(field, raw value)], continuation lines kept verbatim."""
    fields = []
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + "\n" + line)
        elif ":" in line:
            name, _, value = line.partition(":")
            fields.append((name.strip(), value.strip()))
    return fields


def control_text(fields):
    """The DEBIAN/control of a rebuilt package: every field of the installed one except
    those that only describe its installation here."""
    return "".join(f"{n}: {v}\n" for n, v in fields if n.lower() not in STATUS_ONLY_FIELDS)


def parse_conffiles(value):
    """The Conffiles field -> (current conffiles, obsolete or remove-on-upgrade ones)."""
    current, gone = [], []
    for line in value.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[-1] in ("obsolete", "remove-on-upgrade"):
            gone.append(" ".join(parts[:-2]))
        elif len(parts) >= 2:
            current.append(" ".join(parts[:-1]))
    return current, gone


def file_entries(listing):
    """`dpkg-query -L` output -> [(path in the package, path on disk)]: a file another
    package (or the admin) diverted is read where the diversion put it; dpkg's notes about
    this package's own diversions are no files."""
    lines = [ln for ln in listing.splitlines() if ln]
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if DIVERTS_OTHERS_RE.match(line) or not line.startswith("/"):
            continue
        if line == "/.":
            continue
        on_disk = line
        if i < len(lines):
            m = DIVERTED_RE.match(lines[i])
            if m:
                on_disk = m.group(1)
                i += 1
        out.append((line, on_disk))
    return out


def _own(path, st):
    os.lchown(path, st.st_uid, st.st_gid)


def stage_files(entries, build, skip):
    """Put each file of the package into the build tree as it is on disk now: hard links
    where the build tree is on the same file system (no copy, owner and mode kept), copies
    otherwise. Returns the package paths missing on disk."""
    listed = set(p for p, _ in entries)
    missing = []
    for n, (path, on_disk) in enumerate(entries):
        if path in skip:
            continue
        dest = build + path
        try:
            st = os.lstat(on_disk)
        except FileNotFoundError:
            missing.append(path)
            continue
        nxt = entries[n + 1][0] if n + 1 < len(entries) else ""
        as_dir = stat.S_ISDIR(st.st_mode) or (
            stat.S_ISLNK(st.st_mode)
            and os.path.isdir(on_disk)
            and nxt.startswith(path.rstrip("/") + "/")
            and os.readlink(on_disk) not in listed
        )
        parent = os.path.dirname(dest)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        if as_dir:
            # A symlink to a directory the package fills (merged /usr: /lib -> usr/lib) is
            # a directory in the package, as it was in the original one.
            dst = os.stat(on_disk)
            if not os.path.isdir(dest):
                os.mkdir(dest)
            os.chmod(dest, stat.S_IMODE(dst.st_mode))
            _own(dest, dst)
        elif os.path.lexists(dest):
            continue  # listed twice
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(on_disk), dest)
            _own(dest, st)
        elif stat.S_ISREG(st.st_mode):
            try:
                os.link(on_disk, dest)
            except OSError:
                shutil.copy2(on_disk, dest)
                _own(dest, st)
        elif stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            os.mknod(dest, st.st_mode, st.st_rdev)
            _own(dest, st)
        else:
            raise RepackError(f"{path} is a socket or an unknown kind of file")
    return missing


def _build_deb(build, out, name, version, arch):
    """dpkg-deb --build into `out` (through a temporary name), checked for the package,
    version and architecture it must be."""
    tmp = out + ".part"
    rc, stdout, err = run(["dpkg-deb", "-Zgzip", "--build", build, tmp], timeout=1800)
    if rc != 0:
        raise RepackError(f"dpkg-deb --build failed: {tail(err or stdout)}")
    check_deb(tmp, name, version, arch)
    os.rename(tmp, out)


def check_deb(path, name, version, arch):
    rc, stdout, _err = run(["dpkg-deb", "-f", path, "Package", "Version", "Architecture"])
    got = dict(
        (k.strip().lower(), v.strip())
        for k, _, v in (ln.partition(":") for ln in stdout.splitlines())
    )
    want = {"package": name, "version": version, "architecture": arch}
    if rc != 0 or got != want:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise RepackError(
            "the rebuilt package is {} {} {}, not {} {} {}".format(
                got.get("package"),
                got.get("version"),
                got.get("architecture"),
                name,
                version,
                arch,
            )
        )


def repack(name, version, arch, out, workdir):
    """Rebuild the installed package `name` (at `version`) into the .deb `out` from its
    files, conffiles as they are now, maintainer scripts and control data. Returns
    (tool, notes): "dpkg-repack" where it is installed and works, else "rebuilt"."""
    spec = f"{name}:{arch}" if arch and arch != "all" else name
    rc, text, err = run(["dpkg-query", "-s", spec])
    if rc != 0:
        raise RepackError("not in dpkg's database")
    fields = parse_stanza(text)
    values = dict((n.lower(), v) for n, v in fields)
    if not re.match(r"^\S+ \S+ installed$", values.get("status", "")):
        raise RepackError("not fully installed ({})".format(values.get("status")))
    if values.get("version") != version:
        raise RepackError("installed at {}, not {}".format(values.get("version"), version))
    if shutil.which("dpkg-repack"):
        tmpdir = tempfile.mkdtemp(prefix=".repack-", dir=workdir)
        try:
            rc, _stdout, err = run(
                ["dpkg-repack", "--tag=none", "--deb-option=-Zgzip", spec],
                cwd=tmpdir,
                timeout=1800,
            )
            built = glob.glob(os.path.join(tmpdir, "*.deb"))
            if rc == 0 and len(built) == 1:
                check_deb(built[0], name, version, arch)
                os.rename(built[0], out)
                return "dpkg-repack", ""
        except RepackError:
            pass  # an older or broken dpkg-repack: rebuild it ourselves
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    build = tempfile.mkdtemp(prefix=".repack-", dir=workdir)
    try:
        os.chmod(build, 0o755)
        os.mkdir(os.path.join(build, "DEBIAN"), 0o755)
        conffiles, gone = parse_conffiles(values.get("conffiles", ""))
        rc, listing, err = run(["dpkg-query", "-L", spec])
        if rc != 0:
            raise RepackError(f"dpkg-query -L failed: {tail(err)}")
        missing = stage_files(file_entries(listing), build, set(gone))
        present = [c for c in conffiles if os.path.lexists(build + c)]
        rc, paths, err = run(["dpkg-query", "--control-path", spec])
        for src in paths.split():
            kind = src.rsplit(".", 1)[-1]
            if kind in ("list", "conffiles"):
                continue
            shutil.copy2(src, os.path.join(build, "DEBIAN", kind))
        if present:
            with open(os.path.join(build, "DEBIAN", "conffiles"), "w") as fh:
                fh.write("".join(c + "\n" for c in present))
        with open(os.path.join(build, "DEBIAN", "control"), "w") as fh:
            fh.write(control_text(fields))
        _build_deb(build, out, name, version, arch)
        notes = ""
        real_missing = [m for m in missing if m not in conffiles]
        if real_missing:
            notes = (
                f"{len(real_missing)} file(s) missing on the host were not packed "
                f"(e.g. {real_missing[0]})"
            )
        return "rebuilt", notes
    finally:
        shutil.rmtree(build, ignore_errors=True)


def running_kernel_image():
    return "linux-image-" + os.uname().release


class ArtifactFetcher:
    """Where each previous version's .deb comes from, in order: apt's cache, a repository
    the host has that still offers the version, the configured version sources (archives
    that keep history), and last a rebuild from the installed package. In check mode it
    only says where it would come from."""

    def __init__(self, rollback_dir, version_sources, check):
        self.rollback_dir = rollback_dir
        self.version_sources = list(version_sources or [])
        self.check = check
        self._archive_opts = None  # apt options reading only the version sources
        self._archive_dir = None
        self._archive_error = None

    def close(self):
        if self._archive_dir:
            shutil.rmtree(self._archive_dir, ignore_errors=True)

    def _download(self, spec, target, opts):
        """apt-get download into a scratch folder, moved into place once whole."""
        if self.check:
            rc, out, _err = run(["apt-get", *opts, "download", "--print-uris", spec])
            return rc == 0 and "'" in out
        tmpdir = tempfile.mkdtemp(prefix=".fetch-", dir=self.rollback_dir)
        try:
            rc, out, _err = run(["apt-get", *opts, "download", "-q", spec], cwd=tmpdir)
            got = glob.glob(os.path.join(tmpdir, "*.deb"))
            if rc != 0 or len(got) != 1:
                return False
            os.rename(got[0], target)
            return True
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def _archive(self):
        """apt options for the version sources, their lists fetched once per run."""
        if self._archive_opts is not None or self._archive_error:
            return self._archive_opts
        base = tempfile.mkdtemp(prefix="patchpilot-sources-")
        self._archive_dir = base
        lists = os.path.join(base, "lists")
        os.makedirs(os.path.join(lists, "partial"))
        os.makedirs(os.path.join(base, "parts"))
        with open(os.path.join(base, "sources.list"), "w") as fh:
            fh.write("".join(line + "\n" for line in self.version_sources))
        opts = [
            "-o", "Dir::Etc::SourceList=" + os.path.join(base, "sources.list"),
            "-o", "Dir::Etc::SourceParts=" + os.path.join(base, "parts"),
            "-o", "Dir::State::Lists=" + lists,
            "-o", "Dir::Cache::pkgcache=",
            "-o", "Dir::Cache::srcpkgcache=",
            "-o", "Acquire::Languages=none",
        ]  # fmt: skip
        rc, out, err = run(["apt-get", *opts, "update", "-q"], timeout=600)
        if rc != 0:
            self._archive_error = "the version sources could not be read: " + tail(err or out)
            return None
        self._archive_opts = opts
        return opts

    def fetch(self, name, version, arch, target, rebuild):
        """(source, note) once the .deb is at `target` (in check mode: where it would come
        from); (None, why) when it is nowhere."""
        fname = os.path.basename(target)
        spec = f"{name}:{arch}={version}" if arch != "all" else name + "=" + version
        cached = os.path.join("/var/cache/apt/archives", fname)
        if os.path.exists(cached):
            if self.check:
                return "cache", ""
            try:
                shutil.copy2(cached, target + ".part")
                check_deb(target + ".part", name, version, arch)
                os.rename(target + ".part", target)
                return "cache", ""
            except (OSError, RepackError):
                pass  # a damaged cache file: the next source
        if self._download(spec, target, []):
            return "repository", ""
        why = ["not in apt's cache nor in the host's repositories"]
        if self.version_sources:
            opts = self._archive()
            if opts is not None and self._download(spec, target, opts):
                return "archive", ""
            why.append(self._archive_error or "nor in the version sources")
        if not rebuild:
            return None, "; ".join([*why, "not installed, so it cannot be rebuilt"])
        if self.check:
            _rc, text, _err = run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", name])
            if text.strip() != "ii":
                return None, "; ".join([*why, "not fully installed, so it cannot be rebuilt"])
            return ("dpkg-repack" if shutil.which("dpkg-repack") else "rebuilt"), ""
        try:
            return repack(name, version, arch, target, self.rollback_dir)
        except (RepackError, OSError) as exc:
            return None, "; ".join([*why, f"the rebuild failed: {exc}"])


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_problems(names):
    """The files of these packages that `dpkg --verify` finds changed or missing, as
    'FLAGS PATH' lines (dpkg's own words); empty when every file matches its md5sum."""
    if not names:
        return []
    _rc, out, _err = run(["dpkg", "--verify", *list(names)])
    return [" ".join(ln.split()) for ln in out.splitlines() if ln.strip()][:1000]


def locks_free():
    """True when no process holds the dpkg/apt locks (taken and released at once)."""
    for path in LOCKS:
        if not os.path.exists(path):
            continue
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(fd, fcntl.LOCK_UN)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise
        finally:
            os.close(fd)
    return True


def free_mb(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // (1024 * 1024)


def load_snapshot(path):
    try:
        with open(path) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_snapshot(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, path)


def tail(text, n=5):
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " ".join(" ".join(lines[-n:]).split())[:500]


def main():
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "install": {"type": "list", "elements": "str", "required": True},
            "rollback_dir": {"type": "path", "required": True},
            "min_free_mb": {"type": "int", "default": 200},
            "lock_timeout": {"type": "int", "default": 120},
            "refuse_without_rollback": {"type": "bool", "default": True},
            "expect": {"type": "dict", "default": {}},
            "version_sources": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params
    targets = {}
    for item in p["install"]:
        name, sep, version = item.partition("=")
        if not sep or not name or not version:
            module.fail_json(
                msg=f"install items must be name=version, got {item!r}", phase="preflight"
            )
        targets[name] = version
    with open("/proc/sys/kernel/random/boot_id") as fh:
        boot_id = fh.read().strip()
    result = dict(
        changed=False,
        phase="preflight",
        snapshot={},
        artifacts={},
        rollback_missing=[],
        rollback_reasons={},
        rollback_notes={},
        sources={},
        sha256={},
        modified_before={},
        held=[],
        problems=[],
        versions={},
        installed=[],
        reboot_required=False,
        boot_id=boot_id,
    )

    def fail(msg):
        module.fail_json(msg=msg, **result)

    # 1. Preflight.
    problems = result["problems"]
    for path in ("/", "/var"):
        if free_mb(path) < p["min_free_mb"]:
            problems.append(
                f"only {int(free_mb(path))} MB free on {path} (need {int(p['min_free_mb'])})"
            )
    rc, out, err = run(["dpkg", "--audit"])
    if out.strip():
        problems.append(
            "dpkg was interrupted or left packages half-configured "
            "(run `dpkg --configure -a`): " + " ".join(out.split())[:300]
        )
    t0 = time.time()
    while not locks_free():
        if time.time() - t0 >= p["lock_timeout"]:
            problems.append(
                f"the dpkg/apt lock is held by another process (waited {int(p['lock_timeout'])}s)"
            )
            break
        time.sleep(1)
    result["lock_waited"] = round(time.time() - t0, 1)
    before = query(targets)
    result["held"] = sorted(n for n, (_, _, held, _) in before.items() if held)
    if result["held"]:
        problems.append("held on the host: " + ", ".join(result["held"]))
    rc, native, _ = run(["dpkg", "--print-architecture"])
    native = native.strip() or "all"
    snap_path = os.path.join(p["rollback_dir"], SNAPSHOT)
    saved = load_snapshot(snap_path)
    problems.extend(moved_since_planned(p["expect"] or {}, before, saved, targets))
    if problems:
        # A host this run touched before (its snapshot is saved here: dpkg left interrupted
        # by a crash mid-install, say) reports the versions it had and the .debs kept for
        # them, so that it can be put back although it cannot be patched.
        for name, version in sorted(targets.items()):
            old = saved.get(name)
            if isinstance(old, dict) and old.get("to") == version and old.get("from"):
                result["snapshot"][name] = old["from"]
                kept_deb = os.path.join(
                    p["rollback_dir"], deb_filename(name, old["from"], old.get("arch") or native)
                )
                if os.path.exists(kept_deb):
                    result["artifacts"][name] = kept_deb
        fail("; ".join(problems))

    # 2. Snapshot and rollback artifacts. A target seen before through this directory keeps
    # the version it had then: after a crash mid-install the host may already be on it.
    if not module.check_mode and not os.path.isdir(p["rollback_dir"]):
        os.makedirs(p["rollback_dir"], 0o700)
    record = dict(saved)
    for name, version in sorted(targets.items()):
        old = saved.get(name)
        if isinstance(old, dict) and old.get("to") == version:
            if old.get("from"):
                result["snapshot"][name] = old["from"]
            continue
        if name in before:
            result["snapshot"][name] = before[name][0]
        record[name] = {
            "from": before[name][0] if name in before else None,
            "to": version,
            "arch": before[name][1] if name in before else None,
        }
        if name in before and not module.check_mode:
            # What dpkg --verify says before anything changes: a rollback is judged by
            # the problems it adds, not by an admin's earlier edits.
            record[name]["modified"] = verify_problems([name])
    for name in result["snapshot"]:
        result["modified_before"][name] = list((record.get(name) or {}).get("modified") or [])
    if record != saved and not module.check_mode:
        save_snapshot(snap_path, record)
    fetcher = ArtifactFetcher(p["rollback_dir"], p["version_sources"], module.check_mode)
    todo_art = []
    for name, version in sorted(result["snapshot"].items()):
        arch = (record.get(name) or {}).get("arch") or native
        target = os.path.join(p["rollback_dir"], deb_filename(name, version, arch))
        old = record.get(name) or {}
        if os.path.exists(target):
            result["artifacts"][name] = target
            result["sources"][name] = old.get("source") or "kept"
            result["sha256"][name] = old.get("sha256") or sha256_of(target)
        elif name == running_kernel_image():
            result["rollback_missing"].append(f"{name}={version}")
            result["rollback_reasons"][name] = (
                "the running kernel's own image: a downgrade would replace the running "
                "kernel's modules"
            )
        else:
            todo_art.append((name, version, arch, target))
    if todo_art and not module.check_mode:
        need_mb = sum(before[n][3] for n, _, _, _ in todo_art if n in before) // 1024
        free = free_mb(p["rollback_dir"])
        if free - need_mb < p["min_free_mb"]:
            fail(
                "the rollback artifacts need about {} MB in {} and only {} MB are free "
                "(need {} MB left over): free space or lower min_free_mb".format(
                    need_mb, p["rollback_dir"], free, p["min_free_mb"]
                )
            )
    kept = False
    for name, version, arch, target in todo_art:
        rebuild = name in before and before[name][0] == version
        source, reason = fetcher.fetch(name, version, arch, target, rebuild=rebuild)
        result["sources"][name] = source
        if source is None:
            result["rollback_missing"].append(f"{name}={version}")
            result["rollback_reasons"][name] = reason
            continue
        if reason:
            result["rollback_notes"][name] = reason
        if module.check_mode:
            result["artifacts"][name] = None
            continue
        os.chmod(target, 0o600)
        result["artifacts"][name] = target
        result["sha256"][name] = sha256_of(target)
        record[name] = dict(record.get(name) or {}, source=source, sha256=result["sha256"][name])
        kept = True
    fetcher.close()
    if kept:
        save_snapshot(snap_path, record)
    result["changed"] = kept
    if result["rollback_missing"] and p["refuse_without_rollback"] and not module.check_mode:
        fail(
            "rollback impossible (previous version not available: {}); refused by the "
            "rollback policy".format(
                ", ".join(
                    "{} ({})".format(item, result["rollback_reasons"].get(item.split("=")[0], "?"))
                    for item in result["rollback_missing"]
                )
            )
        )

    # 3. Install exactly these versions.
    result["phase"] = "install"
    todo = sorted(f"{n}={v}" for n, v in targets.items() if n not in before or before[n][0] != v)
    if todo:
        argv = [
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "-o",
            f"DPkg::Lock::Timeout={int(p['lock_timeout'])}",
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
        ]
        if module.check_mode:
            argv.append("-s")
        rc, out, err = run(argv + todo)
        if rc != 0:
            result["versions"] = dict((n, v[0]) for n, v in query(targets).items())
            fail(f"apt-get install failed (exit {rc}): {tail(err or out)}")
        if not module.check_mode:
            result["installed"] = todo
            result["changed"] = True

    # 4. What the host has now.
    result["phase"] = "done"
    result["versions"] = dict((n, v[0]) for n, v in query(targets).items())
    result["reboot_required"] = os.path.exists("/run/reboot-required")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
