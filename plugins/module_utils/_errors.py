# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the one base class of the collection's errors.

Every error the engines raise for bad input or a refused operation derives from
:class:`FarmError`. It carries the message a site admin reads (which field, what to do) and,
when one input is to blame, the name of that input in ``option`` (a module option such as
``slots[0].memory``, an image-list field such as ``hv:version``, or a role variable). The
modules' ``fail_from`` reads these two attributes and nothing else.
"""

from __future__ import annotations

from typing import Any, Dict


class FarmError(Exception):
    """An error with a message for a person and, optionally, the input to blame."""

    def __init__(self, message: str, option: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.option = option

    def __str__(self) -> str:
        return self.message

    def to_result(self) -> Dict[str, Any]:
        """The keys a module adds to its failure result (``option`` only when known)."""
        return {"option": self.option} if self.option else {}
