#!/usr/bin/python
"""Ansible module: pending updates of a host, with what their changelogs say.

Runs on the managed host (Python 3.8+, no third-party imports besides python3-apt on apt
hosts). Pure parsing functions are module-level so patchpilot's unit tests can import them.
"""

DOCUMENTATION = r"""
module: patchpilot_pending
short_description: List pending package updates with changelog facts
description:
  - Lists packages with a newer candidate version (apt through python3-apt; dnf, yum and
    zypper through their command-line tools), whether each comes from a security archive,
    and, on apt hosts, facts from the candidate package's Debian changelog (CVE ids, urgency,
    number of entries since the installed version, upstream version change).
  - Candidate packages are fetched with C(apt-get download) from the host's own repositories
    into I(cache_dir); nothing is installed and the dpkg lock is not taken.
options:
  changelogs:
    description: Download candidates and read their changelogs (apt only).
    type: bool
    default: true
  update_cache:
    description: Refresh the package lists first (C(apt-get update), C(dnf makecache)).
    type: bool
    default: false
  cache_dir:
    description: Where candidate packages are downloaded.
    type: path
    default: /var/cache/patchpilot/candidates
"""

import glob
import os
import re
import subprocess
import tarfile
import time
import xml.etree.ElementTree as ET
import zlib
from email.utils import parsedate_to_datetime

CVE_RE = re.compile(r"CVE-\d{4}-\d{4,}")
HEADER_RE = re.compile(r"^(\S+) \(([^()\s]+)\) ([^;]+);\s*(.*)$")
TRAILER_RE = re.compile(r"^ -- (.*?)  (.+)$")
URGENCY_RANK = {"low": 0, "medium": 1, "high": 2, "emergency": 3, "critical": 4}
REBOOT_RE = re.compile(
    r"^(linux-image-|linux-modules-|libc6$|systemd$|dbus$|dbus-daemon$|"
    r"intel-microcode$|amd64-microcode$|kernel$|kernel-core$|glibc$)"
)


# ---- pure helpers (unit-tested) ---------------------------------------------------------
def upstream_version(version):
    """'1:3.0.11-1~deb12u2' -> '3.0.11'; a native version has no revision."""
    v = version.split(":", 1)[1] if ":" in version.split("-")[0] else version
    return v.rsplit("-", 1)[0] if "-" in v else v


def parse_changelog(text):
    """Parse a Debian changelog into entries: dicts of version, urgency, body, date (ISO)."""
    entries = []
    current = None
    for line in text.splitlines():
        m = HEADER_RE.match(line)
        if m:
            params = dict(
                p.strip().lower().split("=", 1) for p in m.group(4).split(",") if "=" in p
            )
            current = {
                "package": m.group(1),
                "version": m.group(2),
                "when": None,
                "urgency": params.get("urgency", "").lower().split()[0]
                if params.get("urgency")
                else None,
                "body": [],
                "date": None,
            }
            entries.append(current)
            continue
        if current is None:
            continue
        t = TRAILER_RE.match(line)
        if t:
            try:
                current["when"] = parsedate_to_datetime(t.group(2).strip())
                current["date"] = current["when"].isoformat()
            except (TypeError, ValueError):
                current["date"] = None
            current = None
            continue
        current["body"].append(line)
    for e in entries:
        e["body"] = "\n".join(e["body"])
    return entries


def is_debian_changelog(text):
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    return bool(HEADER_RE.match(first))


def changelog_facts(text, installed, candidate, compare):
    """Facts about the entries newer than `installed` up to `candidate` (compare is a
    Debian version comparison returning <0, 0, >0)."""
    newer = [
        e
        for e in parse_changelog(text)
        if compare(e["version"], installed) > 0 and compare(e["version"], candidate) <= 0
    ]
    cves = set()
    for e in newer:
        cves.update(CVE_RE.findall(e["body"]))
    urgencies = [e["urgency"] for e in newer if e["urgency"] in URGENCY_RANK]
    # Compare instants, not ISO strings: maintainers write in different time zones.
    dated = [e for e in newer if e["when"] is not None]
    return {
        "cve_ids": sorted(cves, key=lambda c: (int(c.split("-")[1]), int(c.split("-")[2]))),
        "urgency": max(urgencies, key=URGENCY_RANK.get) if urgencies else None,
        "changelog_entries": len(newer),
        "changelog_date": max(dated, key=lambda e: e["when"])["date"] if dated else None,
    }


def is_security_origin(*labels):
    return any("security" in (label or "").lower() for label in labels)


def reboot_needed(package):
    return bool(REBOOT_RE.match(package))


def parse_dnf_check_update(text):
    """`dnf -q check-update` / `yum -q check-update`: name.arch, version, repo per line."""
    updates = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("Obsoleting", "Security:", "Last metadata")):
            if line.startswith("Obsoleting"):
                break
            continue
        parts = line.split()
        if len(parts) != 3 or "." not in parts[0]:
            continue
        name, arch = parts[0].rsplit(".", 1)
        updates.append({"package": name, "arch": arch, "candidate": parts[1], "origin": parts[2]})
    return updates


def parse_dnf_updateinfo(text):
    """`dnf -q updateinfo list --with-cve` lines 'CVE-… severity/Sec. nevra' (and plain
    advisory lines 'RHSA-… Important/Sec. nevra'): package name -> set of CVE ids, and the
    names of packages with a security advisory."""
    cves, security = {}, set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        ident, kind, nevra = parts[0], parts[1], parts[-1]
        name = _rpm_name(nevra)
        if "sec" in kind.lower():
            security.add(name)
        if CVE_RE.fullmatch(ident):
            cves.setdefault(name, set()).add(ident)
    return cves, security


def _rpm_name(nevra):
    # name-[epoch:]version-release.arch
    base = nevra.rsplit(".", 1)[0]
    return base.rsplit("-", 2)[0]


def parse_zypper_updates(xml_text):
    """`zypper --xmlout list-updates --all` (or list-patches) into update dicts."""
    updates = []
    root = ET.fromstring(xml_text)
    for upd in root.iter("update"):
        if upd.get("kind", "package") != "package":
            continue
        source = upd.find("source")
        updates.append(
            {
                "package": upd.get("name"),
                "arch": upd.get("arch", ""),
                "candidate": upd.get("edition"),
                "installed": upd.get("edition-old"),
                "origin": source.get("alias") if source is not None else None,
            }
        )
    return updates


# ---- host-side gathering ----------------------------------------------------------------
def rollback_source(name, version, arch, downloadable, installed, kernel_release=None):
    """Where patchpilot_patch will take the installed version's .deb from for a rollback:
    apt's cache, a repository that still offers it, a rebuild from the installed package,
    or nowhere (with why)."""
    release = kernel_release or os.uname().release
    if name == "linux-image-" + release:
        return {
            "source": "none",
            "reason": "the running kernel's own image: a downgrade would replace the "
            "running kernel's modules",
        }
    fname = "{}_{}_{}.deb".format(name, version.replace(":", "%3a"), arch)
    if os.path.exists(os.path.join("/var/cache/apt/archives", fname)):
        return {"source": "cache"}
    if downloadable:
        return {"source": "repository"}
    if installed:
        return {"source": "rebuild"}
    return {
        "source": "none",
        "reason": "not in apt's cache nor in any repository, and not fully installed, so "
        "it cannot be rebuilt",
    }


def boot_facts():
    """Boot time from PID 1's start (right for VMs and containers alike) and the boot id."""
    facts = {"boot_id": None, "boot_time": None, "uptime_seconds": None}
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            facts["boot_id"] = f.read().strip()
        with open("/proc/stat") as f:
            btime = int(next(ln for ln in f if ln.startswith("btime")).split()[1])
        with open("/proc/1/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        boot = btime + start_ticks / os.sysconf("SC_CLK_TCK")
        facts["boot_time"] = int(boot)
        facts["uptime_seconds"] = int(time.time() - boot)
    except (OSError, ValueError, StopIteration, IndexError):
        pass
    return facts


def apt_updates(module, changelogs, cache_dir):
    import apt_pkg  # python3-apt

    apt_pkg.init()
    cache = apt_pkg.Cache(None)
    depcache = apt_pkg.DepCache(cache)
    records = apt_pkg.PackageRecords(cache)
    updates = []
    for pkg in cache.packages:
        cur = pkg.current_ver
        if not cur:
            continue
        cand = depcache.get_candidate_ver(pkg)
        if not cand or apt_pkg.version_compare(cand.ver_str, cur.ver_str) <= 0:
            continue
        files = [(f, i) for f, i in cand.file_list if f.archive != "now"]
        origin, label, archive = "", "", ""
        source = pkg.name
        if files:
            f, idx = files[0]
            origin, label, archive = f.origin or "", f.label or "", f.archive or ""
            if records.lookup((f, idx)):
                source = records.source_pkg or pkg.name
        updates.append(
            {
                "package": pkg.name,
                "arch": cand.arch,
                "installed": cur.ver_str,
                "candidate": cand.ver_str,
                "source": source,
                "origin": "/".join(x for x in (origin, archive) if x) or None,
                "security": is_security_origin(label, archive),
                "held": pkg.selected_state == apt_pkg.SELSTATE_HOLD,
                "reboot_needed": reboot_needed(pkg.name),
                "rollback": rollback_source(
                    pkg.name,
                    cur.ver_str,
                    cur.arch,
                    downloadable=any(
                        not f.not_source and f.archive != "now" for f, _ in cur.file_list
                    ),
                    installed=pkg.current_state == apt_pkg.CURSTATE_INSTALLED,
                ),
                "size": cand.size,
            }
        )
    if changelogs and updates:
        add_apt_changelogs(module, updates, cache_dir, apt_pkg.version_compare)
    for u in updates:
        u.pop("size", None)  # only for the free-space check
    return updates


MIN_FREE_AFTER_DOWNLOAD = 200 * 1024 * 1024  # what the downloads must leave free


def add_apt_changelogs(module, updates, cache_dir, compare):
    if not os.path.isdir(cache_dir):
        os.makedirs(cache_dir, 0o755)
    wanted = [
        "{}:{}={}".format(u["package"], u["arch"], u["candidate"])
        if u["arch"] != "all"
        else "{}={}".format(u["package"], u["candidate"])
        for u in updates
    ]
    missing = [w for w, u in zip(wanted, updates) if not _deb_path(cache_dir, u)]
    need = sum(u.get("size") or 0 for w, u in zip(wanted, updates) if w in missing)
    if missing and free_bytes(cache_dir) < need + MIN_FREE_AFTER_DOWNLOAD:
        # No room to fetch them: the updates are reported without their changelog facts.
        module.warn(
            f"not downloading {len(missing)} packages for their changelogs: "
            f"{need // 1048576} MiB needed, {free_bytes(cache_dir) // 1048576} MiB free"
        )
        missing = []
    if missing:
        rc, _out, _err = module.run_command(["apt-get", "download", "-q", *missing], cwd=cache_dir)
        if rc != 0:  # one bad package must not hide the others' facts
            for w in missing:
                module.run_command(["apt-get", "download", "-q", w], cwd=cache_dir)
    by_source = {}
    for u in updates:
        u["changelog_text"] = None
        path = _deb_path(cache_dir, u)
        if path:
            text = read_deb_changelog(path, u["package"], u["arch"])
            if text:
                u["changelog_text"] = text
                by_source.setdefault((u["source"], u["candidate"]), text)
    for u in updates:
        text = u.pop("changelog_text") or by_source.get((u["source"], u["candidate"]))
        if text:
            u.update(changelog_facts(text, u["installed"], u["candidate"], compare))
            if u["cve_ids"] and not u["security"]:
                u["security"] = True  # a fix for a CVE is a security update wherever it comes from
        else:
            u.update(
                {"cve_ids": [], "urgency": None, "changelog_entries": None, "changelog_date": None}
            )
        u["upstream_changed"] = upstream_version(u["installed"]) != upstream_version(u["candidate"])
    _prune(cache_dir, updates)


def _deb_path(cache_dir, u):
    version = u["candidate"].replace(":", "%3a")
    path = os.path.join(cache_dir, "{}_{}_{}.deb".format(u["package"], version, u["arch"]))
    return path if os.path.exists(path) else None


def _prune(cache_dir, updates):
    keep = {os.path.basename(_deb_path(cache_dir, u) or "") for u in updates}
    for path in glob.glob(os.path.join(cache_dir, "*.deb")):
        if os.path.basename(path) not in keep:
            os.unlink(path)


MAX_CHANGELOG_GZ = 4 * 1024 * 1024  # a compressed changelog larger than this is skipped
MAX_CHANGELOG_TEXT = 16 * 1024 * 1024  # and one that unpacks to more is cut there


def read_deb_changelog(path, package, arch):
    """The Debian changelog inside a .deb, or None (e.g. its doc dir links to another
    package). The package's file tree is read as a stream, member by member, so memory stays
    small whatever the size of the package; reading stops once the changelog is found."""
    names = [
        f"./usr/share/doc/{package}/changelog.Debian.gz",
        f"./usr/share/doc/{package}/changelog.Debian.{arch}.gz",
        f"./usr/share/doc/{package}/changelog.gz",
    ]
    found = {}
    proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.name not in names or not member.isfile():
                    continue
                if member.size > MAX_CHANGELOG_GZ:
                    continue
                data = tar.extractfile(member)
                if data is None:
                    continue
                unpack = zlib.decompressobj(16 + zlib.MAX_WBITS)
                text = unpack.decompress(data.read(), MAX_CHANGELOG_TEXT).decode("utf-8", "replace")
                found[member.name] = text
                if member.name == names[0]:
                    break
    except (tarfile.TarError, zlib.error, OSError, EOFError):
        pass
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.terminate()
        proc.wait()
    for name in names:
        text = found.get(name)
        if text and is_debian_changelog(text):
            return text
    return None


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def dnf_updates(module, tool):
    rc, out, err = module.run_command([tool, "-q", "check-update"])
    if rc not in (0, 100):
        module.fail_json(msg=f"{tool} check-update failed: {err.strip()}")
    updates = parse_dnf_check_update(out)
    rc, info, _ = module.run_command([tool, "-q", "updateinfo", "list", "--with-cve"])
    cves, security = parse_dnf_updateinfo(info) if rc == 0 else ({}, set())
    rc, info, _ = module.run_command([tool, "-q", "updateinfo", "list", "--security"])
    if rc == 0:
        security |= parse_dnf_updateinfo(info)[1]
    for u in updates:
        rc, cur, _ = module.run_command(
            ["rpm", "-q", "--qf", "%{EPOCHNUM}:%{VERSION}-%{RELEASE}\n", u["package"]]
        )
        u["installed"] = cur.strip().splitlines()[-1] if rc == 0 and cur.strip() else ""
        u.update(
            {
                "security": u["package"] in security or bool(cves.get(u["package"])),
                "cve_ids": sorted(cves.get(u["package"], ())),
                "held": False,
                "reboot_needed": reboot_needed(u["package"]),
                "source": u["package"],
                "urgency": None,
                "changelog_entries": None,
                "changelog_date": None,
                "upstream_changed": None,
            }
        )
    return updates


def zypper_updates(module):
    rc, out, err = module.run_command(
        ["zypper", "--non-interactive", "--xmlout", "list-updates", "--all"]
    )
    if rc != 0:
        module.fail_json(msg=f"zypper list-updates failed: {err.strip()}")
    updates = parse_zypper_updates(out)
    for u in updates:
        u.update(
            {
                "security": False,
                "cve_ids": [],
                "held": False,
                "source": u["package"],
                "reboot_needed": reboot_needed(u["package"]),
                "urgency": None,
                "changelog_entries": None,
                "changelog_date": None,
                "upstream_changed": None,
            }
        )
    return updates


def main():
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec=dict(
            changelogs=dict(type="bool", default=True),
            update_cache=dict(type="bool", default=False),
            cache_dir=dict(type="path", default="/var/cache/patchpilot/candidates"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    result = dict(changed=False, reboot_required=os.path.exists("/var/run/reboot-required"))
    result.update(boot_facts())
    if module.get_bin_path("apt-get"):
        result["package_manager"] = "apt"
        if p["update_cache"]:
            rc, _, err = module.run_command(
                ["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=120"]
            )
            if rc != 0:
                module.fail_json(msg=f"apt-get update failed: {err.strip()[-500:]}")
        try:
            result["updates"] = apt_updates(module, p["changelogs"], p["cache_dir"])
        except ImportError:
            module.fail_json(
                msg="python3-apt is missing on the host",
                hint="install it: apt-get install python3-apt",
            )
    elif module.get_bin_path("dnf") or module.get_bin_path("yum"):
        tool = "dnf" if module.get_bin_path("dnf") else "yum"
        result["package_manager"] = tool
        result["updates"] = dnf_updates(module, tool)
    elif module.get_bin_path("zypper"):
        result["package_manager"] = "zypper"
        result["updates"] = zypper_updates(module)
    else:
        module.fail_json(msg="no supported package manager (apt, dnf, yum, zypper) on the host")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
