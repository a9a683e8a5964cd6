# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the batch system adapter interface (Slurm, HTCondor).

One interface for every batch system the farm can feed:

* :func:`get_adapter` ``(system, **options)`` returns a :class:`BatchAdapter`;
* :meth:`BatchAdapter.bulk_view` answers for many nodes with ONE query of the batch system
  (a constant number of commands, whatever the number of nodes) and returns
  :class:`~._lifecycle.BatchView` objects, the batch part of the slot lifecycle;
* ``register``, ``drain``, ``resume``, ``remove``, ``node_state`` and ``running_jobs`` act on
  nodes; every failure raises :class:`BatchError` whose message says what failed and what to do;
* :func:`cloud_init_registration` gives the cloud-init ``write_files`` / ``runcmd`` entries that
  let a VM register itself at boot (the ``slot`` module merges them into its user-data).

Commands run through a *runner*: a callable ``runner(argv) -> (rc, stdout, stderr)``, by default
:func:`subprocess_runner`; modules pass ``AnsibleModule.run_command`` through
:func:`module_runner`, and unit tests pass recorded output of real daemons.
"""

from __future__ import annotations

import base64
import datetime
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils import _lifecycle
from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import BatchView

SYSTEMS = ("slurm", "htcondor")

# Normalised node states (NodeStatus.state and BatchView.state).
ABSENT = "absent"  # the batch system does not know the node
IDLE = "idle"
ALLOCATED = "allocated"  # busy (Slurm ALLOCATED/MIXED/COMPLETING, HTCondor claimed)
MIXED = "mixed"
COMPLETING = "completing"
DRAINING = "draining"  # drain requested, jobs still run
DRAINED = "drained"  # drain requested, no job runs
DOWN = "down"
NOT_RESPONDING = _lifecycle.NOT_RESPONDING  # pings missed; the lifecycle waits for the verdict (down)
FUTURE = "future"  # declared, not registered yet (Slurm FUTURE / powered-down CLOUD)
UNKNOWN = "unknown"

Runner = Callable[[Sequence[str]], Tuple[int, str, str]]


class BatchError(FarmError):
    """A batch system operation failed; ``message`` says what failed and what to do, ``option``
    names the input to blame when one is; ``command``, ``stderr`` and ``nodes`` (the last view)
    go into the ``batch_node`` module's failure result."""

    def __init__(
        self,
        message: str,
        option: str = "",
        *,
        command: Optional[Sequence[str]] = None,
        stderr: str = "",
        nodes: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(message, option)
        self.command = list(command) if command else []
        self.stderr = stderr
        self.nodes = nodes or {}


@dataclass
class NodeStatus:
    """What one bulk query says of one node, richer than :class:`BatchView`."""

    name: str
    state: str = ABSENT
    raw_state: str = ""
    flags: Tuple[str, ...] = ()
    reason: str = ""
    address: str = ""
    port: int = 0
    features: Tuple[str, ...] = ()
    registered: bool = False
    drain: bool = False
    jobs: int = 0
    job_ids: List[str] = field(default_factory=list)
    dynamic: bool = False
    since: Optional[datetime.datetime] = None  # when the node entered its state (Slurm's reason time)

    @property
    def known(self) -> bool:
        return self.state != ABSENT

    def view(self) -> BatchView:
        return BatchView(
            registered=self.registered, drain=self.drain, jobs=self.jobs, state=self.state, state_since=self.since
        )

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "raw_state": self.raw_state,
            "reason": self.reason,
            "registered": self.registered,
            "drain": self.drain,
            "jobs": self.jobs,
            "job_ids": list(self.job_ids),
            "address": self.address,
            "features": list(self.features),
        }


def subprocess_runner(env: Optional[Mapping[str, str]] = None, timeout: float = 120) -> Runner:
    """A runner on :mod:`subprocess` (text output, never raises on a non-zero exit)."""
    full_env = dict(os.environ)
    full_env.update(env or {})

    def run(argv: Sequence[str]) -> Tuple[int, str, str]:
        try:
            proc = subprocess.run(
                list(argv), capture_output=True, text=True, env=full_env, timeout=timeout, check=False
            )
        except FileNotFoundError:
            return 127, "", f"{argv[0]}: command not found"
        except subprocess.TimeoutExpired:
            return 124, "", f"{' '.join(argv)}: no answer within {timeout} s"
        return proc.returncode, proc.stdout, proc.stderr

    return run


def module_runner(module: Any, env: Optional[Mapping[str, str]] = None) -> Runner:
    """A runner on ``AnsibleModule.run_command`` (with extra environment variables)."""

    def run(argv: Sequence[str]) -> Tuple[int, str, str]:
        kwargs: Dict[str, Any] = {"check_rc": False}
        if env:
            kwargs["environ_update"] = dict(env)
        try:
            rc, out, err = module.run_command(list(argv), **kwargs)
        except OSError as exc:  # pragma: no cover - run_command reports most of these itself
            return 127, "", str(exc)
        return rc, out, err

    return run


def as_list(nodes: Optional[Iterable[str]]) -> List[str]:
    """Node names as a de-duplicated list in the caller's order (a string is one node)."""
    if nodes is None:
        return []
    if isinstance(nodes, str):
        nodes = [nodes]
    seen: Dict[str, None] = {}
    for name in nodes:
        name = str(name).strip()
        if name:
            seen.setdefault(name, None)
    return list(seen)


class BatchAdapter:
    """The interface every batch system adapter implements.

    Subclasses implement :meth:`bulk_status` (the one bulk query) and the actions.
    """

    system = ""

    def __init__(
        self, runner: Optional[Runner] = None, bin_dir: Optional[str] = None, env: Optional[Mapping[str, str]] = None
    ) -> None:
        """``runner`` runs the commands (default: :func:`subprocess_runner` with ``env``);
        ``bin_dir`` is where the batch system's commands live (default: ``PATH``)."""
        self.runner: Runner = runner or subprocess_runner(env)
        self.bin_dir = bin_dir or ""
        self.commands_run = 0

    def run_command(self, argv: Sequence[str]) -> Tuple[int, str, str]:
        """Run one batch system command (``argv[0]`` found in ``bin_dir``), counted in ``commands_run``."""
        self.commands_run += 1
        command = os.path.join(self.bin_dir, argv[0]) if self.bin_dir else argv[0]
        return self.runner([command] + list(argv[1:]))

    # -- queries -------------------------------------------------------------------------------
    def bulk_status(self, node_names: Optional[Iterable[str]] = None) -> Dict[str, NodeStatus]:
        """Every node (or the named ones) with state, reason and jobs, from one bulk query.

        Named nodes the batch system does not know are returned with ``state='absent'``.
        """
        raise NotImplementedError

    def bulk_view(self, node_names: Optional[Iterable[str]] = None) -> Dict[str, BatchView]:
        """The lifecycle's view of every node (or the named ones), from ONE bulk query."""
        return {name: status.view() for name, status in self.bulk_status(node_names).items()}

    def node_state(self, node: str) -> NodeStatus:
        """One node's status; raises :class:`BatchError` when the batch system does not know it."""
        status = self.bulk_status([node])[node]
        if not status.known:
            raise BatchError(self.unknown_node_message([node]), nodes={node: status.as_dict()})
        return status

    def running_jobs(self, nodes: Iterable[str]) -> Dict[str, int]:
        """Number of running jobs per node (one bulk query)."""
        return {name: status.jobs for name, status in self.bulk_status(as_list(nodes)).items()}

    def diagnose_registration(self, nodes: Sequence[str], since: float) -> str:
        """Why ``nodes`` may not have registered since ``since`` (epoch seconds): a hint, or ''."""
        return ""

    def unknown_node_message(self, nodes: Sequence[str]) -> str:
        return (
            f"{self.system}: unknown node(s) {', '.join(nodes)}: the batch system does not know them. "
            "Check the name (the slot's node name), or register the node first (state=present)."
        )

    # Whether register() sets the features of a node the batch system knows already (Slurm:
    # ``scontrol update availablefeatures=``); HTCondor execute nodes advertise their own.
    updates_features = False

    # -- actions -------------------------------------------------------------------------------
    def register(self, node: str, **params: Any) -> bool:
        """Make ``node`` known to the batch system; True when something changed."""
        raise NotImplementedError

    def drain(self, nodes: Iterable[str], reason: str) -> None:
        """Stop new jobs on ``nodes``; running jobs go on to their end (nothing is killed)."""
        raise NotImplementedError

    def resume(self, nodes: Iterable[str]) -> None:
        """Let ``nodes`` take jobs again."""
        raise NotImplementedError

    def remove(self, nodes: Iterable[str]) -> None:
        """Take ``nodes`` out of the batch system (callers check for running jobs first)."""
        raise NotImplementedError


def get_adapter(system: str, **options: Any) -> BatchAdapter:
    """The adapter for ``system`` (``slurm`` or ``htcondor``).

    Options: ``runner`` (a runner callable), ``env`` (environment for the default runner),
    ``bin_dir`` (where the batch system's commands live); Slurm also takes ``slurm_conf``
    (a slurm.conf path, passed as ``SLURM_CONF``) and ``use_json`` (None: detect once).
    """
    if system == "slurm":
        from ansible_collections.batchvirt.farm.plugins.module_utils._batch_slurm import SlurmAdapter

        return SlurmAdapter(**options)
    if system == "htcondor":
        from ansible_collections.batchvirt.farm.plugins.module_utils._batch_htcondor import HTCondorAdapter

        return HTCondorAdapter(**options)
    raise BatchError(f"system={system!r} is not supported: use one of {', '.join(SYSTEMS)}.", "system")


# -- self-registration at boot (cloud-init) ---------------------------------------------------
# Two costs of a TCG boot are avoided here:
# - `systemctl enable` reloads systemd (five reloads for munge and slurmd on Debian 12, 70 s of a TCG
#   guest's boot): only the units not enabled yet are enabled;
# - a restart of a daemon that already runs with its final key and configuration re-registers a
#   node that may already have been given a job (its launch fails and Slurm requeues it for minutes):
#   a daemon is (re)started only when it is not running, or when it started before the newest of the
#   files cloud-init wrote for it (an image whose units start before cloud-init's files are there).
_RESTART_SCRIPT = (
    "if [ -d /run/systemd/system ]; then todo=; "
    'for unit in {units}; do systemctl is-enabled -q $unit || todo="$todo $unit"; done; '
    'if [ -n "$todo" ]; then systemctl enable $todo >/dev/null 2>&1; fi; '
    "newest=$(stat -c %Y {files} 2>/dev/null | sort -n | tail -n 1); "
    "for unit in {units}; do "
    "since=$(systemctl show -p ActiveEnterTimestamp --value $unit 2>/dev/null); "
    'since=$(date -d "$since" +%s 2>/dev/null || echo 0); '
    'if ! systemctl is-active -q $unit || [ "$since" -le "${{newest:-0}}" ]; then systemctl restart $unit; fi; '
    "done; else {services}; fi"
)


def _restart(services: Sequence[str], files: Sequence[str]) -> List[str]:
    """The runcmd entry that (re)starts ``services`` once cloud-init has written ``files``."""
    script = _RESTART_SCRIPT.format(
        units=" ".join(services),
        files=" ".join(shlex.quote(f) for f in files),
        services="; ".join(f"service {s} restart" for s in services),
    )
    return ["sh", "-c", script]


def slurmd_options(
    node_name: str,
    features: Sequence[str] = (),
    dynamic: bool = True,
    conf_server: Optional[str] = None,
    extra: Sequence[str] = (),
) -> str:
    """The ``SLURMD_OPTIONS`` of ``/etc/default/slurmd`` (read by the systemd unit and the init script).

    No quotes and no spaces inside one option: systemd splits ``$SLURMD_OPTIONS`` on blanks
    without interpreting quotes.
    """
    opts = ["-N", node_name]
    if conf_server:
        opts.append(f"--conf-server={conf_server}")
    if dynamic:
        opts.append("-Z")
        if features:
            opts.append("--conf=Feature=" + ",".join(features))
    opts.extend(extra)
    for opt in opts:
        if any(c.isspace() or c in "\"'" for c in opt):
            raise BatchError(
                f"slurmd option {opt!r} must not contain blanks or quotes (node name, features).", "features"
            )
    return " ".join(opts)


def cloud_init_registration(
    system: str,
    node_name: str,
    controller: str,
    munge_key: Any = None,
    features: Sequence[str] = (),
    slurm_conf: Optional[str] = None,
    dynamic: bool = True,
    controller_port: int = 6817,
    condor_config: Optional[str] = None,
    defaults_file: str = "/etc/default/slurmd",
) -> Dict[str, List[Any]]:
    """cloud-init ``write_files`` and ``runcmd`` entries that make a VM register itself at boot.

    ``system='slurm'``: writes the munge key (``munge_key``: bytes, or base64 text as slurped by
    Ansible, mode 0400 owner munge), ``/etc/slurm/slurm.conf`` when ``slurm_conf`` (its text) is
    given, else configless mode (``--conf-server controller:port``; the controller needs
    ``SlurmctldParameters=enable_configless``), and ``/etc/default/slurmd`` with
    ``-N node_name`` (``-Z --conf=Feature=...`` for a dynamic node; ``defaults_file``
    ``/etc/sysconfig/slurmd`` for EL images), then restarts munge and
    slurmd. ``system='htcondor'``: writes ``/etc/condor/config.d/50-farm.conf`` (``condor_config``
    or a minimal execute-node configuration pointing at ``controller``) and restarts condor.

    The slot module merges the lists into its user-data (``write_files`` and ``runcmd`` keys).
    The munge key is a secret: the caller must keep the user-data ``no_log``.
    """
    if not node_name:
        raise BatchError("cloud_init_registration: node_name is empty: give the slot's batch node name.", "node_name")
    if not controller:
        raise BatchError("cloud_init_registration: controller is empty: give the controller's address.", "controller")
    if system == "slurm":
        if munge_key is None:
            raise BatchError(
                "cloud_init_registration: munge_key is required for Slurm: pass the controller's key "
                "(farm_batch_controller_munge_key_b64 from the batch_controller role).",
                "munge_key",
            )
        key_b64 = _key_b64(munge_key)
        files: List[Dict[str, Any]] = [
            {
                "path": "/etc/munge/munge.key",
                "encoding": "b64",
                "content": key_b64,
                "owner": "munge:munge",
                "permissions": "0400",
            }
        ]
        conf_server = None
        if slurm_conf is not None:
            files.append(
                {"path": "/etc/slurm/slurm.conf", "content": slurm_conf, "owner": "root:root", "permissions": "0644"}
            )
        else:
            conf_server = f"{controller}:{controller_port}"
        options = slurmd_options(node_name, features, dynamic=dynamic, conf_server=conf_server)
        files.append(
            {
                "path": defaults_file,
                "content": f"# written by batchvirt.farm at first boot\nSLURMD_OPTIONS={shlex.quote(options)}\n",
                "owner": "root:root",
                "permissions": "0644",
            }
        )
        runcmd: List[Any] = [
            ["sh", "-c", "chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key"],
            _restart(["munge", "slurmd"], [f["path"] for f in files]),
        ]
        return {"write_files": files, "runcmd": runcmd}
    if system == "htcondor":
        return _htcondor_registration(node_name, controller, features, condor_config)
    raise BatchError(f"system={system!r} is not supported: use one of {', '.join(SYSTEMS)}.", "system")


def _htcondor_registration(
    node_name: str, controller: str, features: Sequence[str], condor_config: Optional[str]
) -> Dict[str, List[Any]]:
    """:func:`cloud_init_registration` for HTCondor: the execute node's configuration, a restart."""
    text = condor_config
    if text is None:
        attrs = ["FARM_NODE_NAME"] + (["FARM_FEATURES"] if features else [])
        text = (
            "# written by batchvirt.farm at first boot\n"
            f"CONDOR_HOST = {controller}\n"
            "DAEMON_LIST = MASTER, STARTD\n"
            "use feature : PartitionableSlot\n"
            f'FARM_NODE_NAME = "{node_name}"\n'
            + (f'FARM_FEATURES = "{",".join(features)}"\n' if features else "")
            + f"STARTD_ATTRS = $(STARTD_ATTRS) {' '.join(attrs)}\n"
        )
    return {
        "write_files": [
            {
                "path": "/etc/condor/config.d/50-farm.conf",
                "content": text,
                "owner": "root:root",
                "permissions": "0644",
            }
        ],
        "runcmd": [_restart(["condor"], ["/etc/condor/config.d/50-farm.conf"])],
    }


def _key_b64(munge_key: Any) -> str:
    """The munge key as base64 text (bytes are encoded; text must already be base64)."""
    if isinstance(munge_key, (bytes, bytearray)):
        return base64.b64encode(bytes(munge_key)).decode("ascii")
    text = "".join(str(munge_key).split())
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise BatchError(
            "cloud_init_registration: munge_key text must be base64 (as ansible.builtin.slurp returns it).",
            "munge_key",
        ) from exc
    if len(raw) < 32:
        raise BatchError(
            f"cloud_init_registration: munge_key is {len(raw)} bytes: munge needs at least 32.", "munge_key"
        )
    return text


# -- the batch_node module's engine ------------------------------------------------------------
NODE_STATES = ("present", "drained", "resumed", "absent")
DEFAULT_REASON = "drained by batchvirt.farm"


def _summary(statuses: Mapping[str, NodeStatus]) -> Dict[str, Dict[str, Any]]:
    return {name: status.as_dict() for name, status in statuses.items()}


def _jobs_text(statuses: Iterable[NodeStatus]) -> str:
    return ", ".join(f"{s.name} ({s.jobs} job{'s' if s.jobs != 1 else ''})" for s in statuses)


def manage_nodes(
    adapter: BatchAdapter,
    names: Iterable[str],
    state: str,
    reason: Optional[str] = None,
    wait: bool = False,
    wait_timeout: float = 600,
    poll_interval: float = 5,
    force: bool = False,
    register_params: Optional[Mapping[str, Any]] = None,
    check_mode: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Dict[str, Any]:
    """Bring ``names`` to ``state`` with one bulk query before acting (and one per poll).

    Returns the module result (``changed``, ``nodes``, ``changed_nodes``, ``diff``); raises
    :class:`BatchError` (with ``nodes`` set to the last view) on failure. Nothing here kills
    a job: ``drained`` lets jobs finish, ``absent`` refuses nodes with jobs unless ``force``.
    """
    nodes = as_list(names)
    if not nodes:
        raise BatchError("name is empty: give one node name or a list of node names.", "name")
    if state not in NODE_STATES:
        raise BatchError(f"state={state!r} is not one of {', '.join(NODE_STATES)}.", "state")
    reason = (reason or "").strip() or DEFAULT_REASON
    before = adapter.bulk_status(nodes)
    unknown = [n for n in nodes if not before[n].known]
    todo: List[str] = []
    if state in ("drained", "resumed") and unknown:
        raise BatchError(adapter.unknown_node_message(unknown), nodes=_summary(before))
    if state == "present":
        params = dict(register_params or {})
        todo = [n for n in nodes if not before[n].known]
        if params.get("address"):
            todo += [n for n in nodes if before[n].known and before[n].address != params["address"]]
        if params.get("features") and adapter.updates_features:
            wanted = set(params["features"])
            todo += [n for n in nodes if before[n].known and n not in todo and set(before[n].features) != wanted]
        if not check_mode:
            for n in todo:
                adapter.register(n, status=before[n], **params)
    elif state == "drained":
        todo = [n for n in nodes if not before[n].drain or before[n].reason != reason]
        if todo and not check_mode:
            adapter.drain(todo, reason)
    elif state == "resumed":
        todo = [n for n in nodes if before[n].drain or before[n].state == DOWN]
        if todo and not check_mode:
            adapter.resume(todo)
    else:  # absent
        present = [n for n in nodes if before[n].known]
        busy = [before[n] for n in present if before[n].jobs]
        if busy and not force:
            raise BatchError(
                f"{adapter.system}: refusing to remove node(s) with running jobs: {_jobs_text(busy)}. "
                "Drain them first (state=drained, wait=true), or set force=true to remove them anyway.",
                nodes=_summary(before),
            )
        todo = present
        if todo and not check_mode:
            adapter.remove(todo)

    after = before
    if not check_mode and (todo or wait):
        if wait and state in ("drained", "present", "resumed"):
            after = _wait(adapter, nodes, state, wait_timeout, poll_interval, sleep, clock)
        else:
            after = adapter.bulk_status(nodes)
    result: Dict[str, Any] = {
        "changed": bool(todo),
        "changed_nodes": todo,
        "nodes": _summary(after),
        "diff": {
            "before": {n: before[n].state for n in nodes},
            "after": {n: (state if n in todo else after[n].state) if check_mode else after[n].state for n in nodes},
        },
    }
    return result


def _done(status: NodeStatus, state: str) -> bool:
    if state == "drained":
        return status.drain and status.jobs == 0 and status.state == DRAINED
    if state == "resumed":
        return status.registered and not status.drain
    return status.registered


def _wait(
    adapter: BatchAdapter,
    nodes: List[str],
    state: str,
    timeout: float,
    interval: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> Dict[str, NodeStatus]:
    """Poll with ONE bulk query per round until every node is done or ``timeout`` passes."""
    start = clock()
    wall_start = time.time()
    while True:
        statuses = adapter.bulk_status(nodes)
        pending = [statuses[n] for n in nodes if not _done(statuses[n], state)]
        if not pending:
            return statuses
        if clock() - start >= timeout:
            break
        sleep(max(0.0, min(interval, timeout - (clock() - start))))
    if state == "drained":
        busy = [s for s in pending if s.jobs]
        other = [s for s in pending if not s.jobs]
        msg = f"{adapter.system}: drain not finished after {timeout:g} s (wait_timeout):"
        if busy:
            msg += f" still running jobs: {_jobs_text(busy)};"
        if other:
            msg += " not drained: " + ", ".join(f"{s.name} ({s.state})" for s in other) + ";"
        msg += (
            " the nodes are left draining and no job was killed. Wait longer (a larger wait_timeout), "
            "or let the jobs end; state=resumed cancels the drain."
        )
    elif state == "resumed":
        msg = (
            f"{adapter.system}: node(s) not back in service after {timeout:g} s (wait_timeout): "
            + ", ".join(f"{s.name} ({s.state})" for s in pending)
            + ". The controller cannot reach their daemon: check that it runs on the node."
        )
    else:
        msg = (
            f"{adapter.system}: node(s) not registered after {timeout:g} s (wait_timeout): "
            + ", ".join(f"{s.name} ({s.state})" for s in pending)
            + ". Check that the node booted and that its daemon runs and reaches the controller."
        )
        hint = adapter.diagnose_registration([s.name for s in pending], since=wall_start)
        if hint:
            msg += " " + hint
    raise BatchError(msg, nodes=_summary(statuses))
