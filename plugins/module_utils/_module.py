# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the AnsibleModule wrapper every module of the collection uses.

It owns the dependency checks (one clear message when libvirt-python is missing), merges
the shared argument specs (deep-copied), and turns the collection's exceptions into
``fail_json`` with the traceback.
"""

from __future__ import annotations

import copy
import traceback
from typing import Any, Dict, Iterable, Optional

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import (
    HAS_LIBVIRT,
    LIBVIRT_ARGUMENT_SPEC,
    LIBVIRT_IMPORT_ERROR,
)


def merge_specs(spec: Dict[str, Any], *common: Dict[str, Any]) -> Dict[str, Any]:
    """A deep copy of ``spec`` with the shared specs merged in (``spec`` wins)."""
    merged: Dict[str, Any] = {}
    for extra in common:
        merged.update(copy.deepcopy(extra))
    merged.update(copy.deepcopy(spec))
    return merged


class FarmModule(AnsibleModule):
    """``AnsibleModule`` with the collection's conventions.

    ``needs_libvirt=True`` merges the ``uri`` option (doc fragment ``batchvirt.farm.libvirt``)
    and fails early, with the install hint, when libvirt-python is missing.
    """

    def __init__(
        self,
        argument_spec: Dict[str, Any],
        needs_libvirt: bool = False,
        common_specs: Iterable[Dict[str, Any]] = (),
        **kwargs: Any,
    ) -> None:
        specs = list(common_specs)
        if needs_libvirt:
            specs.insert(0, LIBVIRT_ARGUMENT_SPEC)
        super().__init__(argument_spec=merge_specs(argument_spec, *specs), **kwargs)
        if needs_libvirt and not HAS_LIBVIRT:
            self.fail_json(msg=missing_required_lib("libvirt-python"), exception=LIBVIRT_IMPORT_ERROR)

    def fail_from(self, exc: BaseException, msg: Optional[str] = None, **result: Any) -> None:
        """Fail with the exception's own message (or ``msg``) and its traceback."""
        self.fail_json(
            msg=msg or str(exc),
            exception="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            **result,
        )
