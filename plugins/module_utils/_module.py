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
from typing import Any, Callable, Dict, Iterable, Optional

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import (
    HAS_LIBVIRT,
    LIBVIRT_ARGUMENT_SPEC,
    LIBVIRT_IMPORT_ERROR,
    FarmLibvirtError,
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
        """Fail with the exception's own message (or ``msg``), its traceback, the input it
        blames (``option``, from :class:`FarmError`) and any partial result it carries."""
        for key, value in (getattr(exc, "result", None) or {}).items():
            result.setdefault(key, value)
        option = getattr(exc, "option", "")
        if option:
            result.setdefault("option", option)
        self.fail_json(
            msg=msg or str(exc),
            exception="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            **result,
        )


def run_module(
    module: FarmModule, work: Callable[[FarmModule], Dict[str, Any]], what: str = "", name_farm_errors: bool = False
) -> None:
    """Run a module's engine (``work(module)`` returns the result) and exit with it.

    A failure names the input to blame (``option`` of a :class:`FarmError`). Errors that are
    not the collection's (a libvirt error not anticipated) read ``<what>: <message>``; with
    ``name_farm_errors`` the collection's own do too (``pool batchvirt-slots: ...``), except a
    failed connection, whose message says everything.
    """
    try:
        result = work(module)
    except FarmLibvirtError as exc:
        module.fail_from(exc)
    except FarmError as exc:
        module.fail_from(exc, msg=f"{what}: {exc}" if what and name_farm_errors else None)
    except Exception as exc:  # libvirt errors and the like: fail with their message
        module.fail_from(exc, msg=f"{what}: {exc}" if what else None)
    module.exit_json(**result)
