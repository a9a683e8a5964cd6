# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the end of a log file, for messages that quote what a daemon said."""

from __future__ import annotations

import os
from typing import List


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


def last_lines(text: str, lines: int = 15) -> List[str]:
    """The last ``lines`` non-empty lines of ``text`` (carriage returns dropped), as a console log
    is shown: what the guest said last."""
    text = text.replace("\r", "")
    return [line for line in text.split("\n") if line.strip()][-lines:] if lines > 0 else []
