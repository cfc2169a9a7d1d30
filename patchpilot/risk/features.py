"""One feature space for advisories, fleet outcomes and pending updates on hosts.

Every history feature of an item (earlier regressions of its package, days since its previous
update) is computed only from events dated strictly before the item, and a regression counts
only from the day it became known. tests/unit/test_risk_features.py proves it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd

CATEGORIES = (
    "kernel",
    "libc",
    "tls-crypto",
    "ssh",
    "init-systemd",
    "language-runtime",
    "web-server",
    "database",
    "browser",
    "data-only",
    "other",
)

_CATEGORY_RULES: tuple[tuple[str, str], ...] = (
    ("kernel", r"linux(-\d.*|-signed.*|-latest.*|-image.*|-2\.6.*|-grsec)?|kfreebsd-.*"),
    ("libc", r"e?glibc|libc6.*|musl"),
    (
        "tls-crypto",
        r"openssl.*|libssl.*|gnutls.*|libgnutls.*|nss|libnss3|nettle|libgcrypt.*|gnupg.*|gpgv.*"
        r"|polarssl|mbedtls|wolfssl|libsodium|libtasn1.*|p11-kit|ca-certificates-java|botan.*"
        r"|libressl|cyrus-sasl2|krb5|heimdal|strongswan|openvpn|libkrb5.*",
    ),
    ("ssh", r"openssh.*|libssh.*|dropbear.*|putty"),
    ("init-systemd", r"systemd.*|libsystemd.*|udev|sysvinit.*|dbus|policykit-1|polkit.*|upstart"),
    (
        "language-runtime",
        r"python\d.*|libpython.*|perl|perl-base|ruby\d.*|ruby|php\d.*|php|openjdk-.*|"
        r"nodejs|golang.*|tcl\d.*|lua\d.*|mono|erlang|rustc|jruby|icedtea.*|libperl.*",
    ),
    (
        "web-server",
        r"apache2.*|nginx.*|lighttpd|tomcat\d*|jetty\d*|squid\d*|haproxy|varnish|"
        r"trafficserver|libapache2-.*|uwsgi|passenger",
    ),
    (
        "database",
        r"mysql-.*|mariadb.*|postgresql.*|sqlite3?|libsqlite3.*|redis|mongodb|memcached|"
        r"couchdb|libpq.*|libmysql.*|libmariadb.*|bind9|openldap|ldb|tdb|db\d.*",
    ),
    (
        "browser",
        r"firefox.*|iceweasel|chromium.*|thunderbird|icedove|webkit2gtk|wpewebkit|qtwebengine.*|"
        r"seamonkey|xulrunner|epiphany.*|iceape|konqueror|libwebkit.*",
    ),
    (
        "data-only",
        r"tzdata|ca-certificates|distro-info-data|debian-archive-keyring|publicsuffix|"
        r"iso-codes|mime-support|media-types|wireless-regdb|clamav-data|geoip-database|"
        r"spamassassin-rules|.*-data|.*-doc|.*-common-data|fonts-.*",
    ),
)
_CATEGORY_RE = [(cat, re.compile(pattern)) for cat, pattern in _CATEGORY_RULES]

# Packages whose update needs a reboot to take effect, for items that do not say (advisories).
_REBOOT_RE = re.compile(r"linux(-.*)?|e?glibc|systemd|dbus|intel-microcode|amd64-microcode|xen")

URGENCIES = ("low", "medium", "high", "critical")  # critical includes emergency
_FAMILY_RE = re.compile(r"[-.]?\d+(?:\.\d+)*$")
# Debian stable and security updates number themselves: 1.1.1n-0+deb10u3, 2.3.4-5+deb9u1.
_RELEASE_UPDATE_RE = re.compile(r"(?:deb\d+u|squeeze|wheezy|jessie)(\d+)(?:$|[+~.])")
MAX_DAYS = 3650.0


def package_category(package: str) -> str:
    name = package.lower()
    for cat, rx in _CATEGORY_RE:
        if rx.fullmatch(name):
            return cat
    return "other"


def package_family(package: str) -> str:
    """The name history is kept under: versioned names of one software share it
    (linux-4.19 and linux, php7.3 and php5, openssl1.0 and openssl, postgresql-11)."""
    name = package.lower()
    if package_category(name) == "kernel":
        return "linux"
    stripped = _FAMILY_RE.sub("", name)
    return stripped or name


def reboot_implied(package: str) -> bool:
    return bool(_REBOOT_RE.fullmatch(package.lower()))


def release_update_number(version: str | None) -> int:
    """Which stable/security update of the package in its release a version is (the N of
    +debXuN); 0 for a version that is not one."""
    if not version:
        return 0
    m = _RELEASE_UPDATE_RE.search(version)
    return int(m.group(1)) if m else 0


def normalize_urgency(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None  # None, or pandas' NaN for a missing value
    v = value.strip().lower().split()[0]
    if v == "emergency":
        return "critical"
    return v if v in URGENCIES else None


@dataclass(frozen=True)
class HistoryEvent:
    """Something the model's history features count: a published advisory or a fleet outcome.
    A regression counts from `known` on (the regression fix's date, or the outcome's)."""

    family: str
    when: date  # or a datetime
    regression: bool
    known: date | None
    weight: float = 1.0
    advisory: bool = True


class History:
    """Per package family, the events sorted by date, for O(log n) "strictly before" lookups."""

    def __init__(self, events: Iterable[HistoryEvent], *, base_rate: float, strength: float):
        self.base_rate = base_rate
        self.strength = strength
        grouped: dict[str, list[HistoryEvent]] = {}
        for e in events:
            grouped.setdefault(e.family, []).append(e)
        self._all: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._known: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._adv: dict[str, np.ndarray] = {}
        self._fleet_n: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._fleet_k: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for fam, evs in grouped.items():
            self._all[fam] = _cumulative([(e.when, e.weight) for e in evs])
            # A regression cannot be known before its update existed.
            self._known[fam] = _cumulative(
                [(_later(e.known, e.when), e.weight) for e in evs if e.regression and e.known]
            )
            self._adv[fam] = np.array(sorted(_day(e.when) for e in evs if e.advisory), dtype=float)
            self._fleet_n[fam] = _cumulative([(e.when, 1.0) for e in evs if not e.advisory])
            self._fleet_k[fam] = _cumulative(
                [
                    (_later(e.known, e.when), 1.0)
                    for e in evs
                    if not e.advisory and e.regression and e.known
                ]
            )

    def features(self, families: Sequence[str], days: np.ndarray) -> dict[str, np.ndarray]:
        """History columns for items (family, day number), each from events strictly before."""
        n = len(families)
        weight_n = np.zeros(n)
        weight_k = np.zeros(n)
        fleet_n = np.zeros(n)
        fleet_k = np.zeros(n)
        days_prev = np.full(n, np.nan)
        order = pd.Series(range(n)).groupby(pd.Series(families, dtype="object")).indices
        for fam, idx in order.items():
            d = days[idx]
            if fam in self._all:
                weight_n[idx] = _before(self._all[fam], d)
                weight_k[idx] = _before(self._known[fam], d)
                fleet_n[idx] = _before(self._fleet_n[fam], d)
                fleet_k[idx] = _before(self._fleet_k[fam], d)
                adv = self._adv[fam]
                if len(adv) == 0:
                    continue
                pos = np.searchsorted(adv, d, side="left")
                has = pos > 0
                prev = np.where(has, adv[np.maximum(pos - 1, 0)], np.nan)
                days_prev[idx] = np.where(has, d - prev, np.nan)
        rate = (weight_k + self.strength * self.base_rate) / (weight_n + self.strength)
        return {
            "history_n": weight_n,
            "history_k": weight_k,
            "fleet_n": fleet_n,
            "fleet_k": fleet_k,
            "prior_rate": rate,
            "days_prev": days_prev,
        }


def _day(d: date) -> float:
    """Day number; a datetime keeps its time of day, so a fleet outcome recorded this morning
    is "before" a score computed this afternoon."""
    if isinstance(d, datetime):
        return d.toordinal() + (d.hour * 3600 + d.minute * 60 + d.second) / 86400.0
    return float(d.toordinal())


def _later(a: date, b: date) -> date:
    return a if _day(a) >= _day(b) else b


def _cumulative(pairs: list[tuple[date | None, float]]) -> tuple[np.ndarray, np.ndarray]:
    items = sorted((_day(d), w) for d, w in pairs if d is not None)
    days = np.array([d for d, _ in items], dtype=float)
    cum = np.cumsum(np.array([w for _, w in items], dtype=float))
    return days, cum


def _before(table: tuple[np.ndarray, np.ndarray], days: np.ndarray) -> np.ndarray:
    keys, cum = table
    if len(keys) == 0:
        return np.zeros(len(days))
    pos = np.searchsorted(keys, days, side="left")
    return np.where(pos > 0, cum[np.maximum(pos - 1, 0)], 0.0)


# Model inputs, in order. Raw item columns are turned into these by `design_columns`.
FEATURES: tuple[str, ...] = (
    *(f"cat_{c}" for c in CATEGORIES if c != "other"),
    "cves_log",
    "upstream_change",
    "upstream_unknown",
    *(f"urgency_{u}" for u in URGENCIES),
    "entries_log",
    "release_updates_log",
    "days_prev_log",
    "first_update",
    "prior_rate",
    "prior_regressions_log",
    "history_log",
    "reboot",
)


def design_columns(items: pd.DataFrame, history: History) -> pd.DataFrame:
    """Model inputs from raw items. `items` has: package (source name where known), date (a
    date or datetime: history counts only what came strictly before it), version (the new
    version), cves (int), upstream_changed (bool or None), urgency (str or None), entries
    (int or None) and reboot (bool)."""
    n = len(items)
    packages = items["package"].astype(str).tolist()
    cats = pd.Series([package_category(p) for p in packages], index=items.index)
    families = [package_family(p) for p in packages]
    days = np.array([_day(d) for d in items["date"]], dtype=float)
    hist = history.features(families, days)
    out: dict[str, np.ndarray] = {}
    for c in CATEGORIES:
        if c != "other":
            out[f"cat_{c}"] = (cats == c).to_numpy(dtype=float)
    out["cves_log"] = np.log1p(items["cves"].to_numpy(dtype=float))
    up = items["upstream_changed"]
    out["upstream_change"] = (up == True).to_numpy(dtype=float)  # noqa: E712
    out["upstream_unknown"] = up.isna().to_numpy(dtype=float)
    urg = items["urgency"].map(normalize_urgency)
    for u in URGENCIES:
        out[f"urgency_{u}"] = (urg == u).to_numpy(dtype=float)
    entries = items["entries"].to_numpy(dtype=float)
    out["entries_log"] = np.where(np.isnan(entries), 0.0, np.log1p(np.nan_to_num(entries)))
    out["release_updates_log"] = np.log1p(
        np.array([release_update_number(v) for v in items["version"]], dtype=float)
    )
    dp = hist["days_prev"]
    out["days_prev_log"] = np.where(
        np.isnan(dp), math.log1p(MAX_DAYS), np.log1p(np.clip(np.nan_to_num(dp), 0, MAX_DAYS))
    )
    out["first_update"] = np.isnan(dp).astype(float)
    out["prior_rate"] = hist["prior_rate"]
    out["prior_regressions_log"] = np.log1p(hist["history_k"])
    out["history_log"] = np.log1p(hist["history_n"])
    out["reboot"] = items["reboot"].to_numpy(dtype=float)
    frame = pd.DataFrame(out, index=items.index)[list(FEATURES)]
    # Context for reasons and baselines; not model inputs.
    frame["_category"] = cats
    frame["_family"] = families
    for key in ("history_n", "history_k", "fleet_n", "fleet_k", "days_prev"):
        frame[f"_{key}"] = hist[key]
    assert len(frame) == n
    return frame
