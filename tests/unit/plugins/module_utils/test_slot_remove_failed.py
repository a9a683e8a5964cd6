"""Removing a ``failed`` slot without ``force`` (libvirt's test driver, the batch system's view
given): accepted when the batch system shows no job on its node, refused while it shows one or
while the node is healthy; ``force`` still removes anything. In check mode: the test driver
cannot undefine with VIR_DOMAIN_UNDEFINE_NVRAM, and the decision is made before anything is
touched (the real removal runs in tests/integration)."""

from __future__ import annotations

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import BatchView
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_host import SlotError, SlotHost
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import to_xml
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_remove import remove
from tests.unit.plugins.module_utils.slotmeta import NOW, driver_domain_xml, make

libvirt = pytest.importorskip("libvirt")

NAME = "hv1-slot-01"


class Batch:
    """The batch system's bulk view of the node (what the slurm adapter returns)."""

    def __init__(self, view):
        self.view = view

    def bulk_view(self, nodes):
        return dict.fromkeys(nodes, self.view)


@pytest.fixture
def conn():
    from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import connect

    c = connect("test:///default")
    dom = c.defineXML(driver_domain_xml(NAME, to_xml(make())))
    dom.create()
    yield c
    try:
        dom = c.lookupByName(NAME)
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    except libvirt.libvirtError:
        pass
    c.close()


def _remove(conn, view, force=False):
    host = SlotHost(conn, NOW, check_mode=True, batch_adapter=lambda _system: Batch(view))
    return remove(host, [{"name": NAME, "pool": "default-pool"}], force, shutdown_timeout=0)


def _exists(conn):
    return NAME in [d.name() for d in conn.listAllDomains(0)]


@pytest.mark.parametrize(
    "view",
    [
        BatchView(registered=True, state="down", jobs=0),  # slurmd died: Slurm marks the node down
        BatchView(registered=False, state="unknown", jobs=0),  # never registered
    ],
    ids=["down", "never-registered"],
)
def test_a_failed_slot_without_jobs_is_removed_without_force(conn, view):
    done = _remove(conn, view)
    assert done[0].changed and _exists(conn)  # check mode
    assert done[0].actions[0] == "remove domain (was failed)"
    assert done[0].result["end"]["reason_code"] == 500  # lost heartbeat


@pytest.mark.parametrize(
    ("view", "state"),
    [
        (BatchView(registered=True, state="down", jobs=1), "failed"),  # the batch system still shows a job
        (BatchView(registered=True, state="idle", jobs=0), "active"),  # healthy
        (BatchView(registered=True, state="allocated", jobs=1), "active"),
        # missed a ping: Slurm has not given up on it yet (down after SlurmdTimeout), nor does the farm
        (BatchView(registered=False, state="not_responding", jobs=0), "active"),
    ],
    ids=["failed-with-a-job", "healthy-idle", "healthy-busy", "not-responding"],
)
def test_a_slot_that_may_run_jobs_is_refused_without_force(conn, view, state):
    with pytest.raises(SlotError, match=f"slot {NAME} is {state} .*it may run jobs") as err:
        _remove(conn, view)
    assert err.value.option == "force" and _exists(conn) and conn.lookupByName(NAME).isActive()
    # force removes it (farm_recycle_force_failed: "even with jobs")
    forced = _remove(conn, view, force=True)
    assert forced[0].changed and forced[0].actions[0].startswith("remove domain")


def test_without_the_batch_view_a_running_slot_is_never_failed(conn):
    host = SlotHost(conn, NOW, check_mode=True)  # no batch system configured: conservative
    with pytest.raises(SlotError, match="it may run jobs"):
        remove(host, [{"name": NAME, "pool": "default-pool"}], False, shutdown_timeout=0)
    assert _exists(conn)
