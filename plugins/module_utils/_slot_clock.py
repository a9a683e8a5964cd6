# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the clock every lifecycle reader uses, injectable for tests.

``BATCHVIRT_FARM_NOW`` (an ISO-8601 time such as ``2026-11-21T06:00:00Z``) in the environment
of the module or plugin replaces the real clock, so that tests and dry runs can move a farm
past its ``drain_at`` or ``deadline`` without sleeping.
"""

from __future__ import annotations

import datetime
import os
from typing import Mapping, Optional

from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import parse_time
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import utcnow

NOW_ENV = "BATCHVIRT_FARM_NOW"


def farm_now(environ: Optional[Mapping[str, str]] = None) -> datetime.datetime:
    """``BATCHVIRT_FARM_NOW`` when set (raises SlotMetadataError naming it if unreadable), else UTC now."""
    env = os.environ if environ is None else environ
    value = env.get(NOW_ENV, "").strip()
    if value:
        return parse_time(value, NOW_ENV)
    return utcnow()
