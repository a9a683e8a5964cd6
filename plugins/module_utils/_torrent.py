"""Private to batchvirt.farm: BitTorrent transport for images (publish, fetch, seed).

Engine: ``aria2c`` (Debian/RHEL package ``aria2``) downloads, checks every piece against the
torrent's SHA-1 piece hashes, uses the image server as a BEP-19 web seed, and seeds for a given
time.  Torrent metadata is created and read with the pure-Python ``torf`` library (PyPI), so no
bencoding is written here.  The tracker is any existing one (``opentracker`` from Debian).

Public functions:

- :func:`make_torrent` (publisher): create a ``.torrent`` for an image file, with trackers and
  the image's HTTP URL as web seed.
- :func:`fetch` (hypervisor): download the image a ``magnet:`` URI or a ``.torrent`` (path,
  ``file://`` or ``http(s)://`` URL) describes into a partial path; the caller (the image cache)
  verifies size and sha512 and moves it into place.
- :func:`start_seeding` / :func:`stop_seeding` / :func:`seeding_status`: a detached ``aria2c``
  process per torrent with a pidfile in a state directory, ended by ``--seed-time``; a later run
  finds it by its pidfile.  For a seeder supervised by the service manager, see the
  ``batchvirt.farm.image_seeder`` role, whose command line comes from :func:`aria2c_seed_args`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Sequence

from ansible.module_utils.urls import open_url

DEFAULT_STATE_DIR = "/var/lib/batchvirt/torrent"
DEFAULT_LISTEN_PORT = "6881-6999"
ARIA2C = "aria2c"
# aria2c exit codes worth naming (see aria2c(1), "EXIT STATUS").
_ARIA2C_EXIT = {
    1: "unknown error",
    2: "time out",
    3: "resource not found",
    6: "network problem",
    7: "unfinished downloads",
    9: "not enough disk space",
    12: "the same download is already running",
    13: "the output file already exists",
    15: "could not open the output file",
    16: "could not create the output file",
    24: "HTTP authorization failed",
    26: "could not parse the torrent file",
    27: "the magnet URI is bad",
}


class TorrentError(Exception):
    """A BitTorrent operation failed; ``message`` names the source and what failed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- dependencies -----------------------------------------------------------------------------


def _torf() -> Any:
    try:
        import torf  # noqa: PLC0415 (optional dependency, checked at use)
    except ImportError as exc:
        raise TorrentError(
            message="the Python library 'torf' is required for BitTorrent images: install it with "
            "'pip install torf' (it is listed in the collection's requirements.txt)"
        ) from exc
    return torf


def _aria2c(explicit: Optional[str] = None) -> str:
    path = shutil.which(explicit or ARIA2C)
    if path is None:
        raise TorrentError(
            message=f"'{explicit or ARIA2C}' was not found: install the 'aria2' package "
            "(apt-get install aria2 / dnf install aria2) on the hypervisor"
        )
    return path


# -- metadata ---------------------------------------------------------------------------------


def torrent_info(torrent: Any) -> Dict[str, Any]:
    """The facts about a torf ``Torrent`` that callers need."""
    meta = torrent.metainfo["info"]
    return {
        "info_hash": torrent.infohash,
        "name": torrent.name,
        "size": int(meta["length"]) if "length" in meta else int(torrent.size),
        "single_file": "length" in meta,
        "piece_length": int(torrent.piece_size),
        "pieces": int(torrent.pieces),
        "trackers": [url for tier in (torrent.trackers or []) for url in tier],
        "web_seeds": list(torrent.webseeds or []),
        "magnet": str(torrent.magnet()),
    }


def read_torrent(path: str) -> Dict[str, Any]:
    """Read a ``.torrent`` file; raise :class:`TorrentError` naming it when it is not one."""
    torf = _torf()
    try:
        torrent = torf.Torrent.read(path)
    except (torf.TorfError, OSError) as exc:
        raise TorrentError(message=f"{path} is not a readable .torrent file: {exc}") from exc
    return torrent_info(torrent)


def default_piece_length(size: int) -> int:
    """About 1,000–2,000 pieces: 256 KiB for small images, up to 16 MiB for 20+ GiB ones."""
    length = 256 * 1024
    while size // length > 2048 and length < 16 * 1024 * 1024:
        length *= 2
    return length


def make_torrent(
    path: str,
    tracker_urls: Sequence[str],
    web_seeds: Sequence[str],
    piece_length: Optional[int] = None,
    output: Optional[str] = None,
    comment: Optional[str] = None,
) -> Dict[str, Any]:
    """Create (or keep) the ``.torrent`` for the single image file ``path``.

    ``output`` defaults to ``path + ".torrent"``. The file is left alone (``changed`` false)
    when it already describes ``path`` with the same trackers, web seeds and piece length and
    is newer than the image, so a rerun does not hash 10 GB again.
    Returns :func:`torrent_info` plus ``path`` (of the .torrent) and ``changed``.
    """
    torf = _torf()
    if not os.path.isfile(path):
        raise TorrentError(message=f"cannot create a torrent for {path}: not a regular file")
    output = output or path + ".torrent"
    size = os.path.getsize(path)
    if size == 0:
        raise TorrentError(message=f"cannot create a torrent for {path}: the file is empty")
    piece_length = piece_length or default_piece_length(size)
    if piece_length < 16384 or piece_length & (piece_length - 1):
        raise TorrentError(message=f"piece_length {piece_length} must be a power of two of at least 16384")
    trackers = list(tracker_urls)
    seeds = list(web_seeds)
    if os.path.exists(output) and os.path.getmtime(output) >= os.path.getmtime(path):
        try:
            current = read_torrent(output)
        except TorrentError:
            current = None
        if (
            current is not None
            and current["name"] == os.path.basename(path)
            and current["size"] == size
            and current["piece_length"] == piece_length
            and current["trackers"] == trackers
            and current["web_seeds"] == seeds
        ):
            return dict(current, path=output, changed=False)
    torrent = torf.Torrent(
        path=path,
        trackers=trackers or None,
        webseeds=seeds or None,
        piece_size=piece_length,
        comment=comment,
        created_by="batchvirt.farm",
    )
    try:
        torrent.generate()
    except torf.TorfError as exc:
        raise TorrentError(message=f"hashing {path} for its torrent failed: {exc}") from exc
    tmp = output + ".tmp"
    torrent.write(tmp, overwrite=True)
    os.replace(tmp, output)
    return dict(torrent_info(torrent), path=output, changed=True)


# -- fetching ---------------------------------------------------------------------------------


def _is_magnet(source: str) -> bool:
    return source.startswith("magnet:")


def _obtain_torrent(source: str, work_dir: str, timeout: float) -> str:
    """A local path to the .torrent that ``source`` names (downloaded when it is a URL)."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        target = os.path.join(work_dir, "source.torrent")
        try:
            with open_url(source, timeout=timeout) as resp, open(target, "wb") as out:
                data = resp.read(64 * 1024 * 1024 + 1)
                if len(data) > 64 * 1024 * 1024:
                    raise TorrentError(message=f"{source}: the .torrent is larger than 64 MiB; refusing it")
                out.write(data)
        except TorrentError:
            raise
        except Exception as exc:  # urllib raises many types; the message names the source
            raise TorrentError(message=f"downloading the torrent file {source} failed: {exc}") from exc
        return target
    if parsed.scheme == "file":
        return urllib.request.url2pathname(parsed.path)
    if parsed.scheme == "":
        return source
    raise TorrentError(
        message=f"{source}: unsupported BitTorrent source; use a magnet: URI, a .torrent path, "
        "or a file://, http:// or https:// URL of a .torrent"
    )


def _tail(path: str, lines: int = 8) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("[#")]
    return " | ".join(kept[-lines:])


def _common_args(listen_port: str, opts: Dict[str, Any]) -> List[str]:
    args = [
        f"--listen-port={listen_port}",
        f"--enable-dht={'true' if opts.get('dht') else 'false'}",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=true",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--show-console-readout=false",
        "--auto-file-renaming=false",
        "--allow-overwrite=true",
        "--file-allocation=falloc",
    ]
    if opts.get("tracker_interval"):
        args.append(f"--bt-tracker-interval={int(opts['tracker_interval'])}")
    if opts.get("max_upload_limit"):
        args.append(f"--max-overall-upload-limit={opts['max_upload_limit']}")
    if opts.get("trackers"):
        args.append("--bt-tracker=" + ",".join(opts["trackers"]))
    args.extend(opts.get("extra_args") or [])
    return args


def fetch(
    source: str,
    dest_partial_path: str,
    size: Optional[int],
    sha512: Optional[str],
    timeout: float,
    **opts: Any,
) -> Dict[str, Any]:
    """Download the single-file torrent ``source`` into ``dest_partial_path``.

    Every piece is checked against the torrent's SHA-1 piece hashes as it arrives (pieces from a
    peer with bad data are discarded and fetched again); a partial file from an interrupted run
    is re-checked and resumed.  ``size`` is compared with the torrent before anything is
    downloaded.  ``sha512`` is NOT computed here (that would read the image a second time): the
    image cache verifies it before the image becomes ready.

    Options (``opts``): ``state_dir`` (where the .torrent is kept for seeding; default
    ``/var/lib/batchvirt/torrent``), ``listen_port`` (``"6881-6999"``), ``trackers`` and
    ``web_seeds`` (extra, added to the torrent's), ``tracker_interval`` (seconds),
    ``max_upload_limit``, ``dht`` (false), ``aria2c`` (the binary), ``extra_args``.

    Raises :class:`TorrentError` naming ``source`` on a timeout or any failure.
    """
    del sha512  # verified by the caller (see above)
    aria2c = _aria2c(opts.get("aria2c"))
    state_dir = opts.get("state_dir") or DEFAULT_STATE_DIR
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    dest_dir, dest_name = os.path.split(os.path.abspath(dest_partial_path))
    os.makedirs(dest_dir, exist_ok=True)
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="bvt-torrent-", dir=state_dir)
    log_path = os.path.join(work, "aria2c.log")
    try:
        info: Optional[Dict[str, Any]] = None
        if _is_magnet(source):
            target = source
        else:
            target = _obtain_torrent(source, work, timeout)
            info = read_torrent(target)
            if not info["single_file"]:
                raise TorrentError(message=f"{source}: the torrent holds several files; an image torrent must hold one")
            if size is not None and info["size"] != int(size):
                raise TorrentError(
                    message=f"{source}: the torrent describes {info['size']} bytes but the image list says "
                    f"{size}; the torrent is not for this image version"
                )
        cmd = [aria2c, f"--dir={dest_dir}", f"--index-out=1={dest_name}", "--seed-time=0", "--check-integrity=true"]
        cmd += _common_args(str(opts.get("listen_port") or DEFAULT_LISTEN_PORT), opts)
        # One HTTP connection per hypervisor to the web seed, at random pieces: N hypervisors
        # starting together then fetch different pieces from it (which they trade among
        # themselves) instead of all streaming the same first megabytes (measured: the image
        # server sent 4.9 copies for 16 hypervisors with aria2c's defaults, 2.75 with these).
        cmd += [
            "--bt-save-metadata=true",
            "--split=1",
            "--max-connection-per-server=1",
            "--stream-piece-selector=random",
        ]
        if opts.get("web_seeds") and info is not None:
            # With -T, URIs given beside the torrent are extra (web seed) sources for its file.
            cmd += ["-T", target] + list(opts["web_seeds"])
        else:
            cmd.append(target)
        remaining = max(1.0, timeout - (time.monotonic() - started))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=work)
            try:
                rc = proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                proc.terminate()  # aria2c saves its control file: a rerun resumes
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                done = os.path.exists(dest_partial_path + ".aria2") or os.path.exists(dest_partial_path)
                raise TorrentError(
                    message=f"timed out after {timeout:g} s fetching {source} into {dest_partial_path} "
                    f"({'partial data kept for a resume' if done else 'nothing downloaded'}); no peer or web "
                    f"seed delivered verified pieces in time. Engine said: {_tail(log_path) or 'nothing'}"
                ) from None
        if rc != 0:
            raise TorrentError(
                message=f"fetching {source} into {dest_partial_path} failed: aria2c exit {rc} "
                f"({_ARIA2C_EXIT.get(rc, 'error')}): {_tail(log_path)}"
            )
        if info is None:  # a magnet: aria2c saved the metadata as <info hash>.torrent in dest_dir
            saved = [n for n in os.listdir(dest_dir) if n.endswith(".torrent") and len(n) == 48]
            if not saved:
                raise TorrentError(message=f"{source}: aria2c did not save the torrent metadata")
            target = os.path.join(work, "source.torrent")
            shutil.move(os.path.join(dest_dir, saved[0]), target)
            info = read_torrent(target)
        actual = os.path.getsize(dest_partial_path) if os.path.exists(dest_partial_path) else -1
        if actual != info["size"] or os.path.exists(dest_partial_path + ".aria2"):
            raise TorrentError(
                message=f"fetching {source}: aria2c finished but {dest_partial_path} holds {actual} of "
                f"{info['size']} bytes; the download is incomplete"
            )
        kept = os.path.join(state_dir, info["info_hash"] + ".torrent")
        shutil.copyfile(target, kept + ".tmp")
        os.replace(kept + ".tmp", kept)
        return dict(
            info,
            source=source,
            path=dest_partial_path,
            torrent=kept,
            engine="aria2c",
            verified="piece-sha1",
            elapsed=round(time.monotonic() - started, 3),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- seeding ----------------------------------------------------------------------------------


def aria2c_seed_args(
    listen_port: str = DEFAULT_LISTEN_PORT,
    seed_for_seconds: Optional[float] = None,
    verify: bool = False,
    **opts: Any,
) -> List[str]:
    """The aria2c options of a seeder (without the torrent): seed-ratio ignored, ended only by
    ``seed_for_seconds`` (``None`` or 0: seed until stopped)."""
    args = ["--seed-ratio=0.0", f"--check-integrity={'true' if verify else 'false'}"]
    args.append(f"--bt-seed-unverified={'false' if verify else 'true'}")
    if seed_for_seconds:
        args.append(f"--seed-time={seed_for_seconds / 60.0:.4f}")
    return args + _common_args(listen_port, opts)


def _pid_alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and its command line mentions ``marker`` (guards against pid reuse)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().decode("utf-8", "replace")
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != b"Z" and marker in cmdline


def _state_paths(state_dir: str, info_hash: str) -> Dict[str, str]:
    base = os.path.join(state_dir, info_hash)
    return {"pid": base + ".pid", "state": base + ".json", "log": base + ".log", "torrent": base + ".torrent"}


def seeding_status(state_dir: str = DEFAULT_STATE_DIR) -> List[Dict[str, Any]]:
    """Every seeder recorded in ``state_dir``, with ``running`` from its pidfile."""
    result: List[Dict[str, Any]] = []
    if not os.path.isdir(state_dir):
        return result
    for name in sorted(os.listdir(state_dir)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(state_dir, name)) as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            continue
        record["running"] = _pid_alive(int(record.get("pid", 0)), record["info_hash"])
        result.append(record)
    return result


def stop_seeding(info_hash: str, state_dir: str = DEFAULT_STATE_DIR, wait: float = 10.0) -> bool:
    """Stop the seeder of ``info_hash``; True when one was running."""
    paths = _state_paths(state_dir, info_hash)
    try:
        with open(paths["pid"]) as handle:
            pid = int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return False
    running = _pid_alive(pid, info_hash)
    if running:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait
        while _pid_alive(pid, info_hash) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid, info_hash):
            os.kill(pid, signal.SIGKILL)
    for key in ("pid", "state"):
        if os.path.exists(paths[key]):
            os.unlink(paths[key])
    return running


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
    in a detached aria2c process that outlives the caller (its own session, parent init).

    Idempotent: when a seeder for the same torrent and file already runs until at least the
    requested end (within a minute), it is kept (``changed`` false); otherwise it is replaced.
    ``verify`` re-checks every piece before seeding (reads the whole image once); off by
    default because the image cache has just verified the file's sha512.
    """
    aria2c = _aria2c(opts.get("aria2c"))
    info = read_torrent(torrent)
    if not os.path.isfile(data_path) or os.path.getsize(data_path) != info["size"]:
        raise TorrentError(message=f"cannot seed {torrent}: {data_path} is missing or is not {info['size']} bytes")
    if seed_for_seconds <= 0:
        raise TorrentError(message=f"seed_for_seconds must be positive, got {seed_for_seconds}")
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    paths = _state_paths(state_dir, info["info_hash"])
    now = time.time()
    until = now + seed_for_seconds
    for record in seeding_status(state_dir):
        if record["info_hash"] == info["info_hash"] and record["running"]:
            if record.get("data_path") == os.path.abspath(data_path) and record.get("until", 0) >= until - 60:
                return dict(record, changed=False)
            break
    stop_seeding(info["info_hash"], state_dir)
    if os.path.abspath(torrent) != paths["torrent"]:
        shutil.copyfile(torrent, paths["torrent"] + ".tmp")
        os.replace(paths["torrent"] + ".tmp", paths["torrent"])
    data_dir, data_name = os.path.split(os.path.abspath(data_path))
    cmd = [aria2c, f"--dir={data_dir}", f"--index-out=1={data_name}"]
    cmd += aria2c_seed_args(listen_port, seed_for_seconds, verify, **opts)
    cmd += [f"--log={paths['log']}", "--log-level=notice", paths["torrent"]]
    # A shell starts aria2c in the background and exits: aria2c is re-parented to init (no
    # zombie in the caller), in its own session (no signal from the caller's terminal/job).
    launcher = 'exec 0</dev/null 1>/dev/null 2>&1; "$@" & echo $! >"$PIDFILE"'
    env = dict(os.environ, PIDFILE=paths["pid"])
    subprocess.run(["/bin/sh", "-c", launcher, "sh"] + cmd, env=env, start_new_session=True, check=True)
    with open(paths["pid"]) as handle:
        pid = int(handle.read().strip())
    record = {
        "info_hash": info["info_hash"],
        "name": info["name"],
        "pid": pid,
        "data_path": os.path.abspath(data_path),
        "torrent": paths["torrent"],
        "started": round(now, 3),
        "until": round(until, 3),
        "log": paths["log"],
    }
    with open(paths["state"] + ".tmp", "w") as handle:
        json.dump(record, handle, sort_keys=True)
    os.replace(paths["state"] + ".tmp", paths["state"])
    time.sleep(0.2)
    if not _pid_alive(pid, info["info_hash"]):
        raise TorrentError(message=f"the seeder for {torrent} exited at once: {_tail(paths['log'])}")
    return dict(record, running=True, changed=True)
