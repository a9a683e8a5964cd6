"""batch_node: main() under patch_module_args, Slurm commands answered with recorded output."""

from __future__ import annotations

import json
import os
from typing import List

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args

from ansible_collections.batchvirt.farm.plugins.module_utils import _batch_slurm
from ansible_collections.batchvirt.farm.plugins.modules import batch_node

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "slurm")


def fixture(name: str) -> str:
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


@pytest.fixture
def commands(monkeypatch):
    """Record every command main() runs; answer sinfo/squeue/scontrol from recordings."""
    calls: List[List[str]] = []
    env: List[dict] = []
    _batch_slurm._JSON_SUPPORT.clear()

    def run_command(self, args, check_rc=False, environ_update=None, **_kw):  # type: ignore[no-untyped-def]
        calls.append(list(args))
        env.append(dict(environ_update or {}))
        if args[:2] == ["sinfo", "--json"]:
            return 0, fixture("sinfo_mixed.json"), ""
        if args[:2] == ["squeue", "--json"]:
            return 0, fixture("squeue_running.json"), ""
        if args[:2] == ["scontrol", "-o"]:
            return 0, fixture("scontrol_nodes.txt"), ""
        if args[:2] == ["scontrol", "update"]:
            return 0, "", ""
        raise AssertionError(f"unexpected command {args}")

    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    yield calls, env
    _batch_slurm._JSON_SUPPORT.clear()


def run(args, capsys):
    with patch_module_args(args), pytest.raises(SystemExit):
        batch_node.main()
    return json.loads(capsys.readouterr().out)


def test_drain_already_draining_same_reason_is_unchanged(commands, capsys):
    calls, env = commands
    res = run(
        {"name": ["bx1"], "state": "drained", "reason": "kernel update 2026-11", "slurm_conf": "/x/slurm.conf"}, capsys
    )
    assert res["changed"] is False
    assert res["nodes"]["bx1"]["state"] == "draining" and res["nodes"]["bx1"]["jobs"] == 1
    assert [c[0] for c in calls] == ["sinfo", "squeue"]
    assert env[0] == {"SLURM_CONF": "/x/slurm.conf"}


def test_drain_in_check_mode_and_for_real(commands, capsys):
    calls, _env = commands
    res = run(
        {"name": "bx2", "state": "drained", "reason": "r", "_ansible_check_mode": True, "_ansible_diff": True}, capsys
    )
    assert res["changed"] is True and res["diff"] == {"before": {"bx2": "allocated"}, "after": {"bx2": "drained"}}
    assert not any(c[:2] == ["scontrol", "update"] for c in calls)
    res = run({"name": "bx2", "state": "drained", "reason": "r"}, capsys)
    assert ["scontrol", "update", "nodename=bx2", "state=DRAIN", "reason=r"] in calls
    assert "diff" not in res


def test_unknown_node_fails_with_the_node_name(commands, capsys):
    res = run({"name": ["bx1", "nosuch"], "state": "resumed"}, capsys)
    assert res["failed"] is True
    assert "unknown node(s) nosuch" in res["msg"]


def test_absent_refuses_a_busy_node(commands, capsys):
    res = run({"name": "bx2", "state": "absent"}, capsys)
    assert res["failed"] is True
    assert "refusing to remove node(s) with running jobs: bx2 (1 job)" in res["msg"]
