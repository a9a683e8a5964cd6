"""The one version order, as a table of versions seen in real image lists."""

from __future__ import annotations

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._version import (
    compare_versions,
    newest,
    sort_versions,
    version_key,
)

LOWER_HIGHER = [
    ("1", "2"),
    ("9", "10"),
    ("1.9", "1.10"),
    ("1.2", "1.2.1"),
    ("2026.11.21", "2026-11-22"),
    ("2026-11-21", "2026.11.22"),
    ("20261121.1", "20261121.2"),
    ("20261121.9", "20261122.1"),
    ("3.3.1-1", "3.3.1-2"),
    ("3.3.1-9", "3.3.2-1"),
    ("1.0rc1", "1.0"),
    ("1.0", "1.0.1"),
    ("1.0beta", "1.0rc1"),
    ("CentOS 7 (2020-01-01)", "CentOS 7 (2020-02-01)"),
    ("v1.2", "v1.10"),
]


@pytest.mark.parametrize("lower,higher", LOWER_HIGHER)
def test_version_order_table(lower: str, higher: str) -> None:
    assert version_key(lower) < version_key(higher)
    assert compare_versions(lower, higher) == -1
    assert compare_versions(higher, lower) == 1


@pytest.mark.parametrize("a,b", [("1.0", "1"), ("2026.11.21", "2026-11-21"), ("RC1", "rc1"), ("1.0.0", "1")])
def test_equal_versions(a: str, b: str) -> None:
    assert compare_versions(a, b) == 0


def test_sort_and_newest_are_stable_and_total() -> None:
    versions = ["1.10", "1.9", "1.0rc1", "1", "2026-11-22", "free text", ""]
    ordered = sort_versions(versions)
    assert ordered == sorted(versions, key=lambda v: (version_key(v), v))
    assert newest(versions) == "2026-11-22"
    assert newest([]) == ""
    assert sort_versions(versions, newest_first=True)[0] == "2026-11-22"
