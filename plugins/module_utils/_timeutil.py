# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the clock and the one time format of the collection.

Every time the collection writes (slot metadata, image lists, the image cache, accounting
records) is UTC ISO-8601 with a ``Z`` and whole seconds: ``2026-11-21T06:00:00Z``.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Optional


def utcnow() -> datetime.datetime:
    """The current time, timezone-aware UTC (the clock every caller injects)."""
    return datetime.datetime.now(datetime.timezone.utc)


def format_time(value: datetime.datetime) -> str:
    """UTC ISO-8601 with a ``Z`` suffix and whole seconds; refuses a naive time."""
    if value.tzinfo is None:
        raise ValueError("times must be timezone-aware UTC, got a naive %r" % (value,))
    return value.astimezone(datetime.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(
    value: Any,
    field_name: str = "time",
    error: Optional[Callable[[str, str], Exception]] = None,
) -> datetime.datetime:
    """Parse ISO-8601 (``Z`` or an explicit offset; a naive value is taken as UTC) into UTC.

    A value that is not such a time raises ``error(message, field_name)`` (``ValueError`` by
    default), so each caller keeps its own error class while the rule lives here.
    """
    text = value.strip() if isinstance(value, str) else ""
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        message = f"{field_name}: {value!r} is not an ISO-8601 UTC time such as 2026-11-21T06:00:00Z"
        raise (error(message, field_name) if error else ValueError(message)) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.astimezone(datetime.timezone.utc)
