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
  expect:
    description:
      - The version of each package the plan was made from (empty when it was not installed).
      - A host where one has moved since is refused at the preflight, naming the package; a
        package this run already touched through I(rollback_dir) (a resume) is not compared.
    type: dict
    default: {}
"""

import errno
import fcntl
import glob
import json
import os
import shutil
import subprocess
import time

LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock")
SNAPSHOT = "snapshot.json"


def run(argv, cwd=None, timeout=None):
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    p = subprocess.run(argv, capture_output=True, cwd=cwd, timeout=timeout, env=env)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def query(names):
    """{name: (version, architecture, held)} of the installed packages among `names`."""
    if not names:
        return {}
    _rc, out, _err = run(
        [
            "dpkg-query",
            "-W",
            "-f",
            "${Package} ${Version} ${db:Status-Abbrev} ${Architecture} ${db:Status-Want}\n",
            *list(names),
        ]
    )
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[2].startswith("i"):
            found[parts[0]] = (parts[1], parts[3], parts[4] == "hold")
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
    result["held"] = sorted(n for n, (_, _, held) in before.items() if held)
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
    kept = False
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
    if record != saved and not module.check_mode:
        save_snapshot(snap_path, record)
    for name, version in sorted(result["snapshot"].items()):
        arch = (record.get(name) or {}).get("arch") or native
        fname = deb_filename(name, version, arch)
        target = os.path.join(p["rollback_dir"], fname)
        if os.path.exists(target):
            result["artifacts"][name] = target
            continue
        cached = glob.glob(os.path.join("/var/cache/apt/archives", fname))
        if module.check_mode:
            result["artifacts"][name] = cached[0] if cached else None
            if not cached:
                rc, out, err = run(["apt-cache", "show", f"{name}={version}"])
                if rc != 0:
                    result["rollback_missing"].append(f"{name}={version}")
            continue
        if cached:
            shutil.copy2(cached[0], target)
        else:
            run(["apt-get", "download", "-q", f"{name}={version}"], cwd=p["rollback_dir"])
        if os.path.exists(target):
            result["artifacts"][name] = target
            kept = True
        else:
            result["rollback_missing"].append(f"{name}={version}")
    result["changed"] = kept
    if result["rollback_missing"] and p["refuse_without_rollback"] and not module.check_mode:
        fail(
            "rollback impossible (previous version not available: {}); refused by the "
            "rollback policy".format(", ".join(result["rollback_missing"]))
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
            result["versions"] = dict((n, v) for n, (v, _, _) in query(targets).items())
            fail(f"apt-get install failed (exit {rc}): {tail(err or out)}")
        if not module.check_mode:
            result["installed"] = todo
            result["changed"] = True

    # 4. What the host has now.
    result["phase"] = "done"
    result["versions"] = dict((n, v) for n, (v, _, _) in query(targets).items())
    result["reboot_required"] = os.path.exists("/run/reboot-required")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
