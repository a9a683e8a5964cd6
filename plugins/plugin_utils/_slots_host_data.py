# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host variables of the slots inventory as data, never templates (controller side).

Strings read from hypervisors (slot metadata, reasons, extra keys) must never be rendered by
Jinja. How that is said depends on ansible-core: 2.19 and later tag trusted strings, earlier
versions wrap untrusted ones.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional

# Strings read from hypervisors are data, never templates.  A string made only of these
# characters cannot hold a template (no Jinja delimiter, no ``#jinja2:`` header, whatever the
# delimiter overrides), so it is safe to mark it trusted; every other string stays untrusted.
_INERT = re.compile(r"[A-Za-z0-9_.:/@+=, -]*\Z")

try:  # ansible-core >= 2.19: data tagging; only strings tagged as trusted are templated
    from ansible.template import trust_as_template as trusted

    def host_data(value: Any, _memo: Optional[Dict[str, Any]] = None) -> Any:
        """Data read from hypervisors, for host variables: left untagged (never templated),
        except inert strings, which are tagged trusted.  Not a security measure but a fast path:
        the inventory serialiser writes an untrusted string as ``{"__ansible_unsafe": ...}``,
        which costs ansible-inventory about twice the time of a plain one; an inert string renders
        to itself either way.  Equal inert strings share one tagged object (``_memo``); any other
        string is returned as it is, so no tag travels from one value to an equal one."""
        memo = {} if _memo is None else _memo
        if isinstance(value, str):
            if not _INERT.match(value):
                return value
            tagged = memo.get(value)
            if tagged is None:
                tagged = memo[value] = trusted(value)
            return tagged
        if isinstance(value, dict):
            return {key: host_data(item, memo) for key, item in value.items()}
        if isinstance(value, list):
            return [host_data(item, memo) for item in value]
        return value

except ImportError:  # ansible-core < 2.19: every string is a template unless wrapped
    from ansible.utils.unsafe_proxy import wrap_var

    def host_data(value: Any, _memo: Optional[Dict[str, Any]] = None) -> Any:  # type: ignore[misc]
        """Data read from hypervisors, for host variables: wrapped unsafe, never templated."""
        return wrap_var(value)

    def trusted(value: Any) -> Any:  # type: ignore[misc]
        return value
