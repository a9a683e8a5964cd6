# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the end of a log file, for messages that quote what a daemon said."""

from __future__ import annotations

import os


def tail(path: str, size: int = 8192) -> str:
    """The last ``size`` bytes of ``path`` as text (undecodable bytes replaced), ``""`` when it
    cannot be read. Reads only those bytes, however long the log."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
