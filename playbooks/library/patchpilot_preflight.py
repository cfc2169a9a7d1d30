#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: is this host safe to patch, what exactly is installed now, and can every
package about to change be put back?

Runs on the managed host (Python 3.6+, standard library only; apt/dpkg hosts). Changes
nothing but the rollback directory, where it keeps a .deb of each current version.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: patchpilot_preflight
short_description: Preflight, snapshot and rollback artifacts before patchpilot patches a host
options:
  packages:
    description: Names of the packages about to change.
    type: list
    elements: str
    required: true
  rollback_dir:
    description: Where the current versions' packages are kept for a rollback.
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
"""

import errno
import fcntl
import glob
import os
import shutil
import subprocess
import time

LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock")


def run(argv, cwd=None, timeout=300):
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                       timeout=timeout, env=env)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def parse_dpkg_query(text):
    """'name version status-abbrev' lines -> {name: version} for installed packages."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2].startswith("i"):
            out[parts[0]] = parts[1]
    return out


def deb_filename(name, version, arch):
    """apt's archive file name: the epoch's ':' is written %3a."""
    return "%s_%s_%s.deb" % (name, version.replace(":", "%3a"), arch)


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


def main():
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "packages": {"type": "list", "elements": "str", "required": True},
            "rollback_dir": {"type": "path", "required": True},
            "min_free_mb": {"type": "int", "default": 200},
            "lock_timeout": {"type": "int", "default": 120},
        },
        supports_check_mode=True,
    )
    p = module.params
    problems = []

    for path in ("/", "/var"):
        if free_mb(path) < p["min_free_mb"]:
            problems.append("only %d MB free on %s (need %d)" % (free_mb(path), path,
                                                                p["min_free_mb"]))
    rc, out, err = run(["dpkg", "--audit"])
    if out.strip():
        problems.append("dpkg was interrupted or left packages half-configured "
                        "(run `dpkg --configure -a`): " + " ".join(out.split())[:300])

    waited = 0.0
    t0 = time.time()
    while not locks_free():
        if time.time() - t0 >= p["lock_timeout"]:
            problems.append("the dpkg/apt lock is held by another process (waited %ds)"
                            % p["lock_timeout"])
            break
        time.sleep(1)
    waited = time.time() - t0

    rc, out, err = run(["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n"]
                       + p["packages"])
    installed = parse_dpkg_query(out)
    rc, out, err = run(["dpkg", "--print-architecture"])
    native = out.strip() or "all"
    rc, out, err = run(["apt-mark", "showhold"])
    held = sorted(set(out.split()) & set(p["packages"]))

    snapshot, artifacts, missing = {}, {}, []
    if not module.check_mode:
        if not os.path.isdir(p["rollback_dir"]):
            os.makedirs(p["rollback_dir"], 0o700)
    for name in p["packages"]:
        version = installed.get(name)
        if version is None:
            continue  # not installed: a rollback removes nothing it did not add
        snapshot[name] = version
        rc, arch, _ = run(["dpkg-query", "-W", "-f", "${Architecture}", name])
        arch = arch.strip() or native
        fname = deb_filename(name, version, arch)
        target = os.path.join(p["rollback_dir"], fname)
        if os.path.exists(target):
            artifacts[name] = target
            continue
        cached = glob.glob(os.path.join("/var/cache/apt/archives", fname))
        if module.check_mode:
            artifacts[name] = cached[0] if cached else None
            continue
        if cached:
            shutil.copy2(cached[0], target)
        else:
            run(["apt-get", "download", "-q", "%s=%s" % (name, version)], cwd=p["rollback_dir"])
        if os.path.exists(target):
            artifacts[name] = target
        else:
            missing.append("%s=%s" % (name, version))

    with open("/proc/sys/kernel/random/boot_id") as fh:
        boot_id = fh.read().strip()
    result = dict(changed=bool(artifacts) and not module.check_mode, snapshot=snapshot,
                  artifacts=artifacts, rollback_missing=missing, held=held,
                  problems=problems, lock_waited=round(waited, 1), boot_id=boot_id)
    if problems:
        module.fail_json(msg="; ".join(problems), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
