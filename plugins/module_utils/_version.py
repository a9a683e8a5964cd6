# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the one order of image versions.

The image cache, the image-list subscription (roll-back check), the inventory
(``farm_image_outdated``), golden-node snapshots and image selection all sort versions with
:func:`version_key`. The rules, in the order they apply:

- A version is read as runs of digits and runs of letters; every other character
  (``.``, ``-``, ``_``, ``+``, ``~``, space, ...) only separates. So ``2026.11.21`` and
  ``2026-11-21`` are the same version, and ``2026.11.21 < 2026-11-22``.
- Digit runs compare as numbers: ``1.9 < 1.10``, ``20261121 < 20261122``.
- Letter runs compare case-insensitively, and rank below a number and below the end of the
  version, so a pre-release comes before its release: ``1.0rc1 < 1.0 < 1.0.1``.
- Zero parts before a word or the end do not count: ``1.0 == 1``, ``1.0rc1 == 1rc1``.

Free text (AppDB titles such as ``CentOS 7 (2020-01-01)``) still gets a total, stable order.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Tuple

_PART = re.compile(r"\d+|[^\W\d_]+")

# (rank, number, text): letters < end of version < numbers
_WORD, _END, _NUMBER = 0, 1, 2

VersionKey = Tuple[Tuple[int, int, str], ...]


def version_key(version: str) -> VersionKey:
    """A sort key for ``version`` (see the module docstring for the rules)."""
    parts: List[Tuple[int, int, str]] = []
    for piece in _PART.findall(version or ""):
        if piece.isdigit():
            parts.append((_NUMBER, int(piece), ""))
        else:
            _drop_trailing_zeros(parts)
            parts.append((_WORD, 0, piece.lower()))
    _drop_trailing_zeros(parts)
    parts.append((_END, 0, ""))
    return tuple(parts)


def _drop_trailing_zeros(parts: List[Tuple[int, int, str]]) -> None:
    """``1.0`` is ``1`` and ``1.0rc1`` is ``1rc1``: zero parts before a word or the end do not count."""
    while len(parts) > 1 and parts[-1] == (_NUMBER, 0, "") and parts[-2][0] == _NUMBER:
        parts.pop()


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` sorts before, with or after ``b``."""
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)


def sort_versions(versions: Iterable[str], newest_first: bool = False) -> List[str]:
    """``versions`` in the one order (ties broken by the text, so the order is stable)."""
    return sorted(versions, key=lambda v: (version_key(v), v), reverse=newest_first)


def newest(versions: Iterable[str]) -> str:
    """The highest of ``versions`` (``""`` when there is none)."""
    ordered = sort_versions(versions)
    return ordered[-1] if ordered else ""
