# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: files written inside a running slot VM through the QEMU guest agent.

The slot domain carries a virtio-serial channel ``org.qemu.guest_agent.0`` and the worker image
runs ``qemu-guest-agent``. libvirt talks to the agent over that channel, so the hypervisor can
rewrite a file in the guest with no network route to it (user-mode, bridged or routed networks
alike). Everything here is best effort with a bounded timeout: a guest without the agent (an old
image, a slot created before the channel existed) or a busy one is reported, never an error.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, Optional

try:
    import libvirt_qemu

    HAS_LIBVIRT_QEMU = True
except ImportError:  # pragma: no cover - depends on the host
    libvirt_qemu = None
    HAS_LIBVIRT_QEMU = False

from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import libvirt

CHANNEL_NAME = "org.qemu.guest_agent.0"
DEFAULT_TIMEOUT = 10  # seconds per agent command

# What a best-effort write reports (the slot_drain module's RV(slots[].machinefeatures)).
UPDATED = "updated"
NOT_RUNNING = "not_running"
NO_AGENT = "no_agent"
NO_FILE = "no_file"


class GuestAgentError(Exception):
    """An agent command that failed; ``status`` is what to report (no_agent, no_file, failed: ...)."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def _status_of(exc: Exception, what: str) -> str:
    """The report for a libvirt error of an agent command."""
    text = str(exc)
    code = exc.get_error_code() if hasattr(exc, "get_error_code") else None
    lowered = text.lower()
    if code in (86, 97) or "not configured" in lowered or "not connected" in lowered or "not responding" in lowered:
        # VIR_ERR_AGENT_UNRESPONSIVE, VIR_ERR_AGENT_UNSYNCED; no channel; agent not (yet) running
        return NO_AGENT
    if "no such file" in lowered:
        return NO_FILE
    return f"failed: {what}: {text}"


def agent_command(dom: Any, command: str, arguments: Optional[Dict[str, Any]], timeout: int) -> Any:
    """One agent command; its ``return`` value. Raises :class:`GuestAgentError`."""
    if not HAS_LIBVIRT_QEMU:
        raise GuestAgentError("failed: the Python module libvirt_qemu (libvirt-python) is not installed")
    request: Dict[str, Any] = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    try:
        reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps(request), int(timeout), 0)
    except libvirt.libvirtError as exc:
        raise GuestAgentError(_status_of(exc, command)) from None
    try:
        return json.loads(reply).get("return")
    except (TypeError, ValueError, AttributeError):
        raise GuestAgentError(f"failed: {command}: unreadable agent reply {reply!r}") from None


def _close(dom: Any, handle: Any, timeout: int) -> None:
    agent_command(dom, "guest-file-close", {"handle": handle}, timeout)


def replace_file(dom: Any, path: str, content: bytes, timeout: int = DEFAULT_TIMEOUT) -> str:
    """Rewrite the existing file ``path`` in the guest with ``content``; returns a status
    (:data:`UPDATED`, :data:`NOT_RUNNING`, :data:`NO_AGENT`, :data:`NO_FILE` or ``failed: ...``).

    The file must exist already (it is opened for reading first): a guest that never published
    it (machine features disabled, another path) is left alone rather than given a stray file.
    """
    try:
        if not dom.isActive():
            return NOT_RUNNING
    except libvirt.libvirtError as exc:
        return f"failed: {exc}"
    try:
        handle = agent_command(dom, "guest-file-open", {"path": path, "mode": "r"}, timeout)
        _close(dom, handle, timeout)
        handle = agent_command(dom, "guest-file-open", {"path": path, "mode": "w"}, timeout)
        try:
            written = agent_command(
                dom,
                "guest-file-write",
                {"handle": handle, "buf-b64": base64.b64encode(content).decode("ascii")},
                timeout,
            )
            agent_command(dom, "guest-file-flush", {"handle": handle}, timeout)
        finally:
            _close(dom, handle, timeout)
    except GuestAgentError as exc:
        return exc.status
    count = written.get("count") if isinstance(written, dict) else None
    if count != len(content):
        return f"failed: guest-file-write wrote {count} of {len(content)} bytes"
    return UPDATED


def read_file(dom: Any, path: str, timeout: int = DEFAULT_TIMEOUT, limit: int = 65536) -> bytes:
    """The content of ``path`` in the guest (up to ``limit`` bytes). Raises :class:`GuestAgentError`."""
    handle = agent_command(dom, "guest-file-open", {"path": path, "mode": "r"}, timeout)
    try:
        reply = agent_command(dom, "guest-file-read", {"handle": handle, "count": limit}, timeout)
    finally:
        _close(dom, handle, timeout)
    return base64.b64decode((reply or {}).get("buf-b64", ""))
