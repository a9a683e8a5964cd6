# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the BitTorrent engine processes seen from the caller: install, launch, seed, stop.

Each engine process (``_torrent_engine``) has, in a state directory (default
``/var/lib/batchvirt/torrent``), a pidfile, a job file (what to do: written here, reread by the
engine when it changes), a status file (written by the engine), a record of the seeding
(``<info hash>.json``), a log and the kept ``.torrent``. A later run finds a running engine by
its pidfile and updates its job (new path, new end) without a restart.

The engine runs from its own root-owned directory (:data:`DEFAULT_ENGINE_DIR`), never from the
state directory: :func:`install_engine` writes the engine files there (the roles do the same
with ``ansible.builtin.copy``) and refuses a directory that others can write (see
``_torrent_launch``), and :func:`launch` starts ``python -I -B ENGINE_DIR/launch.py``.
"""

from __future__ import annotations

import importlib.util
import os
import py_compile
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

from ansible_collections.batchvirt.farm.plugins.module_utils import (
    _errors,
    _timeutil,
    _torrent_engine,
    _torrent_launch,
    _torrent_meta,
    _torrent_seeder,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._logtail import tail
from ansible_collections.batchvirt.farm.plugins.module_utils._torrent_engine import (
    DEFAULT_LISTEN_PORT,
    free_port,
    libtorrent_module,
    read_json,
    write_json,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._torrent_meta import TorrentError, read_torrent

DEFAULT_STATE_DIR = "/var/lib/batchvirt/torrent"
DEFAULT_ENGINE_DIR = "/usr/libexec/batchvirt/torrent-engine"

# The engine: these module_utils (the engine process imports nothing else of the collection),
# installed under their own package path below the engine directory; and the launcher.
ENGINE_PACKAGE = ("ansible_collections", "batchvirt", "farm", "plugins", "module_utils")
ENGINE_FILES = (_errors, _timeutil, _torrent_meta, _torrent_engine, _torrent_seeder)
ENGINE_LAUNCHER = "launch.py"


# -- the engine's directory -------------------------------------------------------------------


def _source(module: Any) -> str:
    """The source of ``module``, also inside Ansible's zipped module payload."""
    loader = getattr(module, "__loader__", None)
    if loader is not None and hasattr(loader, "get_source"):
        try:
            text = loader.get_source(module.__name__)
        except Exception:  # noqa: BLE001 (any loader failure: fall back to the file)
            text = None
        if text:
            return str(text)
    with open(module.__file__) as handle:
        return handle.read()


def engine_files() -> Dict[str, str]:
    """Relative path -> content of every file of the installed engine."""
    package = os.path.join(*ENGINE_PACKAGE)
    files = {ENGINE_LAUNCHER: _source(_torrent_launch)}
    for depth in range(1, len(ENGINE_PACKAGE) + 1):
        files[os.path.join(*ENGINE_PACKAGE[:depth], "__init__.py")] = ""
    for module in ENGINE_FILES:
        files[os.path.join(package, module.__name__.rsplit(".", 1)[-1] + ".py")] = _source(module)
    return files


def _refuse(engine_dir: str, problems: List[str]) -> TorrentError:
    return TorrentError(
        message=f"refusing to run the BitTorrent engine from {engine_dir}: {'; '.join(problems)}. The engine runs "
        "as root from this directory: it, everything in it and every directory above it must belong to root and "
        "be writable by no one else (chown root:root, chmod go-w), or set engine_dir to such a directory",
        option="engine_dir",
    )


def _makedirs(path: str) -> None:
    """``os.makedirs`` whose new directories are 0755 whatever the umask."""
    if os.path.isdir(path):
        return
    _makedirs(os.path.dirname(path))
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        return
    os.chmod(path, 0o755)


def _replace(path: str, write: Callable[[str], None]) -> None:
    """Make ``path`` (0644) with ``write(temporary path)``, then rename it into place: engines and
    concurrent installs (several hypervisors' modules at once) see the old file or the new one."""
    _makedirs(os.path.dirname(path))
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".install-")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_file(path: str, content: str) -> None:
    """Write ``path`` and its bytecode (the engine runs with ``-B``: it never writes any itself)."""

    def text(tmp: str) -> None:
        with open(tmp, "w") as handle:
            handle.write(content)

    def bytecode(tmp: str) -> None:
        py_compile.compile(path, cfile=tmp, doraise=True)

    _replace(path, text)
    if path.endswith(".py") and os.path.basename(path) != ENGINE_LAUNCHER:
        _replace(importlib.util.cache_from_source(path), bytecode)


def install_engine(engine_dir: str = DEFAULT_ENGINE_DIR) -> str:
    """Install (or keep) the engine in ``engine_dir``; the launcher's path.

    Files already as they should be are left alone. Raises :class:`TorrentError` (``option``
    ``engine_dir``) naming every path that others could write, before and after installing.
    """
    engine_dir = os.path.abspath(engine_dir)
    if os.path.exists(engine_dir):
        problems = _torrent_launch.unsafe_paths(engine_dir)
        if problems:
            raise _refuse(engine_dir, problems)
    try:
        for relative, content in engine_files().items():
            path = os.path.join(engine_dir, relative)
            try:
                with open(path) as handle:
                    if handle.read() == content:
                        continue
            except OSError:
                pass
            _write_file(path, content)
    except (OSError, py_compile.PyCompileError) as exc:
        raise TorrentError(
            message=f"cannot install the BitTorrent engine into {engine_dir}: {exc}. Install it with the "
            "image_cache role (farm_image_cache_bittorrent: true), run the module as root, or set engine_dir "
            "to a directory of your own that no one else can write",
            option="engine_dir",
        ) from None
    problems = _torrent_launch.unsafe_paths(engine_dir)
    if problems:
        raise _refuse(engine_dir, problems)
    return os.path.join(engine_dir, ENGINE_LAUNCHER)


# -- engine processes -------------------------------------------------------------------------


def state_paths(state_dir: str, info_hash: str) -> Dict[str, str]:
    base = os.path.join(state_dir, info_hash)
    return {
        "pid": base + ".pid",
        "state": base + ".json",
        "log": base + ".log",
        "torrent": base + ".torrent",
        "job": base + ".job",
        "status": base + ".status",
    }


def pid_alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and its command line mentions ``marker`` (guards against pid reuse)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().decode("utf-8", "replace")
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[-1].split()[0]
    except OSError:
        return False
    # An empty command line: the process is between fork and exec (just launched), not gone.
    return state != b"Z" and (marker in cmdline or not cmdline)


def running_pid(paths: Dict[str, str], info_hash: str) -> int:
    try:
        with open(paths["pid"]) as handle:
            pid = int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0
    return pid if pid and pid_alive(pid, info_hash) else 0


def make_job(info_hash: str, data_path: str, until: Optional[float], opts: Dict[str, Any]) -> Dict[str, Any]:
    """The job file of an engine (see ``_torrent_engine``) from the caller's options."""
    save_path, name = os.path.split(os.path.abspath(data_path))
    return {
        "info_hash": info_hash,
        "save_path": save_path,
        "name": name,
        "until": until,
        "port": free_port(str(opts.get("listen_port") or DEFAULT_LISTEN_PORT)),
        "trackers": list(opts.get("trackers") or []),
        "web_seeds": list(opts.get("web_seeds") or []),
        "web_seed_delay": float(opts.get("web_seed_delay", 3)),
        "dht": bool(opts.get("dht")),
        "super_seeding": bool(opts.get("super_seeding")),
        "max_upload_limit": int(opts.get("max_upload_limit") or 0),
        "max_download_limit": int(opts.get("max_download_limit") or 0),
        "settings": dict(opts.get("engine_settings") or {}),
        "swarm_share": _swarm_share(opts.get("swarm_index"), opts.get("swarm_size")),
    }


def _swarm_share(index: Any, size: Any) -> Optional[List[int]]:
    """``[index, size]`` when this host is one of ``size`` (at least 2) fetching together."""
    if index is None or size is None:
        return None
    try:
        index, size = int(index), int(size)
    except (TypeError, ValueError):
        raise TorrentError(
            message=f"swarm_index {index!r} and swarm_size {size!r} must be integers", option="swarm_index"
        ) from None
    if not 0 <= index < size:
        raise TorrentError(
            message=f"swarm_index {index} must be at least 0 and less than swarm_size {size}", option="swarm_index"
        )
    return [index, size] if size >= 2 else None


def launch(state_dir: str, info_hash: str, job: Dict[str, Any], engine_dir: str = DEFAULT_ENGINE_DIR) -> int:
    """Start the engine for ``job`` detached (its own session, re-parented to init); its pid."""
    paths = state_paths(state_dir, info_hash)
    launcher = install_engine(engine_dir)
    for key in ("status", "pid"):
        if os.path.exists(paths[key]):
            os.unlink(paths[key])
    write_json(paths["job"], job)
    # A shell starts the engine in the background and exits: the engine is re-parented to init
    # (no zombie in the caller), in its own session (no signal from the caller's terminal/job).
    shell = 'exec 0</dev/null 1>>"$LOG" 2>&1; "$@" & echo $! >"$PIDFILE"'
    env = dict(os.environ, PIDFILE=paths["pid"], LOG=paths["log"])
    cmd = [sys.executable, "-I", "-B", launcher, paths["job"]]
    subprocess.run(["/bin/sh", "-c", shell, "sh"] + cmd, env=env, start_new_session=True, check=True)
    with open(paths["pid"]) as handle:
        return int(handle.read().strip())


def record(
    info: Dict[str, Any], paths: Dict[str, str], pid: int, data_path: str, until: Optional[float]
) -> Dict[str, Any]:
    """Write (and return) the record of a seeding engine, which :func:`seeding_status` lists."""
    entry = {
        "info_hash": info["info_hash"],
        "name": info["name"],
        "pid": pid,
        "data_path": os.path.abspath(data_path),
        "torrent": paths["torrent"],
        "started": round(time.time(), 3),
        "until": round(until, 3) if until else None,
        "log": paths["log"],
    }
    write_json(paths["state"], entry)
    return entry


def engine_said(paths: Dict[str, str]) -> str:
    """What the engine last reported (status file, end of its log), for an error message."""
    status = read_json(paths["status"]) or {}
    parts = []
    if status.get("error"):
        parts.append(str(status["error"]))
    if status:
        parts.append(
            f"{status.get('state')}, {100 * float(status.get('progress') or 0):.0f}% verified, "
            f"{status.get('peers', 0)} peers, web seeds {'in use' if status.get('web_seeds') else 'not used'}"
        )
        if status.get("failed_bytes"):
            parts.append(f"{status['failed_bytes']} bytes failed the piece hash check and were discarded")
    kept = [line.strip() for line in tail(paths["log"]).splitlines() if line.strip() and not line.startswith("[#")]
    if kept:
        parts.append(" | ".join(kept[-8:]))
    return "; ".join(parts) or "nothing"


def forget(paths: Dict[str, str]) -> None:
    for key in ("pid", "state", "job", "status"):
        if os.path.exists(paths[key]):
            os.unlink(paths[key])


def seeding_status(state_dir: str = DEFAULT_STATE_DIR) -> List[Dict[str, Any]]:
    """Every seeder recorded in ``state_dir``, with ``running`` from its pidfile."""
    result: List[Dict[str, Any]] = []
    if not os.path.isdir(state_dir):
        return result
    for name in sorted(os.listdir(state_dir)):
        if not name.endswith(".json"):
            continue
        entry = read_json(os.path.join(state_dir, name))
        if entry is None or "info_hash" not in entry:
            continue
        entry["running"] = pid_alive(int(entry.get("pid", 0)), entry["info_hash"])
        result.append(entry)
    return result


def stop_seeding(info_hash: str, state_dir: str = DEFAULT_STATE_DIR, wait: float = 10.0) -> bool:
    """Stop the engine of ``info_hash`` (seeding or downloading); True when one was running."""
    paths = state_paths(state_dir, info_hash)
    pid = running_pid(paths, info_hash)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait
        while pid_alive(pid, info_hash) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid, info_hash):
            os.kill(pid, signal.SIGKILL)
    forget(paths)
    return bool(pid)


def _relocate(
    paths: Dict[str, str], pid: int, job: Dict[str, Any], info: Dict[str, Any], data_path: str, until: float
) -> Dict[str, Any]:
    """Point the running engine ``pid`` (of ``job``) at ``data_path`` until ``until`` (or keep it
    when it already seeds that file until then, within a minute)."""
    entry = read_json(paths["state"]) or {}
    same = os.path.join(job["save_path"], job["name"]) == data_path
    if same and entry.get("until") and float(entry["until"]) >= until - 60:
        return dict(entry, running=True, changed=False)
    save_path, name = os.path.split(data_path)
    job.update(save_path=save_path, name=name, until=until, seed_mode=True)
    write_json(paths["job"], job)  # the engine rereads it: relocates and/or extends
    return dict(record(info, paths, pid, data_path, until), running=True, changed=True)


def start_seeding(
    torrent: str,
    data_path: str,
    seed_for_seconds: float,
    state_dir: str = DEFAULT_STATE_DIR,
    listen_port: str = DEFAULT_LISTEN_PORT,
    verify: bool = False,
    **opts: Any,
) -> Dict[str, Any]:
    """Seed ``data_path`` (described by the .torrent ``torrent``) for ``seed_for_seconds`` from now,
    in a detached engine process that outlives the caller (its own session, parent init).

    When the engine of a :func:`~._torrent_fetch.fetch` with ``seed_for_seconds`` still runs, it
    is told the file's new path and end time (no restart, no gap in seeding).  Idempotent: when
    an engine already seeds the same file until at least the requested end (within a minute),
    it is kept (``changed`` false).  ``verify`` re-checks every piece before seeding (reads the
    whole image once); off by default because the image cache has just verified the file's
    sha512.  ``engine_dir``: where the engine is installed (:func:`install_engine`).
    """
    libtorrent_module()
    info = read_torrent(torrent)
    if not os.path.isfile(data_path) or os.path.getsize(data_path) != info["size"]:
        raise TorrentError(message=f"cannot seed {torrent}: {data_path} is missing or is not {info['size']} bytes")
    if seed_for_seconds <= 0:
        raise TorrentError(
            message=f"seed_for_seconds must be positive, got {seed_for_seconds}", option="seed_for_seconds"
        )
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    ih = info["info_hash"]
    paths = state_paths(state_dir, ih)
    until = time.time() + seed_for_seconds
    data_path = os.path.abspath(data_path)
    pid = running_pid(paths, ih)
    job = read_json(paths["job"]) if pid else None
    if pid and job is not None:
        return _relocate(paths, pid, job, info, data_path, until)
    stop_seeding(ih, state_dir)
    if os.path.abspath(torrent) != paths["torrent"]:
        shutil.copyfile(torrent, paths["torrent"] + ".tmp")
        os.replace(paths["torrent"] + ".tmp", paths["torrent"])
    job = make_job(ih, data_path, until, dict(opts, listen_port=listen_port))
    job.update(torrent=paths["torrent"], magnet="", seed_mode=not verify, seeder=True)
    pid = launch(state_dir, ih, job, opts.get("engine_dir") or DEFAULT_ENGINE_DIR)
    entry = record(info, paths, pid, data_path, until)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not os.path.exists(paths["status"]) and pid_alive(pid, ih):
        time.sleep(0.05)
    if not pid_alive(pid, ih):
        raise TorrentError(message=f"the seeder for {torrent} exited at once: {engine_said(paths)}")
    return dict(entry, running=True, changed=True)
