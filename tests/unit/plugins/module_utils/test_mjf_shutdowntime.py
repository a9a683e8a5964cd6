"""$MACHINEFEATURES/shutdowntime moves when a drain starts early: the time (pure), the guest agent
exchange (against a fake agent holding the guest's files: the real agent runs in the farm test
tests/integration/farm/test_farm_features.py), the claim's report on libvirt's test driver, and
the domain's agent channel that does not make older slots drift."""

from __future__ import annotations

import base64
import datetime
import json

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _guest_agent as ga
from ansible_collections.batchvirt.farm.plugins.module_utils import _mjf
from ansible_collections.batchvirt.farm.plugins.module_utils import _slot_claim as claim
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_domain import differences, domain_xml
from tests.unit.plugins.module_utils.slotmeta import NOW, T0, driver_domain_xml, make
from tests.unit.plugins.module_utils.test_slot_domain import spec

HOUR = datetime.timedelta(hours=1)


# -- the time --------------------------------------------------------------------------------
def test_an_early_drain_moves_shutdowntime_to_the_request_plus_the_walltime():
    meta = make()  # drain_at T0+1d, deadline T0+3d: a two-day walltime
    assert _mjf.shutdowntime(meta.drain_at, meta.deadline) == meta.deadline
    assert _mjf.shutdowntime(meta.drain_at, meta.deadline, NOW) == NOW + datetime.timedelta(days=2)
    # a request at or after the planned drain time moves nothing
    assert _mjf.shutdowntime(meta.drain_at, meta.deadline, meta.drain_at) == meta.deadline
    assert _mjf.shutdowntime(meta.drain_at, meta.deadline, meta.drain_at + HOUR) == meta.deadline
    # never later than the deadline
    assert _mjf.shutdowntime(meta.drain_at, meta.drain_at, NOW) == NOW
    assert _mjf.shutdowntime_content(T0) == b"%d\n" % int(T0.timestamp())


# -- a fake guest agent: the guest's files behind qemuAgentCommand ---------------------------
class FakeAgent:
    def __init__(self, files=None, error=None):
        self.files = dict(files or {})
        self.error = error
        self.handles = {}
        self.log = []

    def __call__(self, dom, command, timeout, flags):
        request = json.loads(command)
        self.log.append((request["execute"], timeout))
        if self.error is not None:
            raise self.error
        args = request.get("arguments", {})
        name = request["execute"]
        if name == "guest-file-open":
            path, mode = args["path"], args["mode"]
            if mode.startswith("r") and path not in self.files:
                raise ga.libvirt.libvirtError(
                    f"internal error: unable to execute QEMU agent command 'guest-file-open': "
                    f"failed to open file '{path}' (mode: '{mode}'): No such file or directory"
                )
            if mode == "w":
                self.files[path] = b""
            handle = len(self.handles) + 1000
            self.handles[handle] = path
            return json.dumps({"return": handle})
        if name == "guest-file-write":
            data = base64.b64decode(args["buf-b64"])
            self.files[self.handles[args["handle"]]] += data
            return json.dumps({"return": {"count": len(data), "eof": False}})
        if name == "guest-file-read":
            data = self.files[self.handles[args["handle"]]]
            return json.dumps({"return": {"count": len(data), "buf-b64": base64.b64encode(data).decode(), "eof": True}})
        if name in ("guest-file-close", "guest-file-flush"):
            return json.dumps({"return": {}})
        raise AssertionError(name)


class Dom:
    def __init__(self, active=True):
        self.active = active

    def isActive(self):
        return self.active


@pytest.fixture
def agent(monkeypatch):
    fake = FakeAgent({"/etc/machinefeatures/shutdowntime": b"1796000000\n"})
    monkeypatch.setattr(ga, "libvirt_qemu", type("Q", (), {"qemuAgentCommand": staticmethod(fake)}))
    monkeypatch.setattr(ga, "HAS_LIBVIRT_QEMU", True)
    return fake


def test_replace_file_rewrites_an_existing_file_with_bounded_commands(agent):
    path = "/etc/machinefeatures/shutdowntime"
    assert ga.replace_file(Dom(), path, b"1795000000\n", timeout=7) == ga.UPDATED
    assert agent.files[path] == b"1795000000\n"
    assert ga.read_file(Dom(), path) == b"1795000000\n"
    assert {timeout for _name, timeout in agent.log[:5]} == {7}


def test_replace_file_never_creates_a_file_the_guest_did_not_publish(agent):
    assert ga.replace_file(Dom(), "/opt/mjf/shutdowntime", b"1\n") == ga.NO_FILE
    assert "/opt/mjf/shutdowntime" not in agent.files


@pytest.mark.parametrize(
    ("message", "status"),
    [
        ("argument unsupported: QEMU guest agent is not configured", ga.NO_AGENT),
        ("Guest agent is not responding: QEMU guest agent is not connected", ga.NO_AGENT),
        ("internal error: unable to execute QEMU agent command 'guest-file-open': Command not allowed", "failed: "),
    ],
)
def test_agent_errors_are_reported_not_raised(agent, message, status):
    agent.error = ga.libvirt.libvirtError(message)
    assert ga.replace_file(Dom(), "/etc/machinefeatures/shutdowntime", b"1\n").startswith(status)
    assert ga.replace_file(Dom(active=False), "/etc/machinefeatures/shutdowntime", b"1\n") == ga.NOT_RUNNING


# -- the claim reports it --------------------------------------------------------------------
libvirt = pytest.importorskip("libvirt")


@pytest.fixture
def conn():
    from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import connect
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import to_xml

    c = connect("test:///default")
    dom = c.defineXML(driver_domain_xml("hv1-slot-01", to_xml(make())))
    dom.create()
    yield c
    dom.destroy()
    dom.undefine()
    c.close()


def _claim(conn, state="requested", **kwargs):
    return claim.run_claims(conn, ["hv1-slot-01"], state, "operator", "op", "retire", "", NOW, **kwargs)[0]


def test_an_early_drain_writes_the_new_shutdowntime_and_a_release_writes_the_deadline_back(conn, agent):
    path = "/etc/machinefeatures/shutdowntime"
    meta = make()
    check = _claim(conn, check_mode=True)
    assert (check.machinefeatures, check.shutdowntime) == (claim.SKIPPED, int((NOW + 2 * 24 * HOUR).timestamp()))
    assert agent.files[path] == b"1796000000\n"  # check mode touches nothing

    drained = _claim(conn)
    moved = int((NOW + 2 * 24 * HOUR).timestamp())
    assert drained.as_dict()["machinefeatures"] == "updated" and drained.as_dict()["shutdowntime"] == moved
    assert agent.files[path] == b"%d\n" % moved and moved < int(meta.deadline.timestamp())

    released = _claim(conn, "cleared")
    assert released.machinefeatures == "updated" and released.shutdowntime == int(meta.deadline.timestamp())
    assert agent.files[path] == b"%d\n" % int(meta.deadline.timestamp())
    # nothing to clear: the file is left alone
    assert _claim(conn, "cleared").machinefeatures == claim.UNCHANGED


def test_a_drain_at_its_planned_time_leaves_shutdowntime_alone(conn, agent):
    late = claim.run_claims(
        conn, ["hv1-slot-01"], "requested", "recycle", "rc", "drain time", "", make().drain_at + HOUR
    )[0]
    assert late.claimed and late.machinefeatures == claim.UNCHANGED and late.shutdowntime is None
    assert not agent.log


def test_a_guest_without_the_agent_is_reported_and_the_drain_still_recorded(conn):
    # the test driver has no agent: the claim is made, the report says why the file did not move
    drained = _claim(conn)
    assert drained.claimed and drained.changed
    assert drained.machinefeatures.startswith(("failed: ", "no_agent")), drained.machinefeatures
    off = _claim(conn, mjf_update=False)
    assert off.machinefeatures == claim.SKIPPED


# -- the agent channel -----------------------------------------------------------------------
def test_the_domain_has_the_agent_channel_and_older_slots_without_it_do_not_drift():
    xml = domain_xml(spec())
    assert '<target type="virtio" name="org.qemu.guest_agent.0" />' in xml
    start = xml.index("<channel")
    old = xml[:start] + xml[xml.index("</channel>") + len("</channel>") :]
    assert "guest_agent" not in old
    assert differences(xml, old) == []


# -- an operator drain through the slot module (state=draining) moves it too ----------------
def _operator_drain(conn, reason="retire", check_mode=False, **options):
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_host import SlotHost
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_remove import drain

    host = SlotHost(conn, NOW, check_mode=check_mode)
    request = {"name": "hv1-slot-01", "machine_features": options or None}
    return drain(host, [request], reason)[0]


def test_state_draining_moves_shutdowntime_once_like_slot_drain(conn, agent):
    path = "/etc/machinefeatures/shutdowntime"
    moved = int((NOW + 2 * 24 * HOUR).timestamp())
    check = _operator_drain(conn, check_mode=True)
    assert (check.result["machinefeatures"], check.result["shutdowntime"]) == (claim.SKIPPED, moved)
    assert agent.files[path] == b"1796000000\n"

    drained = _operator_drain(conn)
    assert drained.changed and drained.result["machinefeatures"] == ga.UPDATED
    assert drained.result["shutdowntime"] == moved and agent.files[path] == b"%d\n" % moved
    # asked again (even with another reason): the first request's time stands, the file is left alone
    again = _operator_drain(conn, reason="still retiring")
    assert again.result["machinefeatures"] == claim.UNCHANGED and again.result["shutdowntime"] is None
    assert agent.files[path] == b"%d\n" % moved


def test_state_draining_honours_machine_features_path_and_enabled(conn, agent):
    agent.files["/opt/mjf/shutdowntime"] = b"1796000000\n"
    drained = _operator_drain(conn, path="/opt/mjf")
    assert drained.result["machinefeatures"] == ga.UPDATED
    assert agent.files["/opt/mjf/shutdowntime"] != b"1796000000\n"
    assert agent.files["/etc/machinefeatures/shutdowntime"] == b"1796000000\n"


def test_state_draining_with_machine_features_disabled_leaves_the_guest_alone(conn, agent):
    drained = _operator_drain(conn, enabled=False)
    assert drained.changed and drained.result["machinefeatures"] == claim.SKIPPED
    assert not agent.log
