"""The tracker's advisory lists: parsing and labels as the data's README defines them."""

from __future__ import annotations

import gzip
from datetime import date
from pathlib import Path

import pytest

from patchpilot.errors import BadInputError
from patchpilot.risk.advisories import label_advisories, parse_advisory_list, read_advisory_list

FIXTURES = Path(__file__).parents[1] / "fixtures" / "debian-security"

SAMPLE = """\
[13 Oct 2019] DSA-4539-3 openssl - regression update
\t[stretch] - openssl 1.1.0l-1~deb9u3
[07 Oct 2019] DSA-4539-2 openssh - regression update
\t[buster] - openssh 1:7.9p1-10+deb10u2
[30 Sep 2019] DSA-4539-1 openssl - security update
\t{CVE-2019-1547 CVE-2019-1549 CVE-2019-1563}
\t[stretch] - openssl 1.1.0l-1~deb9u1
\t[buster] - openssl 1.1.1d-0+deb10u1
[20 Feb 2023] DSA-5356-2 sox - security update
\t{CVE-2023-1234}
\t[bullseye] - sox 14.4.2+git20190427-2+deb11u3
[17 Feb 2023] DSA-5356-1 sox - security update
\t{CVE-2021-3643 CVE-2021-23159}
\t[bullseye] - sox 14.4.2+git20190427-2+deb11u2
[18 Apr 2018] DSA-4205-1 jessie end-of-life
[02 Jul 2002] DSA-135 libapache-mod-ssl -- buffer overflow / DoS
\t{CVE-2002-0653}
\t[woody] - libapache-mod-ssl 2.8.9-2
"""


def test_entries_are_parsed_with_cves_and_fixed_versions() -> None:
    revs = parse_advisory_list(SAMPLE.splitlines())
    # The end-of-life notice fixes no package and is dropped.
    assert [f"{r.number}-{r.revision}" for r in revs] == [
        "DSA-4539-3",
        "DSA-4539-2",
        "DSA-4539-1",
        "DSA-5356-2",
        "DSA-5356-1",
        "DSA-135-1",
    ]
    first = revs[2]
    assert first.published == date(2019, 9, 30) and first.package == "openssl"
    assert first.cves == ["CVE-2019-1547", "CVE-2019-1549", "CVE-2019-1563"]
    assert first.fixes[1] == ("buster", "openssl", "1.1.1d-0+deb10u1")
    assert revs[-1].title == "buffer overflow / DoS"


def test_labels_follow_the_regression_titles_only() -> None:
    advisories = {a.advisory: a for a in label_advisories(parse_advisory_list(SAMPLE.splitlines()))}
    assert set(advisories) == {"DSA-4539-1", "DSA-5356-1", "DSA-135-1"}
    # The regression fix shipped another package (openssh); the label is openssl's advisory's,
    # known from the first regression revision on.
    openssl = advisories["DSA-4539-1"]
    assert openssl.regression and openssl.regression_date == date(2019, 10, 7)
    assert openssl.cves == 3 and openssl.releases == ("stretch", "buster")
    # A later "security update" revision is an incomplete fix, not a regression.
    assert not advisories["DSA-5356-1"].regression
    assert not advisories["DSA-135-1"].regression


@pytest.mark.parametrize(
    "text",
    [
        "[31 Foo 2019] DSA-1-1 x - security update\n\t[buster] - x 1\n",
        "[not a header\n",
        "just some text\nwithout entries\n",
    ],
)
def test_garbage_is_refused_with_a_hint(text: str) -> None:
    with pytest.raises(BadInputError) as exc:
        parse_advisory_list(text.splitlines(), source="x.txt")
    assert exc.value.message.startswith("x.txt")
    assert exc.value.hint


def test_missing_file_names_where_to_download_it(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as exc:
        read_advisory_list(tmp_path / "nope")
    assert "security-tracker" in (exc.value.hint or "")


def test_the_real_lists_parse_plain_and_gzipped(tmp_path: Path) -> None:
    dsa = read_advisory_list(FIXTURES / "DSA-list.txt.gz")
    plain = tmp_path / "DSA-list.txt"
    plain.write_bytes(gzip.decompress((FIXTURES / "DSA-list.txt.gz").read_bytes()))
    assert len(read_advisory_list(plain)) == len(dsa)
    dla = read_advisory_list(FIXTURES / "DLA-list.txt.gz")
    labelled = list(label_advisories(dsa + dla))
    recent = [a for a in labelled if a.published >= date(2014, 1, 1)]
    rate = sum(a.regression for a in recent) / len(recent)
    # The data's README: about 3% of advisories from 2014 on were followed by a regression.
    assert 0.025 < rate < 0.045
    assert any(a.advisory == "DSA-4539-1" and a.regression for a in labelled)
