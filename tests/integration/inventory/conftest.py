"""Fixtures of the inventory area: test-driver farms and an ``ansible-inventory`` runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Dict, List

import pytest
import yaml

from tests.testbed.ansible import COLLECTIONS

ANSIBLE_INVENTORY = os.path.join(os.path.dirname(sys.executable), "ansible-inventory")


def _plain(obj: Dict[str, Any]) -> Any:
    """ansible-core 2.19 serialises strings not trusted as templates (all remote data) as
    ``{"__ansible_unsafe": "..."}`` in the legacy inventory profile; AWX reads them back."""
    if len(obj) == 1 and "__ansible_unsafe" in obj:
        return obj["__ansible_unsafe"]
    return obj


@dataclass
class InventoryRun:
    rc: int
    stdout: str
    stderr: str

    @property
    def data(self) -> Dict[str, Any]:
        assert self.rc == 0, f"ansible-inventory failed ({self.rc}):\n{self.stderr[-3000:]}"
        return json.loads(self.stdout, object_hook=_plain)

    def hosts(self, group: str) -> List[str]:
        return sorted(self.data.get(group, {}).get("hosts", []))

    def hostvars(self, host: str) -> Dict[str, Any]:
        return self.data["_meta"]["hostvars"][host]


def run_inventory(*sources: str, export: bool = False, env: Dict[str, str] = None, cwd: str = None) -> InventoryRun:
    cmd = [ANSIBLE_INVENTORY]
    for source in sources:
        cmd += ["-i", source]
    cmd.append("--list")
    if export:
        cmd.append("--export")
    environ = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1")
    environ.update(env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=environ, cwd=cwd, timeout=300, check=False)
    return InventoryRun(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def inventory_file(tmp_path):
    """Write a plugin configuration file and return its path."""

    def write(name: str = "farm.farm.slots.yml", **config: Any) -> str:
        path = tmp_path / name
        path.write_text(yaml.safe_dump({"plugin": "batchvirt.farm.slots", **config}))
        return str(path)

    return write
