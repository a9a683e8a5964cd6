"""Run playbooks the way AWX does: through ansible-runner, with a private data dir, and
give tests the job events to assert on."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Type, Union

import ansible_runner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, "build", "collections")
LOCALHOST = {
    "all": {
        "hosts": {
            "localhost": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
            }
        },
        "children": {"hypervisors": {"hosts": {"localhost": {}}}},
    }
}


@dataclass
class PlaybookResult:
    rc: int
    status: str
    stats: Dict[str, Any]
    events: List[Dict[str, Any]] = field(repr=False)
    stdout: str = field(repr=False, default="")

    @property
    def failed(self) -> bool:
        return self.rc != 0

    @property
    def changed(self) -> bool:
        return any(self.stats.get("changed", {}).values())

    def task_events(self, task: str, event: str = "runner_on_ok") -> List[Dict[str, Any]]:
        return [
            e["event_data"]
            for e in self.events
            if e.get("event") == event and e.get("event_data", {}).get("task") == task
        ]

    def results(self, task: str) -> List[Dict[str, Any]]:
        """The module results of every host's run of a task (ok, failed or skipped)."""
        out = []
        for e in self.events:
            data = e.get("event_data", {})
            if data.get("task") == task and e.get("event") in (
                "runner_on_ok",
                "runner_on_failed",
                "runner_on_skipped",
                "runner_item_on_ok",
            ):
                out.append(data.get("res", {}))
        return out

    def summary(self, var: str, task: str = "Show the summary") -> Any:
        """The variable ``var`` a lifecycle play prints at its end (``debug: var=...``)."""
        for res in self.results(task):
            if var in res:
                return res[var]
        raise AssertionError(f"no {var} in the job events:\n{self.stdout[-4000:]}")

    def changed_tasks(self) -> List[str]:
        return [
            e["event_data"]["task"]
            for e in self.events
            if e.get("event") == "runner_on_ok" and e.get("event_data", {}).get("res", {}).get("changed")
        ]


def run_playbook(
    playbook: str,
    extravars: Optional[Dict[str, Any]] = None,
    inventory: Union[None, str, Dict[str, Any]] = None,
    check: bool = False,
    diff: bool = False,
    limit: Optional[str] = None,
    envvars: Optional[Dict[str, str]] = None,
    private_data_dir: Optional[str] = None,
    quiet: bool = True,
    timeout: Optional[int] = None,
    tags: Optional[str] = None,
) -> PlaybookResult:
    """Run ``playbook`` (a path, relative ones from the repository root) through ansible-runner."""
    if not os.path.isabs(playbook):
        playbook = os.path.join(ROOT, playbook)
    cmdline = []
    if check:
        cmdline.append("--check")
    if diff:
        cmdline.append("--diff")
    if tags:
        cmdline += ["--tags", tags]
    env = {
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
        "ANSIBLE_ROLES_PATH": os.path.join(ROOT, "roles"),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    }
    env.update(envvars or {})
    # ansible-runner writes the extra variables (munge keys among them) into env/extravars of its
    # private data dir: a directory of our own is removed as soon as the events are read
    own_dir = private_data_dir is None
    pdd = private_data_dir or tempfile.mkdtemp(prefix="bvt-runner-")
    try:
        runner = ansible_runner.run(
            private_data_dir=pdd,
            playbook=playbook,
            inventory=inventory if inventory is not None else LOCALHOST,
            extravars=extravars or {},
            cmdline=" ".join(cmdline) or None,
            envvars=env,
            limit=limit,
            quiet=quiet,
            timeout=timeout,
        )
        stdout = runner.stdout.read() if runner.stdout else ""
        return PlaybookResult(
            rc=runner.rc, status=runner.status, stats=runner.stats or {}, events=list(runner.events), stdout=stdout
        )
    finally:
        if own_dir:
            shutil.rmtree(pdd, ignore_errors=True)


def check_playbook(
    result: PlaybookResult, what: str, error: Type[Exception] = AssertionError, tail: int = 6000
) -> PlaybookResult:
    """``result`` when the playbook succeeded, else ``error`` naming ``what`` with its output's end."""
    if result.rc != 0:
        raise error(f"{what} failed (rc {result.rc}):\n{result.stdout[-tail:]}")
    return result
